"""The scoring server (include/serving/app.py) in-process on a loopback port, with a real ONNX model."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.request
from pathlib import Path

import pytest

from edge_training.hooks.image import request_json
from edge_training.operators.image import BuildScoringImageOperator, expected_scores

APP = Path(__file__).resolve().parents[2] / "include" / "serving" / "app.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests._models import FEATURES, write_model

    spec = importlib.util.spec_from_file_location("scoring_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    folder = write_model(tmp_path_factory.mktemp("model"), seed=5, trees=5)
    model = app.Model(folder / "model.onnx", "pm", "4")
    httpd = app.make_server(model, "127.0.0.1", 0, max_rows=20, max_body_bytes=20000)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", folder / "model.onnx", FEATURES
    httpd.shutdown()
    httpd.server_close()


def test_health_names_model_and_features(server):
    base, _, features = server
    assert request_json(f"{base}/health") == (200, {"status": "ok", "model": "pm", "version": "4", "features": features})


def test_predictions_match_the_model_file(server):
    base, model_path, _ = server
    rows, expected, labels = expected_scores(model_path)
    status, body = request_json(f"{base}/predict", {"rows": rows})
    assert status == 200
    assert body["labels"] == labels
    assert max(abs(a - b) for a, b in zip(body["probabilities"], expected)) <= 1e-6


def _post_raw(url: str, data: bytes) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("payload", "status", "says"),
    [
        (b"{not json", 400, "body is JSON: it is not"),
        (b'{"records": []}', 400, "\"rows\""),
        (b'{"rows": []}', 400, "empty"),
        (b'{"rows": [{"temperature_c": 1}]}', 400, "missing ['vibration_mm_s'"),
        (None, 400, "unknown ['colour']"),
        (None, 400, "expected a finite number"),
        (json.dumps({"rows": [{}] * 21}).encode(), 413, "limit of 20"),
        (b"x" * 20001, 413, "body size"),
    ],
)
def test_bad_requests_get_4xx_with_what_to_send(server, payload, status, says):
    base, _, features = server
    row = {name: 1.0 for name in features}
    if payload is None and "colour" in says:
        payload = json.dumps({"rows": [{**row, "colour": 3}]}).encode()
    elif payload is None:
        payload = json.dumps({"rows": [{**row, "rpm": "fast"}]}).encode()
    code, body = _post_raw(f"{base}/predict", payload)
    assert code == status
    assert says in body["error"]


def test_unknown_path_is_404(server):
    assert request_json(f"{server[0]}/score")[0] == 404


def test_skip_image_build_skips_the_task():
    from airflow.sdk.exceptions import AirflowSkipException

    operator = BuildScoringImageOperator(task_id="build_image", registered={"model_name": "m", "version": "1"}, skip="True")
    with pytest.raises(AirflowSkipException, match="skip_image_build"):
        operator.execute({})
