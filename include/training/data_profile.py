"""Privacy-safe data profiles: per feature, a histogram on a fixed grid, null rate, count, mean and deviation.

Shared by both sides of the trust boundary, like ``blob_manifest.py`` beside it: ``train.py`` computes the reference
profile of a training window on the edge VM, and ``validate_data`` (Airflow, at the site) computes the profile of new
partitions while it streams them; the Airflow side loads this file from ``include/training/``
(``edge_training.drift``), so both profiles are made by one implementation. Standard library and numpy only.

Two forms:

* an **accumulator** (:class:`ProfileAccumulator`): exact counts and moments, merged chunk by chunk and day by day.
  It never leaves the process that reads the rows.
* a **published profile** (:func:`publish`, a JSON-ready dict): what may leave the site. The grid comes from the
  expectation suite's ranges, not from the data; any bin holding fewer than ``k`` rows is suppressed (its count is
  ``null``), and when the suppressed rows would add up to fewer than ``k`` (so that the total would give a small bin
  away) the smallest remaining bins are suppressed with them. No minimum, maximum or single value is published:
  a feature with fewer than ``k`` values, or whose values are all alike (deviation 0: the mean would be that value),
  publishes no mean and no deviation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEMA_VERSION = 1
# The smallest number of rows a published bin may describe.
DEFAULT_K = 10
DEFAULT_BINS = 40
BETWEEN = "expect_column_values_to_be_between"
# Published means and deviations are rounded: enough for drift metrics, not a fingerprint of the rows.
SIGNIFICANT_DIGITS = 6


def grid_from_suite(suite: Mapping[str, Any], features: Sequence[str], bins: int = DEFAULT_BINS) -> dict[str, dict]:
    """The fixed histogram grid per feature: ``{feature: {"lo", "hi", "bins"}}`` from the suite's ranges.

    :param suite: the expectation suite as a dict (``{"expectations": [{"type", "kwargs"}, ...]}``).
    :param features: the numeric features to profile.
    :param bins: number of equal-width bins between the range's ends.
    :raises ValueError: a feature has no ``expect_column_values_to_be_between`` with both ends in the suite.
    """
    if bins < 2:
        raise ValueError(f"A profile grid needs at least 2 bins per feature; got bins={bins}.")
    ranges: dict[str, tuple[float, float]] = {}
    for expectation in suite.get("expectations", []):
        kwargs = expectation.get("kwargs") or {}
        if expectation.get("type") == BETWEEN and kwargs.get("column") in features:
            lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
            if lo is not None and hi is not None and float(hi) > float(lo):
                ranges[kwargs["column"]] = (float(lo), float(hi))
    missing = [f for f in features if f not in ranges]
    if missing:
        raise ValueError(
            f"Checked the expectation suite {suite.get('name')!r} for the ranges of the profiled features: "
            f"{missing} have no {BETWEEN} with both min_value and max_value. The profile grid is taken from "
            "those ranges (never from the data): add the expectation for each feature."
        )
    return {f: {"lo": ranges[f][0], "hi": ranges[f][1], "bins": int(bins)} for f in features}


def range_columns(suite: Mapping[str, Any]) -> list[str]:
    """The columns that have an ``expect_column_values_to_be_between`` with both ends, in suite order."""
    found = []
    for expectation in suite.get("expectations", []):
        kwargs = expectation.get("kwargs") or {}
        if (
            expectation.get("type") == BETWEEN
            and kwargs.get("min_value") is not None
            and kwargs.get("max_value") is not None
            and kwargs.get("column") not in found
        ):
            found.append(kwargs["column"])
    return found


def bin_edges(spec: Mapping[str, Any]) -> list[float]:
    """The ``bins + 1`` edges of one feature's grid."""
    lo, hi, n = float(spec["lo"]), float(spec["hi"]), int(spec["bins"])
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


class ProfileAccumulator:
    """Exact per-feature counts and moments of the rows seen so far; merge chunk by chunk, then :func:`publish`.

    Moments are kept as (count, mean, M2) and merged with Chan's parallel formula, so the order and the size of the
    chunks do not change the result beyond float rounding.

    :param grid: ``{feature: {"lo", "hi", "bins"}}`` (:func:`grid_from_suite`).
    """

    def __init__(self, grid: Mapping[str, Mapping[str, Any]]) -> None:
        import numpy as np

        self.grid = {f: {"lo": float(s["lo"]), "hi": float(s["hi"]), "bins": int(s["bins"])} for f, s in grid.items()}
        self.rows = 0
        self.counts = {f: np.zeros(s["bins"], dtype=np.int64) for f, s in self.grid.items()}
        self.nulls = dict.fromkeys(self.grid, 0)
        self.n = dict.fromkeys(self.grid, 0)
        self.mean = dict.fromkeys(self.grid, 0.0)
        self.m2 = dict.fromkeys(self.grid, 0.0)

    def add_rows(self, columns: Mapping[str, Any], rows: int) -> None:
        """Add one chunk: ``columns`` maps each feature to its values (array-like, NaN = missing).

        :param columns: the chunk's values per feature (a DataFrame works: ``frame[feature]``).
        :param rows: the chunk's row count (a missing column counts all its rows as missing).
        """
        import numpy as np

        self.rows += int(rows)
        for feature, spec in self.grid.items():
            try:
                raw = columns[feature]
            except (KeyError, IndexError):
                self.nulls[feature] += int(rows)
                continue
            values = np.asarray(raw, dtype=np.float64)
            missing = np.isnan(values)
            nulls = int(missing.sum())
            present = values[~missing] if nulls else values
            self.nulls[feature] += nulls
            if not len(present):
                continue
            # Values outside the suite's range go to the end bins: validation reports them, the profile counts them.
            position = present - spec["lo"]
            position *= spec["bins"] / (spec["hi"] - spec["lo"])
            np.clip(position, 0, spec["bins"] - 1, out=position)
            self.counts[feature] += np.bincount(position.astype(np.intp), minlength=spec["bins"])
            mean = float(present.mean())
            deviation = np.subtract(present, mean, out=position)
            # square + sum, not a dot product: BLAS may start threads per call, which costs more than the sum.
            self._merge_moments(feature, len(present), mean, float(np.square(deviation, out=deviation).sum()))

    def _merge_moments(self, feature: str, n_b: int, mean_b: float, m2_b: float) -> None:
        n_a, mean_a, m2_a = self.n[feature], self.mean[feature], self.m2[feature]
        n = n_a + n_b
        if n == 0:
            return
        delta = mean_b - mean_a
        self.mean[feature] = mean_a + delta * n_b / n
        self.m2[feature] = m2_a + m2_b + delta * delta * n_a * n_b / n
        self.n[feature] = n

    def merge(self, other: ProfileAccumulator) -> ProfileAccumulator:
        """Add ``other``'s rows to this accumulator (same grid required); returns self.

        :raises ValueError: the grids differ (profiles on different grids cannot be compared or merged).
        """
        if other.grid != self.grid:
            raise ValueError(
                "Cannot merge data profiles made on different grids: "
                f"{sorted(self.grid)} vs {sorted(other.grid)} (or different ranges/bins); build both from the same suite."
            )
        self.rows += other.rows
        for feature in self.grid:
            self.counts[feature] = self.counts[feature] + other.counts[feature]
            self.nulls[feature] += other.nulls[feature]
            self._merge_moments(feature, other.n[feature], other.mean[feature], other.m2[feature])
        return self


