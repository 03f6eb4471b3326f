"""Faults during training on the edge VM: sshd goes away mid-training; the training script crashes.

The edge VM of the local stack is this machine, so the tests read a job's pid from its job dir and signal it
directly, and stop the VM's sshd listener by its pid (``<state>/ssh.pid``): sessions already open and the detached
training job keep running, exactly as when sshd or the network drops on a real VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import FAST_PARAMS, ROOT, WINDOW_DAYS
from tests.integration.test_train_on_vm import FakeTI

pytestmark = pytest.mark.integration

GRACE_S = 3


def make_context(run_id: str) -> dict:
    end = dt.datetime(2026, 6, 9, 2, tzinfo=dt.timezone.utc)
    return {"ti": FakeTI(run_id), "data_interval_start": end - dt.timedelta(days=1), "data_interval_end": end}


def make_operator(pipeline, vm_work_dir: str, **kwargs):
    from edge_training.operators.train import EdgeVMTrainingOperator

    args = {
        "task_id": "train_on_edge_vm",
        "container": pipeline.container,
        "window_days": WINDOW_DAYS,
        "base_dir": vm_work_dir,
        "training_params": FAST_PARAMS,
        "model_name": f"faults-{uuid.uuid4().hex[:8]}",  # no champion to ship
        "poll_interval": 1,
        "unreachable_grace": GRACE_S,
    }
    return EdgeVMTrainingOperator(**{**args, **kwargs})


def wait_for_pid(job_dir: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (job_dir / "pid").read_text().strip() if (job_dir / "pid").exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.1)
    raise AssertionError(f"{job_dir}/pid did not appear within {timeout} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def sshd_stopped(stack):
    """Stop only the edge VM's sshd listener; start it again (same port, same host key) on leaving."""
    from scripts.edge_stack import EdgeStack

    pid = EdgeStack(stack.state_dir).status()["ssh"]["pid"]
    assert pid is not None, "the stack's sshd is not running"
    os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # the session's stack was started from this process: reap it
    deadline = time.monotonic() + 10
    while listening(stack.ssh_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not listening(stack.ssh_port), "sshd still accepts connections"
    try:
        yield
    finally:
        info = EdgeStack(stack.state_dir, free_ports=True).start()
        assert info.ssh_port == stack.ssh_port and listening(stack.ssh_port)


@contextlib.contextmanager
def frozen(pid: int):
    """Hold the job mid-training (SIGSTOP its process group), whatever this machine's speed; resume on leaving."""
    os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pid, signal.SIGCONT)


def assert_unreachable_failure(message: str, stack, job: str) -> None:
    assert f"Edge VM training job {job} on 127.0.0.1:{stack.ssh_port}" in message
    assert "has not answered for" in message and f"grace period {GRACE_S} s" in message
    assert "EDGE_VM_UNREACHABLE_GRACE_S" in message
    assert "The job keeps running on the VM" in message and "re-attaches" in message
    assert f"Unable to connect to port {stack.ssh_port}" in message  # the cause, as the hook reported it


def assert_one_training(job_dir: Path, pid: int) -> None:
    assert sorted(p.name for p in job_dir.parent.glob(f"{job_dir.name}*")) == [job_dir.name]  # nothing set aside
    assert int((job_dir / "pid").read_text()) == pid
    assert (job_dir / "train.log").read_text().count("training RandomForestClassifier") == 1


def test_sshd_down_mid_training_fails_the_wait_clearly_and_the_retry_reattaches(pipeline, vm_work_dir, edge_env,
                                                                                 tmp_path, monkeypatch):  # fmt: skip
    """Non-deferrable path: the worker itself polls."""
    from edge_training import config, remote_job
    from edge_training.exceptions import EdgeVMUnreachableError

    run_id = f"manual__{uuid.uuid4().hex}"
    outcome: dict = {}

    def first_try():
        try:
            make_operator(pipeline, vm_work_dir, deferrable=False).execute(make_context(run_id))
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    worker = threading.Thread(target=first_try)
    worker.start()
    job_dir = Path(vm_work_dir) / "jobs" / remote_job.job_id("edge_training", run_id, "train_on_edge_vm")
    pid = wait_for_pid(job_dir)
    with frozen(pid), sshd_stopped(edge_env):
        worker.join(timeout=120)
        assert not worker.is_alive(), "the task kept waiting on an unreachable VM"
        error = outcome.get("error")
        assert isinstance(error, EdgeVMUnreachableError), repr(error)
        assert_unreachable_failure(str(error), edge_env, job_dir.name)
        # The job was left alone: still running, its credentials still there for it.
        assert alive(pid) and not (job_dir / "exit_code").exists() and (job_dir / "blob.cs").exists()

    retry = make_operator(pipeline, vm_work_dir, deferrable=False).execute(make_context(run_id))
    assert retry["job_id"] == job_dir.name and retry["artifacts"]["blobs"]["model.onnx"]["size"] > 0
    assert_one_training(job_dir, pid)


