"""Scoring server for the predictive-maintenance model: standard library HTTP server + onnxruntime + numpy.

Runs inside the scoring image (``include/serving/Dockerfile``)::

    python3 app.py [--host 0.0.0.0] [--port 8080]

* ``GET /health``  -> ``{"status": "ok", "model": ..., "version": ..., "features": [...]}``
* ``POST /predict`` with ``{"rows": [{"temperature_c": 71.2, ...}, ...]}``
  -> ``{"model": ..., "version": ..., "probabilities": [...], "labels": [...]}``
  (``probabilities``: probability of class 1 per row; ``labels``: the model's predicted class per row).

Every row must carry exactly the model's features, as numbers. The feature list and its column order come from the
ONNX model's metadata (``features``, written by the training job), or from ``metrics.json`` beside the model.
Bad input gets a 4xx answer whose ``error`` says what was checked, what was found and what to send instead.

Settings (environment): ``MODEL_PATH`` (default ``/opt/serving/model/model.onnx``), ``MODEL_NAME``,
``MODEL_VERSION``, ``PORT`` (8080), ``MAX_ROWS`` (1000 rows per request), ``MAX_BODY_BYTES`` (1 MB).
Request bodies are never logged: they are data rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger("scoring")


class BadRequest(Exception):
    """Input the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class Model:
    """An ONNX classifier plus the feature order its single input expects.

    :param path: the ``model.onnx`` file.
    :param name: registered model name (reported by ``/health`` and ``/predict``).
    :param version: registered model version.
    """

    def __init__(self, path: Path, name: str = "", version: str = "") -> None:
        self.path = Path(path)
        self.name = name
        self.version = version
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        (self.input,) = self.session.get_inputs()
        self.dtype = np.float64 if self.input.type == "tensor(double)" else np.float32
        outputs = [o.name for o in self.session.get_outputs()]
        self.label_output = "label" if "label" in outputs else outputs[0]
        self.proba_output = "probabilities" if "probabilities" in outputs else outputs[-1]
        self.features = self._features()

    def _features(self) -> list[str]:
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "features" in metadata:
            return list(json.loads(metadata["features"]))
        metrics = self.path.with_name("metrics.json")
        if metrics.is_file():
            features = json.loads(metrics.read_text()).get("features")
            if features:
                return list(features)
        raise SystemExit(
            f"Checked {self.path} for its feature list (ONNX metadata 'features') and {metrics}: neither has one. "
            "Package a model written by the training job (include/training/train.py), which records it."
        )

    def predict(self, matrix: np.ndarray) -> tuple[list[float], list[int]]:
        labels, proba = self.session.run([self.label_output, self.proba_output], {self.input.name: matrix})
        if isinstance(proba, list):  # ZipMap output: one {class: probability} per row
            positive = [float(row[1]) for row in proba]
        else:
            positive = np.asarray(proba, dtype=np.float64)[:, 1].tolist()
        return positive, [int(v) for v in np.asarray(labels).ravel()]


def rows_to_matrix(payload: object, features: list[str], max_rows: int, dtype=np.float32) -> np.ndarray:
    """Validate a ``/predict`` body and return its rows as a matrix in the model's feature order.

    :raises BadRequest: the body is not ``{"rows": [...]}``, has no or too many rows, or a row lacks a feature, has
        an unknown one, or a value that is not a finite number.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        raise BadRequest(
            'Checked the body for a JSON object {"rows": [...]}; found '
            f"{type(payload).__name__ if not isinstance(payload, dict) else 'an object with keys ' + str(sorted(payload))}. "
            'Send {"rows": [{"<feature>": <number>, ...}]}.'
        )
    rows = payload["rows"]
    if not rows:
        raise BadRequest('Checked "rows": it is empty. Send at least one row.')
    if len(rows) > max_rows:
        raise BadRequest(
            f'Checked the number of rows: {len(rows)} is more than the limit of {max_rows} per request. '
            "Split the rows into smaller requests.",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    expected = set(features)
    matrix = np.empty((len(rows), len(features)), dtype=dtype)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRequest(f"Checked row {i}: expected an object of feature values, found {type(row).__name__}.")
        missing = [f for f in features if f not in row]
        extra = sorted(set(row) - expected)
        if missing or extra:
            raise BadRequest(
                f"Checked row {i} against the model's features: missing {missing}, unknown {extra}. "
                f"Send exactly these features: {features}."
            )
        for j, name in enumerate(features):
            value = row[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BadRequest(
                    f"Checked row {i} feature {name!r}: expected a finite number, found a {type(value).__name__}. "
                    "Send numbers (no strings, booleans, null, NaN or Infinity)."
                )
            matrix[i, j] = value
    return matrix


class Handler(BaseHTTPRequestHandler):
    server_version = "edge-scoring/1"
    model: Model
    max_rows: int
    max_body_bytes: int

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        # Method, path and status only (the base class's format): bodies are data rows and stay out of logs.
        log.info("%s %s", self.address_string(), format % args)

    def _answer(self, status: HTTPStatus, document: dict) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != "/health":
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"No such path {self.path}. Use GET /health or POST /predict."})
            return
        model = self.model
        self._answer(
            HTTPStatus.OK,
            {"status": "ok", "model": model.name, "version": model.version, "features": model.features},
        )

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/predict":
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"No such path {self.path}. Use POST /predict."})
            return
        try:
            matrix = rows_to_matrix(self._read_json(), self.model.features, self.max_rows, self.model.dtype)
        except BadRequest as exc:
            self._answer(exc.status, {"error": str(exc)})
            return
        probabilities, labels = self.model.predict(matrix)
        self._answer(
            HTTPStatus.OK,
            {
                "model": self.model.name,
                "version": self.model.version,
                "probabilities": probabilities,
                "labels": labels,
            },
        )

    def _read_json(self) -> object:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest(
                "Checked the Content-Length header: missing or not a number. Send the JSON body with its length.",
                HTTPStatus.LENGTH_REQUIRED,
            ) from None
        if length > self.max_body_bytes:
            raise BadRequest(
                f"Checked the body size: {length} bytes is more than the limit of {self.max_body_bytes}. "
                "Send fewer rows per request.",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadRequest(
                f"Checked that the body is JSON: it is not ({getattr(exc, 'msg', exc)} at position "
                f"{getattr(exc, 'pos', '?')}). Send a JSON object like {{\"rows\": [...]}}."
            ) from None


def make_server(model: Model, host: str, port: int, max_rows: int, max_body_bytes: int) -> ThreadingHTTPServer:
    handler = type(
        "BoundHandler", (Handler,), {"model": model, "max_rows": max_rows, "max_body_bytes": max_body_bytes}
    )
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.getenv("HOST", "0.0.0.0"))  # noqa: S104 - a container's server
    parser.add_argument("--port", type=int, default=int(os.getenv("PORT", "8080")))
    parser.add_argument("--model", type=Path, default=Path(os.getenv("MODEL_PATH", "/opt/serving/model/model.onnx")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)

    # An edge site may be offline: keep onnxruntime from trying to send usage telemetry.
    ort.disable_telemetry_events()
    model = Model(args.model, os.getenv("MODEL_NAME", ""), os.getenv("MODEL_VERSION", ""))
    server = make_server(
        model, args.host, args.port, int(os.getenv("MAX_ROWS", "1000")), int(os.getenv("MAX_BODY_BYTES", "1000000"))
    )
    log.info(
        "serving model %s version %s (%d features) on %s:%d", model.name, model.version, len(model.features),
        args.host, server.server_port,
    )  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