def _suppress(counts: Sequence[int], k: int) -> list[int | None]:
    """Counts with every bin of 1..k-1 rows set to None, plus the smallest others while the hidden total is < k."""
    shown: list[int | None] = [int(c) for c in counts]
    hidden = [i for i, c in enumerate(counts) if 0 < c < k]
    for i in hidden:
        shown[i] = None
    hidden_total = sum(int(counts[i]) for i in hidden)
    if 0 < hidden_total < k:
        # The total and the other bins would give the hidden count away: hide more until it is a group of >= k.
        for i in sorted((i for i, c in enumerate(shown) if c), key=lambda i: (shown[i], i)):
            shown[i] = None
            hidden_total += int(counts[i])
            if hidden_total >= k:
                break
    return shown


def _rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def publish(acc: ProfileAccumulator, k: int = DEFAULT_K, days: Mapping[str, ProfileAccumulator] | None = None) -> dict:
    """The profile that may leave the site: suppressed bins, no extreme and no single value (see the module doc).

    :param acc: the accumulator of all rows profiled.
    :param k: the smallest number of rows a published bin or statistic may describe.
    :param days: optional accumulators per day (``YYYY-MM-DD``), published the same way under ``"days"``: the
        day-to-day variation thresholds are calibrated from.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2 (a bin of one row is that row's value); got k={k}.")
    features = {}
    for feature, spec in acc.grid.items():
        n = acc.n[feature]
        std = math.sqrt(acc.m2[feature] / (n - 1)) if n > 1 else 0.0
        safe_moments = n >= k and _rounded(std) > 0
        rows = n + acc.nulls[feature]
        counts = _suppress(acc.counts[feature].tolist(), k)
        features[feature] = {
            "lo": spec["lo"],
            "hi": spec["hi"],
            "bins": spec["bins"],
            "counts": counts,
            "suppressed_bins": sum(1 for c in counts if c is None),
            "count": int(n),
            "null_count": int(acc.nulls[feature]),
            "null_rate": _rounded(acc.nulls[feature] / rows) if rows else None,
            "mean": _rounded(acc.mean[feature]) if safe_moments else None,
            "std": _rounded(std) if safe_moments else None,
        }
    profile = {"schema_version": SCHEMA_VERSION, "k": int(k), "rows": int(acc.rows), "features": features}
    if days:
        profile["days"] = {day: publish(day_acc, k) for day, day_acc in sorted(days.items())}
    return profile


def profile_rows(grid: Mapping[str, Mapping[str, Any]], chunks: Iterable[tuple[Mapping[str, Any], int]]) -> ProfileAccumulator:
    """An accumulator over ``(columns, rows)`` chunks (see :meth:`ProfileAccumulator.add_rows`)."""
    acc = ProfileAccumulator(grid)
    for columns, rows in chunks:
        acc.add_rows(columns, rows)
    return acc


def publish_by_day(frame, grid: Mapping[str, Mapping[str, Any]], day_column: str, k: int = DEFAULT_K) -> dict:
    """The published profile of a whole training window, with one day profile per value of ``day_column``.

    :param frame: a pandas DataFrame with the profiled features and ``day_column`` (a ``YYYY-MM-DD`` text or a
        date ordinal, as ``train.py`` keeps it).
    :param grid: ``{feature: {"lo", "hi", "bins"}}`` (:func:`grid_from_suite`).
    :param day_column: the column naming each row's partition day.
    :param k: the smallest number of rows a published bin or statistic may describe.
    """
    import datetime as dt

    days: dict[str, ProfileAccumulator] = {}
    whole = ProfileAccumulator(grid)
    for day, rows in frame.groupby(day_column, sort=True):
        label = dt.date.fromordinal(int(day)).isoformat() if not isinstance(day, str) else day
        days[label] = profile_rows(grid, [(rows, len(rows))])
        whole.merge(days[label])
    return publish(whole, k, days=days)
