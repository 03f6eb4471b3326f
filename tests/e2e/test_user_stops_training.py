"""A user marks a deferred training failed in Airflow (as from the UI) on a real scheduler + triggerer: the triggerer
stops the job on the edge VM and removes its credentials and scratch data; clearing the task then trains again.

The edge VM of the local stack is this machine: the test looks into the job dir and at the job's processes directly.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from airflow_client.client.models import (
    ClearTaskInstancesBody, ClearTaskInstancesBodyTaskIdsInner, PatchTaskInstanceBody,
)  # fmt: skip

from tests._pipeline import FAST_TRAINING
from tests.e2e.conftest import DAG_ID, WINDOW_DAYS

pytestmark = pytest.mark.e2e

TASK = "train_on_edge_vm"
RUN_TIMEOUT_S = 420


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _state(api, run_id: str, task_id: str = TASK) -> str | None:
    return _task(api, run_id, task_id).get("state")


def _task(api, run_id: str, task_id: str = TASK) -> dict:
    return {t["task_id"]: t for t in api.task_instances(DAG_ID, run_id)}.get(task_id) or {}


def _wait(what: str, check, timeout: float, logs=lambda: "", poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{logs()}"
        time.sleep(poll)


def _trigger_logs(e2e_airflow, run_id: str) -> str:
    """What the triggerer logged about the run's training task."""
    folder = e2e_airflow.airflow.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={TASK}"
    paths = sorted(folder.glob("*.trigger.*"))
    return "\n----\n".join(f"{path}:\n{path.read_text(errors='replace')[-8000:]}" for path in paths) or "no trigger log"


def _deferred_training(api, e2e_airflow) -> tuple[str, Path, int]:
    """A manual run whose training job is held mid-training while the triggerer polls it: (run id, job dir, pid)."""
    from edge_training import remote_job

    run = api.trigger(DAG_ID, conf={"training_params": FAST_TRAINING, "skip_image_build": True,
                                    "window_days": WINDOW_DAYS})  # fmt: skip
    run_id = run["dag_run_id"]
    job_dir = e2e_airflow.vm_base / "jobs" / remote_job.job_id(DAG_ID, run_id, TASK)
    # Hold the job mid-training as soon as it has a pid, whatever this machine's speed (it would finish in seconds).
    _wait("the training job started on the edge VM", lambda: (job_dir / "pid").is_file(), RUN_TIMEOUT_S)
    pid = int((job_dir / "pid").read_text())
    os.killpg(pid, signal.SIGSTOP)
    _wait("the training task deferred", lambda: _state(api, run_id) == "deferred", 120, poll=0.5)
    # As a user would see it: the triggerer has picked the task up and polls the job (a task stopped before any
    # triggerer ran its trigger gets no on_kill; its job then removes credentials and scratch itself at its end).
    _wait("the triggerer polling the job", lambda: f"{job_dir.name}: running" in _trigger_logs(e2e_airflow, run_id),
          120, poll=0.5)  # fmt: skip
    return run_id, job_dir, pid


def _clear_training(api, run_id: str) -> None:
    """Clear the training task and what follows it, as the UI's Clear does."""
    api.task_instance_api.post_clear_task_instances(DAG_ID, ClearTaskInstancesBody(
        dry_run=False, task_ids=[ClearTaskInstancesBodyTaskIdsInner(TASK)], dag_run_id=run_id, include_downstream=True,
        only_failed=False, reset_dag_runs=True,
    ))  # fmt: skip


def test_marking_a_deferred_training_failed_stops_the_job_and_a_clear_trains_again(api, e2e_airflow):
    from edge_training import remote_job

    run_id, job_dir, pid = _deferred_training(api, e2e_airflow)
    # Scratch data the job wrote (train.py deletes its SAS file once read, so that one may already be gone).
    (job_dir / "scratch" / "part-0000.csv").write_text("M-0001,2026-11-01T00:00:00Z,63.11\n")
    assert _alive(pid)

    api.task_instance_api.patch_task_instance(DAG_ID, run_id, TASK, PatchTaskInstanceBody(new_state="failed"))

    # The triggerer's on_kill stops the job on the VM and removes what must not stay there.
    _wait("the job stopped on the edge VM", lambda: not _alive(pid), 60, lambda: _trigger_logs(e2e_airflow, run_id))
    _wait("the job's scratch data removed", lambda: not (job_dir / "scratch").exists(), 30)
    assert not (job_dir / "blob.cs").exists() and not (job_dir / "champion.onnx").exists()
    assert (job_dir / "exit_code").read_text().strip() == str(remote_job.EXIT_KILLED)
    assert (job_dir / "killed").exists() and (job_dir / "train.log").exists()
    assert _state(api, run_id) == "failed"

    # Clearing it is a new try: it sets the stopped job aside on the VM and trains again, to a registered model.
    _clear_training(api, run_id)
    lines: list[str] = []
    final = api.follow(DAG_ID, run_id, on_change=lines.append, timeout=RUN_TIMEOUT_S)
    assert final["state"] == "success", "\n".join(lines)
    (archived,) = job_dir.parent.glob(f"{job_dir.name}.failed-*")
    assert (archived / "exit_code").read_text().strip() == str(remote_job.EXIT_KILLED)
    assert int((job_dir / "pid").read_text()) != pid
    assert not {"blob.cs", "scratch", "champion.onnx"} & {p.name for p in job_dir.iterdir()}


def test_clearing_a_deferred_training_leaves_one_job_and_nothing_behind_on_the_vm(api, e2e_airflow):
    """Clearing the deferred task (as from the UI) cancels its trigger: the new try takes the job over or trains
    again, the run ends green, and no credentials or scratch data stay on the VM."""
    run_id, job_dir, pid = _deferred_training(api, e2e_airflow)
    first_try = _task(api, run_id)["try_number"]

    _clear_training(api, run_id)
    # Either the trigger's on_kill found the task cleared and stopped the job, or the new try re-attached to it:
    # a job left stopped (SIGSTOP) by this test is then continued, as the VM would run it.
    _wait("the cleared task's next try", lambda: _task(api, run_id).get("try_number", 0) > first_try, 120,
          lambda: _trigger_logs(e2e_airflow, run_id), poll=0.5)  # fmt: skip
    if _alive(pid):
        os.killpg(pid, signal.SIGCONT)
    lines: list[str] = []
    final = api.follow(DAG_ID, run_id, on_change=lines.append, timeout=RUN_TIMEOUT_S)
    assert final["state"] == "success", "\n".join(lines) + _trigger_logs(e2e_airflow, run_id)
    tries = [job_dir, *job_dir.parent.glob(f"{job_dir.name}.failed-*")]
    assert len(tries) <= 2, f"more than one job set aside for one clear: {[p.name for p in tries]}"
    for folder in tries:
        left = {"blob.cs", "scratch", "champion.onnx"} & {p.name for p in folder.iterdir()}
        assert not left, f"{folder.name} still holds {sorted(left)}"
