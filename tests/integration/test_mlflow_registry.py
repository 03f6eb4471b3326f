"""The MLflow model registry against a real MLflow (SQLite store, local artifacts in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_training.exceptions import ModelRegistryError
from edge_training.registry import (
    CHAMPION_ALIAS,
    REGISTRATION_COMPLETE_TAG,
    MLflowModelRegistry,
    ModelRegistry,
    get_model_registry,
)

pytestmark = pytest.mark.integration

MODEL = "edge-failure-test"
FEATURES = ["temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct", "power_kw"]


def _build_artifacts(folder: Path, seed: int, roc_auc: float) -> tuple[Path, np.ndarray]:
    """Train a small real classifier, export it with skl2onnx, write metrics.json; return (folder, sample X)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    clf = LogisticRegression().fit(x, y)
    folder.mkdir(parents=True)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}})
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    (folder / "metrics.json").write_text(
        json.dumps({"roc_auc": roc_auc, "pr_auc": 0.5, "n_train": 160, "n_holdout": 40, "champion_metrics": None})
    )
    return folder, x[:20]


def _predict(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    return outputs[1]  # probabilities


@pytest.fixture
def registry(tmp_path) -> MLflowModelRegistry:
    return MLflowModelRegistry(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", tmp_path / "artifacts")


def test_register_promote_and_download(registry, tmp_path):
    from mlflow import MlflowClient

    assert isinstance(registry, ModelRegistry)
    good, sample = _build_artifacts(tmp_path / "good", seed=1, roc_auc=0.91)
    lineage = {"edge.dag_run_id": "scheduled__2026-11-20T02:00:00+00:00", "edge.data_fingerprint": "sha256:abc"}

    assert registry.get_champion(MODEL) is None
    v1 = registry.register(MODEL, good, "job-1", lineage)
    assert v1.version == "1"
    assert v1.run_id == "job-1"
    assert v1.complete
    assert v1.tags["edge.data_fingerprint"] == "sha256:abc"
    assert v1.tags["edge.dag_run_id"] == "scheduled__2026-11-20T02:00:00+00:00"
    # Registration alone never makes a champion.
    assert registry.get_champion(MODEL) is None

    # Same run id again (a retry): the same version, no second one.
    again = registry.register(MODEL, good, "job-1", lineage)
    assert again.version == "1"
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert len(client.search_runs([client.get_experiment_by_name("edge-training").experiment_id])) == 1

    # It is an MLflow model with the ONNX flavour, stored under the artifacts dir, with metrics logged.
    mv = client.get_model_version(MODEL, "1")
    assert Path(mv.source.removeprefix("file://")).is_relative_to(tmp_path / "artifacts")
    run = client.get_run(mv.run_id)
    assert run.data.metrics["roc_auc"] == pytest.approx(0.91)
    assert "metrics.json" in [a.path for a in client.list_artifacts(mv.run_id)]

    registry.promote(MODEL, v1.version)
    assert registry.get_champion(MODEL).version == "1"

    # A worse model is registered as version 2; the alias stays where it is until promote() is called.
    worse, _ = _build_artifacts(tmp_path / "worse", seed=2, roc_auc=0.70)
    v2 = registry.register(MODEL, worse, "job-2", {"edge.dag_run_id": "manual__2"})
    assert v2.version == "2"
    assert registry.get_champion(MODEL).version == "1"
    assert registry.find_version_by_run(MODEL, "job-2").version == "2"
    assert registry.find_version_by_run(MODEL, "job-unknown") is None

    registry.promote(MODEL, v2.version)  # forced promotion
    assert registry.get_champion(MODEL).version == "2"
    assert {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()} == {CHAMPION_ALIAS: "2"}

    # The downloaded ONNX file loads in onnxruntime and predicts exactly like the file that was registered.
    downloaded = registry.download_onnx(v1, tmp_path / "download")
    assert downloaded.name == "model.onnx"
    np.testing.assert_array_equal(_predict(downloaded, sample), _predict(good / "model.onnx", sample))


def test_tagging_failure_leaves_an_incomplete_version_that_a_retry_completes(registry, tmp_path, monkeypatch):
    arts, _ = _build_artifacts(tmp_path / "arts", seed=3, roc_auc=0.8)
    real_set_tag = registry.client.set_model_version_tag
    failing = {"on": True}

    def flaky_set_tag(name, version, key, value):
        if failing["on"] and key == "edge.data_fingerprint":
            raise ConnectionError("registry went away")
        return real_set_tag(name, version, key, value)

    monkeypatch.setattr(registry.client, "set_model_version_tag", flaky_set_tag)
    tags = {"edge.dag_run_id": "r1", "edge.data_fingerprint": "sha256:def"}
    with pytest.raises(ModelRegistryError, match=r"version 1 was created for run job-9.*Retry the task"):
        registry.register(MODEL, arts, "job-9", tags)
    half = registry.find_version_by_run(MODEL, "job-9")
    assert half.version == "1" and not half.complete
    assert REGISTRATION_COMPLETE_TAG not in half.tags

    failing["on"] = False
    done = registry.register(MODEL, arts, "job-9", tags)
    assert done.version == "1" and done.complete
    assert done.tags["edge.data_fingerprint"] == "sha256:def"


def test_missing_model_file_is_a_clear_error(registry, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelRegistryError, match=r"expected the trained model at .*model.onnx, found \[\]"):
        registry.register(MODEL, tmp_path / "empty", "job-x", {})


def test_factory_defaults_to_mlflow_and_rejects_unknown_backends(monkeypatch, tmp_path):
    from edge_training import config

    monkeypatch.setattr(config, "MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setattr(config, "MLFLOW_ARTIFACTS_DIR", tmp_path / "a")
    reg = get_model_registry()
    assert isinstance(reg, MLflowModelRegistry) and reg.tracking_uri.endswith("m.db")
    with pytest.raises(ValueError, match="unknown backend 'nosuch'"):
        get_model_registry("nosuch")
