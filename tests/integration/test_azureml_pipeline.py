"""The real DAG with the Azure ML backend selected, against the Azure ML REST fake, on the local edge stack.

Validation and the edge VM check are real (Azurite, sshd). The Azure ML job is submitted by the real azure-ai-ml
code to the fake, whose "compute" does what an Azure ML command job does: it mounts the data datastore (here:
downloads the Stack Hub container from Azurite), runs the uploaded code's command line, and writes the ``model``
output to the output datastore's container in Azurite. The model is then registered in the fake's registry.

Plus an opt-in live smoke test against a real workspace, run only when its credentials are in the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.azureml_fake import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, AzureMLFake
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

# dag.test() on the real DAG file with every Azure ML client pointed at the fake (retries off: fail now).
_RUNNER = """
import json, os, sys
from datetime import datetime
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "plugins")]
from tests.azureml_fake import point_sdk_at
point_sdk_at(os.environ["AZUREML_FAKE_URL"])
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder="dags/edge_training.py").get_dag("edge_training")
for task in dag.tasks:
    task.retries = 0
dag.test(logical_date=datetime.fromisoformat(sys.argv[1]), run_conf=json.loads(sys.argv[2]))
"""


def compute(blob_connection_string: str, datastores: dict[str, str]):
    """The fake's compute: run the job's command on its uploaded code with the datastores as local folders."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(blob_connection_string)

    def locate(uri: str) -> tuple[str, str]:
        datastore, path = uri.removeprefix("azureml://datastores/").split("/paths/", 1)
        return datastores[datastore], path

    def run(fake: AzureMLFake, name: str, props: dict) -> str | None:
        with tempfile.TemporaryDirectory(prefix="aml-compute-") as tmp:
            work = Path(tmp)
            for rel, data in fake.uploaded_code().items():
                (work / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
                (work / "code" / rel).write_bytes(data)
            command = props["command"].replace("python ", f"{sys.executable} ", 1)
            for key, spec in props["inputs"].items():
                container, path = locate(spec["uri"])
                target = work / "inputs" / key
                client = service.get_container_client(container)
                for blob in client.list_blobs(name_starts_with=path):
                    local = target / blob.name[len(path):] if spec["jobInputType"] == "uri_folder" else target
                    local.parent.mkdir(parents=True, exist_ok=True)
                    local.write_bytes(client.download_blob(blob.name).readall())
                command = command.replace("${{inputs.%s}}" % key, str(target))
            out = work / "outputs" / "model"
            command = command.replace("${{outputs.model}}", str(out))
            done = subprocess.run(command, shell=True, cwd=work / "code", capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return f"Execution failed: train.py exited {done.returncode}: {done.stderr[-500:]}"
            container, path = locate(props["outputs"]["model"]["uri"])
            for file in out.iterdir():
                service.get_blob_client(container, path + file.name).upload_blob(file.read_bytes(), overwrite=True)
        return None

    return run


def test_the_dag_runs_green_with_the_azureml_backend(pipeline, edge_stack, monkeypatch, tmp_path):
    from azure.storage.blob import BlobServiceClient

    outputs = f"it-aml-models-{uuid.uuid4().hex[:8]}"
    BlobServiceClient.from_connection_string(edge_stack.blob_connection_string).create_container(outputs)
    datastores = {"stackhub_sensor_readings": pipeline.container, "stackhub_models": outputs}
    conn = {"conn_type": "azure", "extra": {"subscriptionId": SUBSCRIPTION, "resource_group_name": RESOURCE_GROUP,
                                            "workspace_name": WORKSPACE, "use_azure_identity_object": True}}
    conf = {"window_days": 3, "training_params": {"n_estimators": 30, "max_depth": 6, "n_jobs": 1},
            "skip_image_build": True, "training_backend": "azureml"}

    with AzureMLFake(job_runner=compute(edge_stack.blob_connection_string, datastores)) as fake:
        env = {**pipeline.env, "AZUREML_FAKE_URL": fake.base_url, "AIRFLOW_CONN_AZUREML_DEFAULT": json.dumps(conn),
               "EDGE_MODEL_REGISTRY": "azureml", "EDGE_OUTPUT_CONTAINER": outputs}
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, "2026-06-12T02:00:00+00:00", json.dumps(conf)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        result = pipeline._result(done.returncode, done.stdout + done.stderr)
        attached = _attach_a_file(fake, monkeypatch, env, tmp_path, pipeline.model_name, result)

    assert result.states.get("register_model") == "success", result.log[-6000:]
    assert result.states["validate_data"] == result.states["check_edge_vm"] == "success"
    assert result.states["train_on_azureml"] == "success" and result.states["train_on_edge_vm"] == "skipped"

    trained = result.value("train_on_azureml")
    job = trained["job_id"]
    assert trained["window"] == "2026-06-09..2026-06-12"
    assert trained["metrics"]["metrics"]["roc_auc"] > 0.6
    assert trained["model_uri"] == f"azureml://jobs/{job}/outputs/model"
    # The same result shape as the edge VM backend: the output blobs by name, no local path, and the reference
    # profile the job computed with the same grid as on the VM.
    assert "artifacts_dir" not in trained and trained["artifacts"]["container"] == outputs
    assert set(trained["artifacts"]["blobs"]) == {"model.onnx", "metrics.json", "reference_profile.json"}
    assert trained["artifacts"]["prefix"] == f"edge-training/{job}/"
    assert trained["reference_profile"]["rows"] > 0 and set(trained["reference_profile"]["features"])
    assert "--profile-grid '" in fake.calls("job.put")[0].body["properties"]["command"]
    assert [r.path.rsplit("/", 1)[1] for r in fake.calls("job.put")] == [job]

    registered = result.value("register_model")
    puts = fake.calls("model.put")
    assert puts[0].path.endswith(f"/models/{pipeline.model_name}/versions/{registered['version']}")
    tags = fake.models[pipeline.model_name][registered["version"]]["properties"]["tags"]
    assert fake.models[pipeline.model_name][registered["version"]]["properties"]["modelUri"] == trained["model_uri"]
    assert tags["edge.training_job_id"] == job and tags["edge.dag_run_id"] == result.run_id
    validation = result.value("validate_data")
    assert tags["edge.data_fingerprint"] == validation["data_fingerprint"]
    # The job got the manifest of the validated blobs as an input and trained exactly those from its mount.
    props = fake.calls("job.put")[0].body["properties"]
    assert props["inputs"]["manifest"]["jobInputType"] == "uri_file"
    assert "--manifest ${{inputs.manifest}}" in props["command"]
    assert trained["metrics"]["data_manifest"] == {"validation_id": validation["validation_id"],
                                                   "blobs": len(validation["manifest"])}  # fmt: skip
    assert tags["edge.training_data_fingerprint"] == tags["edge.data_fingerprint"]
    assert registered["promoted"] and tags["champion"] == "true"
    # The drift reference is stored with the Azure ML version too, beside the job outputs.
    reference_blob = tags["edge.attachment.reference_profile.json"]
    container, name = reference_blob.split("/", 1)
    stored = BlobServiceClient.from_connection_string(edge_stack.blob_connection_string).get_blob_client(
        container, name).download_blob().readall()
    assert json.loads(stored) == trained["reference_profile"]
    assert tags["champion.decision"] == "promoted_no_champion" and tags["champion.rule"].startswith("compared only")
    # The champion is promotion record 1 of the companion model, naming the version.
    record = fake.models[f"{pipeline.model_name}-champion"]["1"]["properties"]
    assert record["tags"]["edge.champion_version"] == registered["version"] and record["modelUri"] == trained["model_uri"]

    # A file attached to the version lands beside the job outputs in Stack Hub storage, named by a version tag.
    uri, blob, data = attached
    assert tags["edge.attachment.model_card.html"] == blob and blob.startswith(f"{outputs}/")
    assert data == b"<html>card</html>" and uri.endswith(blob.split("/", 1)[1])


def _attach_a_file(fake, monkeypatch, env, tmp_path, model_name, result):
    """Attach a file to the registered version in-process, with the registry pointed at the fake."""
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    from edge_training.hooks.azureml import AzureMLHook
    from edge_training.registry import get_model_registry

    for name in ("AIRFLOW_CONN_AZUREML_DEFAULT", "AIRFLOW_CONN_EDGE_BLOB", "EDGE_OUTPUT_CONTAINER"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(AzureMLHook, "transport", fake.transport())
    monkeypatch.setattr(AzureMLHook, "get_credential", lambda self, conn=None: fake.credential)
    version = result.value("register_model")["version"]
    card = tmp_path / "model_card.html"
    card.write_text("<html>card</html>")
    uri = get_model_registry("azureml").attach_file(model_name, version, card)
    blob = fake.models[model_name][version]["properties"]["tags"]["edge.attachment.model_card.html"]
    container, name = blob.split("/", 1)
    data = WasbHook(wasb_conn_id="edge_blob").get_conn().get_blob_client(container, name).download_blob().readall()
    return uri, blob, data


LIVE_ENV = ("AZUREML_LIVE_SUBSCRIPTION_ID", "AZUREML_LIVE_RESOURCE_GROUP", "AZUREML_LIVE_WORKSPACE")


@pytest.mark.skipif(
    not all(os.getenv(name) for name in LIVE_ENV),
    reason=f"live Azure ML smoke test: set {', '.join(LIVE_ENV)} (and AZURE_CLIENT_ID/AZURE_TENANT_ID/"
    "AZURE_CLIENT_SECRET or a managed identity) to run it against a real workspace",
)
def test_live_workspace_answers_a_job_lookup(monkeypatch):
    from edge_training.hooks.azureml import AzureMLHook

    extra = {"subscriptionId": os.environ["AZUREML_LIVE_SUBSCRIPTION_ID"],
             "resource_group_name": os.environ["AZUREML_LIVE_RESOURCE_GROUP"],
             "workspace_name": os.environ["AZUREML_LIVE_WORKSPACE"], "use_azure_identity_object": True}
    monkeypatch.setenv("AIRFLOW_CONN_AZUREML_DEFAULT", json.dumps({"conn_type": "azure", "extra": extra}))
    # A name that cannot exist: the real service must answer "not found" (auth and workspace are fine).
    assert AzureMLHook().get_job(f"aml-edge-smoke-{uuid.uuid4().hex}") is None
