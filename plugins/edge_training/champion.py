"""Champion gate: should a newly trained model replace the current champion?

Pure logic, no Airflow and no registry I/O. Both scores must come from the SAME holdout (the training job
evaluates the current champion next to the candidate), otherwise the comparison means nothing.
Every metric compared here is "higher is better" (roc_auc, pr_auc, f1, accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_training.exceptions import PromotionMetricError

# Outcomes, also written to the model version as the `champion.decision` tag.
PROMOTED_NO_CHAMPION = "promoted_no_champion"
PROMOTED = "promoted"
PROMOTED_FORCED = "promoted_forced"
ALREADY_CHAMPION = "already_champion"
KEPT_CHAMPION = "kept_champion"
KEPT_NO_CHAMPION_METRICS = "kept_no_champion_metrics"


@dataclass(frozen=True)
class PromotionDecision:
    """What the champion gate decided and why.

    :param promote: True if the candidate becomes the champion.
    :param reason: One human sentence naming the metric, both scores and the margin.
    :param candidate_score: The candidate's score on the holdout (None only if forced without one).
    :param champion_score: The champion's score on the same holdout (None if there is no champion or no score).
    :param outcome: Machine-readable outcome, one of the module constants (e.g. ``kept_champion``).
    :param metric: Name of the metric compared.
    """

    promote: bool
    reason: str
    candidate_score: float | None
    champion_score: float | None
    outcome: str = PROMOTED
    metric: str = "roc_auc"


def split_metrics(document: dict | None) -> tuple[dict, dict | None]:
    """Split the training job's metrics into (candidate metrics, champion metrics on the same holdout).

    Accepts both the full ``metrics.json`` document (``{"metrics": {...}, "champion_metrics": {...}, ...}``)
    and a flat dict of metrics with an optional ``champion_metrics`` entry.
    """
    document = document if isinstance(document, dict) else {}
    champion = document.get("champion_metrics")
    candidate = document.get("metrics") if isinstance(document.get("metrics"), dict) else document
    return (
        {k: v for k, v in candidate.items() if k != "champion_metrics"},
        champion if isinstance(champion, dict) else None,
    )


def _score(metrics: dict | None, metric: str, whose: str) -> float:
    if not isinstance(metrics, dict):
        raise PromotionMetricError(
            f"Champion gate: expected the {whose} metrics as a dict, found {type(metrics).__name__}. "
            "Check that the training job returned its metrics.json content under 'metrics'."
        )
    if metric not in metrics:
        present = ", ".join(sorted(str(k) for k in metrics)) or "none"
        raise PromotionMetricError(
            f"Champion gate: metric {metric!r} is missing from the {whose} metrics (present: {present}). "
            "Make the training job compute it, or choose one of the present metrics as the promotion metric."
        )
    value = metrics[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise PromotionMetricError(
            f"Champion gate: the {whose} {metric} must be a number, found {value!r}. "
            "Check the training job's evaluation step."
        )
    return float(value)


def _lenient_score(metrics: dict | None, metric: str) -> float | None:
    try:
        return _score(metrics, metric, "")
    except PromotionMetricError:
        return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def decide_promotion(
    candidate: dict,
    champion: dict | None,
    metric: str = "roc_auc",
    margin: float = 0.0,
    force: bool = False,
    *,
    champion_version: str | None = None,
    candidate_version: str | None = None,
) -> PromotionDecision:
    """Decide whether ``candidate`` replaces the champion.

    The candidate wins only if it is strictly better AND better by at least ``margin``; a tie keeps the
    champion so that equal models do not churn the deployed version.

    :param candidate: The candidate's metrics on the holdout (``training["metrics"]``).
    :param champion: The current champion's metrics on the same holdout, or None.
    :param metric: Metric to compare (higher is better).
    :param margin: Minimum improvement required (>= 0).
    :param force: Promote regardless of the scores (a manual run's ``force_promote``).
    :param champion_version: The registry's current champion version, if any. With a champion version but no
        champion metrics the candidate cannot be compared, so it is not promoted (unless forced).
    :param candidate_version: The candidate's registry version; equal to ``champion_version`` means a retry
        after an earlier attempt already promoted it.
    :raises PromotionMetricError: the metric is missing or not a number, or the margin is negative.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or math.isnan(margin) or margin < 0:
        raise PromotionMetricError(
            f"Champion gate: the promotion margin must be a number >= 0, found {margin!r}. "
            "Fix EDGE_PROMOTION_MARGIN or the operator's margin argument."
        )
    margin = float(margin)

    if force:
        cand = _lenient_score(candidate, metric)
        champ = _lenient_score(champion, metric)
        return PromotionDecision(
            True,
            f"forced by the run: candidate {metric} {_fmt(cand)}, champion {_fmt(champ)} (comparison skipped)",
            cand,
            champ,
            PROMOTED_FORCED,
            metric,
        )

    cand = _score(candidate, metric, "candidate")

    if champion_version is not None and candidate_version is not None and champion_version == candidate_version:
        return PromotionDecision(
            True,
            f"candidate version {candidate_version} is already the champion (a previous attempt promoted it)",
            cand,
            _lenient_score(champion, metric),
            ALREADY_CHAMPION,
            metric,
        )

    if champion is None:
        if champion_version is not None:
            return PromotionDecision(
                False,
                f"champion version {champion_version} exists but was not evaluated on this run's holdout, "
                f"so candidate {metric} {_fmt(cand)} cannot be compared; keeping the champion "
                "(re-run training so it scores the champion, or force the promotion)",
                cand,
                None,
                KEPT_NO_CHAMPION_METRICS,
                metric,
            )
        return PromotionDecision(
            True, f"no champion yet: candidate {metric} {_fmt(cand)} becomes the champion", cand, None,
            PROMOTED_NO_CHAMPION, metric,
        )

    champ = _score(champion, metric, "champion")
    gain = cand - champ
    if gain > 0 and gain >= margin:
        return PromotionDecision(
            True,
            f"candidate {metric} {_fmt(cand)} beats champion {_fmt(champ)} by {_fmt(gain)} >= margin {_fmt(margin)}",
            cand,
            champ,
            PROMOTED,
            metric,
        )
    if gain > 0:
        why = f"beats champion {_fmt(champ)} by only {_fmt(gain)} < margin {_fmt(margin)}"
    elif gain == 0:
        why = f"ties champion {_fmt(champ)} (a tie keeps the champion)"
    else:
        why = f"is below champion {_fmt(champ)} by {_fmt(-gain)}"
    return PromotionDecision(
        False, f"candidate {metric} {_fmt(cand)} {why}; keeping the champion", cand, champ, KEPT_CHAMPION, metric
    )
