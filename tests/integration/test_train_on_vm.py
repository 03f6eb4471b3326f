"""EdgeVMTrainingOperator end to end on the local edge stack: sshd as the edge VM, Azurite as Stack Hub storage.

The real include/training/train.py runs on the "VM" in a venv the operator builds there. That venv is built once
per requirements hash under ``~/edge-training-test`` and reused by later sessions (the first build runs pip and
takes a minute or two); every test uses its own run id, so jobs never collide.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import uuid
from urllib.parse import parse_qsl
from pathlib import Path

import pytest

from edge_training import remote_job
from tests._pipeline import download_outputs
from tests.unit._sensor_data import partition_csvs, upload

pytestmark = pytest.mark.integration

BASE_DIR = "~/edge-training-test"
START = dt.date(2026, 11, 1)
FAST = {"n_estimators": 20, "max_depth": 5, "n_jobs": 1}
TRAINING_CODE = Path(__file__).resolve().parents[2] / "include" / "training"


class FakeTI:
    """The parts of a task instance the operator uses: identity and XCom push."""

    def __init__(self, run_id: str) -> None:
        self.dag_id = "edge_training"
        self.task_id = "train_on_edge_vm"
        self.run_id = run_id
        self.map_index = -1
        self.try_number = 1
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def make_context(run_id: str) -> dict:
    end = dt.datetime(2026, 11, 5, tzinfo=dt.timezone.utc)
    return {
        "ti": FakeTI(run_id),
        "data_interval_start": end - dt.timedelta(days=1),
        "data_interval_end": end,
    }


@pytest.fixture(scope="module")
def container(edge_stack):
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(edge_stack.blob_connection_string)
    client = service.create_container(f"train-vm-{uuid.uuid4().hex[:10]}")
    upload(client, partition_csvs(START, 4, rows_per_day=300, parts_per_day=2, seed=5))
    yield client.container_name
    client.delete_container()


@pytest.fixture
def vm(edge_env):
    from edge_training.hooks.edge_vm import EdgeVMHook

    hook = EdgeVMHook(ssh_conn_id="edge_vm")
    base = hook.run(remote_job.resolve_base_command(BASE_DIR)).stdout.strip()
    yield hook, base
    hook.close()


def validation_of(edge_stack, container: str) -> dict:
    """What validate_data hands to training: the manifest of the container's data blobs, as listed now."""
    from azure.storage.blob import ContainerClient

    from tests._manifest import validation_result

    return validation_result(ContainerClient.from_connection_string(edge_stack.blob_connection_string, container))


def make_operator(container: str, **kwargs):
    from edge_training.operators.train import EdgeVMTrainingOperator

    args = {
        "task_id": "train_on_edge_vm",
        "container": container,
        "window_days": 4,
        "base_dir": BASE_DIR,
        "training_params": FAST,
        "model_name": f"test-model-{uuid.uuid4().hex[:8]}",  # no champion yet
        "poll_interval": 1,
        "timeout": 900,
    }
    return EdgeVMTrainingOperator(**{**args, **kwargs})


def job_files(hook, base: str, job: str) -> list[str]:
    return sorted(hook.run(f"ls -A {base}/jobs/{job}").stdout.split())


def trainings_of(hook, base: str, job: str) -> int:
    """How many training processes ever ran for the job: each writes one train.log header line pair."""
    listing = hook.run(f"ls -d {base}/jobs/{job}*").stdout.split()
    return len(listing)


