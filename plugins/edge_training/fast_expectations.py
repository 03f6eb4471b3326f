"""Row-level expectations evaluated directly on a pandas chunk, with the counts Great Expectations would give.

Great Expectations spends ~2 s on a chunk of 250k rows resolving its metric graph for a suite whose checks themselves
take milliseconds. For the column map expectations below, this module computes the same thing the library's pandas
engine computes (``great_expectations/expectations/metrics/column_map_metrics/*.py`` and
``ColumnMapExpectation._validate`` in 1.24), with the same pandas operations on the same column:

- ``table.row_count`` is the chunk's length (``element_count``);
- a value is *missing* when ``Series.isnull()`` says so (None, NaN, pd.NA; not ±inf);
- ``expect_column_values_to_not_be_null`` counts the missing values as unexpected, over all rows; its result has no
  ``missing_count`` and its success is ``(rows - unexpected) / rows >= mostly``;
- every other expectation is evaluated on the non-missing values only: ``unexpected_count`` counts those that fail
  its condition, ``missing_count`` the missing ones, and success is ``(non-missing - unexpected) / non-missing >=
  mostly`` (true when the chunk or its non-missing values are empty);
- ``expect_column_values_to_be_between``: ``min_value <= v <= max_value`` (``<`` with ``strict_min`` /
  ``strict_max``), vectorised as the library does for int64 and float64 columns (other dtypes are left to it);
- ``expect_column_values_to_be_in_set``: ``Series.isin(value_set)``;
- ``expect_column_values_to_match_regex``: ``Series.astype(str).str.contains(regex)`` (a search, not anchored: the
  pattern carries its own ``^``/``$``).

Whatever is not covered exactly (another expectation type, a keyword such as ``row_condition`` or
``result_format``, suite parameters, bounds that are not plain numbers, a column the chunk lacks or of another
dtype, any error while evaluating) returns None: the caller runs Great Expectations on it instead, which also
produces the library's own exception message where there is one.

Results carry counts only, never a value of the data. No Airflow or Great Expectations import; numpy and pandas come
in with the chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
MATCH_REGEX = "expect_column_values_to_match_regex"
# Keywords each supported type may have (besides ``column`` and ``mostly``); any other keyword means Great
# Expectations evaluates the expectation.
SUPPORTED_KWARGS = {
    NOT_NULL: frozenset(),
    BETWEEN: frozenset({"min_value", "max_value", "strict_min", "strict_max"}),
    IN_SET: frozenset({"value_set"}),
    MATCH_REGEX: frozenset({"regex"}),
}
NO_COLUMN = "_nocolumn"

T = TypeVar("T")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def supported(expectation_type: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether :func:`evaluate` can decide this expectation exactly as Great Expectations does, whatever the chunk
    (the chunk itself can still make :func:`evaluate` decline: a missing column, another dtype)."""
    allowed = SUPPORTED_KWARGS.get(expectation_type)
    if allowed is None or set(kwargs) - allowed - {"column", "mostly"}:
        return False
    if not isinstance(kwargs.get("column"), str):
        return False
    mostly = kwargs.get("mostly", 1)
    if not _number(mostly) or not 0 <= mostly <= 1:
        return False
    if expectation_type == BETWEEN:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if not all(bound is None or _number(bound) for bound in (low, high)):
            return False
        if (low is None and high is None) or (low is not None and high is not None and low > high):
            return False  # the library raises its own error for these
        if not all(isinstance(kwargs.get(k, False), bool) for k in ("strict_min", "strict_max")):
            return False
    if expectation_type == IN_SET:
        value_set = kwargs.get("value_set")
        if not isinstance(value_set, (list, tuple)):
            return False
        if not all(v is None or isinstance(v, (str, int, float)) for v in value_set):
            return False
    if expectation_type == MATCH_REGEX and not isinstance(kwargs.get("regex"), str):
        return False
    return True


