"""HTTP helpers for tests of the scoring server, in-process or inside the image: plain requests, and raw bytes for
requests no HTTP client would send."""

from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import sys
import threading
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "include" / "serving" / "app.py"


def load_app():
    """include/serving/app.py as a module (it is a script in the image, not part of a package)."""
    spec = importlib.util.spec_from_file_location("scoring_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and msgspec resolve annotations through it
    spec.loader.exec_module(module)
    return module


def start(app, model, limits, access_log=True):
    """A real uvicorn server of ``app`` for ``model`` on a free loopback port, in a thread: (server, thread, port)."""
    server = app.make_server(model, "127.0.0.1", 0, limits, access_log=access_log)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the scoring server did not start"
        time.sleep(0.02)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


def stop(server, thread) -> None:
    server.should_exit = True
    thread.join(timeout=10)


def call(port: int, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 10):
    """One request to 127.0.0.1:``port``; returns (status, lower-cased headers, JSON body). Every answer must be JSON.

    :param body: bytes as they are, anything else as JSON.
    """
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
        assert response.getheader("content-type") == "application/json", raw
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw)
    finally:
        connection.close()


def raw_exchange(port: int, data: bytes, wait: float = 15.0) -> tuple[int, dict, float]:
    """Send ``data`` as is and read until the server closes; returns (status, JSON body, seconds until closed)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), time.monotonic() - started
