"""The direct evaluation of row-level expectations gives what Great Expectations gives, on the same chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge_training import config, fast_expectations
from edge_training.validation import RESULT_FORMAT, _raised, _Validator, load_suite_json

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
REGEX = "expect_column_values_to_match_regex"

# Every supported expectation type with the keywords that change its outcome: mostly, open and strict bounds,
# mixed-type sets, anchored and unanchored patterns, patterns on numbers.
EXPECTATIONS = [
    (NOT_NULL, {"column": "machine_id"}),
    (NOT_NULL, {"column": "temperature_c", "mostly": 0.7}),
    (NOT_NULL, {"column": "temperature_c", "mostly": 0.8}),
    (NOT_NULL, {"column": "failure_within_24h", "mostly": 0.5}),
    (NOT_NULL, {"column": "rpm"}),
    (NOT_NULL, {"column": "all_missing", "mostly": 0.0}),
    (NOT_NULL, {"column": "mixed"}),
    (BETWEEN, {"column": "temperature_c", "min_value": -40.0, "max_value": 150.0}),
    (BETWEEN, {"column": "temperature_c", "min_value": -40, "max_value": 150, "strict_min": True}),
    (BETWEEN, {"column": "temperature_c", "min_value": -40.0, "max_value": 150.0, "strict_max": True}),
    (BETWEEN, {"column": "temperature_c", "min_value": -40.0, "max_value": 150.0, "strict_min": True,
               "strict_max": True}),
    (BETWEEN, {"column": "temperature_c", "min_value": 0.0}),
    (BETWEEN, {"column": "temperature_c", "min_value": 0.0, "strict_min": True}),
    (BETWEEN, {"column": "temperature_c", "max_value": 20.0}),
    (BETWEEN, {"column": "temperature_c", "max_value": 20.0, "strict_max": True, "mostly": 0.5}),
    (BETWEEN, {"column": "temperature_c", "min_value": -40.0, "max_value": 150.0, "mostly": 0.6}),
    (BETWEEN, {"column": "rpm", "min_value": 0, "max_value": 6000}),
    (BETWEEN, {"column": "rpm", "min_value": 0.5, "max_value": 5999.5, "strict_min": True}),
    (BETWEEN, {"column": "all_missing", "min_value": 0.0, "max_value": 1.0}),
    (IN_SET, {"column": "failure_within_24h", "value_set": [0, 1]}),
    (IN_SET, {"column": "failure_within_24h", "value_set": [0, 1], "mostly": 0.7}),
    (IN_SET, {"column": "failure_within_24h", "value_set": [0.0, "1", None]}),
    (IN_SET, {"column": "machine_id", "value_set": ["M-0001", "M-0004", 1]}),
    (IN_SET, {"column": "rpm", "value_set": [3, 6000.0]}),
    (IN_SET, {"column": "mixed", "value_set": [1, "1", 2.5]}),
    (IN_SET, {"column": "all_missing", "value_set": []}),
    (REGEX, {"column": "machine_id", "regex": "^M-[0-9]{4}$"}),
    (REGEX, {"column": "machine_id", "regex": "M-[0-9]{4}"}),
    (REGEX, {"column": "machine_id", "regex": r"^M-\d{4}$", "mostly": 0.4}),
    (REGEX, {"column": "machine_id", "regex": "^m-", "mostly": 0.1}),
    (REGEX, {"column": "temperature_c", "regex": r"^-?\d+\.0$"}),
    (REGEX, {"column": "failure_within_24h", "regex": "^[01]$"}),
    (REGEX, {"column": "mixed", "regex": "1"}),
]


def dirty_chunk() -> pd.DataFrame:
    """Ten rows of every kind that is counted differently: None/NaN/NA, ±inf, values on and just past the bounds,
    near misses of the pattern (a trailing newline, a prefix, non-ASCII digits), labels outside {0, 1}."""
    return pd.DataFrame(
        {
            "machine_id": pd.Series(
                ["M-0001", None, "M-12345", "xM-0002", "M-0003\n", "", "PUMP-7", np.nan, "M-0004", "M-\u0661234"],
                dtype="str",
            ),
            "temperature_c": [-40.0, 150.0, 150.0001, np.nan, np.inf, -np.inf, 20.0, -40.5, 0.0, np.nan],
            "rpm": np.array([0, 6000, 6001, -1, 3, 3, 3, 3, 3, 3], dtype="int64"),
            "failure_within_24h": pd.array([0, 1, None, 2, -1, 1, 0, None, 1, 0], dtype="Int64"),
            "all_missing": [np.nan] * 10,
            "mixed": pd.Series([1, "1", 2.5, None, True, "x", 1.0, np.nan, 0, "2.5"], dtype=object),
        }
    )


CHUNKS = {
    "dirty": dirty_chunk,
    "arrow-backed": lambda: _through_arrow(dirty_chunk()),
    "clean": lambda: dirty_chunk().iloc[[0, 8]].reset_index(drop=True),
    "empty": lambda: dirty_chunk().iloc[:0],
    "all missing": lambda: dirty_chunk().iloc[[1, 7]].reset_index(drop=True),
}


def _through_arrow(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as the Arrow reader hands chunks over (Table.to_pandas with nullable integers)."""
    import pyarrow as pa

    frame = frame.drop(columns=["mixed"])
    return pa.Table.from_pandas(frame, preserve_index=False).to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype()}.get
    )


