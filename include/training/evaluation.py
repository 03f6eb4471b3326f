"""Holdout evaluation aggregates, computed on the edge VM next to the data: only aggregates leave the site.

Shipped to the edge VM (and to Azure ML) with ``train.py``, which adds :func:`holdout_evaluation`'s result to
``metrics.json`` as ``evaluation``. Needs numpy only (scikit-learn is what the tests compare against).

What is computed from the holdout labels ``y`` and the exported model's probabilities ``proba``:

- ``intervals``: each metric's value on the holdout and its percentile-bootstrap 95 % interval (rows resampled
  with replacement ``resamples`` times, fixed seed, so the same holdout gives the same interval);
- ``confusion``: true/false positives/negatives at the decision ``threshold`` (0.5, as the serving image uses);
- ``roc`` and ``pr``: the ROC and precision-recall curves at fixed thresholds (``curve_points`` evenly spaced
  from 0 to 1), so no point of a curve sits on one row's probability;
- ``calibration``: per probability bin, the number of rows, the mean predicted probability and the observed
  failure rate. Bins with fewer than ``min_bin_rows`` rows report only their count: a rate over a handful of
  rows would come close to naming those rows' labels.

No per-row value (label, probability, feature) is in the result.
"""

from __future__ import annotations

import math

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
DEFAULT_CURVE_POINTS = 51
DEFAULT_CALIBRATION_BINS = 10
DEFAULT_MIN_BIN_ROWS = 10
THRESHOLD = 0.5
METRICS = ("roc_auc", "pr_auc", "f1", "accuracy", "precision", "recall")


class EvaluationError(ValueError):
    """The holdout cannot be evaluated as given; the message says what was checked and what was found."""


def _check(y, proba):
    import numpy as np

    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    if y.ndim != 1 or proba.shape != y.shape:
        raise EvaluationError(
            f"Holdout evaluation: labels and probabilities must be two 1-D arrays of the same length; found shapes "
            f"{y.shape} and {proba.shape}. Pass the holdout labels and the model's class-1 probabilities."
        )
    if not np.isin(y, (0, 1)).all():
        raise EvaluationError(
            f"Holdout evaluation: labels must be 0 or 1; {int((~np.isin(y, (0, 1))).sum())} of {len(y)} are not."
        )
    if not (np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()):
        raise EvaluationError(
            f"Holdout evaluation: probabilities must lie in [0, 1]; {int((~((proba >= 0) & (proba <= 1))).sum())} "
            f"of {len(proba)} do not. Pass the probability of class 1, not a score or logit."
        )
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise EvaluationError(
            f"Holdout evaluation: the holdout has {len(y)} rows and {positives} positive(s); both classes are "
            "needed for ROC AUC and precision-recall. Widen the training window or hold out more days."
        )
    return y.astype(np.int64), proba


class _SortedHoldout:
    """The holdout sorted once by descending probability, scored under any row weights in O(n).

    A bootstrap resample is the same rows with integer weights (how often each was drawn), so every resample
    reuses this order instead of sorting again.
    """

    def __init__(self, y, proba, threshold: float) -> None:
        import numpy as np

        order = np.argsort(-proba, kind="mergesort")
        self.order = order
        self.y = y[order].astype(np.float64)
        self.proba = proba[order]
        # Index of the last row of each run of equal probabilities: curves step only between distinct scores.
        self.group_end = np.flatnonzero(np.r_[np.diff(self.proba) != 0, True])
        self.predicted = (self.proba >= threshold).astype(np.float64)

    def scores(self, weights) -> dict[str, float]:
        """Every metric under ``weights`` (one per row, in the sorted order ``self.order``); empty if the
        weighted rows lack a class."""
        import numpy as np

        y = self.y
        tp_cum = np.cumsum(weights * y)[self.group_end]
        fp_cum = np.cumsum(weights * (1.0 - y))[self.group_end]
        pos, neg = tp_cum[-1], fp_cum[-1]
        if pos == 0 or neg == 0:
            return {}
        # ROC AUC: trapezoids between the distinct-score points (ties count half, as in Mann-Whitney).
        tpr = np.r_[0.0, tp_cum / pos]
        fpr = np.r_[0.0, fp_cum / neg]
        roc_auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
        # Average precision: precision at each distinct score, weighted by the recall it adds (no interpolation).
        precision_at = tp_cum / np.maximum(tp_cum + fp_cum, 1e-300)
        pr_auc = float(np.sum(np.diff(np.r_[0.0, tp_cum / pos]) * precision_at))
        predicted = self.predicted
        tp = float(np.sum(weights * y * predicted))
        fp = float(np.sum(weights * (1.0 - y) * predicted))
        fn = pos - tp
        total = pos + neg
        tn = neg - fp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / pos
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        return {"roc_auc": roc_auc, "pr_auc": pr_auc, "f1": f1, "accuracy": (tp + tn) / total,
                "precision": precision, "recall": recall}


