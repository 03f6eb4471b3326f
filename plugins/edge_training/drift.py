"""Data drift from privacy-safe profiles: per feature PSI, Jensen-Shannon distance and normalized Wasserstein distance.

The profiles themselves (fixed grid from the expectation suite, chunk merge, k-suppression) are made by
``include/training/data_profile.py``, which ships to the edge VM with the training code: loading it from there keeps
one implementation for the reference profile (computed on the VM at training time) and the current profile
(computed by ``validate_data`` while it streams). This module compares two *published* profiles, so it only ever
sees suppressed histograms and aggregates, never a row. No Airflow import.

Metric names follow Azure ML model monitoring: ``population_stability_index``, ``jensen_shannon_distance``,
``normalized_wasserstein_distance``. A feature has drifted when any of its metrics exceeds its threshold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_training import config
from edge_training.model_artifacts import REFERENCE_PROFILE_FILE  # noqa: F401 - where the profile's users look for it
from edge_training.shipped import training_module

data_profile = training_module("data_profile")

ProfileAccumulator = data_profile.ProfileAccumulator
grid_from_suite = data_profile.grid_from_suite
publish = data_profile.publish
range_columns = data_profile.range_columns
DEFAULT_K = data_profile.DEFAULT_K


PSI = "population_stability_index"
JS = "jensen_shannon_distance"
NWD = "normalized_wasserstein_distance"
METRICS = (PSI, JS, NWD)
# Azure ML model monitoring's defaults for numerical data drift are 0.1 for these distances; PSI is commonly read
# as "no change" below 0.1 and "significant" above 0.2.
DEFAULT_THRESHOLDS = {PSI: 0.2, JS: 0.1, NWD: 0.1}
# Calibrated threshold = CALIBRATION_FACTOR x the largest value one day of the training window reached against the
# whole window, never below CALIBRATION_FLOOR x the default (a window of identical days would otherwise give 0).
CALIBRATION_FACTOR = 2.0
CALIBRATION_FLOOR = 0.25
# Added to every bin's share before PSI's logarithm: an empty bin on one side would make it infinite.
PSI_EPSILON = 1e-4


def suite_grid(suite_path: str | Path = config.EXPECTATION_SUITE_PATH, bins: int = data_profile.DEFAULT_BINS) -> dict:
    """The profile grid of every column the suite gives a range, ``{column: {"lo", "hi", "bins"}}``.

    :param suite_path: the expectation suite JSON.
    :param bins: bins per feature.
    """
    suite = json.loads(Path(suite_path).read_text(encoding="utf-8"))
    return grid_from_suite(suite, range_columns(suite), bins)


def read_profile(path: str | Path) -> dict | None:
    """A published profile written to ``path`` (e.g. ``reference_profile.json``), or None when there is none."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _shares(feature: Mapping[str, Any]) -> list[float]:
    """The published bins as shares of the visible rows (a suppressed bin counts as empty)."""
    counts = [c or 0 for c in feature["counts"]]
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0] * len(counts)


def population_stability_index(p: Sequence[float], q: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """PSI of ``q`` (current) against ``p`` (reference): sum of (q - p) ln(q / p) over the bins, smoothed by epsilon."""
    ps = [x + epsilon for x in p]
    qs = [x + epsilon for x in q]
    sp, sq = sum(ps), sum(qs)
    return sum((b / sq - a / sp) * math.log((b / sq) / (a / sp)) for a, b in zip(ps, qs))


def jensen_shannon_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """The square root of the Jensen-Shannon divergence (base 2): 0 for equal histograms, 1 for disjoint ones."""

    def kl(a: Sequence[float], m: Sequence[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)

    m = [(a + b) / 2 for a, b in zip(p, q)]
    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2))


def wasserstein_distance(p: Sequence[float], q: Sequence[float], width: float) -> float:
    """Earth mover's distance between two histograms on the same grid: sum of |CDF_p - CDF_q| x bin width."""
    distance, cp, cq = 0.0, 0.0, 0.0
    for a, b in zip(p, q):
        cp += a
        cq += b
        distance += abs(cp - cq) * width
    return distance


def feature_metrics(reference: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, float]:
    """The three metrics of one feature's ``current`` published histogram against its ``reference``.

    The Wasserstein distance is divided by the reference's standard deviation (by the grid's uniform deviation when
    the reference publishes none), so it reads in units of the feature's spread whatever its physical unit.

    :raises ValueError: the two histograms are not on the same grid.
    """
    grid = ("lo", "hi", "bins")
    if any(float(reference[g]) != float(current[g]) for g in grid):
        raise ValueError(
            "Checked the profile grids before comparing them: reference "
            f"{[reference[g] for g in grid]} vs current {[current[g] for g in grid]} (lo, hi, bins). Profiles are "
            "only comparable on one grid: both must come from the same expectation suite ranges."
        )
    p, q = _shares(reference), _shares(current)
    width = (float(reference["hi"]) - float(reference["lo"])) / int(reference["bins"])
    scale = reference.get("std") or (float(reference["hi"]) - float(reference["lo"])) / math.sqrt(12)
    return {
        PSI: population_stability_index(p, q),
        JS: jensen_shannon_distance(p, q),
        NWD: wasserstein_distance(p, q, width) / scale,
    }