def _key(expectation_type: str, kwargs: dict) -> str:
    return expectation_type + json.dumps({k: v for k, v in kwargs.items() if k != "batch_id"}, sort_keys=True)


@pytest.fixture(scope="module")
def library():
    """Validates a list of ``(type, kwargs)`` on a frame with Great Expectations itself: ``{key: (kwargs as the
    library holds them, result)}``."""
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    definition = (
        context.data_sources.add_pandas("chunks").add_dataframe_asset("chunk").add_batch_definition_whole_dataframe("c")
    )

    def validate(frame: pd.DataFrame, expectations) -> dict:
        suite = gx.ExpectationSuite(name="s", expectations=[{"type": t, "kwargs": k} for t, k in expectations])
        kwargs = {_key(e.expectation_type, e.configuration.kwargs): e.configuration.kwargs for e in suite.expectations}
        batch = definition.get_batch(batch_parameters={"dataframe": frame})
        results = batch.validate(suite, result_format=dict(RESULT_FORMAT)).results
        found = {}
        for result in results:
            key = _key(result.expectation_config.type, result.expectation_config.kwargs)
            found[key] = (kwargs[key], result)
        assert len(found) == len(expectations)
        return found

    return validate


@pytest.mark.parametrize("chunk_name", list(CHUNKS))
def test_counts_and_success_are_the_libraries(library, chunk_name):
    frame = CHUNKS[chunk_name]()
    expectations = [(t, k) for t, k in EXPECTATIONS if k["column"] in frame.columns]
    left = []
    for key, (kwargs, result) in library(frame, expectations).items():
        expectation_type = key.split("{", 1)[0]
        assert not result.exception_info.get("raised_exception"), (key, result.exception_info)
        fast = fast_expectations.evaluate(expectation_type, kwargs, frame)
        if fast is None:
            left.append((expectation_type, kwargs["column"]))
            continue
        assert fast == {"success": result.success, "result": result.result}, key
    # Only ranges on columns the library compares value by value (nullable integers) are left to it.
    assert all(t == BETWEEN and frame[c].dtype not in [int, float] for t, c in left), left
    assert len(left) <= 2


def test_the_chunks_exercise_failures_and_missing_values(library):
    # The comparison above would prove little on data every expectation passes.
    results = library(dirty_chunk(), EXPECTATIONS)
    outcomes = {(r.success, bool(r.result.get("missing_count"))) for _, r in results.values()}
    assert {(True, True), (False, True), (False, False), (True, False)} <= outcomes


