"""A real webhook for alert tests: an HTTP server on a free loopback port that records every POST it receives."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Alert:
    """One POST as the webhook received it."""

    path: str
    authorization: str | None
    body: dict[str, Any]


class AlertSink:
    """Answers every POST with 204 and keeps its path, Authorization header and JSON body (in arrival order).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        received = self.received = []
        lock = self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    received.append(Alert(self.path, self.headers.get("Authorization"), json.loads(raw or b"{}")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, **match: Any) -> list[Alert]:
        """The alerts received so far whose body has every ``key=value`` of ``match`` (e.g. ``run_id=...``)."""
        with self._lock:
            return [a for a in self.received if all(a.body.get(k) == v for k, v in match.items())]

    def wait_for(self, count: int, timeout: float, **match: Any) -> list[Alert]:
        """Wait until at least ``count`` alerts matching ``match`` arrived; return them (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while len(found := self.alerts(**match)) < count:
            assert time.monotonic() < deadline, f"{len(found)} alert(s) matching {match} after {timeout} s: {found}"
            time.sleep(0.2)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> AlertSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
