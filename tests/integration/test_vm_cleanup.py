"""Nothing is left behind on the edge VM, on any path a training can end by: the real operator and trigger against the
local stack's sshd "edge VM" and Azurite.

The edge VM is this machine, so the tests look into the job dirs directly (``vm_work_dir`` is this session's own work
dir on the VM) and check processes by pid.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from edge_training import remote_job
from tests.integration.test_train_on_vm import container, make_context  # noqa: F401 - `container` is a fixture
from tests.integration.test_training_faults import alive, wait_for_pid

pytestmark = pytest.mark.integration

TRAINING_S = 300  # a job that trains this long is still running whatever the test does meanwhile
SECRETS_AND_SCRATCH = {"blob.cs", "champion.onnx", "scratch"}


def make_operator(container: str, base_dir: str, **kwargs):
    from edge_training.operators.train import EdgeVMTrainingOperator

    args = {
        "task_id": "train_on_edge_vm",
        "container": container,
        "window_days": 4,
        "base_dir": base_dir,
        "training_params": {"n_estimators": 20, "max_depth": 5, "n_jobs": 1},
        "model_name": f"cleanup-{uuid.uuid4().hex[:8]}",  # no champion to ship
        "poll_interval": 1,
        "timeout": 900,
    }
    return EdgeVMTrainingOperator(**{**args, **kwargs})


def hold(pid: int) -> None:
    """Keep the job training for the whole test, however fast this machine is: its train.py sleeps instead."""
    os.killpg(pid, signal.SIGSTOP)


def deferred_job(container: str, base: str, run_id: str):
    """Submit a training and defer, as a worker does; returns (trigger, job dir, pid of the running job)."""
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        make_operator(container, base).execute(make_context(run_id))
    trigger = deferred.value.trigger
    job_dir = Path(base) / "jobs" / trigger.job_id
    pid = wait_for_pid(job_dir)
    hold(pid)
    plant_secrets_and_scratch(job_dir)
    return trigger, job_dir, pid


def plant_secrets_and_scratch(job_dir: Path) -> None:
    """Make sure the held job has credentials and scratch data on the VM (train.py deletes its SAS once read)."""
    (job_dir / "blob.cs").write_text("BlobEndpoint=http://127.0.0.1:1/a;SharedAccessSignature=sv=x&sig=planted")
    (job_dir / "scratch" / "part-0000.csv").write_text("M-0001,2026-11-01T00:00:00Z,63.11\n")


def status(job_dir: Path) -> remote_job.JobStatus:
    import subprocess

    out = subprocess.run(["bash", "-c", remote_job.status_command(str(job_dir.parent.parent), job_dir.name)],
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    return remote_job.parse_status(out)


def left(job_dir: Path) -> set[str]:
    return {p.name for p in job_dir.iterdir()}


def assert_stopped_and_clean(job_dir: Path, pid: int) -> None:
    deadline = time.monotonic() + 20
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), "the job still trains"
    st = status(job_dir)
    assert (st.state, st.exit_code, st.reason) == ("failed", remote_job.EXIT_KILLED, "killed")
    assert not SECRETS_AND_SCRATCH & left(job_dir), left(job_dir)
    assert {"train.log", "job.json"} <= left(job_dir)


def run_cancelled_trigger(trigger, state: str | None, monkeypatch) -> None:
    """Poll for real, then cancel the trigger as the triggerer does on a user action and call on_kill with the task
    instance in ``state`` (what the Airflow API would answer)."""
    from edge_training.triggers import edge_vm_job
    from edge_training.triggers.edge_vm_job import EdgeVMJobTrigger

    _, kwargs = trigger.serialize()
    rebuilt = EdgeVMJobTrigger(**kwargs)
    rebuilt.task_instance = type("TI", (), {"dag_id": "edge_training", "run_id": "r", "task_id": "t", "map_index": -1})
    monkeypatch.setattr(edge_vm_job, "task_state", lambda ti: state)

    async def scene():
        polling = asyncio.ensure_future(rebuilt.run().__anext__())
        await asyncio.sleep(3)  # a few real status checks
        assert not polling.done()
        polling.cancel("__airflow_user_action__")
        with pytest.raises(asyncio.CancelledError):
            await polling
        await asyncio.wait_for(rebuilt.on_kill(), timeout=30)
        await rebuilt.cleanup()

    asyncio.run(scene())


def test_a_deferred_task_marked_failed_stops_its_job_and_removes_credentials_and_scratch(edge_env, container,
                                                                                          vm_work_dir, monkeypatch):  # fmt: skip
    trigger, job_dir, pid = deferred_job(container, vm_work_dir, f"manual__{uuid.uuid4().hex}")

    run_cancelled_trigger(trigger, "failed", monkeypatch)

    assert_stopped_and_clean(job_dir, pid)


@pytest.mark.parametrize("state", ["deferred", "running"])
def test_a_trigger_moved_or_resumed_leaves_its_running_job_alone(edge_env, container, vm_work_dir, monkeypatch,
                                                                 state):  # fmt: skip
    trigger, job_dir, pid = deferred_job(container, vm_work_dir, f"manual__{uuid.uuid4().hex}")

    run_cancelled_trigger(trigger, state, monkeypatch)

    assert alive(pid) and status(job_dir).state == "running"
    assert "blob.cs" in left(job_dir)
    make_operator(container, vm_work_dir).stop_job(job_dir.name, "test done")


def test_a_status_error_leaves_the_running_job_and_the_final_failure_stops_it(edge_env, container, vm_work_dir):
    from airflow.sdk.exceptions import AirflowException

    from edge_training.operators.train import stop_job_after_final_failure

    run_id = f"manual__{uuid.uuid4().hex}"
    trigger, job_dir, pid = deferred_job(container, vm_work_dir, run_id)
    event = {"status": "error", "job_id": trigger.job_id, "log_tail": "",
             "message": "status check failed and is not retried: StatusParseError: no status line"}  # fmt: skip

    operator = make_operator(container, vm_work_dir)
    with pytest.raises(AirflowException, match="status check failed"):
        operator.execute_complete(make_context(run_id), event)
    # A try that will be retried: the retry re-attaches to this job, which must still have its credentials.
    assert alive(pid) and status(job_dir).state == "running" and "blob.cs" in left(job_dir)

    # The same failure on the last try: nobody will re-attach, so the failure callback stops the job.
    assert stop_job_after_final_failure in operator.on_failure_callback
    context = {**make_context(run_id), "task": operator}
    stop_job_after_final_failure(context)
    assert_stopped_and_clean(job_dir, pid)


def test_on_kill_stops_the_job_and_removes_credentials_and_scratch(edge_env, container, vm_work_dir):
    from airflow.sdk.exceptions import TaskDeferred

    operator = make_operator(container, vm_work_dir)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(make_context(f"manual__{uuid.uuid4().hex}"))
    job_dir = Path(vm_work_dir) / "jobs" / deferred.value.trigger.job_id
    pid = wait_for_pid(job_dir)
    hold(pid)
    plant_secrets_and_scratch(job_dir)

    operator.on_kill()

    assert_stopped_and_clean(job_dir, pid)


def test_a_submission_that_fails_before_the_start_leaves_no_credentials(edge_env, container, vm_work_dir):
    run_id = f"manual__{uuid.uuid4().hex}"
    job = remote_job.job_id("edge_training", run_id, "train_on_edge_vm")
    job_dir = Path(vm_work_dir) / "jobs" / job
    # The job record cannot be written (a directory holds its name): submission fails after the credentials were.
    (job_dir / "job.json" / "in-the-way").mkdir(parents=True)

    with pytest.raises(OSError):  # SFTP's own error for the failed write
        make_operator(container, vm_work_dir, deferrable=False).execute(make_context(run_id))

    assert not job_dir.exists(), "the unstarted job dir, with the credentials in it, is still on the VM"
    result = make_operator(container, vm_work_dir, deferrable=False).execute(make_context(run_id))
    assert result["job_id"] == job and not SECRETS_AND_SCRATCH & left(job_dir)


def test_a_job_lost_before_its_pid_was_written_does_not_block_its_run(edge_env, container, vm_work_dir):
    from airflow.sdk.exceptions import AirflowException, TaskDeferred

    from edge_training.triggers.edge_vm_job import EdgeVMJobTrigger

    run_id = f"manual__{uuid.uuid4().hex}"
    job = remote_job.job_id("edge_training", run_id, "train_on_edge_vm")
    job_dir = Path(vm_work_dir) / "jobs" / job
    # The launcher cannot be written (a directory holds its name): the start takes its lock, and no process starts.
    (job_dir / "run.sh" / "in-the-way").mkdir(parents=True)
    with pytest.raises(TaskDeferred) as deferred:
        make_operator(container, vm_work_dir).execute(make_context(run_id))
    assert status(job_dir).reason == "starting" and not (job_dir / "pid").exists()

    # The start grace passes with still no pid (backdated here instead of waiting a minute).
    then = time.time() - remote_job.START_GRACE_SECONDS - 5
    os.utime(job_dir / ".started", (then, then))
    _, kwargs = deferred.value.trigger.serialize()

    async def first_event():
        async for event in EdgeVMJobTrigger(**kwargs).run():
            return event.payload

    event = asyncio.run(asyncio.wait_for(first_event(), timeout=60))
    assert event["status"] == "error" and "never wrote a pid" in event["message"], event
    with pytest.raises(AirflowException, match="never wrote a pid"):
        make_operator(container, vm_work_dir).execute_complete(make_context(run_id), event)

    # The next try sets it aside and trains under the same job id.
    result = make_operator(container, vm_work_dir, deferrable=False).execute(make_context(run_id))
    assert result["job_id"] == job and result["artifacts"]["blobs"]["model.onnx"]["size"] > 0
    (archived,) = Path(vm_work_dir, "jobs").glob(f"{job}.failed-*")
    assert not SECRETS_AND_SCRATCH & left(archived)


def test_submission_sweeps_job_dirs_past_the_retention_but_never_a_running_job(edge_env, container, vm_work_dir,
                                                                               capsys, caplog):  # fmt: skip
    from airflow.sdk.exceptions import TaskDeferred

    from edge_training import config

    jobs = Path(vm_work_dir) / "jobs"
    old = time.time() - (config.VM_JOB_RETENTION_DAYS + 1) * 86400
    # A job that started long ago and still trains.
    trigger, running_dir, pid = deferred_job(container, vm_work_dir, f"manual__{uuid.uuid4().hex}")
    finished = jobs / f"sweep-finished-{uuid.uuid4().hex[:8]}"
    (finished / ".started").mkdir(parents=True)
    (finished / "exit_code").write_text("0\n")
    os.utime(finished / "exit_code", (old, old))
    archived = jobs / f"sweep-failed-{uuid.uuid4().hex[:8]}.failed-{int(old)}"
    archived.mkdir()
    (archived / "train.log").write_text("M-0001,2026-11-01T00:00:00Z,63.11\n")
    os.utime(running_dir / ".started", (old, old))

    caplog.set_level("INFO")
    capsys.readouterr()
    caplog.clear()
    with pytest.raises(TaskDeferred):
        make_operator(container, vm_work_dir).execute(make_context(f"manual__{uuid.uuid4().hex}"))

    assert not finished.exists() and not archived.exists()
    assert running_dir.exists() and alive(pid) and "blob.cs" in left(running_dir)
    captured = capsys.readouterr()
    logged = captured.out + captured.err + caplog.text
    sweeps = {m.group(0) for m in re.finditer(r"swept \d+ job dirs that ended more than \S+ days ago; kept \d+ "
                                              r"running and \d+ recent", logged)}  # fmt: skip
    [line] = sweeps  # once (structlog may echo it to both streams)
    swept, running = map(int, re.findall(r"(\d+) (?:job dirs|running)", line))
    assert swept == 2 and running >= 1 and f"more than {config.VM_JOB_RETENTION_DAYS:g} days" in line
    assert "M-0001" not in logged
    make_operator(container, vm_work_dir).stop_job(running_dir.name, "test done")