@pytest.mark.parametrize(
    "expectation_type, kwargs",
    [
        ("expect_column_value_lengths_to_be_between", {"column": "machine_id", "min_value": 6}),
        (BETWEEN, {"column": "rpm", "min_value": 0, "max_value": 10, "row_condition": 'col("rpm")>0',
                   "condition_parser": "great_expectations"}),
        (BETWEEN, {"column": "rpm", "min_value": 0, "max_value": 10, "parse_strings_as_datetimes": True}),
        (BETWEEN, {"column": "rpm", "min_value": 0, "max_value": 10, "result_format": "COMPLETE"}),
        (BETWEEN, {"column": "rpm", "min_value": {"$PARAMETER": "low"}, "max_value": 10}),
        (BETWEEN, {"column": "rpm", "min_value": "2026-01-01", "max_value": "2026-12-31"}),
        (BETWEEN, {"column": "rpm", "min_value": 10, "max_value": 0}),
        (BETWEEN, {"column": "rpm", "min_value": None, "max_value": None}),
        (BETWEEN, {"column": "rpm", "min_value": 0, "max_value": 10, "strict_min": {"$PARAMETER": "s"}}),
        (BETWEEN, {"column": "rpm", "min_value": True, "max_value": 10}),
        (NOT_NULL, {"column": "rpm", "mostly": {"$PARAMETER": "m"}}),
        (IN_SET, {"column": "rpm", "value_set": {"$PARAMETER": "values"}}),
        (IN_SET, {"column": "rpm", "value_set": [[1, 2]]}),
        (REGEX, {"column": "rpm", "regex": {"$PARAMETER": "pattern"}}),
        (NOT_NULL, {"column": ["rpm"]}),
    ],
)
def test_what_it_does_not_cover_is_left_to_the_library(expectation_type, kwargs):
    assert not fast_expectations.supported(expectation_type, kwargs)
    assert fast_expectations.evaluate(expectation_type, kwargs, dirty_chunk()) is None


def test_chunks_it_cannot_judge_exactly_are_left_to_the_library():
    frame = dirty_chunk()
    # A column the chunk lacks: the library words the error.
    assert fast_expectations.evaluate(NOT_NULL, {"column": "pressure_bar"}, frame) is None
    # Ranges on other dtypes go through the library's value-by-value comparison, with its type errors.
    for column in ("machine_id", "failure_within_24h", "mixed"):
        assert fast_expectations.evaluate(BETWEEN, {"column": column, "min_value": 0, "max_value": 1}, frame) is None
    # The same name twice: a column lookup gives a frame.
    twice = pd.concat([frame[["rpm"]], frame[["rpm"]]], axis=1)
    assert fast_expectations.evaluate(NOT_NULL, {"column": "rpm"}, twice) is None
    # An error while evaluating (a pattern Python cannot compile): the library reports it.
    assert fast_expectations.evaluate(REGEX, {"column": "machine_id", "regex": "M-[0-9"}, frame) is None


def test_results_are_ordered_as_the_library_orders_them():
    items = [("a", {"column": "x"}), ("b", {"column_list": ["x", "y"]}), ("c", {"column": "y"}),
             ("d", {"column": "x"}), ("e", {})]
    assert fast_expectations.column_grouped(items, lambda item: item[1]) == [items[0], items[3], items[1], items[4],
                                                                             items[2]]


# ---------------------------------------------------------------------------------------------------------------
# Inside the validator: the mixed results are the library's results
# ---------------------------------------------------------------------------------------------------------------


