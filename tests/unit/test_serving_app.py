"""The scoring server (include/serving/app.py) on a real uvicorn in this process, on a loopback port, with real ONNX
models: both protocols, every bad request answered with a JSON error, limits, and no data rows in its logs."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_training.operators.image import BuildScoringImageOperator, expected_scores
from tests._models import FEATURES, write_model
from tests._serving import call, load_app, raw_exchange, stop
from tests._serving import start as _start

app = load_app()


def start(model, limits, access_log=True):
    return _start(app, model, limits, access_log)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = write_model(tmp_path_factory.mktemp("model"), seed=5, trees=5)
    model = app.Model(folder / "model.onnx", "pm", "4")
    limits = app.Limits(max_rows=20, max_body_bytes=250_000, read_timeout_s=1.0)
    server, thread, port = start(model, limits)
    yield SimpleNamespace(port=port, model_path=folder / "model.onnx", limits=limits)
    stop(server, thread)


def split(rows: list[list[float]], columns=FEATURES) -> dict:
    return {"dataframe_split": {"columns": list(columns), "data": rows}}


@pytest.fixture(scope="module")
def scored(served):
    """Synthetic rows and what the model file itself says about them (onnxruntime on this process)."""
    rows, expected, labels = expected_scores(served.model_path)
    return SimpleNamespace(records=rows, matrix=[[row[f] for f in FEATURES] for row in rows], expected=expected,
                           labels=labels)  # fmt: skip


def assert_predictions(predictions: dict, scored) -> None:
    assert predictions["label"] == scored.labels
    assert max(abs(p[1] - e) for p, e in zip(predictions["probabilities"], scored.expected)) <= 1e-6
    assert all(abs(sum(p) - 1) < 1e-5 for p in predictions["probabilities"])


# -- health and metadata ------------------------------------------------------------------------------------------


def test_health_endpoints_of_both_protocols(served):
    health = {"status": "ok", "model": "pm", "version": "4", "features": FEATURES}
    assert call(served.port, "GET", "/ping")[::2] == (200, health)
    assert call(served.port, "GET", "/health")[::2] == (200, health)
    assert call(served.port, "GET", "/v2/health/live")[::2] == (200, {"live": True})
    assert call(served.port, "GET", "/v2/health/ready")[::2] == (200, {"ready": True})
    assert call(served.port, "GET", "/v2/models/pm/ready")[::2] == (200, {"name": "pm", "ready": True})
    assert call(served.port, "GET", "/v2")[2]["name"] == "edge-scoring"


def test_v2_model_metadata_describes_input_and_outputs(served):
    status, _, metadata = call(served.port, "GET", "/v2/models/pm/versions/4")
    assert status == 200
    assert metadata["name"] == "pm" and metadata["versions"] == ["4"]
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, len(FEATURES)]}]
    assert metadata["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert metadata["parameters"]["features"] == FEATURES


@pytest.mark.parametrize("path", ["/v2/models/other", "/v2/models/pm/versions/3/infer", "/v2/models/other/ready"])
def test_another_model_or_version_is_404_naming_the_served_one(served, path):
    status, _, body = call(served.port, "POST" if path.endswith("infer") else "GET", path, {} if "infer" in path else None)
    assert status == 404
    assert "serves model 'pm' version '4'" in body["error"]


def test_unknown_path_and_method_are_json_errors(served):
    status, _, body = call(served.port, "GET", "/score")
    assert status == 404 and "/invocations" in body["error"]
    status, _, body = call(served.port, "GET", "/invocations")
    assert status == 405 and body["error_code"] == "BAD_REQUEST" and "POST" in body["message"]


# -- predictions ----------------------------------------------------------------------------------------------------


def test_invocations_dataframe_split_matches_the_model_file(served, scored):
    status, _, body = call(served.port, "POST", "/invocations", split(scored.matrix))
    assert status == 200
    assert set(body) == {"predictions"}
    assert_predictions(body["predictions"], scored)


def test_invocations_takes_columns_in_any_order(served, scored):
    order = FEATURES[::-1]
    rows = [[row[f] for f in order] for row in scored.records]
    status, _, body = call(served.port, "POST", "/invocations", split(rows, order))
    assert status == 200
    assert_predictions(body["predictions"], scored)


@pytest.mark.parametrize("form", ["dataframe_records", "inputs rows", "inputs columns", "instances"])
def test_invocations_other_formats_give_the_same_predictions(served, scored, form):
    payload = {
        "dataframe_records": {"dataframe_records": scored.records},
        "inputs rows": {"inputs": scored.matrix},
        "inputs columns": {"inputs": {f: [row[f] for row in scored.records] for f in FEATURES}},
        "instances": {"instances": scored.matrix},
    }[form]
    status, _, body = call(served.port, "POST", "/invocations", payload)
    assert status == 200
    assert_predictions(body["predictions"], scored)


def test_v2_infer_with_one_tensor(served, scored):
    flat = [v for row in scored.matrix for v in row]
    request = {"id": "req-7", "inputs": [{"name": "X", "shape": [len(scored.matrix), len(FEATURES)],
                                          "datatype": "FP32", "data": flat}]}  # fmt: skip
    status, _, body = call(served.port, "POST", "/v2/models/pm/infer", request)
    assert status == 200
    assert body["model_name"] == "pm" and body["model_version"] == "4" and body["id"] == "req-7"
    label, proba = body["outputs"]
    assert label == {"name": "label", "shape": [len(scored.labels)], "datatype": "INT64", "data": scored.labels}
    assert proba["shape"] == [len(scored.labels), 2] and proba["datatype"] == "FP32"
    assert max(abs(p - e) for p, e in zip(proba["data"][1::2], scored.expected)) <= 1e-6


def test_v2_infer_with_one_tensor_per_feature_and_chosen_outputs(served, scored):
    inputs = [{"name": f, "shape": [len(scored.records), 1], "datatype": "FP64", "data": [r[f] for r in scored.records]}
              for f in FEATURES[::-1]]  # fmt: skip
    status, _, body = call(served.port, "POST", "/v2/models/pm/versions/4/infer",
                           {"inputs": inputs, "outputs": [{"name": "label"}]})  # fmt: skip
    assert status == 200
    assert [o["name"] for o in body["outputs"]] == ["label"]
    assert body["outputs"][0]["data"] == scored.labels


def test_deprecated_predict_still_answers_with_a_deprecation_header(served, scored):
    status, headers, body = call(served.port, "POST", "/predict", {"rows": scored.records})
    assert status == 200
    assert headers["deprecation"] == "true" and "/invocations" in headers["link"]
    assert body["labels"] == scored.labels
    assert max(abs(a - b) for a, b in zip(body["probabilities"], scored.expected)) <= 1e-6


# -- bad requests ---------------------------------------------------------------------------------------------------

ROW = [70.0, 3.0, 5.0, 1500.0, 40.0, 10.0]


def _with(index: int, value: str) -> bytes:
    cells = [json.dumps(v) for v in ROW]
    cells[index] = value
    return b'{"inputs": [[' + ", ".join(cells).encode() + b"]]}"


BAD_INVOCATIONS = [
    ("not JSON", b"{not json", 400, "is JSON: it is not"),
    ("NaN", _with(5, "NaN"), 400, "NaN at byte"),
    ("Infinity", _with(0, "Infinity"), 400, "JSON has no Infinity"),
    ("400-digit integer", _with(3, "9" * 400), 400, "feature 'rpm'"),
    ("beyond float32", _with(3, "1e39"), 400, "out of range for float32"),
    ("100,000-deep nesting", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
    ("deep nesting in params", b'{"inputs": [[1]], "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
    ("top-level array", b"[[1, 2]]", 400, "Expected `object`, got `array`"),
    ("string value", _with(2, '"high"'), 400, "got `str` - at `inputs[0][2]` (row 0, feature 'pressure_bar')"),
    ("boolean value", _with(1, "true"), 400, "got `bool`"),
    ("null value", _with(4, "null"), 400, "got `null`"),
    ("no format key", json.dumps({"rows": [ROW]}).encode(), 400, "exactly one of ['dataframe_split'"),
    ("two format keys", json.dumps({"inputs": [ROW], "instances": [ROW]}).encode(), 400, "exactly one of"),
    ("params given", json.dumps({"inputs": [ROW], "params": {"t": 1}}).encode(), 400, "takes none"),
    ("missing feature", json.dumps(split([ROW[:5]], FEATURES[:5])).encode(), 400, "missing ['power_kw']"),
    ("extra feature", json.dumps(split([ROW + [1]], FEATURES + ["colour"])).encode(), 400, "unknown ['colour']"),
    ("record lacks a feature", json.dumps({"dataframe_records": [dict(zip(FEATURES[1:], ROW))]}).encode(), 400,
     "dataframe_records[0] against the model's features: missing ['temperature_c']"),
    ("short row", json.dumps({"inputs": [ROW, ROW[:4]]}).encode(), 400, "row 1 has 4 values, expected 6"),
    ("columns of unequal length", json.dumps({"inputs": {f: [1.0] * (1 + (f == "rpm")) for f in FEATURES}}).encode(),
     400, "same number of values"),
    ("empty rows", json.dumps(split([])).encode(), 400, "holds no rows"),
    ("too many rows", json.dumps({"inputs": [ROW] * 21}).encode(), 413, "21 is more than the limit of 20"),
    ("body too large", json.dumps({"inputs": [ROW] * 8000}).encode(), 413, "limit of 250000"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "says"), [case[1:] for case in BAD_INVOCATIONS],
                         ids=[case[0] for case in BAD_INVOCATIONS])  # fmt: skip
def test_bad_invocations_get_a_json_error_saying_what_to_send(served, body, status, says):
    code, _, answer = call(served.port, "POST", "/invocations", body)
    assert code == status
    assert answer["error_code"] in ("BAD_REQUEST", "RESOURCE_EXHAUSTED")
    assert says in answer["message"]
    assert any(advice in answer["message"].lower() for advice in ("send", "split", "leave"))  # says what to do


def test_wrong_content_type_is_415(served):
    status, _, body = call(served.port, "POST", "/invocations", split([ROW]), {"Content-Type": "text/csv"})
    assert status == 415 and "application/json" in body["message"]


def _tensor(**overrides) -> dict:
    return {"inputs": [{"name": "X", "shape": [1, 6], "datatype": "FP32", "data": ROW, **overrides}]}


BAD_V2 = [
    ("BYTES datatype", _tensor(datatype="BYTES"), "BYTES is not numeric"),
    ("wrong shape", _tensor(shape=[2, 3]), "expected [<rows>, 6]"),
    ("shape and data disagree", _tensor(shape=[2, 6]), "6 values, expected 12"),
    ("string data", _tensor(data=["a"] * 6), "got `str`"),
    ("unknown input", {"inputs": [{"name": "input-0", "shape": [1, 6], "datatype": "FP32", "data": ROW}]},
     "one tensor named 'X'"),
    ("unknown output", {**_tensor(), "outputs": [{"name": "scores"}]}, "unknown ['scores']"),
    ("missing inputs", {"id": "1"}, "missing required field `inputs`"),
    ("feature tensors incomplete", {"inputs": [{"name": "rpm", "shape": [1], "datatype": "FP32", "data": [1]}]},
     "missing ['temperature_c'"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "says"), [case[1:] for case in BAD_V2], ids=[case[0] for case in BAD_V2])
def test_bad_v2_requests_get_a_json_error(served, payload, says):
    status, _, body = call(served.port, "POST", "/v2/models/pm/infer", payload)
    assert status == 400
    assert says in body["error"]


@pytest.mark.parametrize(
    ("payload", "says"),
    [(b'{"records": []}', "found keys ['records']"), (json.dumps({"rows": []}).encode(), "holds no rows")],
)
def test_bad_predict_requests_get_a_json_error(served, payload, says):
    status, _, body = call(served.port, "POST", "/predict", payload)
    assert status == 400 and says in body["error"]


# -- HTTP-level faults: every one answered, none left hanging ---------------------------------------------------------


def test_negative_content_length_gets_400_at_once(served):
    status, body, seconds = raw_exchange(
        served.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: -1\r\n\r\n{}"  # fmt: skip
    )
    assert status == 400 and "non-negative Content-Length" in body["error"]
    assert seconds < served.limits.read_timeout_s


def test_declared_body_larger_than_the_limit_is_refused_before_reading(served):
    status, body, seconds = raw_exchange(
        served.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n{"
    )
    assert status == 413 and "Content-Length 5000000" in body["error_code"] + body["message"]
    assert seconds < served.limits.read_timeout_s


def test_chunked_body_past_the_limit_is_413(served):
    chunk = b"[" * 8000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40)) + b"0\r\n\r\n"
    status, body, _ = raw_exchange(
        served.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert status == 413 and "more than the limit of 250000" in body["message"]


def test_body_shorter_than_its_content_length_times_out_with_408(served):
    status, body, seconds = raw_exchange(
        served.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inputs\""
    )
    assert status == 408 and "within 1 s" in body["message"] and "9 bytes came" in body["message"]
    assert served.limits.read_timeout_s <= seconds < served.limits.read_timeout_s + 3


@pytest.mark.parametrize("sent", [b"", b"POST /invocations HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half headers"])
def test_headers_that_never_complete_time_out_with_408(served, sent):
    status, body, seconds = raw_exchange(served.port, sent)
    assert status == 408 and "request headers arrived within 1 s" in body["error"]
    assert served.limits.read_timeout_s <= seconds < served.limits.read_timeout_s + 3


# -- limits on concurrency --------------------------------------------------------------------------------------------


@pytest.fixture
def small_server(tmp_path):
    folder = write_model(tmp_path, seed=6, trees=3)
    limits = app.Limits(read_timeout_s=5.0, max_concurrent_requests=2, max_connections=4)
    server, thread, port = start(app.Model(folder / "model.onnx", "pm", "1"), limits, access_log=False)
    yield port
    stop(server, thread)


def _stalled_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
    return sock


def test_requests_beyond_the_concurrency_limit_get_503_and_health_still_answers(small_server):
    stalled = [_stalled_request(small_server) for _ in range(2)]
    try:
        time.sleep(0.3)
        status, headers, body = call(small_server, "POST", "/invocations", {"inputs": [ROW]})
        assert status == 503 and headers["retry-after"] == "1"
        assert "MAX_CONCURRENT_REQUESTS" in body["error"]
        assert call(small_server, "GET", "/v2/health/ready")[0] == 200
    finally:
        for sock in stalled:
            sock.close()
    time.sleep(0.3)
    assert call(small_server, "POST", "/invocations", {"inputs": [ROW]})[0] == 200


def test_connections_beyond_the_limit_get_503_and_are_closed(small_server):
    idle = [socket.create_connection(("127.0.0.1", small_server), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.3)
        # Answered on connecting, before the client sends anything.
        status, body, _ = raw_exchange(small_server, b"")
        assert status == 503 and "MAX_CONNECTIONS" in body["error"]
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert call(small_server, "GET", "/ping")[0] == 200


# -- a failure inside the model ---------------------------------------------------------------------------------------


def write_failing_model(folder: Path) -> Path:
    """A real ONNX model that fails inside onnxruntime for some rows: it looks up a table with the first feature as
    the index, so a temperature outside 0..1 is an out-of-range Gather."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Slice", ["X", "zero", "one", "one"], ["first"]),
        helper.make_node("Cast", ["first"], ["index2d"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["index2d", "flat"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["p1"]),
        helper.make_node("Cast", ["p1"], ["label"], to=TensorProto.INT64),
        helper.make_node("Sub", ["ones", "p1"], ["p0"]),
        helper.make_node("Unsqueeze", ["p0", "one"], ["p0c"]),
        helper.make_node("Unsqueeze", ["p1", "one"], ["p1c"]),
        helper.make_node("Concat", ["p0c", "p1c"], ["probabilities"], axis=1),
    ]
    initializers = [
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("table", TensorProto.FLOAT, [2], [0.0, 1.0]),
        helper.make_tensor("ones", TensorProto.FLOAT, [], [1.0]),
    ]
    graph = helper.make_graph(
        nodes, "failing", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, len(FEATURES)])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"features": json.dumps(FEATURES)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    return folder / "model.onnx"


