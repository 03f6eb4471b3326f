"""EdgeVMJobTrigger: serialization and its poll loop against a scripted status source."""

from __future__ import annotations

import asyncio
import importlib
import time

import pytest

from edge_training.exceptions import EdgeVMAuthError, EdgeVMCommandTimeoutError, EdgeVMUnreachableError
from edge_training.remote_job import JobStatus
from edge_training.triggers import edge_vm_job
from edge_training.triggers.edge_vm_job import EdgeVMJobTrigger

RUNNING = JobStatus(state="running", pid=42)
SUCCEEDED = JobStatus(state="succeeded", exit_code=0, pid=42, log_tail="wrote out/model.onnx")
FAILED = JobStatus(state="failed", exit_code=1, pid=42, reason="train.py exited with code 1", log_tail="Traceback...")


def make_trigger(**kwargs) -> EdgeVMJobTrigger:
    args = {"ssh_conn_id": "edge_vm", "job_id": "j1", "base_dir": "/home/u/edge-training", "poll_interval": 0.01}
    return EdgeVMJobTrigger(**{**args, **kwargs})


def scripted(monkeypatch, *steps):
    """Make fetch_status return (or raise) the given steps in order, repeating the last one."""
    calls = []

    def fake(ssh_conn_id, base_dir, job_id):
        calls.append((ssh_conn_id, base_dir, job_id))
        step = steps[min(len(calls), len(steps)) - 1]
        if isinstance(step, BaseException):
            raise step
        return step

    monkeypatch.setattr(edge_vm_job, "fetch_status", fake)
    return calls


def events(trigger: EdgeVMJobTrigger) -> list[dict]:
    async def collect():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout=10))


def test_serialize_round_trips_through_the_dotted_path():
    trigger = make_trigger(timeout_at=1_900_000_000.5, poll_interval=15, unreachable_grace=600)
    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    clone = getattr(importlib.import_module(module), name)(**kwargs)
    assert path == "edge_training.triggers.edge_vm_job.EdgeVMJobTrigger"
    assert clone.serialize() == (path, kwargs)
    assert kwargs == {
        "ssh_conn_id": "edge_vm",
        "job_id": "j1",
        "base_dir": "/home/u/edge-training",
        "poll_interval": 15.0,
        "timeout_at": 1_900_000_000.5,
        "unreachable_grace": 600.0,
    }


def test_polls_until_the_job_succeeds(monkeypatch):
    calls = scripted(monkeypatch, RUNNING, RUNNING, SUCCEEDED)
    (event,) = events(make_trigger())
    assert event["status"] == "success" and event["job_id"] == "j1"
    assert event["log_tail"] == "wrote out/model.onnx"
    assert calls == [("edge_vm", "/home/u/edge-training", "j1")] * 3


@pytest.mark.parametrize(
    "final",
    [
        FAILED,
        JobStatus(state="failed", exit_code=2, reason="train.py exited with code 2"),
        JobStatus(state="failed", exit_code=143, reason="killed"),
        JobStatus(state="failed", reason="lost: the job process is gone without an exit code"),
    ],
)
def test_every_failed_end_is_an_error_event_with_the_reason(monkeypatch, final):
    scripted(monkeypatch, RUNNING, final)
    (event,) = events(make_trigger())
    assert event["status"] == "error"
    assert final.reason in event["message"]
    assert event["exit_code"] == final.exit_code


def test_transient_ssh_errors_are_retried(monkeypatch, capsys):
    scripted(
        monkeypatch,
        EdgeVMUnreachableError("Could not reach edge VM"),
        EdgeVMCommandTimeoutError("did not finish within 60 s"),
        ConnectionResetError("reset"),
        SUCCEEDED,
    )
    (event,) = events(make_trigger())
    assert event["status"] == "success"
    logged = capsys.readouterr()
    assert "status check failed (Could not reach edge VM); retrying" in logged.out + logged.err


def test_errors_that_waiting_cannot_fix_end_the_wait_at_once(monkeypatch):
    calls = scripted(monkeypatch, EdgeVMAuthError("refused the SSH credentials"), SUCCEEDED)
    (event,) = events(make_trigger())
    assert event["status"] == "error" and "refused the SSH credentials" in event["message"]
    assert len(calls) == 1


def test_a_job_that_vanished_is_an_error(monkeypatch):
    scripted(monkeypatch, JobStatus(state="missing"))
    (event,) = events(make_trigger())
    assert event["status"] == "error" and "missing" in event["message"]


def test_timeout_ends_with_an_error_naming_the_last_state(monkeypatch):
    scripted(monkeypatch, RUNNING)
    started = time.monotonic()
    (event,) = events(make_trigger(poll_interval=60, timeout_at=time.time() + 0.3))
    assert time.monotonic() - started < 5  # the sleep is cut short at the deadline, not a full poll interval
    assert event["status"] == "error" and event["timed_out"] is True
    assert "running" in event["message"]


