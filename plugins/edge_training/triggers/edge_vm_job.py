"""Wait for a training job on the edge VM without holding a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from edge_training import config, remote_job
from edge_training.exceptions import EdgeVMJobError, EdgeVMUnreachableError

# Worth another poll: the network or sshd hiccuped; the job itself keeps running on the VM.
_TRANSIENT_ERRORS = (EdgeVMUnreachableError, OSError, TimeoutError, EOFError)

# Task states in which a try of the task watches the job, or is about to: the trigger was moved (to another
# triggerer, or a cleared task's new try deferred again) or the task resumed. The job is left to that try.
_STATES_WATCHING_THE_JOB = frozenset({"deferred", "scheduled", "queued", "running", "up_for_reschedule"})
# Seconds the job gets between TERM and KILL when a user stops the task; within the triggerer's on_kill bound.
_KILL_GRACE_S = 10


def _run_job_script(ssh_conn_id: str, command: str, timeout: float, check: bool = True) -> str:
    """Run a remote_job job-script command on the edge VM (blocking; the trigger calls it in a thread)."""
    from edge_training.hooks.edge_vm import EdgeVMHook

    hook = EdgeVMHook(ssh_conn_id=ssh_conn_id)
    try:
        result = hook.run(command, timeout=timeout, input=remote_job.JOB_SCRIPT.encode())
    finally:
        hook.close()
    if check and result.exit_status != 0:
        err = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise EdgeVMJobError(f"{command!r} on the edge VM exited with status {result.exit_status}: {err}")
    return result.stdout


def fetch_status(ssh_conn_id: str, base_dir: str, job_id: str) -> remote_job.JobStatus:
    """Run the status command on the edge VM (blocking; the trigger calls it in a thread)."""
    command = remote_job.status_command(base_dir, job_id, script_on_stdin=True)
    # No status line (whatever the exit status) is a StatusParseError that names what to check.
    return remote_job.parse_status(_run_job_script(ssh_conn_id, command, 60, check=False))


def stop_job(ssh_conn_id: str, base_dir: str, job_id: str) -> str:
    """Stop the job and remove its credentials and scratch data (blocking; the trigger calls it in a thread)."""
    return _run_job_script(ssh_conn_id, remote_job.kill_command(base_dir, job_id, _KILL_GRACE_S), _KILL_GRACE_S * 2)


def task_state(task_instance: Any) -> str | None:
    """The current state of the deferred task instance, asked of the Airflow API (blocking; call in a thread)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    map_index = getattr(task_instance, "map_index", -1)
    states = RuntimeTaskInstance.get_task_states(
        dag_id=task_instance.dag_id,
        task_ids=[task_instance.task_id],
        run_ids=[task_instance.run_id],
        map_index=map_index,
    )
    key = task_instance.task_id if map_index is None or map_index < 0 else f"{task_instance.task_id}_{map_index}"
    return (states.get(task_instance.run_id) or {}).get(key)