@pytest.fixture
def failing_server(tmp_path):
    model = app.Model(write_failing_model(tmp_path), "pm", "9")
    server, thread, port = start(model, app.Limits())
    yield port
    stop(server, thread)


def test_a_failure_inside_the_model_is_a_500_json_error_and_the_server_goes_on(failing_server, caplog):
    ok = call(failing_server, "POST", "/invocations", {"inputs": [[1.0] + ROW[1:]]})
    assert ok[0] == 200 and ok[2]["predictions"]["label"] == [1]
    with caplog.at_level(logging.INFO):
        status, _, body = call(failing_server, "POST", "/invocations", {"inputs": [[73.25] + ROW[1:]]})
    assert status == 500
    assert body["error_code"] == "INTERNAL_ERROR" and "The model failed on these 1 rows" in body["message"]
    status, _, body = call(failing_server, "POST", "/v2/models/pm/infer", _tensor(data=[73.25] + ROW[1:]))
    assert status == 500 and "The model failed" in body["error"]
    assert call(failing_server, "GET", "/ping")[0] == 200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "the model failed on a request of 1 rows" in logged
    assert "73" not in logged  # neither the value nor the index onnxruntime derived from it


# -- residency: request bodies never reach the log ----------------------------------------------------------------------


def test_request_bodies_are_never_logged(served, caplog):
    marker = 4242.4242
    rows = [[marker] + ROW[1:]]
    with caplog.at_level(logging.DEBUG):
        call(served.port, "POST", "/invocations", split(rows))
        call(served.port, "POST", "/invocations", {"inputs": rows, "oops": 1})
        call(served.port, "POST", "/invocations", b'{"inputs": [[4242.4242, NaN]]}')
        call(served.port, "POST", "/v2/models/pm/infer", _tensor(data=rows[0]))
        call(served.port, "POST", "/predict", {"rows": [dict(zip(FEATURES, rows[0]))]})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "POST /invocations" in logged  # the access log is on, and names method, path and status
    assert "4242" not in logged


