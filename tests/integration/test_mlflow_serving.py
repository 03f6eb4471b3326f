"""A registered model version served by MLflow's own scorer (`mlflow models serve --env-manager local`): it answers
the scoring protocol's requests, and gives the same predictions as the scoring image's server for the same request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edge_training.hooks.image import free_port
from edge_training.image_context import smoke_rows
from edge_training.registry import MLflowModelRegistry
from tests._models import FEATURES, write_model
from tests._serving import call, load_app, start, stop

pytestmark = pytest.mark.integration

MODEL = "edge-serving-test"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One version in a real MLflow registry (SQLite, local artifacts), registered like the pipeline does."""
    tmp = tmp_path_factory.mktemp("mlflow")
    registry = MLflowModelRegistry(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "artifacts", "serving-test")
    version = registry.register(MODEL, write_model(tmp / "model", seed=3), "serving-run-1", {})
    return registry, version, tmp


@pytest.fixture(scope="module")
def mlflow_serve(registered):
    registry, version, tmp = registered
    port = free_port()
    log = tmp / "serve.log"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/{version.version}",
             "--env-manager", "local", "--workers", "1", "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield port
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_registered_version_has_a_signature_and_an_input_example(registered):
    import mlflow.artifacts
    from mlflow.models import Model

    registry, version, tmp = registered

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=registry.client.get_model_version_download_uri(MODEL, version.version), dst_path=str(tmp / "dl")
    )
    model = Model.load(local)
    (tensor,) = model.signature.inputs.inputs
    assert (tensor.type, tensor.shape) == (np.dtype(np.float32), (-1, len(FEATURES)))
    assert [o.name for o in model.signature.outputs.inputs] == ["label", "probabilities"]
    assert model.metadata["features"] == FEATURES
    example = json.loads((Path(local) / model.saved_input_example_info["serving_input_path"]).read_text())
    assert np.array(example["inputs"]).shape == (2, len(FEATURES))  # synthetic rows, in feature order


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "inputs"])
def test_mlflow_models_serve_answers_the_scoring_protocol(mlflow_serve, form):
    rows = smoke_rows(FEATURES, count=5, seed=11)
    payload = {
        "dataframe_split": {"dataframe_split": {"columns": FEATURES, "data": [[r[f] for f in FEATURES] for r in rows]}},
        "dataframe_records": {"dataframe_records": rows},
        "inputs": {"inputs": [[r[f] for f in FEATURES] for r in rows]},
    }[form]
    status, body = _post(mlflow_serve, payload)
    assert status == 200, body
    assert len(body["predictions"]["label"]) == 5
    assert all(abs(sum(p) - 1) < 1e-5 for p in body["predictions"]["probabilities"])


def test_the_scoring_image_server_answers_like_mlflow(mlflow_serve, registered):
    """The same dataframe_split request to MLflow's scorer and to include/serving/app.py: the same answer."""
    app = load_app()
    registry, version, tmp = registered
    onnx_path = registry.download_onnx(version, tmp / "for-app")
    server, thread, port = start(app, app.Model(onnx_path, MODEL, version.version), app.Limits(), access_log=False)
    try:
        rows = smoke_rows(FEATURES, count=20, seed=12)
        payload = {"dataframe_split": {"columns": FEATURES, "data": [[r[f] for f in FEATURES] for r in rows]}}
        theirs = _post(mlflow_serve, payload)
        ours = call(port, "POST", "/invocations", payload)
    finally:
        stop(server, thread)
    assert theirs[0] == ours[0] == 200
    assert set(ours[2]) == set(theirs[1]) == {"predictions"}
    assert ours[2]["predictions"]["label"] == theirs[1]["predictions"]["label"]
    gap = max(abs(a - b) for pa, pb in zip(ours[2]["predictions"]["probabilities"], theirs[1]["predictions"]["probabilities"])
              for a, b in zip(pa, pb))  # fmt: skip
    assert gap <= 1e-5
