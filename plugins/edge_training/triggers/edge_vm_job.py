"""Wait for a training job on the edge VM without holding a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from edge_training import config, remote_job
from edge_training.exceptions import EdgeVMUnreachableError

# Worth another poll: the network or sshd hiccuped; the job itself keeps running on the VM.
_TRANSIENT_ERRORS = (EdgeVMUnreachableError, OSError, TimeoutError, EOFError)


def fetch_status(ssh_conn_id: str, base_dir: str, job_id: str) -> remote_job.JobStatus:
    """Run the status command on the edge VM (blocking; the trigger calls it in a thread)."""
    from edge_training.hooks.edge_vm import EdgeVMHook

    hook = EdgeVMHook(ssh_conn_id=ssh_conn_id)
    try:
        result = hook.run(
            remote_job.status_command(base_dir, job_id, script_on_stdin=True),
            timeout=60,
            input=remote_job.STATUS_SCRIPT.encode(),
        )
    finally:
        hook.close()
    return remote_job.parse_status(result.stdout)


class EdgeVMJobTrigger(BaseTrigger):
    """Poll a training job on the edge VM until it ends or ``timeout_at`` passes.

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
        return TriggerEvent(
            {"status": "error", "job_id": self.job_id, "message": message, "log_tail": log_tail, **extra}
        )

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
                    yield TriggerEvent(remote_job.status_event(self.job_id, status))
                    return
                self.log.info("Edge VM job %s: %s (pid %s)", self.job_id, status.state, status.pid)

            if self.timeout_at is not None and time.time() >= self.timeout_at:
                if last is not None:
                    yield TriggerEvent(remote_job.status_event(self.job_id, last, timed_out=True))
                else:
                    yield self._error(
                        "could not be checked before the timeout: the edge VM did not answer", timed_out=True
                    )
                return
            delay = self.poll_interval
            if self.timeout_at is not None:
                delay = min(delay, max(0.0, self.timeout_at - time.time()))
            await asyncio.sleep(delay)
