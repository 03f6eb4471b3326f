"""Training and registration on two different workers, each with its own state folder, handing over only XCom.

Worker A (a process of its own, state folder A) trains on the sshd "edge VM" and returns the training result; A's
folder is then deleted. Worker B (another process, state folder B) registers the model from that result alone: it
finds the model in the site's blob output container (Azurite), never on A's disk. The model registry (MLflow,
SQLite) stands for the central registry both reach. Then a retry of the training task on a third worker, after the
VM's job dir is gone, reuses the complete upload instead of training again, and a changed or deleted output blob
is refused by registration with a clear error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edge_training import remote_job
from tests._pipeline import FAST_TRAINING, ROOT, VM_WORK_DIR
from tests.unit._sensor_data import partition_csvs, upload

pytestmark = pytest.mark.integration

START = dt.date(2026, 11, 1)

# One task on one "worker": its own process, its own state folder (TMPDIR, reports, Airflow home), nothing else.
_WORKER = """
import json, os, sys
from datetime import datetime, timezone
from types import SimpleNamespace
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "plugins")]
task, inp, out = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3]

class TI(SimpleNamespace):
    def xcom_push(self, key, value):
        pass

ti = TI(dag_id="edge_training", task_id=task, run_id=inp["run_id"], map_index=-1, try_number=1)
context = {"ti": ti, "data_interval_start": datetime(2026, 11, 4, tzinfo=timezone.utc),
           "data_interval_end": datetime(2026, 11, 5, tzinfo=timezone.utc)}
if task == "train_on_edge_vm":
    from edge_training.operators.train import EdgeVMTrainingOperator
    op = EdgeVMTrainingOperator(task_id=task, container=inp["container"], window_days=4, base_dir=inp["base_dir"],
                                training_params=inp["params"], model_name=inp["model_name"], poll_interval=1,
                                timeout=900, deferrable=False, validation=inp["validation"])
else:
    from edge_training.operators.register import RegisterModelOperator
    op = RegisterModelOperator(task_id=task, model_name=inp["model_name"], training=inp["training"],
                               validation=inp["validation"])
