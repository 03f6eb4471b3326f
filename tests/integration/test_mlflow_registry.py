"""The MLflow model registry against a real MLflow (SQLite store, local artifacts in tmp_path)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_training.exceptions import DataValidationError, ModelRegistryError
from edge_training.operators.register import RegisterModelOperator
from tests._pipeline import stage_outputs
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
    # Same shape as include/training/train.py writes.
    document = {
        "schema_version": 1,
        "metrics": {"roc_auc": roc_auc, "pr_auc": 0.5, "n_train": 160, "n_holdout": 40},
        "champion_metrics": None,
        "data_fingerprint": "sha256:abc",
        "window": {"start": "2026-11-13", "end": "2026-11-20", "days": 7},
        "train_window": {"start": "2026-11-13", "end": "2026-11-19", "days": 6},
        "holdout_window": {"start": "2026-11-19", "end": "2026-11-20", "days": 1},
        "model": {"params": {"C": 1.0}, "seed": seed},
    }
    (folder / "metrics.json").write_text(json.dumps(document))
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

    registry.promote(MODEL, v1.version, expected=None)
    assert registry.get_champion(MODEL).version == "1"

    # A worse model is registered as version 2; the alias stays where it is until promote() is called.
    worse, _ = _build_artifacts(tmp_path / "worse", seed=2, roc_auc=0.70)
    v2 = registry.register(MODEL, worse, "job-2", {"edge.dag_run_id": "manual__2"})
    assert v2.version == "2"
    assert registry.get_champion(MODEL).version == "1"
    assert registry.find_version_by_run(MODEL, "job-2").version == "2"
    assert registry.find_version_by_run(MODEL, "job-unknown") is None

    registry.promote(MODEL, v2.version, expected="1")  # forced promotion
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
    monkeypatch.delenv("EDGE_MODEL_REGISTRY", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("EDGE_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "a"))
    reg = get_model_registry()
    assert isinstance(reg, MLflowModelRegistry) and reg.tracking_uri.endswith("m.db")
    assert reg.artifacts_dir == (tmp_path / "a").resolve()
    secret = MLflowModelRegistry("https://user:s3cret@mlflow.example:5000/", tmp_path / "a")
    assert "s3cret" not in repr(secret) and "mlflow.example" in repr(secret)
    with pytest.raises(ValueError, match="unknown backend 'nosuch'"):
        get_model_registry("nosuch")


def _training(folder: Path, job_id: str, champion_roc_auc: float | None) -> dict:
    document = json.loads((folder / "metrics.json").read_text())
    document["champion_metrics"] = None if champion_roc_auc is None else {"roc_auc": champion_roc_auc}
    # Each job read its own data (a different fingerprint): none is an identical re-train of another.
    document["data_fingerprint"] = f"sha256:{job_id}"
    return {
        "job_id": job_id,
        "folder": str(folder),
        "metrics": document,
        "code_version": "c0de",
        "vm_host_fingerprint": "SHA256:vm",
        "window": "2026-11-13/2026-11-20",
        "training_seconds": 3.2,
    }


VALIDATION = {
    "window": "2026-11-13/2026-11-20",
    "partitions": ["dt=2026-11-13", "dt=2026-11-14"],
    "row_count": 480,
    "data_fingerprint": "sha256:abc",
    "validation_id": "val-1",
    "data_docs": "/reports/index.html",
    "success": True,
}


def _run_operator(training: dict, force="{{ params.force_promote }}", validation=VALIDATION, run_id="manual__1"):
    # As the training task leaves it: the outputs in the site's output container, named in the result.
    training = {**training, "artifacts": stage_outputs(Path(training["folder"]), training["job_id"])}
    op = RegisterModelOperator(
        task_id="register_model", model_name=MODEL, training=training, validation=validation, force_promote=force
    )
    context = {
        "ti": SimpleNamespace(dag_id="edge_training", run_id=run_id),
        "data_interval_start": datetime(2026, 11, 13, tzinfo=timezone.utc),
        "data_interval_end": datetime(2026, 11, 20, tzinfo=timezone.utc),
    }
    if force == "{{ params.force_promote }}":
        op.force_promote = "False"  # what a non-native template renders for the Param's default
    return op.execute(context)


def test_operator_registers_and_gates_the_champion(monkeypatch, tmp_path, capsys, edge_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("EDGE_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    registry = get_model_registry()

    good, _ = _build_artifacts(tmp_path / "good", seed=1, roc_auc=0.91)
    first = _run_operator(_training(good, "job-1", None), run_id="scheduled__2026-11-20T02:00:00+00:00")
    assert first["version"] == "1" and first["promoted"] is True
    # Registering must not clobber the process's MLflow setting (every task shares one process in `dags test`).
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert first["decision"]["outcome"] == "promoted_no_champion"
    assert registry.get_champion(MODEL).version == "1"
    stored = registry.find_version_by_run(MODEL, "job-1").tags
    assert stored["edge.dag_run_id"] == "scheduled__2026-11-20T02:00:00+00:00"
    assert stored["edge.data_interval_end"] == "2026-11-20T00:00:00+00:00"
    assert stored["edge.validation_success"] == "true"
    assert stored["metric.roc_auc"] == "0.91"
    assert stored["champion.decision"] == "promoted_no_champion"
    assert first["tags"] == {k: v for k, v in stored.items() if not k.startswith("edge.registration")}

    # A retry of the same task: same version, reported as already champion, nothing new registered.
    retry = _run_operator(_training(good, "job-1", None))
    assert (retry["version"], retry["promoted"], retry["decision"]["outcome"]) == ("1", True, "already_champion")

    # A worse model scored next to the champion on the same holdout: registered, not promoted.
    worse, _ = _build_artifacts(tmp_path / "worse", seed=2, roc_auc=0.70)
    capsys.readouterr()
    second = _run_operator(_training(worse, "job-2", 0.91))
    assert second["version"] == "2" and second["promoted"] is False
    assert second["decision"]["outcome"] == "kept_champion"
    assert registry.get_champion(MODEL).version == "1"
    assert registry.find_version_by_run(MODEL, "job-2").tags["champion.previous_score"] == "0.91"
    line = next(line for line in capsys.readouterr().out.splitlines() if "version 2: candidate" in line)
    assert "roc_auc 0.7000" in line and "champion version 1 0.9100" in line and "not promoted" in line

    # Champion exists but training did not score it: kept unless forced.
    third = _run_operator(_training(worse, "job-3", None))
    assert third["promoted"] is False and third["decision"]["outcome"] == "kept_no_champion_metrics"
    assert registry.get_champion(MODEL).version == "1"

    forced = _run_operator(_training(worse, "job-4", 0.91), force=True)
    assert forced["promoted"] is True and forced["decision"]["outcome"] == "promoted_forced"
    assert registry.get_champion(MODEL).version == forced["version"] == "4"


def test_operator_refuses_a_failed_validation(monkeypatch, tmp_path, edge_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("EDGE_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    good, _ = _build_artifacts(tmp_path / "good", seed=1, roc_auc=0.91)
    with pytest.raises(DataValidationError, match="success=false"):
        _run_operator(_training(good, "job-1", None), validation={**VALIDATION, "success": False})
    assert get_model_registry().find_version_by_run(MODEL, "job-1") is None


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("True", True), ("1", True), ("false", False),
                                                 (None, False), ("", False)])
def test_force_promote_accepts_rendered_booleans(value, expected):
    from edge_training.operators.register import parse_flag

    assert parse_flag("force_promote", value) is expected


def test_force_promote_rejects_other_text():
    from edge_training.exceptions import EdgeTrainingError
    from edge_training.operators.register import parse_flag

    with pytest.raises(EdgeTrainingError, match="expected true or false, found 'maybe'"):
        parse_flag("force_promote", "maybe")
