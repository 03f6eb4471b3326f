"""Scoring server for the predictive-maintenance model: uvicorn + Starlette + onnxruntime, two standard protocols.

Runs inside the scoring image (``include/serving/Dockerfile``)::

    python3 app.py [--host 0.0.0.0] [--port 8080] [--model /opt/serving/model/model.onnx]

MLflow scoring protocol (what ``mlflow models serve`` and Azure ML's MLflow deployments speak):

* ``GET /ping``, ``GET /health`` -> ``{"status": "ok", "model": ..., "version": ..., "features": [...]}``
* ``POST /invocations`` with one of ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``,
  ``{"dataframe_records": [{"<feature>": <number>, ...}, ...]}``, ``{"inputs": [[...], ...]}`` (rows in feature
  order) or ``{"inputs": {"<feature>": [...], ...}}`` (``instances`` is taken like ``inputs``)
  -> ``{"predictions": {"label": [...], "probabilities": [[p0, p1], ...]}}``, the same answer ``mlflow models serve``
  gives for the registered version. Errors: ``{"error_code": "BAD_REQUEST", "message": ...}`` like MLflow's.

Open Inference Protocol (KServe V2; KServe, Triton, Seldon MLServer):

* ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata)
* ``GET /v2/models/{name}[/versions/{version}]`` (metadata), ``.../ready``
* ``POST /v2/models/{name}[/versions/{version}]/infer`` with one FP32 tensor of shape ``[rows, features]`` named
  like the model's input, or one tensor per feature of shape ``[rows]`` -> ``label`` (INT64) and ``probabilities``
  (FP32, ``[rows, 2]``). Errors: ``{"error": ...}``.

``POST /predict`` with ``{"rows": [{feature: value}]}`` is deprecated (kept for clients of earlier images; the
answer carries a ``Deprecation`` header): use ``/invocations``.

Every request gets an answer: bad input a 4xx JSON error that says what was checked, what was found and what to
send; a failure inside the model a 500 JSON error; a client too slow to send its request a 408; more requests or
connections than the limits a 503. The feature list and its order come from the ONNX model's metadata
(``features``, written by the training job), or from ``metrics.json`` beside the model.

Settings (environment): ``MODEL_PATH`` (default ``/opt/serving/model/model.onnx``), ``MODEL_NAME``,
``MODEL_VERSION``, ``HOST`` (0.0.0.0), ``PORT`` (8080), ``MAX_ROWS`` (1000 rows per request), ``MAX_BODY_BYTES``
(1 MB), ``READ_TIMEOUT_S`` (10 s to receive a request's headers, and again its body), ``MAX_CONCURRENT_REQUESTS``
(64 being received or scored at once), ``MAX_CONNECTIONS`` (256 open), ``KEEP_ALIVE_S`` (5), ``ACCESS_LOG``
(``true``: one line per request with method, path and status).
Request bodies are never logged: they are data rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import msgspec
import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("scoring")

SERVER_NAME = "edge-scoring"
SERVER_VERSION = "2"
HEALTH_PATHS = frozenset({"/ping", "/health", "/v2/health/live", "/v2/health/ready"})
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
V2_DATATYPES = {  # KServe V2 datatypes whose values convert to the model's float input without loss of meaning
    "FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
}  # fmt: skip
_ONNX_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32"}
_TO_SEND = "Send numbers only (no strings, booleans, null, NaN or Infinity)"


@dataclass(frozen=True)
class Limits:
    """What one request may be, and how many may be served at once.

    :param max_rows: rows per request.
    :param max_body_bytes: request body size.
    :param read_timeout_s: seconds to receive a request's headers, and again its body.
    :param max_concurrent_requests: requests being received or scored at once (more get 503).
    :param max_connections: open connections (more are answered 503 and closed).
    :param keep_alive_s: seconds an idle keep-alive connection stays open.
    """

    max_rows: int = 1000
    max_body_bytes: int = 1_000_000
    read_timeout_s: float = 10.0
    max_concurrent_requests: int = 64
    max_connections: int = 256
    keep_alive_s: int = 5

    @classmethod
    def from_env(cls, environ: dict | None = None) -> Limits:
        """The limits from ``MAX_ROWS``, ``MAX_BODY_BYTES``, ``READ_TIMEOUT_S``, ``MAX_CONCURRENT_REQUESTS``,
        ``MAX_CONNECTIONS`` and ``KEEP_ALIVE_S``; unset ones keep their defaults.

        :raises SystemExit: a value that is not a positive number.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for field, kind in (("max_rows", int), ("max_body_bytes", int), ("read_timeout_s", float),
                            ("max_concurrent_requests", int), ("max_connections", int), ("keep_alive_s", int)):  # fmt: skip
            name = field.upper()
            raw = environ.get(name)
            if raw is None:
                continue
            try:
                values[field] = kind(raw)
            except ValueError:
                values[field] = -1
            if values[field] <= 0:
                raise SystemExit(
                    f"Checked the setting {name}: found {raw!r}, not a positive {kind.__name__}. Set it to a positive "
                    f"number or leave it unset (default {getattr(cls, field)})."
                )
        return cls(**values)


