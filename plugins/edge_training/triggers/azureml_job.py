"""Wait for an Azure ML job without holding a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from edge_training.azureml_naming import SUCCEEDED_STATES, TERMINAL_STATES
from edge_training.exceptions import AzureMLAuthError, AzureMLWorkspaceNotFoundError


def fetch_job_state(azureml_conn_id: str, job_name: str):
    """Read the job's state (blocking; the trigger calls it in a thread)."""
    from edge_training.hooks.azureml import AzureMLHook

    return AzureMLHook(azureml_conn_id=azureml_conn_id).get_job(job_name)


class AzureMLJobTrigger(BaseTrigger):
    """Poll an Azure ML job until it reaches a terminal state or ``timeout_at`` passes.

    Completed, Failed, Canceled and Paused end the wait; every other state (including NotResponding, which the
    service reports while it cannot reach the compute and which may recover) keeps polling. Failed status
    checks are retried on the next poll, except refused credentials and a missing workspace.

    Events: ``{"status": "success"|"error", "job_id", "job_status", "studio_url", "message", "timed_out"}``.

    :param azureml_conn_id: Airflow connection of the Azure ML workspace.
    :param job_name: Azure ML job name.
    :param poll_interval: Seconds between two status checks.
    :param timeout_at: Epoch seconds after which the trigger gives up with an error event.
    """

    def __init__(
        self, azureml_conn_id: str, job_name: str, poll_interval: float = 30.0, timeout_at: float | None = None
    ) -> None:
        super().__init__()
        self.azureml_conn_id = azureml_conn_id
        self.job_name = job_name
        self.poll_interval = float(poll_interval)
        self.timeout_at = None if timeout_at is None else float(timeout_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "azureml_conn_id": self.azureml_conn_id,
                "job_name": self.job_name,
                "poll_interval": self.poll_interval,
                "timeout_at": self.timeout_at,
            },
        )

    def _event(self, status: str, message: str, job_status: str | None = None, studio: str | None = None, **extra):
        return TriggerEvent(
            {
                "status": status,
                "job_id": self.job_name,
                "job_status": job_status,
                "studio_url": studio,
                "message": message,
                "timed_out": False,
                **extra,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last = None
        while True:
            try:
                state = await asyncio.to_thread(fetch_job_state, self.azureml_conn_id, self.job_name)
            except (AzureMLAuthError, AzureMLWorkspaceNotFoundError) as err:
                yield self._event("error", str(err))
                return
            except Exception as err:
                # Throttling and service errors were already retried inside azure-core: poll again later.
                self.log.warning("Azure ML job %s: status check failed (%s: %s); retrying", self.job_name,
                                 type(err).__name__, err)  # fmt: skip
            else:
                if state is None:
                    yield self._event(
                        "error", f"Azure ML job {self.job_name} is gone from the workspace (deleted?). Clear the "
                        "task to submit it again.",
                    )  # fmt: skip
                    return
                last = state
                if state.status in TERMINAL_STATES:
                    ok = state.status in SUCCEEDED_STATES
                    yield self._event(
                        "success" if ok else "error",
                        f"Azure ML job {self.job_name} ended: {state.status}",
                        state.status,
                        state.studio_url,
                    )
                    return
                self.log.info("Azure ML job %s: %s (%s)", self.job_name, state.status, state.studio_url)

            if self.timeout_at is not None and time.time() >= self.timeout_at:
                yield self._event(
                    "error",
                    f"Azure ML job {self.job_name} did not finish before the timeout (last state: "
                    f"{last.status if last else 'unknown'})",
                    last.status if last else None,
                    last.studio_url if last else None,
                    timed_out=True,
                )
                return
            delay = self.poll_interval
            if self.timeout_at is not None:
                delay = min(delay, max(0.0, self.timeout_at - time.time()))
            await asyncio.sleep(delay)
