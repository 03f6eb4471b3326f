"""Which failures are worth retrying.

Some failures are the same on every attempt, so they fail the task at once (listed below). Anything else (an
unreachable VM, a dropped connection, a throttled service, a half-finished registration) falls through to the
task's ordinary retries with exponential backoff.
"""

from __future__ import annotations

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

from edge_training import exceptions as errors

FAIL_AT_ONCE = {
    errors.DataValidationError: "data failed validation; fix the data and re-run",
    errors.EdgeVMHostKeyMismatchError: "edge VM host key does not match the pinned key",
    errors.EdgeVMConfigError: "edge VM connection is misconfigured (host key not pinned, malformed, or checking turned off)",
    errors.EdgeVMAuthError: "edge VM refused the SSH credentials",
    errors.TrainingParamsError: "training_params hold an unknown key or an out-of-bounds value",
    errors.PromotionMetricError: "the promotion metric is missing from the training metrics",
    errors.AzureMLAuthError: "Azure ML refused the credentials or denied the action",
    errors.AzureMLWorkspaceNotFoundError: "the Azure ML workspace named by the connection does not exist",
    errors.ImageRegistryAuthError: "the image registry refused the credentials",
    errors.ModelRegistryAuthError: "the MLflow server refused the credentials or denied the action",
    errors.RollbackRefusedError: "the rollback's version cannot be made the champion; nothing was changed",
}

EDGE_RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(exception=exception, action=RetryAction.FAIL, reason=reason)
        for exception, reason in FAIL_AT_ONCE.items()
    ],
)