result = op.execute(context)
open(out, "w").write(json.dumps(result))
"""


@pytest.fixture(scope="module")
def container(edge_stack):
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(edge_stack.blob_connection_string)
    client = service.create_container(f"two-workers-{uuid.uuid4().hex[:10]}")
    upload(client, partition_csvs(START, 4, rows_per_day=300, parts_per_day=2, seed=11))
    yield client.container_name
    client.delete_container()


class Worker:
    """A worker process with its own state folder; the central registry is shared, nothing else is."""

    def __init__(self, edge_stack, state: Path, central: Path) -> None:
        self.state = state
        (state / "tmp").mkdir(parents=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "EDGE_"))},
            **edge_stack.airflow_env,
            "TMPDIR": str(state / "tmp"),
            "AIRFLOW_HOME": str(state / "airflow"),
            "EDGE_REPORTS_DIR": str(state / "reports"),
            "EDGE_MODEL_REGISTRY": "mlflow",
            "MLFLOW_TRACKING_URI": f"sqlite:///{central / 'mlflow.db'}",
            "EDGE_MLFLOW_ARTIFACTS_DIR": str(central / "artifacts"),
        }

    def run(self, task: str, payload: dict) -> tuple[dict | None, str]:
        inp, out = self.state / "in.json", self.state / "out.json"
        inp.write_text(json.dumps(payload))
        done = subprocess.run([sys.executable, "-c", _WORKER, task, str(inp), str(out)], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        log = done.stdout + done.stderr
        return (json.loads(out.read_text()) if done.returncode == 0 else None), log


@pytest.fixture(scope="module")
def central(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("central")
    (path / "artifacts").mkdir()
    return path


@pytest.fixture(scope="module")
def handover(edge_stack, container, central, tmp_path_factory):
    """Train on worker A, delete A's state folder, register on worker B: what each returned, and B's folder."""
    from azure.storage.blob import ContainerClient

    from tests._manifest import validation_result

    validation = validation_result(ContainerClient.from_connection_string(edge_stack.blob_connection_string, container))
    payload = {"run_id": f"manual__{uuid.uuid4().hex}", "container": container, "base_dir": VM_WORK_DIR,
               "params": FAST_TRAINING, "model_name": f"two-workers-{uuid.uuid4().hex[:8]}", "validation": validation}
    root = tmp_path_factory.mktemp("workers")
    worker_a = Worker(edge_stack, root / "a", central)
    training, log_a = worker_a.run("train_on_edge_vm", payload)
    assert training is not None, log_a[-6000:]
    shutil.rmtree(root / "a")  # worker A is gone: nothing it wrote to its disk survives
    worker_b = Worker(edge_stack, root / "b", central)
    registered, log_b = worker_b.run("register_model", {**payload, "training": training})
    assert registered is not None, log_b[-6000:]
    return {"payload": payload, "training": training, "registered": registered, "b": worker_b, "log_b": log_b,
            "root": root}


def test_registration_on_another_worker_registers_the_trained_model(handover, central, edge_env, tmp_path):
    from mlflow import MlflowClient

    from edge_training.hooks.model_artifacts import ModelArtifactsHook
    from edge_training.model_artifacts import REFERENCE_PROFILE_FILE
    from edge_training.registry import MLflowModelRegistry

    training, registered = handover["training"], handover["registered"]
    model = handover["payload"]["model_name"]
    assert not (handover["root"] / "a").exists()
    assert "artifacts_dir" not in training and training["artifacts"]["container"] == "models"
    assert registered["version"] == "1" and registered["promoted"]

    # The version in the central registry carries the metrics of the job that trained it.
    tracking = f"sqlite:///{central / 'mlflow.db'}"
    version = MlflowClient(tracking_uri=tracking, registry_uri=tracking).get_model_version(model, "1")
    roc_auc = training["metrics"]["metrics"]["roc_auc"]
    assert roc_auc > 0.6 and float(version.tags["metric.roc_auc"]) == pytest.approx(roc_auc)
    assert version.tags["edge.training_job_id"] == training["job_id"]

    # The registered model is byte for byte the blob training uploaded, and the reference profile went with it.
    registry = MLflowModelRegistry(tracking, central / "artifacts")
    found = registry.get_version(model, "1")
    onnx = registry.download_onnx(found, tmp_path / "registered")
    uploaded = ModelArtifactsHook().download(training["artifacts"], tmp_path / "uploaded")
    assert onnx.read_bytes() == (uploaded / "model.onnx").read_bytes()
    attached = registry.download_attachment(found, REFERENCE_PROFILE_FILE, tmp_path / "attached")
    assert json.loads(attached.read_text()) == training["reference_profile"] and training["reference_profile"]["rows"] > 0

    # Worker B downloaded into a temporary folder of its own and removed it.
    assert "ETag, size and MD5 checked" in handover["log_b"]
    assert list((handover["b"].state / "tmp").glob("edge-register-*")) == []


def test_a_retry_after_the_vm_job_dir_is_gone_reuses_the_upload_without_training(handover, edge_stack, central,
                                                                                 edge_env):  # fmt: skip
    from edge_training.hooks.edge_vm import EdgeVMHook

    training, payload = handover["training"], handover["payload"]
    job = training["job_id"]
    hook = EdgeVMHook(ssh_conn_id="edge_vm")
    base = hook.run(remote_job.resolve_base_command(VM_WORK_DIR)).stdout.strip()
    hook.run(f"rm -rf {base}/jobs/{job}")

    worker_c = Worker(edge_stack, handover["root"] / "c", central)
    again, log = worker_c.run("train_on_edge_vm", payload)

    assert again is not None, log[-6000:]
    assert "is gone from the VM, but its outputs are completely uploaded" in log and "not training again" in log
    assert again["artifacts"] == training["artifacts"] and again["metrics"] == training["metrics"]
    assert again["code_version"] == training["code_version"] and again["window"] == training["window"]
    # Nothing was submitted: the VM has no job dir of that id again.
    assert hook.run(f"ls -d {base}/jobs/{job}* 2>/dev/null").stdout.strip() == ""
    hook.close()


def test_registration_refuses_a_changed_or_missing_output_blob(handover, edge_env, tmp_path):
    from azure.storage.blob import BlobServiceClient

    from edge_training.hooks.model_artifacts import ModelArtifactsHook
    from edge_training.model_artifacts import ArtifactError

    artifacts = json.loads(json.dumps(handover["training"]["artifacts"]))
    # A copy of the upload under another prefix, so the handover's blobs stay as they are for the other tests.
    service = BlobServiceClient.from_connection_string(edge_env.blob_connection_string)
    client = service.get_container_client(artifacts["container"])
    for entry in artifacts["blobs"].values():
        copy = entry["name"].replace("edge-training/", f"tampered-{uuid.uuid4().hex[:6]}/", 1)
        written = client.get_blob_client(copy).upload_blob(client.download_blob(entry["name"]).readall())
        entry.update(name=copy, etag=written["etag"])
    hook = ModelArtifactsHook()
    hook.download(artifacts, tmp_path / "ok")  # the copy as recorded is accepted

    model = artifacts["blobs"]["model.onnx"]
    client.get_blob_client(model["name"]).upload_blob(b"not the model", overwrite=True)
    with pytest.raises(ArtifactError) as changed:
        hook.download(artifacts, tmp_path / "changed")
    assert f"its ETag is no longer {model['etag']}" in str(changed.value) and "overwritten" in str(changed.value)
    assert "Clear the training task" in str(changed.value)

    client.delete_blob(model["name"])
    with pytest.raises(ArtifactError) as missing:
        hook.download(artifacts, tmp_path / "missing")
    assert f"{artifacts['container']}/{model['name']}" in str(missing.value) and "no such blob" in str(missing.value)
