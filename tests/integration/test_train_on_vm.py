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
import uuid
from pathlib import Path

import pytest

from edge_training import remote_job
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

    monkeypatch.setattr(config, "ARTIFACTS_DIR", tmp_path / "artifacts")
    hook, base = vm
    context = make_context(f"manual__{uuid.uuid4().hex}")
    operator = make_operator(container, deferrable=False)

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
    artifacts = Path(result["artifacts_dir"])
    assert artifacts == tmp_path / "artifacts" / job
    assert {"model.onnx", "metrics.json"} <= {p.name for p in artifacts.iterdir()}

    # On the VM: the log and the job record stay; data, outputs and credentials are gone.
    left = job_files(hook, base, job)
    assert {"train.log", "job.json", "exit_code"} <= set(left)
    assert not {"blob.cs", "out", "scratch", "champion.onnx"} & set(left)
    meta = json.loads(hook.run(f"cat {base}/jobs/{job}/job.json").stdout)
    assert meta["training_params"] == FAST and meta["window_start"] == "2026-11-01"

    account_key = re.search(r"AccountKey=([^;]+)", edge_env.blob_connection_string).group(1)
    logged = capsys.readouterr()
    assert account_key not in logged.out + logged.err + caplog.text + json.dumps(result) + json.dumps(meta)


def test_a_crashed_worker_and_a_retry_reattach_to_the_one_job(edge_env, vm, container, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    from edge_training import config
    from edge_training.triggers.edge_vm_job import EdgeVMJobTrigger

    monkeypatch.setattr(config, "ARTIFACTS_DIR", tmp_path / "artifacts")
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
    assert Path(result["artifacts_dir"], "model.onnx").exists()

    # A retry after the job finished (outputs already fetched and cleaned on the VM) starts nothing new and
    # returns the same model.
    again = make_operator(container, deferrable=False).execute(make_context(run_id))
    assert again["artifacts_dir"] == result["artifacts_dir"] and again["metrics"] == result["metrics"]
    assert int(hook.run(f"cat {base}/jobs/{job}/pid").stdout) == pid
    assert trainings_of(hook, base, job) == 1


def test_bad_input_fails_at_once_with_the_log_tail_and_leaves_no_credentials(edge_env, vm, container, tmp_path,
                                                                             monkeypatch):  # fmt: skip
    from airflow.sdk.exceptions import AirflowFailException

    from edge_training import config

    monkeypatch.setattr(config, "ARTIFACTS_DIR", tmp_path / "artifacts")
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

    monkeypatch.setattr(config, "ARTIFACTS_DIR", tmp_path / "artifacts")
    model_name = f"test-model-{uuid.uuid4().hex[:8]}"
    first = make_operator(container, deferrable=False, model_name=model_name).execute(
        make_context(f"manual__{uuid.uuid4().hex}")
    )
    assert first["champion_version"] is None and first["metrics"]["champion_metrics"] is None
    registry = get_model_registry()
    champion = registry.register(model_name, Path(first["artifacts_dir"]), first["job_id"], {})
    registry.promote(model_name, champion.version)

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

    monkeypatch.setattr(config, "ARTIFACTS_DIR", tmp_path / "artifacts")
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
