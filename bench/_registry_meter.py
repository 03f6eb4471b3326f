"""Count the bytes a client sends to an image registry: a loopback TCP proxy that parses the requests going through it.

The registry's own log names each request but not its size (buildah streams layers with chunked PATCH requests,
which carry no Content-Length), and its storage is content-addressed, so a layer sent twice is stored once. What
a pusher sends is only visible on the wire: every request's body is counted here as it passes, decoded from
chunked transfer-encoding when it is chunked. Responses are passed through untouched.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field

_UPLOAD = re.compile(r"^/v2/.+/blobs/uploads/")
_MANIFEST = re.compile(r"^/v2/.+/manifests/[^/]+$")


@dataclass(frozen=True)
class Request:
    """One request seen on the wire: method, path (without query) and the bytes of its body."""

    method: str
    path: str
    body_bytes: int

    @property
    def is_upload(self) -> bool:
        """A blob upload (POST/PATCH/PUT under ``/v2/<name>/blobs/uploads/``) or a manifest PUT: bytes pushed."""
        if self.method in ("POST", "PATCH", "PUT") and _UPLOAD.match(self.path):
            return True
        return self.method == "PUT" and bool(_MANIFEST.match(self.path))


def pushed_bytes(requests: list[Request]) -> int:
    """Body bytes of the requests that push content (blob uploads and manifests)."""
    return sum(r.body_bytes for r in requests if r.is_upload)


@dataclass
class RequestStream:
    """Incremental parser of the client-to-server half of one HTTP/1.1 connection (requests back to back).

    Fed arbitrary slices of the byte stream; every complete request lands in ``requests``.
    """

    requests: list[Request] = field(default_factory=list)
    _buffer: bytes = b""
    _state: str = "head"
    _remaining: int = 0
    _method: str = ""
    _path: str = ""
    _body: int = 0

    def feed(self, data: bytes) -> None:
        """Parse ``data``, the next bytes the client sent.

        :param data: any slice of the stream; requests may span several calls.
        """
        self._buffer += data
        while self._step():
            pass

    def _finish(self) -> None:
        self.requests.append(Request(self._method, self._path, self._body))
        self._state, self._body = "head", 0

    def _step(self) -> bool:  # noqa: C901 - one branch per parser state reads best as one function
        buf = self._buffer
        if self._state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self._buffer = buf[:end].decode("latin-1"), buf[end + 4 :]
            lines = head.split("\r\n")
            self._method, target = lines[0].split(" ")[:2]
            self._path = target.split("?", 1)[0]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._state = "chunk-size"
            elif int(headers.get("content-length", "0") or 0) > 0:
                self._state, self._remaining = "body", int(headers["content-length"])
            else:
                self._finish()
            return True
        if self._state in ("body", "chunk-data"):
            if not buf:
                return False
            taken = min(len(buf), self._remaining)
            self._body += taken
            self._remaining -= taken
            self._buffer = buf[taken:]
            if self._remaining == 0:
                if self._state == "body":
                    self._finish()
                else:
                    self._state = "chunk-end"
            return True
        end = buf.find(b"\r\n")
        if end < 0:
            return False
        line, self._buffer = buf[:end], buf[end + 2 :]
        if self._state == "chunk-end":  # the CRLF after a chunk's data
            self._state = "chunk-size"
        elif self._state == "chunk-size":
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            self._state, self._remaining = ("trailer", 0) if size == 0 else ("chunk-data", size)
        elif not line:  # "trailer": an empty line ends the request
            self._finish()
        return True


class CountingProxy:
    """A TCP proxy on a free loopback port in front of ``upstream``, recording every request's body size.

    :param upstream: ``host:port`` of the registry.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._streams: list[RequestStream] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def requests(self) -> list[Request]:
        """Every complete request seen so far, connection by connection."""
        with self._lock:
            return [r for s in self._streams for r in list(s.requests)]

    def reset(self) -> None:
        """Forget what was recorded (connections still open keep being parsed into fresh streams' places)."""
        with self._lock:
            for stream in self._streams:
                stream.requests.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            stream = RequestStream()
            with self._lock:
                self._streams.append(stream)
            threading.Thread(target=self._pipe, args=(client, server, stream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, stream: RequestStream | None) -> None:
        try:
            while data := source.recv(1 << 16):
                if stream is not None:
                    with self._lock:
                        stream.feed(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