def bootstrap_intervals(y, proba, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                        threshold: float = THRESHOLD, confidence: float = CONFIDENCE) -> dict:
    """Each metric's holdout value and its percentile-bootstrap interval.

    :param y: Holdout labels (0/1).
    :param proba: Probability of class 1 per holdout row.
    :param resamples: Bootstrap resamples (rows drawn with replacement, as many as the holdout has).
    :param seed: Seed of the resampling, so the same holdout gives the same interval.
    :param threshold: Decision threshold for f1, accuracy, precision and recall.
    :param confidence: Central coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
    :returns: ``{metric: {"value", "lower", "upper"}}`` plus ``"_method"`` describing how it was computed.
    """
    import numpy as np

    y, proba = _check(y, proba)
    if not isinstance(resamples, int) or resamples < 100:
        raise EvaluationError(f"Holdout evaluation: resamples must be an integer >= 100, found {resamples!r}; "
                              "fewer resamples make the 95 % interval's ends noise.")
    holdout = _SortedHoldout(y, proba, threshold)
    n = len(y)
    point = holdout.scores(np.ones(n))
    rng = np.random.default_rng(seed)
    drawn: dict[str, list[float]] = {m: [] for m in METRICS}
    degenerate = 0
    for _ in range(resamples):
        # Drawn in the sorted order directly: row positions are exchangeable, so no permutation is needed.
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        scores = holdout.scores(weights)
        if not scores:  # a resample without a positive (or negative) row: AUC undefined
            degenerate += 1
            continue
        for name in METRICS:
            drawn[name].append(scores[name])
    tail = (1.0 - confidence) / 2.0
    result: dict = {}
    for name in METRICS:
        values = np.asarray(drawn[name])
        lower, upper = (np.quantile(values, [tail, 1.0 - tail]) if len(values) else (math.nan, math.nan))
        result[name] = {"value": point[name], "lower": float(lower), "upper": float(upper)}
    result["_method"] = {"method": "percentile bootstrap", "confidence": confidence, "resamples": resamples,
                         "resamples_without_both_classes": degenerate, "seed": seed, "threshold": threshold}
    return result


def confusion_counts(y, proba, threshold: float = THRESHOLD) -> dict[str, int]:
    """True/false positives/negatives at ``threshold`` (a probability >= threshold predicts a failure)."""
    import numpy as np

    y, proba = _check(y, proba)
    predicted = proba >= threshold
    actual = y == 1
    return {"true_positives": int(np.sum(predicted & actual)), "false_positives": int(np.sum(predicted & ~actual)),
            "true_negatives": int(np.sum(~predicted & ~actual)), "false_negatives": int(np.sum(~predicted & actual)),
            "threshold": threshold}


