"""Put the champion back to a named model version (the ``edge_model_rollback`` DAG)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from edge_training import config
from edge_training.promotion import rollback_champion

if TYPE_CHECKING:
    from airflow.sdk import Context

    from edge_training.registry.base import ModelRegistry


class RollbackChampionOperator(BaseOperator):
    """
    Make ``version`` the champion again, recording the rollback and its reason on that version
    (``champion.decision=promoted_rollback``) and on the champion it replaces (``demoted_rollback``); the earlier
    decision of each is kept in ``champion.previous_decision``.

    Refuses, changing nothing, a version that does not exist, never finished registering, holds no ONNX model, or
    is the champion already. The move is a compare-and-set: if a registration promotes meanwhile, the rollback
    fails and says so. A retry of the same run after the move only finishes the tags.

    Returns ``{"model_name", "version", "previous_champion", "reason"}``.

    :param version: The model version to put back as champion. Templated.
    :param reason: Why; recorded on both versions. Templated.
    :param model_name: Registered model name.
    :param registry_backend: Model registry backend; None uses ``EDGE_MODEL_REGISTRY``.
    """

    template_fields = ("version", "reason", "model_name")
    ui_color = "#f4e8e8"

    def __init__(
        self,
        *,
        version: Any,
        reason: Any,
        model_name: str = config.MODEL_NAME,
        registry_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.reason = reason
        self.model_name = model_name
        self.registry_backend = registry_backend

    @cached_property
    def registry(self) -> ModelRegistry:
        from edge_training.registry import get_model_registry

        return get_model_registry(self.registry_backend)

    def execute(self, context: Context) -> dict[str, Any]:
        result = rollback_champion(
            self.registry,
            self.model_name,
            str(self.version),
            str(self.reason or ""),
            decided_by=context["ti"].run_id,
        )
        self.log.info(
            "Model %s: champion is version %s again (was %s). Reason: %s",
            self.model_name, result["version"], result["previous_champion"], result["reason"],
        )  # fmt: skip
        return result