def calibrate_thresholds(
    reference: Mapping[str, Any], defaults: Mapping[str, float] = DEFAULT_THRESHOLDS
) -> dict[str, dict[str, float]]:
    """Per feature and metric, a threshold from the training window's own day-to-day variation.

    Each day profile under ``reference["days"]`` is compared with the other days of the window; the threshold is
    :data:`CALIBRATION_FACTOR` times the largest value seen, at least :data:`CALIBRATION_FLOOR` times the default.

    :param reference: a published reference profile with ``days`` (``train.py`` writes them).
    :param defaults: the fixed thresholds, the floor's base.
    :raises ValueError: the reference has fewer than two day profiles.
    """
    days = reference.get("days") or {}
    if len(days) < 2:
        raise ValueError(
            f"Checked the reference profile for day profiles to calibrate the drift thresholds: found {len(days)}, "
            "need at least 2. Train on a window of two or more days, or set EDGE_DRIFT_CALIBRATE=false to use "
            "the default thresholds."
        )
    thresholds: dict[str, dict[str, float]] = {}
    for name, whole in reference["features"].items():
        seen = dict.fromkeys(METRICS, 0.0)
        for label, day in days.items():
            if name in day["features"] and day["features"][name]["count"]:
                # Each day against the other days: a day compared with a window that holds it looks closer than
                # a new day will.
                others = _merged_feature([d["features"][name] for other, d in days.items() if other != label], whole)
                for metric, value in feature_metrics(others, day["features"][name]).items():
                    seen[metric] = max(seen[metric], value)
        thresholds[name] = {
            m: max(CALIBRATION_FACTOR * seen[m], CALIBRATION_FLOOR * float(defaults[m])) for m in METRICS
        }
    return thresholds


def _merged_feature(features: Sequence[Mapping[str, Any]], like: Mapping[str, Any]) -> dict[str, Any]:
    """Published histograms of one feature added up (suppressed bins as empty), on the grid of ``like``."""
    counts = [sum((f["counts"][i] or 0) for f in features) for i in range(int(like["bins"]))]
    return {**like, "counts": counts, "count": sum(counts)}


@dataclass
class DriftResult:
    """Per-feature metrics, thresholds and verdicts of a current profile against a reference."""

    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibrated: bool = False
    current_rows: int = 0
    reference_rows: int = 0

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f["drifted"]]

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_features)

    def reason(self, label: str = "") -> str:
        """One line naming what drifted and by how much (metrics and thresholds only), or that nothing did."""
        where = f" in {label}" if label else ""
        if not self.drifted:
            return f"no data drift{where}: every feature within its thresholds"
        parts = []
        for name in self.drifted_features:
            over = self.features[name]["over"]
            parts.append(
                f"{name} ("
                + ", ".join(f"{m} {self.features[name]['metrics'][m]:.3f} > {self.features[name]['thresholds'][m]:.3f}" for m in over)
                + ")"
            )
        return f"data drift{where} in {len(parts)} feature(s): " + "; ".join(parts)

    def summary(self, label: str = "") -> dict[str, Any]:
        """The short form for XCom and asset events: verdicts and metrics, no histogram."""
        return {
            "drifted": self.drifted,
            "drifted_features": self.drifted_features,
            "reason": self.reason(label),
            "calibrated": self.calibrated,
            "current_rows": self.current_rows,
            "reference_rows": self.reference_rows,
            "metrics": {n: {m: round(v, 4) for m, v in f["metrics"].items()} for n, f in self.features.items()},
        }


def compare_profiles(
    reference: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    thresholds: Mapping[str, float] | None = None,
    calibrate: bool = False,
) -> DriftResult:
    """Compare a current published profile with the reference, feature by feature.

    :param reference: the champion's published reference profile.
    :param current: the new partitions' published profile.
    :param thresholds: one threshold per metric (default :data:`DEFAULT_THRESHOLDS`).
    :param calibrate: derive per-feature thresholds from the reference's day-to-day variation instead.
    :raises ValueError: a feature of the reference is missing from the current profile.
    """
    fixed = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    per_feature = calibrate_thresholds(reference, fixed) if calibrate else None
    missing = sorted(set(reference["features"]) - set(current["features"]))
    if missing:
        raise ValueError(
            f"Checked the current profile for the reference's features: {missing} are missing (current has "
            f"{sorted(current['features'])}). Profile the new partitions with the same suite and features."
        )
    result = DriftResult(
        calibrated=calibrate, current_rows=int(current.get("rows", 0)), reference_rows=int(reference.get("rows", 0))
    )
    for name, ref in reference["features"].items():
        cur = current["features"][name]
        limits = per_feature[name] if per_feature else dict(fixed)
        metrics = feature_metrics(ref, cur) if cur["count"] else dict.fromkeys(METRICS, 0.0)
        over = [m for m in METRICS if metrics[m] > limits[m]]
        result.features[name] = {"metrics": metrics, "thresholds": limits, "over": over, "drifted": bool(over)}
    return result
