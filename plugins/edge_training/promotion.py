"""Moving the champion: the gate after a registration, and a rollback to a named version.

No Airflow import: both take a :class:`~edge_training.registry.base.ModelRegistry`, so they run the same from an
operator and from a test racing two of them. Every move goes through the registry's compare-and-set
(:meth:`~edge_training.registry.base.ModelRegistry.promote` with ``expected``): when two promotions race, the
loser re-reads the champion, decides again against it (and, having been scored against another champion, is
recorded as ``not_compared_champion_changed``), so exactly one ends as champion.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from edge_training.champion import (
    ALREADY_CHAMPION,
    DEMOTED_ROLLBACK,
    PROMOTED_OUTCOMES,
    PROMOTED_ROLLBACK,
    PROMOTION_RULE,
    PromotionDecision,
    decide_promotion,
    split_metrics,
    windows_from_document,
    windows_from_tags,
)
from edge_training.exceptions import ChampionChangedError, ModelRegistryError, RollbackRefusedError
from edge_training.lineage import decision_tags

if TYPE_CHECKING:
    from edge_training.registry.base import ModelRegistry, RegisteredModelVersion

log = logging.getLogger(__name__)

# A promotion that keeps losing the compare-and-set is re-decided this often before the task fails (and retries).
SETTLE_ATTEMPTS = 5
DECIDED_AT_TAG = "champion.decided_at"
DECIDED_BY_TAG = "champion.decided_by"
PREVIOUS_DECISION_TAG = "champion.previous_decision"
REPLACED_VERSION_TAG = "champion.replaced_version"


def settle_champion(
    registry: ModelRegistry,
    model_name: str,
    candidate: RegisteredModelVersion,
    training: dict,
    *,
    metric: str,
    margin: float,
    force: bool,
    decided_by: str,
) -> tuple[PromotionDecision, str | None, dict[str, str]]:
    """Decide whether ``candidate`` becomes the champion, move the champion if so, and tag the decision.

    :param registry: The model registry.
    :param model_name: Registered model name.
    :param candidate: The version just registered.
    :param training: The training task's result (``metrics`` = metrics.json, ``champion_version`` scored).
    :param metric: Holdout metric compared (higher is better).
    :param margin: Minimum improvement needed.
    :param force: Promote whatever the rule and the scores say.
    :param decided_by: Who decided (the DAG run id), tagged with the decision.
    :return: (the decision, the champion version it was taken against or None, the decision tags on the version).
    :raises ModelRegistryError: the champion kept moving for :data:`SETTLE_ATTEMPTS` rounds.
    """
    document = training.get("metrics") if isinstance(training.get("metrics"), dict) else {}
    candidate_metrics, champion_metrics = split_metrics(document)
    if "champion_version" in training or "champion_version" in document:
        scored = training.get("champion_version", document.get("champion_version"))
        scored = None if scored in (None, "none") else str(scored)
        checked = {"scored_version": scored}
    else:
        checked = {}  # a training result that does not say which champion it scored (older operators)
    for _ in range(SETTLE_ATTEMPTS):
        champion = registry.get_champion(model_name)
        decision = decide_promotion(
            candidate_metrics,
            champion_metrics if champion is not None else None,
            metric=metric,
            margin=margin,
            force=force,
            champion_version=champion.version if champion is not None else None,
            candidate_version=candidate.version,
            **checked,
            candidate_windows=windows_from_document(document),
            champion_windows=windows_from_tags(champion.tags) if champion is not None else None,
        )
        if decision.promote and decision.outcome != ALREADY_CHAMPION:
            try:
                registry.promote(model_name, candidate.version, expected=champion.version if champion else None)
            except ChampionChangedError as exc:
                log.warning("Model %s version %s: %s Deciding again.", model_name, candidate.version, exc)
                continue
        previous = champion.version if champion is not None else None
        if decision.outcome == ALREADY_CHAMPION and candidate.tags.get("champion.decision") in PROMOTED_OUTCOMES:
            # A retry after the promotion: keep the decision that promoted it.
            return decision, previous, {k: v for k, v in candidate.tags.items() if k.startswith("champion.")}
        written = {**decision_tags(decision), DECIDED_AT_TAG: _now(), DECIDED_BY_TAG: decided_by[:250]}
        if decision.promote and decision.outcome != ALREADY_CHAMPION:
            written[REPLACED_VERSION_TAG] = previous or "none"
        registry.set_tags(model_name, candidate.version, written)
        return decision, previous, written
    raise ModelRegistryError(
        f"Model {model_name} version {candidate.version}: the champion moved {SETTLE_ATTEMPTS} times while this "
        "registration was deciding (many promotions at once). Retry the task: it decides against the champion then."
    )


def rollback_champion(
    registry: ModelRegistry, model_name: str, version: str, reason: str, *, decided_by: str
) -> dict:
    """Put the champion back to ``version``, recording the decision and ``reason`` on it and on the one replaced.

    Checks first and changes nothing when a check fails: the version exists, completed its registration, holds an
    ONNX model, and is not the champion already. A retry of the same rollback (same ``decided_by``) that already
    moved the champion only finishes the tags.

    :param registry: The model registry.
    :param model_name: Registered model name.
    :param version: The version to put back as champion.
    :param reason: Why (required; recorded on both versions).
    :param decided_by: Who decided (the DAG run id).
    :return: ``{"model_name", "version", "previous_champion", "reason"}``.
    :raises RollbackRefusedError: a check failed (the message says which and what to do).
    """
    version = str(version).strip()
    reason = (reason or "").strip()
    if not reason:
        raise RollbackRefusedError(
            "Rollback: checked the reason: it is empty. Say why the champion is rolled back (it is recorded on both "
            "versions)."
        )
    target = registry.get_version(model_name, version)
    if target is None:
        known = [v.version for v in registry.list_versions(model_name)]
        raise RollbackRefusedError(
            f"Rollback: model {model_name} has no version {version!r} (versions: {', '.join(known[-20:]) or 'none'}). "
            "Pick one of those. Nothing was changed."
        )
    if not target.complete:
        raise RollbackRefusedError(
            f"Rollback: model {model_name} version {version} never finished its registration (no "
            "edge.registration_complete tag), so its lineage is unknown. Pick a complete version. Nothing was changed."
        )
    champion = registry.get_champion(model_name)
    if champion is not None and champion.version == version:
        if target.tags.get("champion.decision") == PROMOTED_ROLLBACK and target.tags.get(DECIDED_BY_TAG) == decided_by:
            return {"model_name": model_name, "version": version, "reason": reason,
                    "previous_champion": target.tags.get(REPLACED_VERSION_TAG)}
        raise RollbackRefusedError(
            f"Rollback: model {model_name} version {version} is already the champion. Pick the version to go back "
            "to (a different one). Nothing was changed."
        )
    with tempfile.TemporaryDirectory(prefix="edge-rollback-") as tmp:
        try:
            registry.download_onnx(target, Path(tmp))
        except ModelRegistryError as exc:
            raise RollbackRefusedError(
                f"Rollback: model {model_name} version {version} cannot be served: {exc} Nothing was changed."
            ) from None
    previous = champion.version if champion is not None else None
    try:
        registry.promote(model_name, version, expected=previous)
    except ChampionChangedError as exc:
        raise RollbackRefusedError(f"Rollback: {exc} Check the new champion, then run the rollback again.") from None
    now = _now()
    note = f"rollback by {decided_by}: {reason}"
    registry.set_tags(model_name, version, {
        PREVIOUS_DECISION_TAG: target.tags.get("champion.decision", "none"),
        "champion.decision": PROMOTED_ROLLBACK,
        "champion.promoted": "true",
        "champion.reason": f"put back as champion, replacing version {previous or 'none'} ({note})"[:250],
        REPLACED_VERSION_TAG: previous or "none",
        "champion.rule": PROMOTION_RULE,
        DECIDED_AT_TAG: now,
        DECIDED_BY_TAG: decided_by[:250],
    })  # fmt: skip
    if champion is not None:
        registry.set_tags(model_name, champion.version, {
            PREVIOUS_DECISION_TAG: champion.tags.get("champion.decision", "none"),
            "champion.decision": DEMOTED_ROLLBACK,
            "champion.promoted": "false",
            "champion.reason": f"replaced as champion by version {version} ({note})"[:250],
            DECIDED_AT_TAG: now,
            DECIDED_BY_TAG: decided_by[:250],
        })  # fmt: skip
    log.info("Model %s: champion rolled back from version %s to %s (%s)", model_name, previous, version, reason)
    return {"model_name": model_name, "version": version, "previous_champion": previous, "reason": reason}


def find_identical(registry: ModelRegistry, model_name: str, identity: str | None) -> RegisteredModelVersion | None:
    """The oldest complete version trained with the same identity (see ``lineage.training_identity``), or None."""
    if not identity:
        return None
    from edge_training.registry.base import TRAINING_IDENTITY_TAG

    for version in registry.find_versions_by_tag(model_name, TRAINING_IDENTITY_TAG, identity):
        if version.complete:
            return version
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