def sensor_chunk() -> pd.DataFrame:
    """A chunk in the project's schema with nulls, out-of-range values, pattern misses and a label of 2."""
    n = 40
    frame = pd.DataFrame(
        {
            "machine_id": pd.Series([f"M-{i % 5 + 1:04d}" for i in range(n)], dtype="str"),
            "timestamp": pd.Series([f"2026-11-01T00:{i:02d}:00Z" for i in range(n)], dtype="str"),
            "temperature_c": np.linspace(20, 80, n),
            "vibration_mm_s": np.full(n, 2.5),
            "pressure_bar": np.full(n, 6.1),
            "rpm": np.full(n, 1500.0),
            "humidity_pct": np.full(n, 45.0),
            "power_kw": np.full(n, 15.2),
            "failure_within_24h": pd.array([i % 2 for i in range(n)], dtype="Int64"),
        }
    )
    frame.loc[3, "machine_id"] = "PUMP-SOUTH-7"
    frame.loc[4, "machine_id"] = None
    frame.loc[5, "timestamp"] = "2026/11/01 00:05"
    frame.loc[[6, 7], "temperature_c"] = [np.nan, 912.0]
    frame.loc[8, "rpm"] = -5.0
    frame.loc[9, "humidity_pct"] = 100.0
    frame.loc[10, "failure_within_24h"] = 2
    frame.loc[11, "failure_within_24h"] = pd.NA
    return frame


def _validator(tmp_path: Path, extra=()) -> _Validator:
    suite = load_suite_json(config.EXPECTATION_SUITE_PATH)
    suite["expectations"] += list(extra)
    return _Validator(suite, tmp_path / "docs")


def _as_library_gives(results) -> list[dict]:
    return [r.to_json_dict() for r in results]


UNSUPPORTED = [
    {"type": "expect_column_value_lengths_to_be_between", "kwargs": {"column": "machine_id", "min_value": 6,
                                                                     "max_value": 6}},
    {"type": BETWEEN, "kwargs": {"column": "rpm", "min_value": 0, "max_value": 1000, "row_condition": 'col("rpm")>0',
                                 "condition_parser": "great_expectations"}},
]


@pytest.mark.parametrize("extra", [(), UNSUPPORTED], ids=["project suite", "with unsupported expectations"])
def test_row_results_equal_the_librarys_suite_results(tmp_path, extra):
    validator = _validator(tmp_path, extra)
    chunk = sensor_chunk()
    assert _as_library_gives(validator._validate_rows(chunk)) == _as_library_gives(
        validator._validate(chunk, validator.row_suite)
    )


def test_unsupported_expectations_and_only_those_go_through_the_library(tmp_path, monkeypatch):
    validator = _validator(tmp_path, UNSUPPORTED)
    evaluated = []
    real = validator._validate
    monkeypatch.setattr(validator, "_validate", lambda frame, suite: evaluated.append(suite) or real(frame, suite))
    results = validator._validate_rows(sensor_chunk())
    assert len(evaluated) == 1
    assert sorted(e.configuration.type for e in evaluated[0].expectations) == [
        "expect_column_value_lengths_to_be_between", BETWEEN
    ]
    by_type = {(r.expectation_config.type, "row_condition" in r.expectation_config.kwargs): r for r in results}
    lengths = by_type[("expect_column_value_lengths_to_be_between", False)]
    assert lengths.result["unexpected_count"] == 1 and not lengths.success  # "PUMP-SOUTH-7"
    conditional = by_type[(BETWEEN, True)]
    assert conditional.result["element_count"] == 39 and conditional.result["unexpected_count"] == 39


def test_the_fast_path_runs_no_library_validation_on_the_project_suite(tmp_path, monkeypatch):
    validator = _validator(tmp_path)
    monkeypatch.setattr(validator, "_validate", lambda frame, suite: pytest.fail(f"library ran {suite.name}"))
    assert len(validator._validate_rows(sensor_chunk())) == len(validator.row_suite.expectations)


def test_a_chunk_the_library_cannot_evaluate_gets_the_librarys_results(tmp_path):
    # A column missing from the chunk (a blob read by pandas with another header): the library reports its errors
    # first, so the whole row-level suite goes through it.
    validator = _validator(tmp_path)
    chunk = sensor_chunk().drop(columns=["vibration_mm_s"])
    mixed = validator._validate_rows(chunk)
    assert _as_library_gives(mixed) == _as_library_gives(validator._validate(chunk, validator.row_suite))
    assert any(_raised(r) for r in mixed)