class EdgeVMJobTrigger(BaseTrigger):
    """Poll a training job on the edge VM until it ends or ``timeout_at`` passes.

    When a user marks the deferred task failed or successful, or clears it, the triggerer calls :meth:`on_kill`: the
    job is stopped and its credentials and scratch data removed, unless a try of the task watches the job again (the
    task instance is deferred, scheduled, queued or running: the trigger was only moved, or the task resumed). A
    triggerer restart only cancels the trigger (no ``on_kill``): the job trains on and the trigger resumes polling.

    :param ssh_conn_id: SSH connection of the edge VM.
    :param job_id: Id of the job (see ``remote_job.job_id``).
    :param base_dir: Absolute base dir of the jobs on the edge VM.
    :param poll_interval: Seconds between two status checks.
    :param timeout_at: Epoch seconds after which the trigger gives up with an error event.
    :param unreachable_grace: Seconds the edge VM may go unanswered (sshd down, network cut, VM rebooting) before
        the wait ends with an ``unreachable`` error event; the job keeps running on the VM and the task's retry
        re-attaches to it. None waits until ``timeout_at``.
    """

    def __init__(
        self,
        ssh_conn_id: str,
        job_id: str,
        base_dir: str,
        poll_interval: float = 30.0,
        timeout_at: float | None = None,
        unreachable_grace: float | None = config.VM_UNREACHABLE_GRACE_S,
    ) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.job_id = job_id
        self.base_dir = base_dir
        self.poll_interval = float(poll_interval)
        self.timeout_at = None if timeout_at is None else float(timeout_at)
        self.unreachable_grace = None if unreachable_grace is None else float(unreachable_grace)
        # Set once the final event is out: from then on the resumed task owns the job.
        self._event_sent = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "ssh_conn_id": self.ssh_conn_id,
                "job_id": self.job_id,
                "base_dir": self.base_dir,
                "poll_interval": self.poll_interval,
                "timeout_at": self.timeout_at,
                "unreachable_grace": self.unreachable_grace,
            },
        )

    def _error(self, message: str, log_tail: str = "", **extra: Any) -> TriggerEvent:
        return self._event(
            {"status": "error", "job_id": self.job_id, "message": message, "log_tail": log_tail, **extra}
        )

    def _event(self, payload: dict[str, Any]) -> TriggerEvent:
        self._event_sent = True
        return TriggerEvent(payload)

    async def on_kill(self) -> None:
        """A user acted on the deferred task: stop the job unless a try of the task watches it again."""
        if self._event_sent:
            self.log.info("Edge VM job %s: its final event was sent; the resumed task handles the job", self.job_id)
            return
        if self.task_instance is None:
            self.log.warning("Edge VM job %s: trigger cancelled without a task instance; job left running", self.job_id)
            return
        try:
            state = await asyncio.to_thread(task_state, self.task_instance)
        except Exception:
            # Stopping a job that a try still watches costs a training: when in doubt, leave it to that try.
            self.log.exception("Edge VM job %s: could not read the task's state; job left running", self.job_id)
            return
        if state in _STATES_WATCHING_THE_JOB:
            self.log.info("Edge VM job %s: the task is %s again; job left to that try", self.job_id, state)
            return
        self.log.info("Edge VM job %s: the task is now %s; stopping the job on the edge VM", self.job_id, state)
        out = await asyncio.to_thread(stop_job, self.ssh_conn_id, self.base_dir, self.job_id)
        self.log.info("Edge VM job %s: %s", self.job_id, " / ".join(out.strip().splitlines()))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last: remote_job.JobStatus | None = None
        silent_since: float | None = None
        while True:
            try:
                status = await asyncio.to_thread(fetch_status, self.ssh_conn_id, self.base_dir, self.job_id)
            except _TRANSIENT_ERRORS as err:
                # The job runs on regardless of our connection: ride out a short outage, but do not leave the task
                # waiting silently for hours on a VM that is gone; its retry re-attaches to the job.
                silent_since = silent_since or time.time()
                silent = time.time() - silent_since
                if self.unreachable_grace is not None and silent >= self.unreachable_grace:
                    yield self._error(
                        f"could not be checked: the edge VM has not answered for {silent:.0f} s (grace period "
                        f"{self.unreachable_grace:.0f} s, EDGE_VM_UNREACHABLE_GRACE_S). Last error: {err}",
                        unreachable=True,
                    )
                    return
                self.log.warning(
                    "Edge VM job %s: status check failed (%s); retrying (no answer for %.0f s, grace %s s)",
                    self.job_id, err, silent, self.unreachable_grace,
                )  # fmt: skip
            except Exception as err:
                self.log.exception("Edge VM job %s: status check failed", self.job_id)
                yield self._error(f"status check failed and is not retried: {type(err).__name__}: {err}")
                return
            else:
                last = status
                silent_since = None
                if status.state == "missing":
                    yield self._error(
                        "is missing on the edge VM (its job dir was removed or the base dir changed); "
                        "clear the task to submit it again"
                    )
                    return
                if status.terminal:
                    yield self._event(remote_job.status_event(self.job_id, status))
                    return
                self.log.info("Edge VM job %s: %s (pid %s)", self.job_id, status.state, status.pid)

            if self.timeout_at is not None and time.time() >= self.timeout_at:
                if last is not None:
                    yield self._event(remote_job.status_event(self.job_id, last, timed_out=True))
                else:
                    yield self._error(
                        "could not be checked before the timeout: the edge VM did not answer", timed_out=True
                    )
                return
            delay = self.poll_interval
            if self.timeout_at is not None:
                delay = min(delay, max(0.0, self.timeout_at - time.time()))
            await asyncio.sleep(delay)