class BadRequest(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class Model:
    """An ONNX classifier plus the feature order its single input expects.

    :param path: the ``model.onnx`` file.
    :param name: registered model name (the V2 model name; reported by the health endpoints).
    :param version: registered model version.
    :param threads: onnxruntime threads per inference (1: requests are many and small; scale with replicas).
    """

    def __init__(self, path: Path, name: str = "", version: str = "", threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SystemExit(
                f"Checked the model file {self.path} (MODEL_PATH or --model): it does not exist. Point it at the "
                "image's model (/opt/serving/model/model.onnx) or another model.onnx written by the training job."
            )
        self.name = name or "model"
        self.version = version
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self.features = self._features()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(self.features)):
            raise SystemExit(
                f"Checked {self.path}'s input: expected one 2-D tensor [rows, {len(self.features)} features], found "
                f"{[(i.name, i.shape) for i in inputs]}. Package a model written by the training job."
            )
        self.input = inputs[0]
        self.dtype = np.float64 if self.input.type == "tensor(double)" else np.float32
        names = [o.name for o in outputs]
        self.label_output = "label" if "label" in names else names[0]
        self.proba_output = "probabilities" if "probabilities" in names else names[-1]
        self.outputs = {o.name: o for o in outputs if o.name in (self.label_output, self.proba_output)}

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

    def predict(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(label per row, probability per class per row)`` for ``matrix`` (rows in the model's feature order)."""
        labels, proba = self.session.run([self.label_output, self.proba_output], {self.input.name: matrix})
        if isinstance(proba, list):  # ZipMap output: one {class: probability} per row
            classes = sorted(proba[0]) if proba else []
            proba = np.array([[row[c] for c in classes] for row in proba], dtype=np.float32)
        return np.asarray(labels).ravel(), np.asarray(proba)

    def v2_metadata(self) -> dict:
        """The model's KServe V2 metadata document."""

        def tensor(node, shape) -> dict:
            return {"name": node.name, "datatype": _ONNX_TO_V2.get(node.type, node.type), "shape": shape}

        label = self.outputs[self.label_output]
        proba = self.outputs[self.proba_output]
        return {
            "name": self.name,
            "versions": [self.version] if self.version else [],
            "platform": "onnxruntime_onnx",
            "inputs": [tensor(self.input, [-1, len(self.features)])],
            "outputs": [tensor(label, [-1]), tensor(proba, [-1, _dim(proba.shape[-1])])],
            "parameters": {"features": self.features},
        }


def _dim(value) -> int:
    return value if isinstance(value, int) else -1


# ----------------------------------------------------------------------------------------------------------------
# Request bodies -> the model's input matrix (pure: bytes in, matrix or BadRequest out)
# ----------------------------------------------------------------------------------------------------------------


class _Split(msgspec.Struct, forbid_unknown_fields=True):
    data: list[list[float]]
    columns: list[str] | None = None
    index: list | None = None


class _V2Tensor(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw
    parameters: dict | None = None


class _V2Output(msgspec.Struct):
    name: str


class _V2Request(msgspec.Struct, forbid_unknown_fields=True):
    inputs: list[_V2Tensor]
    id: str | None = None
    parameters: dict | None = None
    outputs: list[_V2Output] | None = None


_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ROWS = msgspec.json.Decoder(list[list[float]])
_FLAT = msgspec.json.Decoder(list[float])
_RECORDS = msgspec.json.Decoder(list[dict[str, float]])
_COLUMNS = msgspec.json.Decoder(dict[str, list[float]])
_SPLIT = msgspec.json.Decoder(_Split)
_V2 = msgspec.json.Decoder(_V2Request)
_PARAMS = msgspec.json.Decoder(dict | None)
_ROW_COL = re.compile(r"`\$\[(\d+)\]\[(\d+)\]")
_BYTE = re.compile(r"\(byte (\d+)\)")


def _decode(decoder: msgspec.json.Decoder, raw: bytes | msgspec.Raw, where: str, example: str, columns=None):
    """Decode ``raw`` with ``decoder``; a failure becomes a BadRequest naming ``where`` and what to send."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc).replace("`$", f"`{where}")
        cell = _ROW_COL.search(str(exc))
        if cell and columns is not None and int(cell.group(2)) < len(columns):
            message += f" (row {cell.group(1)}, feature {columns[int(cell.group(2))]!r})"
        if "out of range" in message:
            hint = "Send values within the float32 range (about ±3.4e38)."
        elif "Expected `float`" in message:
            hint = _TO_SEND + "."
        else:
            hint = f"Send {example}."
        raise BadRequest(f"Checked {where}: {message}. {hint}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(_not_json(bytes(raw), str(exc), example)) from None
    except RecursionError:
        raise BadRequest(f"Checked {where}: it is nested too deeply to be a table of numbers. Send {example}.") from None


def _not_json(body: bytes, reason: str, example: str) -> str:
    found = _BYTE.search(reason)
    position = int(found.group(1)) if found else -1
    for token in (b"NaN", b"Infinity", b"-Infinity"):
        if position >= 0 and body[position:position + len(token)] == token:
            return (
                f"Checked the request body: {token.decode()} at byte {position}. JSON has no {token.decode()}, and the "
                "model needs a finite number for every feature: send the measured value, or leave the row out."
            )
    return f"Checked that the request body is JSON: it is not ({reason}). Send {example}."


def _finite(matrix: np.ndarray, dtype, columns: list[str]) -> np.ndarray:
    with np.errstate(over="ignore"):  # an overflow is what the check below reports
        cast = matrix.astype(dtype, copy=False)
    if not np.isfinite(cast).all():
        row, col = (int(v) for v in np.argwhere(~np.isfinite(cast))[0])
        raise BadRequest(
            f"Checked every value as a {np.dtype(dtype).name}: row {row} feature {columns[col]!r} is out of range "
            f"for {np.dtype(dtype).name}. Send values within about ±3.4e38."
        )
    return cast


def _check_rows(count: int, max_rows: int, where: str) -> None:
    if count == 0:
        raise BadRequest(f"Checked {where}: it holds no rows. Send at least one row.")
    if count > max_rows:
        raise BadRequest(
            f"Checked the number of rows in {where}: {count} is more than the limit of {max_rows} per request. "
            "Split the rows into smaller requests.",
            413,
        )


def _check_columns(found: list[str], features: list[str], where: str) -> None:
    if found == features:
        return
    missing = [f for f in features if f not in found]
    extra = [c for c in found if c not in features]
    duplicated = sorted({c for c in found if found.count(c) > 1})
    if missing or extra or duplicated:
        raise BadRequest(
            f"Checked {where} against the model's features: missing {missing}, unknown {extra}"
            + (f", given more than once {duplicated}" if duplicated else "")
            + f". Send exactly these features: {features}."
        )


def _from_rows(rows: list[list[float]], columns: list[str], model: Model, where: str) -> np.ndarray:
    """Rows of values in ``columns`` order -> the model's matrix (features reordered when needed)."""
    widths = {len(row) for row in rows}
    if widths != {len(columns)}:
        bad = next(i for i, row in enumerate(rows) if len(row) != len(columns))
        raise BadRequest(
            f"Checked the length of every row in {where}: row {bad} has {len(rows[bad])} values, expected "
            f"{len(columns)} ({columns}). Send one value per feature in every row."
        )
    matrix = np.array(rows, dtype=np.float64)
    if columns != model.features:
        matrix = matrix[:, [columns.index(f) for f in model.features]]
    return _finite(matrix, model.dtype, model.features)


def _from_columns(columns: dict[str, list[float]], model: Model, max_rows: int, where: str) -> np.ndarray:
    _check_columns(list(columns), model.features, where)
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise BadRequest(
            f"Checked the length of every feature's values in {where}: found {lengths}. Send the same number of "
            "values for every feature (one per row)."
        )
    _check_rows(next(iter(lengths.values())), max_rows, where)
    matrix = np.array([columns[f] for f in model.features], dtype=np.float64).T
    return _finite(matrix, model.dtype, model.features)


def _from_records(records: list[dict[str, float]], model: Model, max_rows: int, where: str) -> np.ndarray:
    _check_rows(len(records), max_rows, where)
    expected = set(model.features)
    for i, record in enumerate(records):
        if record.keys() != expected:
            _check_columns(list(record), model.features, f"{where}[{i}]")
    matrix = np.array([[record[f] for f in model.features] for record in records], dtype=np.float64)
    return _finite(matrix, model.dtype, model.features)


INVOCATIONS_EXAMPLE = (
    '{"dataframe_split": {"columns": ["<feature>", ...], "data": [[<number>, ...], ...]}} (or dataframe_records, '
    "or inputs)"
)


def parse_invocations(body: bytes, model: Model, max_rows: int) -> np.ndarray:
    """Validate a ``POST /invocations`` body (MLflow scoring protocol); return the rows as the model's input matrix.

    :raises BadRequest: not JSON, not one of the formats, wrong types, missing or unknown features, no or too many
        rows, non-finite values.
    """
    top = _decode(_TOP, body, "the request body", INVOCATIONS_EXAMPLE)
    formats = [key for key in MLFLOW_FORMATS if key in top]
    unknown = sorted(set(top) - set(MLFLOW_FORMATS) - {"params"})
    if len(formats) != 1 or unknown:
        raise BadRequest(
            f"Checked the request body's keys for exactly one of {list(MLFLOW_FORMATS)}: found {sorted(top)}. "
            f"Send {INVOCATIONS_EXAMPLE}."
        )
    if "params" in top and _decode(_PARAMS, top["params"], "params", "no params"):
        raise BadRequest('Checked "params": this model takes none. Leave "params" out.')
    (key,) = formats
    raw = top[key]
    if key == "dataframe_split":
        split = _decode(_SPLIT, raw, key, '{"columns": [...], "data": [[...], ...]}', model.features)
        columns = split.columns if split.columns is not None else model.features
        _check_columns(columns, model.features, f"{key}.columns")
        _check_rows(len(split.data), max_rows, f"{key}.data")
        return _from_rows(split.data, columns, model, f"{key}.data")
    if key == "dataframe_records":
        records = _decode(_RECORDS, raw, key, '[{"<feature>": <number>, ...}, ...]')
        return _from_records(records, model, max_rows, key)
    # inputs / instances: rows in feature order, or {feature: [values]}.
    if bytes(raw).lstrip()[:1] == b"{":
        return _from_columns(_decode(_COLUMNS, raw, key, '{"<feature>": [<number>, ...], ...}'), model, max_rows, key)
    rows = _decode(_ROWS, raw, key, "[[<number>, ...], ...] in feature order", model.features)
    _check_rows(len(rows), max_rows, key)
    return _from_rows(rows, model.features, model, key)


def parse_predict(body: bytes, model: Model, max_rows: int) -> np.ndarray:
    """Validate a deprecated ``POST /predict`` body, ``{"rows": [{feature: value}, ...]}``."""
    top = _decode(_TOP, body, "the request body", '{"rows": [{"<feature>": <number>, ...}]}')
    if set(top) != {"rows"}:
        raise BadRequest(
            f'Checked the body for a JSON object {{"rows": [...]}}; found keys {sorted(top)}. '
            'Send {"rows": [{"<feature>": <number>, ...}]}, or use POST /invocations.'
        )
    return _from_records(_decode(_RECORDS, top["rows"], "rows", '[{"<feature>": <number>, ...}]'), model, max_rows, "rows")


def _v2_values(tensor: _V2Tensor, count: int, where: str, columns: list[str] | None) -> list:
    raw = bytes(tensor.data)
    nested = raw.lstrip()[:2].replace(b" ", b"") == b"[["
    values = _decode(_ROWS if nested else _FLAT, raw, f"{where}.data", "a list of numbers", columns)
    size = sum(len(v) for v in values) if nested else len(values)
    if size != count:
        raise BadRequest(
            f"Checked {where}.data against its shape {tensor.shape}: {size} values, expected {count}. Send as many "
            "values as the shape holds (row-major)."
        )
    return [x for row in values for x in row] if nested else values


def parse_v2_infer(body: bytes, model: Model, max_rows: int) -> tuple[np.ndarray, str | None, list[str]]:
    """Validate a KServe V2 ``infer`` body; return ``(matrix, request id, names of the outputs to send)``.

    Either one tensor named like the model's input with shape ``[rows, features]``, or one tensor per feature with
    shape ``[rows]`` (or ``[rows, 1]``).
    """
    example = (
        f'{{"inputs": [{{"name": "{model.input.name}", "shape": [<rows>, {len(model.features)}], "datatype": "FP32", '
        '"data": [<number>, ...]}]}'
    )
    request = _decode(_V2, body, "the request body", example)
    wanted = [o.name for o in request.outputs] if request.outputs else [model.label_output, model.proba_output]
    unknown_outputs = [name for name in wanted if name not in model.outputs]
    if unknown_outputs:
        raise BadRequest(f"Checked the requested outputs: unknown {unknown_outputs}. Ask for {list(model.outputs)}.")
    for i, tensor in enumerate(request.inputs):
        if tensor.datatype not in V2_DATATYPES:
            raise BadRequest(
                f"Checked inputs[{i}] ({tensor.name!r}) datatype: {tensor.datatype} is not numeric. Send FP32 "
                "(or another of " + ", ".join(sorted(V2_DATATYPES)) + ")."
            )
    names = [t.name for t in request.inputs]
    if names == [model.input.name]:
        (tensor,) = request.inputs
        if len(tensor.shape) != 2 or tensor.shape[1] != len(model.features) or tensor.shape[0] < 0:
            raise BadRequest(
                f"Checked the shape of input {tensor.name!r}: {tensor.shape}, expected [<rows>, "
                f"{len(model.features)}] (features {model.features}). Send {example}."
            )
        _check_rows(tensor.shape[0], max_rows, f"input {tensor.name!r}")
        flat = _v2_values(tensor, tensor.shape[0] * tensor.shape[1], "inputs[0]", model.features)
        matrix = np.array(flat, dtype=np.float64).reshape(tensor.shape)
        return _finite(matrix, model.dtype, model.features), request.id, wanted
    if not any(name in model.features for name in names):
        raise BadRequest(
            f"Checked the input names: found {names}. Send one tensor named {model.input.name!r} with shape [<rows>, "
            f"{len(model.features)}], or one tensor per feature {model.features} with shape [<rows>]."
        )
    _check_columns(names, model.features, "the input names")
    columns = {}
    for i, tensor in enumerate(request.inputs):
        if not tensor.shape or len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise BadRequest(
                f"Checked the shape of input {tensor.name!r}: {tensor.shape}, expected [<rows>] or [<rows>, 1]. "
                "Send one value per row for each feature."
            )
        columns[tensor.name] = _v2_values(tensor, tensor.shape[0], f"inputs[{i}]", None)
    return _from_columns(columns, model, max_rows, "inputs"), request.id, wanted


# ----------------------------------------------------------------------------------------------------------------
# The web app
# ----------------------------------------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def json_response(document: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(_encode(document), status, headers=headers, media_type="application/json")


def _check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "application/json")
    mime, _, params = content_type.partition(";")
    charset = params.strip().lower().removeprefix("charset=").strip('"') if "charset" in params.lower() else "utf-8"
    if mime.strip().lower() != "application/json" or charset != "utf-8":
        raise BadRequest(
            f"Checked the Content-Type header: found {content_type!r}. Send the body as JSON (UTF-8) with "
            "Content-Type: application/json (curl: -H 'Content-Type: application/json').",
            415,
        )


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refused with 413 past ``max_body_bytes`` and with 408 past ``read_timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limits.max_body_bytes:  # uvicorn has checked it is a number
        raise BadRequest(
            f"Checked the body size: Content-Length {declared} bytes is more than the limit of "
            f"{limits.max_body_bytes} (MAX_BODY_BYTES). Send fewer rows per request.",
            413,
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.read_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise BadRequest(
                        f"Checked the body size: more than the limit of {limits.max_body_bytes} bytes "
                        "(MAX_BODY_BYTES). Send fewer rows per request.",
                        413,
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(
            f"Checked that the request body arrived within {limits.read_timeout_s:g} s (READ_TIMEOUT_S): "
            f"{size} bytes came. Send the whole body at once.",
            408,
        ) from None
    return b"".join(chunks)


class _Errors:
    """How one protocol writes its errors."""

    @staticmethod
    def mlflow(exc: BadRequest | Exception, status: int) -> Response:
        code = {413: "RESOURCE_EXHAUSTED", 500: "INTERNAL_ERROR"}.get(status, "BAD_REQUEST")
        return json_response({"error_code": code, "message": str(exc)}, status, _close_after(status))

    @staticmethod
    def plain(exc: BadRequest | Exception, status: int) -> Response:
        return json_response({"error": str(exc)}, status, _close_after(status))


def _close_after(status: int) -> dict | None:
    # The request may not have been read to its end: closing is the only safe way to go on.
    return {"connection": "close"} if status in (408, 413) else None


def create_app(model: Model, limits: Limits) -> Starlette:
    """The ASGI app serving ``model`` with both protocols (and the deprecated ``/predict``)."""
    health = {"status": "ok", "model": model.name, "version": model.version, "features": model.features}
    metadata = model.v2_metadata()

    async def score(request: Request, parse, answer, errors) -> Response:
        try:
            _check_content_type(request)
            matrix = parse(await read_body(request, limits), model, limits.max_rows)
        except BadRequest as exc:
            return errors(exc, exc.status)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        try:
            labels, proba = model.predict(matrix)
        except Exception as exc:  # noqa: BLE001 - a failure inside the model gets an answer, not a dropped connection
            # The exception's text may hold values derived from the rows: it goes to the caller, not to the log.
            log.error("the model failed on a request of %d rows: %s", len(matrix), type(exc).__name__)
            return errors(
                RuntimeError(
                    f"The model failed on these {len(matrix)} rows ({type(exc).__name__}: {exc}). The request was "
                    "well-formed; report this to the model's owners with the model version."
                ),
                500,
            )
        return answer(labels, proba)

    async def invocations(request: Request) -> Response:
        def answer(labels, proba):
            return json_response({"predictions": {model.label_output: labels.tolist(),
                                                  model.proba_output: proba.tolist()}})  # fmt: skip

        return await score(request, parse_invocations, answer, _Errors.mlflow)

    async def predict(request: Request) -> Response:
        def answer(labels, proba):
            document = {"model": model.name, "version": model.version,
                        "probabilities": proba[:, 1].astype(np.float64).tolist(), "labels": labels.tolist()}  # fmt: skip
            return json_response(document, headers={"deprecation": "true",
                                                    "link": '</invocations>; rel="successor-version"'})  # fmt: skip

        return await score(request, parse_predict, answer, _Errors.plain)

    def _check_model(request: Request) -> None:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != model.name or (version is not None and version != model.version):
            asked = f"{name!r}" + (f" version {version!r}" if version is not None else "")
            raise HTTPException(
                404, f"Checked the model in the path: {asked} is not served here. This server serves model "
                     f"{model.name!r} version {model.version!r}: use /v2/models/{model.name}/..."  # fmt: skip
            )

    async def v2_infer(request: Request) -> Response:
        _check_model(request)
        parsed: dict = {}

        def parse(body, model_, max_rows):
            matrix, parsed["id"], parsed["outputs"] = parse_v2_infer(body, model_, max_rows)
            return matrix

        def answer(labels, proba):
            tensors = {
                model.label_output: {"name": model.label_output, "shape": [len(labels)], "datatype": "INT64",
                                     "data": labels.tolist()},
                model.proba_output: {"name": model.proba_output, "shape": list(proba.shape), "datatype": "FP32",
                                     "data": proba.ravel().tolist()},
            }  # fmt: skip
            document = {"model_name": model.name, "model_version": model.version,
                        "outputs": [tensors[name] for name in parsed["outputs"]]}  # fmt: skip
            if parsed["id"] is not None:
                document["id"] = parsed["id"]
            return json_response(document)

        return await score(request, parse, answer, _Errors.plain)

    async def v2_model(request: Request) -> Response:
        _check_model(request)
        return json_response(metadata)

    async def v2_model_ready(request: Request) -> Response:
        _check_model(request)
        return json_response({"name": model.name, "ready": True})

    routes = [
        Route("/ping", lambda _: json_response(health)),
        Route("/health", lambda _: json_response(health)),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/v2", lambda _: json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})),
        Route("/v2/health/live", lambda _: json_response({"live": True})),
        Route("/v2/health/ready", lambda _: json_response({"ready": True})),
        Route("/v2/models/{name}", v2_model),
        Route("/v2/models/{name}/versions/{version}", v2_model),
        Route("/v2/models/{name}/ready", v2_model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", v2_model_ready),
        Route("/v2/models/{name}/infer", v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", v2_infer, methods=["POST"]),
    ]
    paths = sorted({route.path for route in routes})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"Checked the path {request.url.path!r}: no such endpoint. Use one of {paths}."
        elif exc.status_code == 405:
            message = (
                f"Checked the method: {request.method} {request.url.path} is not served. "
                f"Use {next((v for k, v in (exc.headers or {}).items() if k.lower() == 'allow'), 'another method')}."
            )
        else:
            message = exc.detail
        errors = _Errors.mlflow if request.url.path == "/invocations" else _Errors.plain
        return errors(RuntimeError(message), exc.status_code)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return BoundedRequests(app, limits.max_concurrent_requests)


class BoundedRequests:
    """ASGI middleware: at most ``limit`` requests being received or scored at once; more get a 503 JSON error
    at once instead of waiting in a queue that nobody bounds. Health checks are never refused.

    :param app: the ASGI app.
    :param limit: requests at once.
    """

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            response = json_response(
                {"error": f"Checked the requests in progress: {self.active}, the limit (MAX_CONCURRENT_REQUESTS). "
                          "Retry after a second, or add replicas."},  # fmt: skip
                503,
                {"retry-after": "1"},
            )
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


# ----------------------------------------------------------------------------------------------------------------
# HTTP: uvicorn's httptools protocol with JSON answers for malformed requests, a header timeout, a connection cap
# ----------------------------------------------------------------------------------------------------------------


def _raw_json_response(status: int, reason: str, message: str) -> bytes:
    body = _encode({"error": message})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ScoringProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), answering what it would otherwise answer in plain text, or not at
    all: a malformed request (``Content-Length: -1``, a broken request line) gets a 400 JSON error; a client that
    sends no complete headers within ``read_timeout_s`` a 408; a connection beyond ``max_connections`` a 503.

    :param limits: the server's limits.
    """

    def __init__(self, *args, limits: Limits, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lost = False

    @property
    def lingering(self) -> bool:
        """The answer is sent and the rest of the refused body is being dropped (see :meth:`close_connection`)."""
        return self._linger_timer is not None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _LingeringTransport(transport, self)  # what the request cycles of this connection close
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "Service Unavailable",
                         f"Checked the open connections: more than {self.limits.max_connections} (MAX_CONNECTIONS). "
                         "Retry after a second, reuse connections, or add replicas.")  # fmt: skip
            return
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._lost = True
        self._disarm_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.lingering:
            super().data_received(data)
        # else: the rest of a refused body, dropped

    def eof_received(self) -> bool | None:
        if self.lingering:
            return None  # the client has sent all it will: the transport closes
        return super().eof_received()

    def close_connection(self, transport) -> None:
        """Close after an answer. When the request's body was not read to its end (413, 408), close the way
        nginx's lingering close does: the answer, then a FIN; what the client still sends is read and dropped
        until it stops sending, for at most ``read_timeout_s``; then the socket closes. Closing a socket with
        unread data resets the connection, and a client still sending its body would lose the answer."""
        if self.lingering or transport.is_closing():
            return
        if self._lost or self.cycle is None or not self.cycle.more_body or not transport.can_write_eof():
            transport.close()
            return
        self._linger_timer = self.loop.call_later(self.limits.read_timeout_s, transport.close)
        transport.write_eof()
        transport.resume_reading()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._disarm_header_timer()
        self._refuse(400, "Bad Request",
                     "Checked the request's HTTP framing (request line, headers, Content-Length, chunked encoding): "
                     "it is not valid HTTP/1.1. Send a well-formed request with a non-negative Content-Length that "
                     "matches the body.")  # fmt: skip

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.read_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(408, "Request Timeout",
                         f"Checked that the request headers arrived within {self.limits.read_timeout_s:g} s "
                         "(READ_TIMEOUT_S): they did not. Send the whole request at once.")  # fmt: skip

    def _refuse(self, status: int, reason: str, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_raw_json_response(status, reason, message))
            self.transport.close()


class _LingeringTransport:
    """The connection's transport as uvicorn sees it, whose ``close()`` is :meth:`ScoringProtocol.close_connection`."""

    def __init__(self, transport, protocol: ScoringProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_connection(self._transport)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()


def make_server(model: Model, host: str, port: int, limits: Limits, access_log: bool = True):
    """A uvicorn server for ``model`` (not started: ``server.run()``, or ``await server.serve()``)."""
    import uvicorn

    config = uvicorn.Config(
        create_app(model, limits),
        host=host,
        port=port,
        http=partial(ScoringProtocol, limits=limits),
        loop="uvloop",
        lifespan="off",
        access_log=access_log,
        log_config=None,
        server_header=False,
        timeout_keep_alive=limits.keep_alive_s,
    )
    return uvicorn.Server(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.getenv("HOST", "0.0.0.0"))  # noqa: S104 - a container's server
    parser.add_argument("--port", type=int, default=int(os.getenv("PORT", "8080")))
    parser.add_argument("--model", type=Path, default=Path(os.getenv("MODEL_PATH", "/opt/serving/model/model.onnx")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stdout)

    # An edge site may be offline: keep onnxruntime from trying to send usage telemetry.
    ort.disable_telemetry_events()
    limits = Limits.from_env()
    model = Model(args.model, os.getenv("MODEL_NAME", ""), os.getenv("MODEL_VERSION", ""))
    access_log = os.getenv("ACCESS_LOG", "true").strip().lower() not in ("false", "0", "no", "off")
    log.info(
        "serving model %s version %s (%d features) on %s:%d; limits %s", model.name, model.version,
        len(model.features), args.host, args.port, limits,
    )  # fmt: skip
    make_server(model, args.host, args.port, limits, access_log).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