def binned_curves(y, proba, points: int = DEFAULT_CURVE_POINTS) -> tuple[dict, dict]:
    """ROC and precision-recall curves evaluated at ``points`` evenly spaced thresholds from 0 to 1.

    :returns: ``(roc, pr)``: ``roc = {"thresholds", "fpr", "tpr"}``, ``pr = {"thresholds", "recall",
        "precision"}``; precision is None at a threshold no row reaches.
    """
    import numpy as np

    y, proba = _check(y, proba)
    if not isinstance(points, int) or points < 3:
        raise EvaluationError(f"Holdout evaluation: curve points must be an integer >= 3, found {points!r}.")
    thresholds = np.round(np.linspace(0.0, 1.0, points), 12)
    scores = np.sort(proba)
    pos_scores = np.sort(proba[y == 1])
    total_pos, total_neg = len(pos_scores), len(y) - len(pos_scores)
    # Rows at or above each threshold, all and positive: a count per threshold, never a row.
    above = len(scores) - np.searchsorted(scores, thresholds, side="left")
    tp = len(pos_scores) - np.searchsorted(pos_scores, thresholds, side="left")
    fp = above - tp
    rounded = [round(float(t), 6) for t in thresholds]
    roc = {"thresholds": rounded, "fpr": [float(v) for v in fp / total_neg], "tpr": [float(v) for v in tp / total_pos]}
    pr = {"thresholds": rounded, "recall": [float(v) for v in tp / total_pos],
          "precision": [float(t / a) if a else None for t, a in zip(tp, above)]}
    return roc, pr


def calibration_table(y, proba, bins: int = DEFAULT_CALIBRATION_BINS,
                      min_bin_rows: int = DEFAULT_MIN_BIN_ROWS) -> list[dict]:
    """Reliability table over ``bins`` equal-width probability bins.

    :returns: one ``{"lower", "upper", "rows", "mean_predicted", "observed_rate"}`` per bin; the two rates are
        None for a bin with fewer than ``min_bin_rows`` rows.
    """
    import numpy as np

    y, proba = _check(y, proba)
    if not isinstance(bins, int) or bins < 2:
        raise EvaluationError(f"Holdout evaluation: calibration bins must be an integer >= 2, found {bins!r}.")
    # Rounded so that an edge is the decimal it prints as (linspace gives 0.30000000000000004 for 0.3).
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12)
    index = np.clip(np.searchsorted(edges, proba, side="right") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        members = index == b
        rows = int(members.sum())
        shown = rows >= min_bin_rows
        table.append({
            "lower": round(float(edges[b]), 6), "upper": round(float(edges[b + 1]), 6), "rows": rows,
            "mean_predicted": float(proba[members].mean()) if shown else None,
            "observed_rate": float(y[members].mean()) if shown else None,
        })
    return table


def holdout_evaluation(y, proba, *, seed: int = 0, resamples: int = DEFAULT_RESAMPLES,
                       threshold: float = THRESHOLD, curve_points: int = DEFAULT_CURVE_POINTS,
                       calibration_bins: int = DEFAULT_CALIBRATION_BINS,
                       min_bin_rows: int = DEFAULT_MIN_BIN_ROWS) -> dict:
    """Every holdout aggregate of the model card, as one JSON-ready dict (see the module docstring).

    :param y: Holdout labels (0/1).
    :param proba: The exported model's probability of class 1 per holdout row.
    :param seed: Bootstrap seed (the training seed, so a re-run reproduces the intervals).
    :param resamples: Bootstrap resamples.
    :param threshold: Decision threshold of the confusion counts and threshold metrics.
    :param curve_points: Thresholds at which the ROC and PR curves are evaluated.
    :param calibration_bins: Equal-width probability bins of the calibration table.
    :param min_bin_rows: Smallest calibration bin whose rates are reported.
    :raises EvaluationError: malformed input, or a holdout without both classes.
    """
    import numpy as np

    intervals = bootstrap_intervals(y, proba, resamples=resamples, seed=seed, threshold=threshold)
    method = intervals.pop("_method")
    roc, pr = binned_curves(y, proba, curve_points)
    return {
        "schema_version": 1,
        "rows": int(len(y)),
        "positives": int(np.sum(np.asarray(y) == 1)),
        "intervals": intervals,
        "bootstrap": method,
        "confusion": confusion_counts(y, proba, threshold),
        "roc": roc,
        "pr": pr,
        "calibration": {"bins": calibration_table(y, proba, calibration_bins, min_bin_rows),
                        "min_bin_rows": min_bin_rows},
    }