def test_trains_on_the_vm_and_brings_back_only_model_and_metrics(edge_env, vm, container, tmp_path, monkeypatch,
                                                                   capsys, caplog):  # fmt: skip
    from edge_training import config

    hook, base = vm
    context = make_context(f"manual__{uuid.uuid4().hex}")
    validation = validation_of(edge_env, container)
    operator = make_operator(container, deferrable=False, validation=validation)

    result = operator.execute(context)

    job = context["ti"].pushed["job_id"]
    assert result["job_id"] == job
    assert result["window"] == "2026-11-01..2026-11-05"
    # The code version is the content hash of exactly the code that ran on the VM.
    hook.get_dir(f"{base}/code/{result['code_version']}", tmp_path / "shipped")
    (tmp_path / "shipped" / ".complete").unlink()
    shipped = remote_job.collect_code(tmp_path / "shipped")
    assert result["code_version"] == remote_job.code_hash(shipped)
    assert set(shipped) == set(remote_job.collect_code(TRAINING_CODE))
    assert result["vm_host_fingerprint"] == hook.host_key_fingerprint()
    assert result["metrics"]["metrics"]["roc_auc"] > 0.6
    assert result["training_seconds"] > 0
    # The outputs are in the site's output container under the job's folder; the result names blobs, not a path.
    artifacts = result["artifacts"]
    assert artifacts["container"] == "models" and artifacts["prefix"] == f"edge-training/{job}/"
    assert set(artifacts["blobs"]) == {"model.onnx", "metrics.json", "reference_profile.json"}
    assert all(b["name"] == artifacts["prefix"] + f and b["etag"] and b["content_md5"] and b["size"] > 0
               for f, b in artifacts["blobs"].items())  # fmt: skip
    fetched = download_outputs(result, tmp_path / "fetched")
    assert json.loads((fetched / "metrics.json").read_text()) == result["metrics"]
    assert json.loads((fetched / "reference_profile.json").read_text()) == result["reference_profile"]
    # No local path for another task to read: every value is data, not a folder on this worker.
    assert "artifacts_dir" not in result and not any(isinstance(v, str) and Path(v).exists() for v in result.values())

    # On the VM: the log and the job record stay; data, outputs and credentials are gone.
    left = job_files(hook, base, job)
    assert {"train.log", "job.json", "exit_code"} <= set(left)
    assert not {"blob.cs", "out", "scratch", "champion.onnx"} & set(left)
    assert json.loads(hook.run(f"cat {base}/jobs/{job}/manifest.json").stdout)["blobs"] == validation["manifest"]
    meta = json.loads(hook.run(f"cat {base}/jobs/{job}/job.json").stdout)
    assert meta["training_params"] == FAST and meta["window_start"] == "2026-11-01"
    assert meta["validation_id"] == validation["validation_id"]

    # It trained exactly the validated blobs: the same fingerprint, and the lineage tags say so.
    from edge_training.lineage import lineage_tags

    assert result["metrics"]["data_fingerprint"] == validation["data_fingerprint"]
    assert result["metrics"]["data_manifest"] == {"validation_id": validation["validation_id"], "blobs": 8}
    tags = lineage_tags("edge_training", context["ti"].run_id, None, None, validation, result)
    assert tags["edge.data_fingerprint"] == tags["edge.training_data_fingerprint"] == validation["data_fingerprint"]
    assert "--manifest manifest.json" in hook.run(f"cat {base}/jobs/{job}/run.sh").stdout
    log = hook.run(f"cat {base}/jobs/{job}/train.log").stdout
    assert f"reading the 8 blob(s) validation {validation['validation_id']} checked" in log

    account_key = re.search(r"AccountKey=([^;]+)", edge_env.blob_connection_string).group(1)
    logged = capsys.readouterr()
    assert account_key not in logged.out + logged.err + caplog.text + json.dumps(result) + json.dumps(meta)


