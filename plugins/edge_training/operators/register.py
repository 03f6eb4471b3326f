"""Register the trained model with lineage tags and move the champion alias if it earned it."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from edge_training import config
from edge_training.exceptions import DataValidationError, EdgeTrainingError
from edge_training.lineage import lineage_tags, training_identity
from edge_training.model_artifacts import REFERENCE_PROFILE_FILE, check_described
from edge_training.operators.links import ModelCardLink, ModelVersionLink, record_version_links, ui_base_path
from edge_training.promotion import find_identical, settle_champion
from edge_training.schedule import triggering_drift

if TYPE_CHECKING:
    from airflow.sdk import Context

    from edge_training.hooks.model_artifacts import ModelArtifactsHook
    from edge_training.model_card_store import PublishedCard
    from edge_training.registry import ModelRegistry, RegisteredModelVersion

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "", "none"}


def parse_flag(name: str, value: Any) -> bool:
    """Read a boolean that may arrive rendered as text (``"True"``) from a template."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise EdgeTrainingError(
        f"Checked {name}: expected true or false, found {value!r}. Pass a boolean (the DAG's Param is one)."
    )


def _as_dict(name: str, value: Any) -> dict:
    if isinstance(value, str) and value.strip():
        # Without native rendering an XCom dict arrives as its JSON/Python text.
        try:
            value = json.loads(value)
        except ValueError:
            raise EdgeTrainingError(
                f"Checked the {name} result: expected a dict, found text that is not JSON ({len(value)} chars). "
                "Pass the upstream task's output (XComArg) or use render_template_as_native_obj=True."
            ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EdgeTrainingError(
            f"Checked the {name} result: expected a dict, found {type(value).__name__}. "
            "Pass the upstream task's output (XComArg)."
        )
    return value


class RegisterModelOperator(BaseOperator):
    """
    Register the trained model (one version per training job, retry-safe) with lineage tags, then promote it
    to ``champion`` only if it beats the current champion on the same holdout (or the run forces it).

    The champion's score comes from the training job, which scored the champion on the candidate's holdout
    (``training["metrics"]["champion_metrics"]``). The promotion rule (``champion.PROMOTION_RULE``) compares only
    when neither model trained on that holdout and it is not older than the champion's; otherwise the decision is
    ``not_compared_older_window``. A champion that moved since training scored another one cannot be compared
    (``not_compared_champion_changed``). The champion moves by compare-and-set, so of two registrations finishing
    together exactly one can win.

    The model comes from the site's blob storage, not from another task's disk: the blobs the training result
    names (``training["artifacts"]``) are downloaded into a temporary folder of this task, each checked against
    the ETag, size and Content-MD5 the training result recorded; the version is registered from there (with
    ``reference_profile.json`` attached when training wrote one) and the folder is removed.

    An identical re-train (same data fingerprint, code version, hyperparameters, seed and windows) registers no
    copy: the existing version is reused (tagged ``edge.reused_by``) and goes through the gate again.

    Then writes the version's model card (``model_card.html`` + ``model_card.json``, see
    :mod:`edge_training.model_card_store`); the task's "Model card" and "Model version" extra links open it and the
    version's page on the api-server.

    Returns ``{"model_name", "version", "model_card", "model_card_url", "uri", "promoted", "decision",
    "previous_champion", "reused", "tags"}``.

    :param model_name: Registered model name.
    :param training: The training task's result (XComArg or dict): ``job_id``, ``artifacts`` (the output blobs,
        see :mod:`edge_training.model_artifacts`), ``metrics``, ``code_version``, ``vm_host_fingerprint``,
        ``window``, ``training_seconds``. Templated.
    :param validation: The validation task's result (XComArg or dict). A result with ``success`` false is refused.
        Templated.
    :param metric: Holdout metric to compare (higher is better).
    :param margin: Minimum improvement over the champion needed to promote (``EDGE_PROMOTION_MARGIN``).
    :param force_promote: Promote whatever the scores (the manual-run Param ``force_promote``). Templated.
    :param registry_backend: Model registry backend ("mlflow"); None uses ``EDGE_MODEL_REGISTRY``.
    :param wasb_conn_id: Blob connection of the site's storage holding the training output container
        (``EDGE_OUTPUT_CONN_ID``, by default the blob connection).
    """

    template_fields = ("model_name", "training", "validation", "force_promote")
    ui_color = "#e8f4e8"
    operator_extra_links = (ModelCardLink(), ModelVersionLink())

    def __init__(
        self,
        *,
        model_name: str = config.MODEL_NAME,
        training: Any,
        validation: Any = None,
        metric: str = config.PROMOTION_METRIC,
        margin: float = config.PROMOTION_MARGIN,
        force_promote: Any = False,
        registry_backend: str | None = None,
        wasb_conn_id: str = config.OUTPUT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.training = training
        self.validation = validation
        self.metric = metric
        self.margin = margin
        self.force_promote = force_promote
        self.registry_backend = registry_backend
        self.wasb_conn_id = wasb_conn_id

    @cached_property
    def registry(self) -> ModelRegistry:
        from edge_training.registry import get_model_registry

        return get_model_registry(self.registry_backend)

    @cached_property
    def outputs(self) -> ModelArtifactsHook:
        from edge_training.hooks.model_artifacts import ModelArtifactsHook

        return ModelArtifactsHook(wasb_conn_id=self.wasb_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        # Run-time only, kept out of DAG parsing: the model card builder.
        from edge_training.model_card_store import CARD_URL_TAG

        training = _as_dict("training", self.training)
        validation = _as_dict("validation", self.validation)
        force = parse_flag("force_promote", self.force_promote)
        if validation.get("success") is False:
            raise DataValidationError(
                f"Checked the validation result {validation.get('validation_id')!r} before registering: it says "
                f"success=false (Data Docs: {validation.get('data_docs')}). A model trained on data that failed "
                "validation is not registered. Fix the data and re-run the DAG run."
            )
        if not training.get("artifacts"):
            raise EdgeTrainingError(
                f"Checked the training result for artifacts (the output blobs to register): not found (keys: "
                f"{sorted(training)}). Pass the training task's output as training=."
            )
        artifacts = check_described(training["artifacts"])

        ti = context["ti"]
        run_id = ti.run_id
        # One version per trained model: the training job id is stable across retries of the training task.
        registration_key = str(training.get("job_id") or run_id)
        tags = lineage_tags(
            ti.dag_id,
            run_id,
            context.get("data_interval_start"),
            context.get("data_interval_end"),
            validation,
            training,
            # A run started by the drift check: its reason and report go on the version and its model card.
            drift=triggering_drift(context),
        )
        registry = self.registry
        identical = find_identical(registry, self.model_name, training_identity(training))
        reused = identical is not None and identical.run_id != registration_key
        if reused:
            version = identical
            self.log.info(
                "Model %s version %s was trained from the same data, code, parameters and windows (%s): reusing it "
                "instead of registering a copy", self.model_name, version.version, tags.get("edge.training_identity"),
            )  # fmt: skip
            registry.set_tags(self.model_name, version.version, {"edge.reused_by": run_id})
        else:
            version = self._register(artifacts, registration_key, tags)

        decision, previous, decided = settle_champion(
            registry,
            self.model_name,
            version,
            training,
            metric=self.metric,
            margin=self.margin,
            force=force,
            decided_by=run_id,
        )
        self.log.info(
            "Model %s version %s: candidate %s %s, champion%s %s -> %s (%s)",
            self.model_name,
            version.version,
            decision.metric,
            "n/a" if decision.candidate_score is None else f"{decision.candidate_score:.4f}",
            f" version {previous}" if previous is not None else " (none)",
            "n/a" if decision.champion_score is None else f"{decision.champion_score:.4f}",
            "PROMOTED" if decision.promote else "not promoted",
            decision.reason,
        )
        card = self._publish_card(version.version, training.get("metrics"))
        return {
            "model_name": self.model_name,
            "version": version.version,
            "model_card": str(card.path),
            "model_card_url": card.url,
            "uri": version.uri,
            "promoted": decision.promote,
            "decision": dataclasses.asdict(decision),
            "previous_champion": previous,
            "reused": reused,
            "tags": {**(version.tags if reused else tags), **decided, CARD_URL_TAG: card.url},
        }

    def _register(self, artifacts: dict[str, Any], registration_key: str, tags: dict[str, str]) -> RegisteredModelVersion:
        """Download the training outputs into a folder of this task's own, register from there, remove it."""
        with tempfile.TemporaryDirectory(prefix="edge-register-") as tmp:
            folder = self.outputs.download(artifacts, Path(tmp))
            self.log.info(
                "Downloaded %s of the training outputs in %s/%s (ETag, size and MD5 checked)",
                ", ".join(artifacts["blobs"]), artifacts["container"], artifacts.get("prefix", ""),
            )  # fmt: skip
            version = self.registry.register(self.model_name, folder, registration_key, tags)
            reference = folder / REFERENCE_PROFILE_FILE
            if reference.is_file():
                # The training window's data profile, what edge_drift_check measures drift against: kept with the
                # version it describes (attaching again on a retry replaces it).
                self.registry.attach_file(self.model_name, version.version, reference)
        return version

    def _publish_card(self, version: str, document: Any) -> PublishedCard:
        """Write the version's model card (after the decision, which it shows) and point the extra links at it."""
        from edge_training.model_card_store import publish_model_card

        from edge_training.reports import reports_root

        # A document (possibly empty: a training result without metrics) is always given, so a card is always written.
        record_version_links(self, self.model_name, version)
        return publish_model_card(
            self.registry, self.model_name, version, document=document if isinstance(document, dict) else {},
            reports_dir=reports_root(), base_url=ui_base_path(),
        )
