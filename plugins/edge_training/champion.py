"""Champion gate: should a newly trained model replace the current champion?

Pure logic, no Airflow and no registry I/O. Both scores must come from the SAME holdout (the training job
evaluates the current champion next to the candidate), otherwise the comparison means nothing.
Every metric compared here is "higher is better" (roc_auc, pr_auc, f1, accuracy).

The promotion rule (:data:`PROMOTION_RULE`, also tagged on every version): the candidate competes only on a holdout
that neither model trained on and that is at least as recent as the champion's. The training job holds out the
newest day(s) of its window and trains on the days before (include/training/train.py ``split_window``), and scores
the champion on the candidate's holdout. So the comparison is fair only if the candidate's holdout starts no
earlier than the end of the champion's training days, and safe (a re-train of history cannot roll production
back) only if it ends no earlier than the champion's holdout. With the same holdout length both hold exactly when
the candidate's window end is not older than the champion's. Otherwise the decision is
``not_compared_older_window`` and the champion stays; ``force_promote`` skips the rule (``promoted_forced``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

from edge_training.exceptions import PromotionMetricError

# Outcomes, also written to the model version as the `champion.decision` tag.
PROMOTED_NO_CHAMPION = "promoted_no_champion"
PROMOTED = "promoted"
PROMOTED_FORCED = "promoted_forced"
ALREADY_CHAMPION = "already_champion"
KEPT_CHAMPION = "kept_champion"
KEPT_NO_CHAMPION_METRICS = "kept_no_champion_metrics"
NOT_COMPARED_OLDER_WINDOW = "not_compared_older_window"
NOT_COMPARED_UNKNOWN_WINDOW = "not_compared_unknown_window"
NOT_COMPARED_CHAMPION_CHANGED = "not_compared_champion_changed"
# Rollback (edge_model_rollback): the version put back as champion, and the champion it replaced.
PROMOTED_ROLLBACK = "promoted_rollback"
DEMOTED_ROLLBACK = "demoted_rollback"
PROMOTED_OUTCOMES = frozenset({PROMOTED_NO_CHAMPION, PROMOTED, PROMOTED_FORCED, PROMOTED_ROLLBACK})

# Tagged on every version as `champion.rule` (short: registries bound tag values).
PROMOTION_RULE = (
    "compared only if candidate holdout starts >= end of champion's training days and ends >= champion's holdout "
    "end (window end not older); else not_compared_older_window, champion stays; force_promote overrides"
)


@dataclass(frozen=True)
class TrainingWindows:
    """The days a model trained on and the days it was scored on, each ``[start, end)``.

    :param train: First and day-after-last day of the training days.
    :param holdout: First and day-after-last day of the holdout days.
    """

    train: tuple[date, date]
    holdout: tuple[date, date]

    def describe(self) -> str:
        return (f"trained {self.train[0]}..{self.train[1]}, holdout {self.holdout[0]}..{self.holdout[1]} "
                "(ends exclusive)")


def _span(value) -> tuple[date, date] | None:
    try:
        if isinstance(value, dict):
            start, end = value["start"], value["end"]
        elif isinstance(value, str) and "/" in value:
            start, end = value.split("/", 1)
        else:
            return None
        span = (date.fromisoformat(str(start)[:10]), date.fromisoformat(str(end)[:10]))
    except (KeyError, ValueError, TypeError):
        return None
    return span if span[0] < span[1] else None


def windows_from_document(document: dict | None) -> TrainingWindows | None:
    """Read the windows from the training job's ``metrics.json`` (``train_window``, ``holdout_window``)."""
    document = document if isinstance(document, dict) else {}
    train, holdout = _span(document.get("train_window")), _span(document.get("holdout_window"))
    return TrainingWindows(train, holdout) if train and holdout else None


def windows_from_tags(tags: dict | None) -> TrainingWindows | None:
    """Read a registered version's windows from its lineage tags (``edge.train_window``, ``edge.holdout_window``).

    A version registered before those tags existed has only ``edge.training_window``; the training job has always
    held out the window's newest day, which is what is assumed then.
    """
    tags = tags or {}
    train, holdout = _span(tags.get("edge.train_window")), _span(tags.get("edge.holdout_window"))
    if train and holdout:
        return TrainingWindows(train, holdout)
    window = _span(tags.get("edge.training_window"))
    if window is None or (window[1] - window[0]).days < 2:
        return None
    last = window[1] - timedelta(days=1)
    return TrainingWindows((window[0], last), (last, window[1]))


def window_rule(candidate: TrainingWindows | None, champion: TrainingWindows | None) -> tuple[str | None, str]:
    """Apply :data:`PROMOTION_RULE` to the windows; return (outcome if not comparable else None, why).

    :param candidate: The candidate's windows (from its metrics.json).
    :param champion: The champion's windows (from its tags).
    """
    if candidate is None or champion is None:
        whose = "candidate" if candidate is None else "champion"
        return NOT_COMPARED_UNKNOWN_WINDOW, (
            f"the {whose}'s training and holdout windows are not recorded, so it cannot be checked that neither "
            "model trained on the holdout"
        )
    if candidate.holdout[0] < champion.train[1]:
        return NOT_COMPARED_OLDER_WINDOW, (
            f"the candidate's holdout {candidate.holdout[0]}..{candidate.holdout[1]} starts before the champion's "
            f"training days end ({champion.train[1]}): the champion trained on it"
        )
    if candidate.holdout[1] < champion.holdout[1]:
        return NOT_COMPARED_OLDER_WINDOW, (
            f"the candidate's holdout ends {candidate.holdout[1]}, older than the champion's ({champion.holdout[1]}): "
            "a re-train of older data does not replace a newer champion"
        )
    return None, (f"candidate holdout {candidate.holdout[0]}..{candidate.holdout[1]} is after the champion's "
                  f"training days and not older than its holdout")


_UNCHECKED = object()


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
    scored_version=_UNCHECKED,
    candidate_windows=_UNCHECKED,
    champion_windows=_UNCHECKED,
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
    :param scored_version: The champion version the training job scored (None: there was none). If given and not
        ``champion_version``, the champion moved since (another promotion won): not comparable.
    :param candidate_windows: The candidate's :class:`TrainingWindows`; with ``champion_windows``, applies
        :data:`PROMOTION_RULE` (None for either: not comparable).
    :param champion_windows: The champion's :class:`TrainingWindows`.
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
            f"forced by the run: candidate {metric} {_fmt(cand)}, champion {_fmt(champ)} (window rule and "
            "comparison skipped)",
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

    if champion_version is not None and scored_version is not _UNCHECKED and scored_version != champion_version:
        return PromotionDecision(
            False,
            f"the champion is now version {champion_version}, but training scored "
            f"{'no champion' if scored_version is None else f'version {scored_version}'} on this holdout (another "
            f"promotion won meanwhile), so candidate {metric} {_fmt(cand)} cannot be compared; keeping the champion "
            "(the next training run compares against it)",
            cand,
            None,
            NOT_COMPARED_CHAMPION_CHANGED,
            metric,
        )

    if champion_version is not None and (candidate_windows is not _UNCHECKED or champion_windows is not _UNCHECKED):
        refused, why = window_rule(
            None if candidate_windows is _UNCHECKED else candidate_windows,
            None if champion_windows is _UNCHECKED else champion_windows,
        )
        if refused is not None:
            return PromotionDecision(
                False,
                f"not compared with champion version {champion_version}: {why}; keeping the champion "
                "(force_promote overrides)",
                cand,
                _lenient_score(champion, metric),
                refused,
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
