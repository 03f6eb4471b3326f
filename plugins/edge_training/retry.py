"""Which failures are worth retrying.

Bad data, a host key that does not match the pinned one, a connection without a pinned host key, and refused
credentials fail the same way on every attempt, so they fail the task at once; anything else (an unreachable VM,
a dropped connection, a throttled service) falls through to the task's ordinary retries with exponential backoff.
"""

from __future__ import annotations

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

EDGE_RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception="edge_training.exceptions.DataValidationError",
            action=RetryAction.FAIL,
            reason="data failed validation; fix the data and re-run",
        ),
        RetryRule(
            exception="edge_training.exceptions.EdgeVMHostKeyMismatchError",
            action=RetryAction.FAIL,
            reason="edge VM host key does not match the pinned key",
        ),
        RetryRule(
            exception="edge_training.exceptions.EdgeVMConfigError",
            action=RetryAction.FAIL,
            reason="edge VM connection is misconfigured (no pinned host key)",
        ),
        RetryRule(
            exception="edge_training.exceptions.EdgeVMAuthError",
            action=RetryAction.FAIL,
            reason="edge VM refused the SSH credentials",
        ),
    ],
)