def test_a_crashed_worker_and_a_retry_reattach_to_the_one_job(edge_env, vm, container, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    from edge_training import config
    from edge_training.triggers.edge_vm_job import EdgeVMJobTrigger

    hook, base = vm
    run_id = f"scheduled__{uuid.uuid4().hex}"

    # Worker 1 submits and defers, then "crashes": its operator instance is gone.
    with pytest.raises(TaskDeferred) as first:
        make_operator(container).execute(make_context(run_id))
    job = first.value.trigger.job_id
    pid = int(hook.run(f"cat {base}/jobs/{job}/pid").stdout)

    # Worker 2 runs the same task instance again: it re-attaches to the same job instead of starting one.
    context = make_context(run_id)
    with pytest.raises(TaskDeferred) as second:
        make_operator(container).execute(context)
    assert second.value.trigger.job_id == job and context["ti"].pushed["job_id"] == job
    assert int(hook.run(f"cat {base}/jobs/{job}/pid").stdout) == pid
    assert trainings_of(hook, base, job) == 1

    # The triggerer waits for it for real (serialized and rebuilt, as the triggerer does).
    path, kwargs = second.value.trigger.serialize()
    assert path.endswith("EdgeVMJobTrigger") and kwargs["base_dir"] == base

    async def first_event():
        async for event in EdgeVMJobTrigger(**kwargs).run():
            return event.payload

    event = asyncio.run(asyncio.wait_for(first_event(), timeout=600))
    assert event["status"] == "success", event
    result = make_operator(container).execute_complete(context, event)
    assert result["artifacts"]["blobs"]["model.onnx"]["size"] > 0

    # A retry after the job finished (outputs already fetched and cleaned on the VM) starts nothing new and
    # returns the same model.
    again = make_operator(container, deferrable=False).execute(make_context(run_id))
    assert again["artifacts"] == result["artifacts"] and again["metrics"] == result["metrics"]
    assert int(hook.run(f"cat {base}/jobs/{job}/pid").stdout) == pid
    assert trainings_of(hook, base, job) == 1


def test_bad_input_fails_at_once_with_the_log_tail_and_leaves_no_credentials(edge_env, vm, container, tmp_path,
                                                                             monkeypatch):  # fmt: skip
    from airflow.sdk.exceptions import AirflowFailException

    from edge_training import config

    hook, base = vm
    context = make_context(f"manual__{uuid.uuid4().hex}")
    context["data_interval_end"] = dt.datetime(2025, 1, 10, tzinfo=dt.timezone.utc)  # no data in that window

    with pytest.raises(AirflowFailException) as failure:
        make_operator(container, deferrable=False).execute(context)

    message = str(failure.value)
    job = context["ti"].pushed["job_id"]
    assert f"Edge VM training job {job} failed: train.py exited with code 2" in message
    assert "a retry cannot help" in message
    assert "Last lines of train.log:" in message and "2025-01" in message
    left = job_files(hook, base, job)
    assert "train.log" in left and "blob.cs" not in left and "scratch" not in left


def test_the_champion_is_scored_on_the_same_holdout(edge_env, vm, container, tmp_path, monkeypatch):
    from edge_training import config
    from edge_training.registry import get_model_registry

    model_name = f"test-model-{uuid.uuid4().hex[:8]}"
    first = make_operator(container, deferrable=False, model_name=model_name).execute(
        make_context(f"manual__{uuid.uuid4().hex}")
    )
    assert first["champion_version"] is None and first["metrics"]["champion_metrics"] is None
    registry = get_model_registry()
    champion = registry.register(model_name, download_outputs(first, tmp_path / "first"), first["job_id"], {})
    registry.promote(model_name, champion.version, expected=None)

    second = make_operator(container, deferrable=False, model_name=model_name).execute(
        make_context(f"manual__{uuid.uuid4().hex}")
    )

    assert second["champion_version"] == champion.version
    # Same data, same code, same params: the champion scores exactly what it scored when it was trained.
    assert second["metrics"]["champion_metrics"]["roc_auc"] == first["metrics"]["metrics"]["roc_auc"]
    hook, base = vm
    assert "champion.onnx" not in job_files(hook, base, second["job_id"])


def test_on_kill_stops_the_job_and_the_next_try_trains_again(edge_env, vm, container, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    from edge_training import config

    hook, base = vm
    run_id = f"manual__{uuid.uuid4().hex}"
    operator = make_operator(container)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(make_context(run_id))
    job = deferred.value.trigger.job_id

    operator.on_kill()

    status = remote_job.parse_status(hook.run(remote_job.status_command(base, job)).stdout)
    assert (status.state, status.exit_code, status.reason) == ("failed", remote_job.EXIT_KILLED, "killed")

    # The next try sets the killed job aside and trains under the same job id.
    result = make_operator(container, deferrable=False).execute(make_context(run_id))
    assert result["job_id"] == job and result["metrics"]["metrics"]["roc_auc"] > 0.6
    archived = hook.run(f"ls -d {base}/jobs/{job}.failed-*").stdout.split()
    assert len(archived) == 1
    assert "blob.cs" not in hook.run(f"ls -A {archived[0]}").stdout.split()


# -- least privilege and exactly what was validated ----------------------------------------------------------


def wait_terminal(hook, base: str, job: str, timeout: float = 600) -> remote_job.JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = remote_job.parse_status(hook.run(remote_job.status_command(base, job)).stdout)
        if status.terminal:
            return status
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def test_the_vm_gets_a_read_list_sas_until_the_timeout_and_the_job_deletes_it(edge_env, vm, container, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import ContainerClient
    from airflow.sdk.exceptions import TaskDeferred

    from edge_training import config

    hook, base = vm
    context = make_context(f"manual__{uuid.uuid4().hex}")
    operator = make_operator(container, timeout=1800, validation=validation_of(edge_env, container))
    written: dict[str, bytes] = {}
    put_bytes = operator.hook.put_bytes

    def recording_put_bytes(data: bytes, remote_path: str, mode: int = 0o600) -> None:
        written[remote_path.rsplit("/", 1)[-1]] = data  # what went to the VM, and still goes there
        put_bytes(data, remote_path, mode=mode)

    operator.hook.put_bytes = recording_put_bytes
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    job = deferred.value.trigger.job_id

    # What the VM got: a SAS for this container only, read + list, expiring at submission + timeout.
    credential = written["blob.cs"].decode()
    assert "AccountKey" not in credential and account_key_of(edge_env) not in credential
    settings = dict(part.split("=", 1) for part in credential.split(";") if part)
    sas = dict(parse_qsl(settings["SharedAccessSignature"]))
    assert (sas["sp"], sas["sr"]) == ("rl", "c")
    meta = json.loads(written["job.json"])
    expiry = dt.datetime.strptime(sas["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    assert abs(expiry - (meta["submitted_at_epoch"] + 1800)) <= 1
    # Azurite honours it: the container lists, a write is refused, another container is out of reach.
    client = ContainerClient.from_connection_string(credential, container)
    assert sum(1 for _ in client.list_blobs()) == 8
    with pytest.raises(HttpResponseError) as refused:
        client.upload_blob("dt=2026-11-01/part-9999.csv", b"x")
    assert refused.value.status_code == 403
    with pytest.raises(HttpResponseError) as elsewhere:
        next(iter(ContainerClient.from_connection_string(credential, "sensor-readings").list_blobs()))
    assert elsewhere.value.status_code == 403

    # The job deletes the file once read: gone while the job is still this task's (no clean-up has run yet).
    status = wait_terminal(hook, base, job)
    assert status.state == "succeeded", status.log_tail
    assert "blob.cs" not in job_files(hook, base, job)
    assert "read the blob credentials and removed blob.cs" in hook.run(f"cat {base}/jobs/{job}/train.log").stdout
    operator.execute_complete(context, remote_job.status_event(job, status))


def account_key_of(stack) -> str:
    return re.search(r"AccountKey=([^;]+)", stack.blob_connection_string).group(1)


@pytest.fixture
def own_container(edge_stack):
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(edge_stack.blob_connection_string)
    client = service.create_container(f"train-vm-own-{uuid.uuid4().hex[:10]}")
    upload(client, partition_csvs(START, 4, rows_per_day=300, parts_per_day=2, seed=5))
    yield client
    client.delete_container()


def test_a_blob_rewritten_after_validation_fails_at_once_saying_to_validate_again(edge_env, vm, own_container,
                                                                                   tmp_path, monkeypatch):  # fmt: skip
    """With a SAS connection: neither the task's error nor its alert carries the signature."""
    from airflow.sdk.exceptions import AirflowFailException
    from azure.storage.blob import generate_container_sas

    from edge_training import config, notify
    from scripts.edge_stack import AZURITE_ACCOUNT, AZURITE_KEY

    name = own_container.container_name
    sas = generate_container_sas(AZURITE_ACCOUNT, name, account_key=AZURITE_KEY, permission="rl",
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))  # fmt: skip
    # The outputs go with a connection of their own: the read+list SAS cannot write the output container.
    monkeypatch.setenv("AIRFLOW_CONN_EDGE_OUTPUT", json.dumps({"conn_type": "wasb", "extra": {
        "connection_string": edge_env.blob_connection_string}}))
    monkeypatch.setenv("AIRFLOW_CONN_EDGE_BLOB", json.dumps({"conn_type": "wasb", "extra": {
        "connection_string": f"BlobEndpoint={edge_env.blob_endpoint};SharedAccessSignature={sas}"}}))
    validation = validation_of(edge_env, name)
    blob = "dt=2026-11-02/part-0001.csv"
    own_container.upload_blob(blob, own_container.download_blob(blob).readall() + b"", overwrite=True)
    context = make_context(f"manual__{uuid.uuid4().hex}")

    with pytest.raises(AirflowFailException) as failure:
        make_operator(name, deferrable=False, validation=validation, output_conn_id="edge_output").execute(context)

    message = str(failure.value)
    assert "train.py exited with code 2" in message and "a retry cannot help" in message
    assert f"changed since validation {validation['validation_id']}: {blob} was rewritten" in message
    assert "Re-run this DAG run from validate_data" in message
    hook, base = vm
    job = context["ti"].pushed["job_id"]
    log = hook.run(f"cat {base}/jobs/{job}/train.log").stdout
    assert f"at {edge_env.blob_endpoint};" in log  # the endpoint is shown, its SAS query is not

    # The alert the failure sends, received by a webhook of our own.
    received = []
    server = _webhook(received)
    monkeypatch.setenv("EDGE_ALERT_CONN_ID", "it_alert")
    monkeypatch.setenv("AIRFLOW_CONN_IT_ALERT", json.dumps({"conn_type": "http", "host": server}))
    notify.on_task_failure({"ti": context["ti"], "exception": failure.value})
    assert received and "train_on_edge_vm" in received[0]
    signature = dict(parse_qsl(sas))["sig"]
    for text in (message, log, *received):
        assert "sig=" not in text and signature not in text


def _webhook(received: list[str]) -> str:
    """A local HTTP server that records every POSTed body; returns its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/alert"
