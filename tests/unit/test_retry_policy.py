"""Failures that cannot fix themselves are not retried; transient ones are."""

from __future__ import annotations

import pytest
from airflow.sdk import RetryAction

from edge_training import exceptions as errors
from edge_training.retry import EDGE_RETRY_POLICY


@pytest.mark.parametrize(
    "error",
    [
        errors.DataValidationError("partition dt=2026-11-01 failed"),
        errors.EdgeVMHostKeyMismatchError("host key changed"),
        errors.EdgeVMConfigError("no host_key"),
        errors.EdgeVMAuthError("publickey refused"),
        errors.PromotionMetricError("roc_auc missing"),
    ],
)
def test_permanent_failures_fail_at_once(error):
    assert EDGE_RETRY_POLICY.evaluate(error, 1, 4, {}).action == RetryAction.FAIL


@pytest.mark.parametrize(
    "error",
    [
        errors.EdgeVMUnreachableError("connection refused"),
        errors.EdgeVMCommandTimeoutError("timed out"),
        errors.ModelRegistryError("half-registered"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_transient_failures_use_the_task_retries(error):
    assert EDGE_RETRY_POLICY.evaluate(error, 1, 4, {}).action == RetryAction.DEFAULT


def test_policy_survives_serialization():
    restored = type(EDGE_RETRY_POLICY).deserialize(EDGE_RETRY_POLICY.serialize())
    assert restored.evaluate(errors.DataValidationError("x"), 1, 4, {}).action == RetryAction.FAIL
