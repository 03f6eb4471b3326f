"""Model registry: register trained models with lineage tags and keep the ``champion``.

One interface (:class:`ModelRegistry`, in ``registry.base``) and one module per backend: ``registry.mlflow_registry``
(the embedded default: a real MLflow model registry on SQLite with local artifacts, the local stand-in for Azure
ML) and ``registry.azureml_registry`` (an Azure ML workspace). The backend is chosen by ``EDGE_MODEL_REGISTRY``.
Backends are imported only when asked for, and heavy libraries (mlflow, onnx, azure-ai-ml) only inside their
methods, so importing this package from an operator module costs nothing at DAG parse time.

Registration is idempotent per ``run_id`` (the pipeline's key for one trained model), and promotion is a
compare-and-set on the champion (see :meth:`ModelRegistry.promote`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from edge_training import config
from edge_training.registry.base import (
    CHAMPION_ALIAS,
    METRICS_FILE,
    ONNX_FILE,
    REGISTRATION_COMPLETE_TAG,
    REGISTRATION_KEY_TAG,
    TRAINING_IDENTITY_TAG,
    ModelRegistry,
    RegisteredModelVersion,
    read_artifacts,
)

if TYPE_CHECKING:
    from edge_training.registry.azureml_registry import AzureMLModelRegistry
    from edge_training.registry.mlflow_registry import MLflowModelRegistry

__all__ = [
    "CHAMPION_ALIAS",
    "METRICS_FILE",
    "ONNX_FILE",
    "REGISTRATION_COMPLETE_TAG",
    "REGISTRATION_KEY_TAG",
    "TRAINING_IDENTITY_TAG",
    "AzureMLModelRegistry",
    "MLflowModelRegistry",
    "ModelRegistry",
    "RegisteredModelVersion",
    "get_model_registry",
    "read_artifacts",
]


def __getattr__(name: str) -> Any:
    # The backend classes by their old names, imported on first use only.
    if name == "MLflowModelRegistry":
        from edge_training.registry.mlflow_registry import MLflowModelRegistry

        return MLflowModelRegistry
    if name == "AzureMLModelRegistry":
        from edge_training.registry.azureml_registry import AzureMLModelRegistry

        return AzureMLModelRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_model_registry(backend: str | None = None) -> ModelRegistry:
    """Return the model registry for ``backend`` (default: ``EDGE_MODEL_REGISTRY``, "mlflow").

    :param backend: "mlflow" (MLflow at ``MLFLOW_TRACKING_URI``, artifacts under ``EDGE_MLFLOW_ARTIFACTS_DIR``) or
        "azureml" (the workspace of ``EDGE_AZUREML_CONN_ID``).
    :raises ValueError: unknown backend.
    """
    # Read at call time, like MLflow itself does: a process whose environment changed after `config` was
    # imported (a test fixture applying the local edge stack's settings) must get the registry it points at.
    name = (backend or os.getenv("EDGE_MODEL_REGISTRY") or config.MODEL_REGISTRY).strip().lower()
    if name == "mlflow":
        from edge_training.registry.mlflow_registry import MLflowModelRegistry

        return MLflowModelRegistry(
            os.getenv("MLFLOW_TRACKING_URI") or config.MLFLOW_TRACKING_URI,
            os.getenv("EDGE_MLFLOW_ARTIFACTS_DIR") or config.MLFLOW_ARTIFACTS_DIR,
            os.getenv("EDGE_MLFLOW_EXPERIMENT") or config.MLFLOW_EXPERIMENT,
        )
    if name == "azureml":
        from edge_training.registry.azureml_registry import AzureMLModelRegistry

        return AzureMLModelRegistry(
            os.getenv("EDGE_AZUREML_CONN_ID") or config.AZUREML_CONN_ID,
            os.getenv("EDGE_OUTPUT_CONN_ID") or os.getenv("EDGE_BLOB_CONN_ID") or config.BLOB_CONN_ID,
            config.output_container(),
            config.output_prefix(),
        )
    raise ValueError(
        f"Model registry: unknown backend {name!r} (from the operator's registry_backend or EDGE_MODEL_REGISTRY). "
        "Use 'mlflow' or 'azureml'."
    )