def test_sshd_down_while_deferred_ends_the_trigger_and_the_retry_reattaches(pipeline, vm_work_dir, edge_env,
                                                                            tmp_path, monkeypatch):  # fmt: skip
    """Deferrable path: the triggerer polls; its event fails the task, the retry defers again and completes."""
    from airflow.sdk.exceptions import TaskDeferred

    from edge_training import config
    from edge_training.exceptions import EdgeVMUnreachableError
    from edge_training.triggers.edge_vm_job import EdgeVMJobTrigger

    run_id = f"scheduled__{uuid.uuid4().hex}"

    def wait(deferred: TaskDeferred) -> dict:
        # Serialized and rebuilt, as the triggerer does.
        _, kwargs = deferred.trigger.serialize()

        async def first_event():
            async for event in EdgeVMJobTrigger(**kwargs).run():
                return event.payload

        return asyncio.run(asyncio.wait_for(first_event(), timeout=300))

    with pytest.raises(TaskDeferred) as deferred:
        make_operator(pipeline, vm_work_dir).execute(make_context(run_id))
    job = deferred.value.trigger.job_id
    assert deferred.value.trigger.unreachable_grace == GRACE_S
    job_dir = Path(vm_work_dir) / "jobs" / job
    pid = wait_for_pid(job_dir)

    with frozen(pid), sshd_stopped(edge_env):
        started = time.monotonic()
        event = wait(deferred.value)
        assert time.monotonic() - started < 60
        assert event["status"] == "error" and event["unreachable"] is True
        with pytest.raises(EdgeVMUnreachableError) as failure:
            make_operator(pipeline, vm_work_dir).execute_complete(make_context(run_id), event)
        assert_unreachable_failure(str(failure.value), edge_env, job)
        assert alive(pid) and (job_dir / "blob.cs").exists()

    with pytest.raises(TaskDeferred) as again:
        make_operator(pipeline, vm_work_dir).execute(make_context(run_id))
    assert again.value.trigger.job_id == job
    event = wait(again.value)
    assert event["status"] == "success", event
    result = make_operator(pipeline, vm_work_dir).execute_complete(make_context(run_id), event)
    assert result["artifacts"]["blobs"]["model.onnx"]["size"] > 0
    assert_one_training(job_dir, pid)


def test_a_crashing_training_script_fails_the_task_with_its_log_tail_and_registers_nothing(pipeline, vm_work_dir,
                                                                                           tmp_path):  # fmt: skip
    from edge_training import remote_job
    from edge_training.registry import MLflowModelRegistry

    # The real training code, except that it raises once it has read the training window.
    code = tmp_path / "training"
    shutil.copytree(ROOT / "include" / "training", code, ignore=shutil.ignore_patterns("__pycache__"))
    script = code / "train.py"
    source = script.read_text()
    crash = (
        "\n\ndef prepare_rows(frame, train_days, holdout_days):\n"
        "    raise RuntimeError(f'injected crash after reading {len(frame)} rows')\n\n\n"
    )
    marker = 'if __name__ == "__main__":'
    assert source.count(marker) == 1
    script.write_text(source.replace(marker, crash + marker))

    env = pipeline.stack.airflow_env
    registry = MLflowModelRegistry(env["MLFLOW_TRACKING_URI"], env["EDGE_MLFLOW_ARTIFACTS_DIR"])
    before = registry.client.search_model_versions(f"name = '{pipeline.model_name}'")

    run = pipeline.run(dt.date(2026, 6, 13), env={"EDGE_TRAINING_CODE_DIR": str(code)}, no_retries=True)

    assert run.states["validate_data"] == "success" and run.states["check_edge_vm"] == "success"
    assert run.states["train_on_edge_vm"] == "failed", run.log[-6000:]
    assert run.states["register_model"] == "upstream_failed"
    job = remote_job.job_id("edge_training", run.run_id, "train_on_edge_vm")
    assert f"Edge VM training job {job} failed: train.py exited with code 1" in run.log
    assert "Last lines of train.log:" in run.log
    assert "RuntimeError: injected crash after reading 6000 rows" in run.log  # the remote traceback's tail
    after = registry.client.search_model_versions(f"name = '{pipeline.model_name}'")
    assert len(after) == len(before)
    assert not [v for v in after if (v.tags or {}).get("edge.dag_run_id") == run.run_id]
    # The failed job left its log on the VM, and neither data nor credentials.
    left = {p.name for p in (Path(vm_work_dir) / "jobs" / job).iterdir()}
    assert "train.log" in left and not {"scratch", "blob.cs", "out"} & left
