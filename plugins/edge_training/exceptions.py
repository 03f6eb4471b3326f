"""Errors the pipeline raises on purpose.

The DAG's retry policy keys off these classes: errors that cannot fix themselves by waiting
(bad data, a host key that does not match, refused credentials) fail the task at once; everything
else (network blips, a busy VM) is retried with backoff.
"""

from __future__ import annotations


class EdgeTrainingError(Exception):
    """Base class for errors raised by the edge training pipeline."""


class DataValidationError(EdgeTrainingError):
    """The training window's data failed its expectation suite. Fix the data, then re-run."""


class EdgeVMHostKeyMismatchError(EdgeTrainingError):
    """The edge VM presented a host key other than the pinned one (possible interception)."""


class EdgeVMAuthError(EdgeTrainingError):
    """The edge VM refused our SSH credentials."""


class EdgeVMUnreachableError(EdgeTrainingError):
    """The edge VM could not be reached over SSH (network fault; retried)."""


class EdgeVMHealthError(EdgeTrainingError):
    """The edge VM is reachable but not fit to train (disk, memory, Python, blob endpoint...)."""


class PromotionMetricError(EdgeTrainingError):
    """The champion gate cannot compare models: the promotion metric is missing or not a number."""


class ModelRegistryError(EdgeTrainingError):
    """The model registry refused a request, holds an unexpected model, or a registration stopped half-way
    (a retry resumes it: registration is idempotent per run id)."""


class ModelRegistryAuthError(ModelRegistryError):
    """The MLflow server refused the credentials (401) or denied the action (403). Fix the user, its password or
    its permissions."""


class EdgeVMConfigError(EdgeTrainingError):
    """The edge VM connection is not safe to use as configured (e.g. no pinned host key). Fix the connection."""


class EdgeVMCommandTimeoutError(EdgeTrainingError, TimeoutError):
    """A command on the edge VM did not finish within its timeout (it was abandoned; retried)."""


class EdgeVMJobError(EdgeTrainingError):
    """A step of the training job on the edge VM failed (shipping code, building its env, fetching outputs)."""


class AzureMLError(EdgeTrainingError):
    """An Azure ML request or job failed, or the Azure ML connection is incomplete."""


class AzureMLAuthError(AzureMLError):
    """Azure ML refused the connection's credentials (401) or denied the action (403). Fix the identity or role."""


class AzureMLWorkspaceNotFoundError(AzureMLError):
    """The Azure ML workspace named by the connection does not exist. Fix the connection's extras."""


class ImageBuildError(EdgeTrainingError):
    """Building or smoke-testing the scoring image failed (buildah, the base image, the wheels, the served model)."""


class ImageRegistryError(EdgeTrainingError):
    """The image registry answered a request with an error (retried)."""


class ImageRegistryAuthError(ImageRegistryError):
    """The image registry refused the connection's credentials. Fix the image_registry connection."""


class ImageRegistryUnavailableError(ImageRegistryError):
    """The image registry could not be reached or answered 5xx (down, network fault; retried)."""


class TrainingParamsError(EdgeTrainingError, ValueError):
    """The run's training hyperparameters hold an unknown key or an out-of-bounds value. Fix ``training_params``."""


class ChampionChangedError(ModelRegistryError):
    """The champion moved between reading it and promoting (another promotion won): re-decide against the new one.

    :param current: The champion version now, or None.
    """

    def __init__(self, message: str, current: str | None) -> None:
        super().__init__(message)
        self.current = current


class RollbackRefusedError(EdgeTrainingError):
    """A rollback was asked for a version that cannot be the champion (missing, incomplete, no ONNX, already
    champion). Nothing was changed; pick another version."""
