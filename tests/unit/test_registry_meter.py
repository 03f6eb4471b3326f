"""The byte meter behind benchmark P6: it must see a layer sent twice, whatever the registry stores."""

from __future__ import annotations

import http.server
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _registry_meter import CountingProxy, Request, RequestStream, pushed_bytes  # noqa: E402

LAYER = bytes(range(256)) * 40  # 10240 bytes


def chunked(body: bytes, size: int) -> bytes:
    parts = [f"{len(body[i:i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n" for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def push(layer_sent: bool) -> bytes:
    """The client half of a push: check the layer, upload it (chunked PATCH, buildah's way) if asked, then the manifest."""
    stream = b"HEAD /v2/m/blobs/sha256:aa HTTP/1.1\r\nHost: r\r\n\r\n"
    if layer_sent:
        stream += b"POST /v2/m/blobs/uploads/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        stream += b"PATCH /v2/m/blobs/uploads/u1?_state=x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        stream += chunked(LAYER, 4000)
        stream += b"PUT /v2/m/blobs/uploads/u1?digest=sha256:aa HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    stream += b"PUT /v2/m/manifests/2 HTTP/1.1\r\nContent-Length: 5\r\n\r\n{...}"
    return stream


@pytest.mark.parametrize("slice_size", [1, 7, 4096, 1 << 20])
def test_a_resent_layer_is_counted_however_the_stream_is_cut(slice_size):
    for layer_sent, expected in ((True, len(LAYER) + 5), (False, 5)):
        stream, data = RequestStream(), push(layer_sent)
        for i in range(0, len(data), slice_size):
            stream.feed(data[i : i + slice_size])
        assert pushed_bytes(stream.requests) == expected
    assert [r.method for r in stream.requests] == ["HEAD", "PUT"]


def test_only_pushes_count_not_reads_or_other_bodies():
    requests = [
        Request("GET", "/v2/m/blobs/sha256:aa", 0),
        Request("POST", "/v2/m/blobs/uploads/", 3),
        Request("PATCH", "/v2/m/blobs/uploads/u1", 100),
        Request("PUT", "/v2/m/manifests/latest", 7),
        Request("POST", "/v2/token", 50),
        Request("PUT", "/v2/m/tags/list", 9),
    ]
    assert pushed_bytes(requests) == 110


def test_the_proxy_counts_what_crosses_it_and_passes_answers_back():
    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PATCH(self):
            size = 0
            while (line := self.rfile.readline().strip()) != b"0":
                n = int(line, 16)
                size += len(self.rfile.read(n))
                self.rfile.readline()
            self.rfile.readline()
            body = str(size).encode()
            self.send_response(202)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = CountingProxy(f"127.0.0.1:{server.server_address[1]}")
    try:
        request = urllib.request.Request(
            f"http://{proxy.host}/v2/m/blobs/uploads/u1", data=iter([LAYER[:5000], LAYER[5000:]]), method="PATCH"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202 and response.read() == str(len(LAYER)).encode()
        assert pushed_bytes(proxy.requests()) == len(LAYER)
    finally:
        proxy.close()
        server.shutdown()