def test_timeout_while_the_vm_is_unreachable(monkeypatch):
    scripted(monkeypatch, EdgeVMUnreachableError("Could not reach edge VM"))
    (event,) = events(make_trigger(timeout_at=time.time() + 0.2))
    assert event["status"] == "error" and event["timed_out"] is True
    assert "did not answer" in event["message"]


def test_a_vm_silent_past_the_grace_period_ends_the_wait_with_an_unreachable_error(monkeypatch):
    calls = scripted(monkeypatch, RUNNING, EdgeVMUnreachableError("Could not reach edge VM 10.0.0.5:22"))
    started = time.monotonic()
    (event,) = events(make_trigger(unreachable_grace=0.2, timeout_at=time.time() + 3600))
    assert time.monotonic() - started < 5  # long before the job's own timeout
    assert event["status"] == "error" and event["unreachable"] is True and "timed_out" not in event
    assert "has not answered for" in event["message"] and "Could not reach edge VM 10.0.0.5:22" in event["message"]
    assert len(calls) > 2  # it kept trying during the grace period


def test_an_answer_within_the_grace_period_resets_it(monkeypatch):
    down = EdgeVMUnreachableError("Could not reach edge VM")
    # Two outages of ~20 s each (a status check every 10 s on a fake clock), separated by an answer: each is shorter
    # than the 25 s grace period, together they are longer, so only a reset lets the wait go on to the job's end.
    steps = iter([down, down, down, RUNNING, down, down, down, SUCCEEDED])
    clock = {"now": 1_000.0}

    def fake(ssh_conn_id, base_dir, job_id):
        clock["now"] += 10
        step = next(steps)
        if isinstance(step, BaseException):
            raise step
        return step

    monkeypatch.setattr(edge_vm_job, "fetch_status", fake)
    monkeypatch.setattr(edge_vm_job, "time", type("FakeTime", (), {"time": staticmethod(lambda: clock["now"])}))
    (event,) = events(make_trigger(unreachable_grace=25))
    assert event["status"] == "success"


# -- on_kill: a user acted on the deferred task ----------------------------------------------------------------


class FakeTI:
    dag_id, run_id, task_id, map_index = "edge_training", "manual__1", "train_on_edge_vm", -1


def kill_scene(monkeypatch, state):
    """on_kill with the task instance in ``state`` (or the state lookup raising it); returns the jobs it stopped."""
    stopped = []

    def fake_state(ti):
        if isinstance(state, BaseException):
            raise state
        return state

    monkeypatch.setattr(edge_vm_job, "task_state", fake_state)
    monkeypatch.setattr(edge_vm_job, "stop_job", lambda conn, base, job: stopped.append((conn, base, job)) or "ok")
    return stopped


@pytest.mark.parametrize("state", ["failed", "success", None, "skipped", "upstream_failed", "removed"])
def test_on_kill_stops_the_job_when_no_try_watches_it_any_more(monkeypatch, state):
    stopped = kill_scene(monkeypatch, state)
    trigger = make_trigger()
    trigger.task_instance = FakeTI()
    asyncio.run(trigger.on_kill())
    assert stopped == [("edge_vm", "/home/u/edge-training", "j1")]


@pytest.mark.parametrize("state", ["deferred", "scheduled", "queued", "running"])
def test_on_kill_leaves_the_job_to_the_try_that_watches_it(monkeypatch, state):
    stopped = kill_scene(monkeypatch, state)
    trigger = make_trigger()
    trigger.task_instance = FakeTI()
    asyncio.run(trigger.on_kill())
    assert stopped == []


def test_on_kill_after_the_final_event_or_without_a_readable_state_leaves_the_job(monkeypatch):
    stopped = kill_scene(monkeypatch, "failed")
    scripted(monkeypatch, SUCCEEDED)
    trigger = make_trigger()
    trigger.task_instance = FakeTI()
    assert events(trigger)[0]["status"] == "success"
    asyncio.run(trigger.on_kill())  # the event resumed the task: that try fetches the model and cleans up
    assert stopped == []

    stopped = kill_scene(monkeypatch, ConnectionError("api-server gone"))
    trigger = make_trigger()
    trigger.task_instance = FakeTI()
    asyncio.run(trigger.on_kill())
    assert stopped == []


def test_the_task_state_is_read_for_this_task_instance_and_map_index(monkeypatch):
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    asked = []

    def fake(**query):
        asked.append(query)
        return {"manual__1": {"train_on_edge_vm": "deferred", "train_on_edge_vm_3": "failed"}}

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(fake))
    assert edge_vm_job.task_state(FakeTI()) == "deferred"
    mapped = FakeTI()
    mapped.map_index = 3
    assert edge_vm_job.task_state(mapped) == "failed"
    assert asked[0] == {"dag_id": "edge_training", "task_ids": ["train_on_edge_vm"], "run_ids": ["manual__1"],
                        "map_index": -1}  # fmt: skip