def evaluate(expectation_type: str, kwargs: Mapping[str, Any], chunk) -> dict | None:
    """``{"success": bool, "result": {...}}`` as Great Expectations reports the expectation on ``chunk`` with
    result format BASIC and no unexpected values, or None when this module does not decide it.

    :param expectation_type: e.g. ``expect_column_values_to_be_between``.
    :param kwargs: the expectation's keyword arguments (its configuration's ``kwargs``).
    :param chunk: a pandas DataFrame.
    """
    if not supported(expectation_type, kwargs):
        return None
    column = kwargs["column"]
    if column not in chunk.columns or list(chunk.columns).count(column) != 1:
        return None
    series = chunk[column]
    if expectation_type == BETWEEN and series.dtype not in [int, float]:
        return None
    try:
        return _evaluate(expectation_type, kwargs, series, len(chunk))
    except Exception:  # noqa: BLE001 - whatever went wrong, the library decides (and words its own error)
        return None


def _evaluate(expectation_type: str, kwargs: Mapping[str, Any], series, rows: int) -> dict:
    import numpy as np

    mostly = kwargs.get("mostly", 1)
    null_count = int(np.count_nonzero(series.isnull()))
    if expectation_type == NOT_NULL:
        success = True if rows == 0 else (rows - null_count) / rows >= mostly
        return {
            "success": success,
            "result": {
                "element_count": rows,
                "unexpected_count": null_count,
                "unexpected_percent": null_count / rows * 100 if rows > 0 else None,
            },
        }
    if expectation_type == BETWEEN:
        # int64 and float64 only (see evaluate): the comparisons on the whole column, without copying out the
        # non-missing values. A missing value is NaN there, which fails every comparison: it is taken off again.
        unexpected = int(np.count_nonzero(~_condition(expectation_type, kwargs, series))) - null_count
    else:
        # Without missing values the column itself is the library's filtered column (no copy of its strings).
        values = series if null_count == 0 else series[series.notnull()]
        unexpected = int(np.count_nonzero(~_condition(expectation_type, kwargs, values)))
    nonnull = rows - null_count
    if rows == 0 or nonnull == 0:
        success = True
    else:
        success = (float(nonnull) - float(unexpected)) / float(nonnull) >= mostly
    missing = rows - nonnull
    unexpected_total = unexpected_nonmissing = missing_percent = None
    if rows > 0:
        unexpected_total = unexpected / rows * 100
        missing_percent = missing / rows * 100
        unexpected_nonmissing = unexpected / nonnull * 100 if nonnull > 0 else None
    return {
        "success": success,
        "result": {
            "element_count": rows,
            "unexpected_count": unexpected,
            "unexpected_percent": unexpected_nonmissing,
            "missing_count": missing,
            "missing_percent": missing_percent,
            "unexpected_percent_total": unexpected_total,
            "unexpected_percent_nonmissing": unexpected_nonmissing,
        },
    }


def _condition(expectation_type: str, kwargs: Mapping[str, Any], values):
    """True where a non-missing value meets the expectation (the library's pandas condition, operation for
    operation)."""
    if expectation_type == IN_SET:
        return values.isin(kwargs["value_set"])
    if expectation_type == MATCH_REGEX:
        import pandas as pd

        if isinstance(values.dtype, pd.StringDtype):
            # Every value is a str: the pattern is searched once per distinct value and the answers spread back.
            # Same answer per value, and pandas picks the same engine for the distinct values as for all of them
            # (it looks at the pattern and at which characters occur). Readings repeat their machine ids and
            # timestamps: this is most of the cost of a chunk saved.
            codes, uniques = pd.factorize(values)
            found = pd.Series(uniques, dtype=values.dtype).astype(str).str.contains(kwargs["regex"])
            return found.to_numpy(dtype=bool)[codes]
        return values.astype(str).str.contains(kwargs["regex"])
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    strict_min, strict_max = kwargs.get("strict_min", False), kwargs.get("strict_max", False)
    if low is None:
        return values < high if strict_max else values <= high
    if high is None:
        return low < values if strict_min else low <= values
    above = (low < values) if strict_min else (low <= values)
    below = (values < high) if strict_max else (values <= high)
    return above & below


def column_grouped(items: Iterable[T], kwargs_of) -> list[T]:
    """``items`` in the order Great Expectations validates (and reports) expectations: grouped by column, columns
    in the order they first appear, table-level expectations as one group where the first of them appears.

    :param kwargs_of: returns an item's keyword arguments.
    """
    groups: dict[str, list[T]] = {}
    for item in items:
        column = kwargs_of(item).get("column")
        groups.setdefault(column if isinstance(column, str) else NO_COLUMN, []).append(item)
    return [item for group in groups.values() for item in group]