def test_skip_image_build_skips_the_task():
    from airflow.sdk.exceptions import AirflowSkipException

    operator = BuildScoringImageOperator(task_id="build_image", registered={"model_name": "m", "version": "1"}, skip="True")
    with pytest.raises(AirflowSkipException, match="skip_image_build"):
        operator.execute({})


def test_limits_come_from_the_environment_and_bad_values_are_named():
    assert app.Limits.from_env({"MAX_ROWS": "50", "READ_TIMEOUT_S": "2.5"}) == app.Limits(max_rows=50,
                                                                                         read_timeout_s=2.5)  # fmt: skip
    for bad in ("lots", "0", "-3"):
        with pytest.raises(SystemExit, match=f"MAX_BODY_BYTES: found '{bad}', not a positive int"):
            app.Limits.from_env({"MAX_BODY_BYTES": bad})


def test_a_missing_model_file_stops_the_server_with_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="MODEL_PATH or --model"):
        app.Model(tmp_path / "model.onnx")


def test_model_input_is_float32_like_the_signature(served):
    model = app.Model(served.model_path)
    assert model.dtype is np.float32 and model.name == "model"


def test_a_client_that_sends_all_of_a_refused_body_still_reads_the_413(served):
    """A client sending the whole body before it reads (as most do) gets the answer, not a reset connection."""
    body = b"[" * 2_000_000
    started = time.monotonic()
    for _ in range(5):  # a reset is a race: a few rounds make it show
        with socket.create_connection(("127.0.0.1", served.port), timeout=15) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:60]
        assert b"Content-Length 2000000" in answer
    assert time.monotonic() - started < 5 * served.limits.read_timeout_s
