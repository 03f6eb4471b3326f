"""The real DAG, run end to end on the local edge stack: validate -> health check -> train on the VM -> register.

`airflow dags test` runs dags/edge_training.py in a subprocess (see ``conftest.Pipeline``); the training runs on the
sshd "edge VM" from Azurite, the model lands in the stack's MLflow registry. Nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import FAST_PARAMS, ROOT, WINDOW_DAYS

pytestmark = pytest.mark.integration

TASKS = ("validate_data", "check_edge_vm", "train_on_edge_vm", "register_model")
# A one-split forest: much worse than the champion on any holdout with a real failure signal.
WORSE_PARAMS = {"n_estimators": 1, "max_depth": 1, "n_jobs": 1}


def train_script():
    """include/training/train.py as a module: the exact reading and splitting code the VM ran."""
    spec = importlib.util.spec_from_file_location("edge_train_script", ROOT / "include" / "training" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def registry(pipeline):
    from edge_training.registry import MLflowModelRegistry

    env = pipeline.stack.airflow_env
    return MLflowModelRegistry(env["MLFLOW_TRACKING_URI"], env["EDGE_MLFLOW_ARTIFACTS_DIR"])


def version_of(pipeline, run):
    training = run.value("train_on_edge_vm")
    found = registry(pipeline).find_version_by_run(pipeline.model_name, training["job_id"])
    assert found is not None, f"no model version registered for run {run.run_id}"
    return found


def champions(pipeline) -> list[str]:
    """The champion, then each version it replaced (``champion.replaced_version``), back to the first champion:
    other tests of the session share the registry and may promote versions after ``first_run``."""
    found = registry(pipeline)
    version = found.get_champion(pipeline.model_name)
    chain = [version.version]
    while (replaced := version.tags.get("champion.replaced_version", "none")) not in ("none", *chain):
        version = found.get_version(pipeline.model_name, replaced)
        chain.append(version.version)
    return chain


def host_key_fingerprint(stack) -> str:
    # Independent of the hook: what `ssh-keygen -lf` says about the VM's host key.
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(stack.state_dir / "ssh" / "host_ed25519_key.pub")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()[1]


def assert_succeeded(run) -> None:
    assert run.returncode == 0 and all(run.states.get(t) == "success" for t in TASKS), (
        f"run {run.run_id}: {run.states}\n{run.log[-6000:]}"
    )


def test_a_full_run_registers_a_champion_with_every_lineage_tag(pipeline, first_run, vm_work_dir):
    from edge_training import remote_job

    assert_succeeded(first_run)
    validation = first_run.value("validate_data")
    training = first_run.value("train_on_edge_vm")
    registered = first_run.value("register_model")
    version = version_of(pipeline, first_run)
    tags = version.tags

    assert registered["version"] == version.version and registered["promoted"] is True
    assert tags["edge.dag_id"] == "edge_training"
    assert tags["edge.dag_run_id"] == first_run.run_id
    assert tags["edge.data_interval_start"] == "2026-06-09T02:00:00+00:00"
    assert tags["edge.data_interval_end"] == "2026-06-10T02:00:00+00:00"
    assert tags["edge.training_window"] == "2026-06-07..2026-06-10" == validation["window"]
    assert tags["edge.data_fingerprint"] == validation["data_fingerprint"] != "none"
    assert tags["edge.validation_id"] == validation["validation_id"] != "none"
    assert tags["edge.validation_success"] == "true"
    assert tags["edge.row_count"] == str(validation["row_count"]) and validation["row_count"] >= 3 * 1900
    # The code version is the content hash of the code shipped to the VM (the edge VM of the local stack is this
    # machine, so its work dir is read directly).
    shipped = Path(vm_work_dir) / "code" / tags["edge.code_version"]
    files = remote_job.collect_code(shipped)
    assert files.pop(".complete") == b"" and "train.py" in files
    assert tags["edge.code_version"] == remote_job.code_hash(files)
    assert tags["edge.vm_host_fingerprint"] == host_key_fingerprint(pipeline.stack)
    assert tags["edge.training_job_id"] == training["job_id"]
    assert float(tags["edge.training_seconds"]) > 0
    assert tags["edge.training_data_fingerprint"].startswith("sha256:")
    metrics = training["metrics"]["metrics"]
    for name in ("roc_auc", "pr_auc", "f1", "accuracy"):
        assert float(tags[f"metric.{name}"]) == pytest.approx(metrics[name])
    assert metrics["roc_auc"] > 0.7  # it learned the failure signal
    assert tags["edge.registration_complete"] == "true"
    assert tags["champion.decision"] != "none" and tags["champion.promoted"] == "true"
    assert tags["champion.replaced_version"] == "none"  # the model's first champion
    # Later promotions in the session (other tests share the registry) lead back to it.
    assert version.version in champions(pipeline)


def test_the_registered_model_predicts_like_the_scikit_learn_model_trained_on_the_vm(pipeline, first_run, edge_env,
                                                                                  tmp_path):  # fmt: skip
    import mlflow.onnx
    import onnxruntime as ort
    from sklearn.ensemble import RandomForestClassifier

    assert_succeeded(first_run)
    version = version_of(pipeline, first_run)
    document = first_run.value("train_on_edge_vm")["metrics"]
    # train.py's own check on the VM, recorded with the model.
    parity = document["onnx_parity"]
    assert parity["passed"] is True and parity["max_abs_diff"] <= parity["tolerance"] <= 1e-4
    assert parity["rows_compared"] == document["rows"]["holdout"] > 0

    # The registered model loads from the registry (edge_env points MLflow at it) and scores rows from blob storage.
    onnx_model = mlflow.onnx.load_model(f"models:/{pipeline.model_name}/{version.version}")
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    script = train_script()
    source = script.BlobSource(pipeline.stack.blob_connection_string, pipeline.container)
    days = script.window_days(dt.date(2026, 6, 7), dt.date(2026, 6, 10))
    train_days, holdout_days = script.split_window(days, 1)
    (tmp_path / "scratch").mkdir()
    frame, _, fingerprint = script.load_window(source, days, tmp_path / "scratch")
    split = script.prepare_rows(frame, train_days, holdout_days)
    assert fingerprint == document["data_fingerprint"]  # the same rows the VM trained on

    onnx_proba = script.positive_probabilities(session, split["x_holdout"])
    labels = session.run(["label"], {"input": split["x_holdout"][:5]})[0]
    assert set(labels.tolist()) <= {0, 1} and len(labels) == 5
    # Independent re-check: the same forest, fitted here with the same data, params and seed, scores the same.
    params = script.model_params(json.dumps(FAST_PARAMS))
    sklearn_model = RandomForestClassifier(random_state=document["model"]["seed"], **params)
    sklearn_proba = sklearn_model.fit(split["x_train"], split["y_train"]).predict_proba(split["x_holdout"])[:, 1]
    assert np.max(np.abs(onnx_proba - sklearn_proba)) <= 1e-4
    # ...and the registered model is the one whose holdout score was tagged.
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(split["y_holdout"], onnx_proba) == pytest.approx(float(version.tags["metric.roc_auc"]))


def test_a_worse_model_is_registered_but_not_promoted_unless_forced(pipeline, first_run):
    assert_succeeded(first_run)
    champion = registry(pipeline).get_champion(pipeline.model_name)

    worse = pipeline.run(dt.date(2026, 6, 11), conf={"training_params": WORSE_PARAMS})
    assert_succeeded(worse)
    candidate = version_of(pipeline, worse)
    assert candidate.version != champion.version
    tags = candidate.tags
    # Both scored on the worse run's holdout: the champion by train.py on the VM, next to the candidate.
    assert float(tags["champion.candidate_score"]) < float(tags["champion.previous_score"])
    assert tags["champion.promoted"] == "false" and worse.value("register_model")["promoted"] is False
    assert registry(pipeline).get_champion(pipeline.model_name).version == champion.version

    forced = pipeline.run(dt.date(2026, 6, 12), conf={"training_params": WORSE_PARAMS, "force_promote": True})
    assert_succeeded(forced)
    promoted = version_of(pipeline, forced)
    assert float(promoted.tags["champion.candidate_score"]) < float(promoted.tags["champion.previous_score"])
    assert promoted.tags["champion.promoted"] == "true"
    assert registry(pipeline).get_champion(pipeline.model_name).version == promoted.version
