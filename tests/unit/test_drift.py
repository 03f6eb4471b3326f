"""Data profiles (fixed grid, chunk merge, k-suppression) and the drift metrics on them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge_training import config, drift


def _load_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_generate", config.INCLUDE_DIR / "sample_data" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _load_generator()
SUITE = json.loads(config.EXPECTATION_SUITE_PATH.read_text())
FEATURES = ["temperature_c", "rpm"]


def _grid(bins: int = 40) -> dict:
    return drift.grid_from_suite(SUITE, FEATURES, bins)


def _acc(temperature, rpm=None) -> drift.ProfileAccumulator:
    temperature = np.asarray(temperature, dtype=float)
    rpm = np.full(len(temperature), 1500.0) if rpm is None else np.asarray(rpm, dtype=float)
    acc = drift.ProfileAccumulator(_grid())
    acc.add_rows({"temperature_c": temperature, "rpm": rpm}, len(temperature))
    return acc


def test_grid_comes_from_the_suite_ranges_not_the_data():
    grid = _grid(19)
    assert grid["temperature_c"] == {"lo": -40.0, "hi": 150.0, "bins": 19}
    assert grid["rpm"] == {"lo": 0.0, "hi": 6000.0, "bins": 19}
    with pytest.raises(ValueError, match=r"\['machine_id'\] have no expect_column_values_to_be_between"):
        drift.grid_from_suite(SUITE, ["machine_id"])


def test_chunk_merge_equals_one_pass_over_all_rows():
    rng = np.random.default_rng(1)
    values = rng.normal(60, 5, 10_000)
    values[rng.random(10_000) < 0.01] = np.nan
    whole = _acc(values)
    merged = drift.ProfileAccumulator(_grid())
    for part in np.array_split(values, 7):
        merged.merge(_acc(part))
    a, b = drift.publish(whole), drift.publish(merged)
    assert a["features"]["temperature_c"]["counts"] == b["features"]["temperature_c"]["counts"]
    assert a["features"]["temperature_c"]["null_count"] == b["features"]["temperature_c"]["null_count"] > 0
    assert math.isclose(a["features"]["temperature_c"]["std"], b["features"]["temperature_c"]["std"], rel_tol=1e-5)
    assert a["features"]["temperature_c"]["mean"] == pytest.approx(np.nanmean(values), rel=1e-5)
    assert a["features"]["temperature_c"]["count"] + a["features"]["temperature_c"]["null_count"] == 10_000


def test_merging_profiles_on_other_grids_is_refused():
    other = drift.ProfileAccumulator(_grid(10))
    with pytest.raises(ValueError, match="different grids"):
        _acc([1.0]).merge(other)


def test_small_bins_are_suppressed_and_no_extreme_or_single_value_leaves():
    rng = np.random.default_rng(2)
    # 500 ordinary readings, and one machine reading a distinctive 137.77 °C three times: its bin holds 3 rows.
    values = np.concatenate([rng.normal(60, 3, 500).round(2), [137.77, 137.77, 137.77]])
    profile = drift.publish(_acc(values), k=10)
    feature = profile["features"]["temperature_c"]
    bin_of_outlier = int((137.77 + 40) / (190 / 40))
    assert feature["counts"][bin_of_outlier] is None
    # The suppressed rows add up to >= k together with any bins hidden alongside, so the total gives none away.
    hidden = len(values) - sum(c for c in feature["counts"] if c is not None)
    assert hidden >= 10
    assert all(c is None or c == 0 or c >= 10 for c in feature["counts"])
    text = json.dumps(profile)
    for forbidden in ("min", "max", "137.77", f"{values[:500].min():.2f}", f"{values[:500].max():.2f}"):
        assert forbidden not in text
    # A constant column's mean would be its one value: no mean and no deviation for it.
    assert profile["features"]["rpm"]["mean"] is None and profile["features"]["rpm"]["std"] is None
    assert "1500" not in text


def test_a_lone_small_bin_is_hidden_together_with_the_next_smallest():
    counts = drift.data_profile._suppress([0, 50, 12, 3, 0, 40], k=10)
    # 3 alone would be recoverable from the total: 12 is hidden with it.
    assert counts == [0, 50, None, None, 0, 40]


def test_few_rows_publish_no_mean():
    profile = drift.publish(_acc([55.0, 61.0, 70.0]), k=10)
    assert profile["features"]["temperature_c"]["mean"] is None
    assert all(c in (0, None) for c in profile["features"]["temperature_c"]["counts"])


def test_identical_profiles_have_zero_drift_and_a_shift_is_caught_on_its_feature():
    rng = np.random.default_rng(3)
    reference = drift.publish(_acc(rng.normal(60, 5, 5000), rng.normal(1600, 80, 5000)))
    assert drift.compare_profiles(reference, reference).drifted is False
    same = drift.publish(_acc(rng.normal(60, 5, 5000), rng.normal(1600, 80, 5000)))
    quiet = drift.compare_profiles(reference, same)
    assert not quiet.drifted, quiet.reason()
    shifted = drift.publish(_acc(rng.normal(75, 5, 5000), rng.normal(1600, 80, 5000)))
    result = drift.compare_profiles(reference, shifted)
    assert result.drifted_features == ["temperature_c"]
    metrics = result.features["temperature_c"]["metrics"]
    # A 15 °C shift is 3 deviations: the normalized Wasserstein distance reads about 3.
    assert metrics[drift.NWD] == pytest.approx(3.0, abs=0.3)
    assert metrics[drift.JS] > 0.5 and metrics[drift.PSI] > 1
    assert "temperature_c" in result.reason() and "rpm" not in result.reason()
    summary = result.summary("dt=2026-06-08")
    assert summary["drifted"] is True and "dt=2026-06-08" in summary["reason"]


def test_metric_values_on_known_histograms():
    assert drift.jensen_shannon_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert drift.jensen_shannon_distance([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert drift.wasserstein_distance([1, 0, 0], [0, 0, 1], width=2.0) == pytest.approx(4.0)
    p, q = [0.5, 0.5], [0.25, 0.75]
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert drift.population_stability_index(p, q, epsilon=0) == pytest.approx(expected)


def test_calibration_follows_the_windows_day_to_day_variation():
    rng = np.random.default_rng(4)
    days = {f"2026-06-0{d}": _acc(rng.normal(60 + d, 5, 3000)) for d in range(1, 5)}
    whole = drift.ProfileAccumulator(_grid())
    for acc in days.values():
        whole.merge(acc)
    reference = drift.publish(whole, days=days)
    thresholds = drift.calibrate_thresholds(reference)
    # Days 1..4 °C apart: wider than the fixed default, but a 15 °C shift still exceeds it.
    assert thresholds["temperature_c"][drift.NWD] > drift.DEFAULT_THRESHOLDS[drift.NWD]
    day_like = drift.publish(_acc(rng.normal(61, 5, 3000)))
    assert not drift.compare_profiles(reference, day_like, calibrate=True).drifted
    assert drift.compare_profiles(reference, day_like).drifted  # the fixed default calls the same day drift
    shifted = drift.publish(_acc(rng.normal(77, 5, 3000)))
    assert drift.compare_profiles(reference, shifted, calibrate=True).drifted_features == ["temperature_c"]
    with pytest.raises(ValueError, match="EDGE_DRIFT_CALIBRATE=false"):
        drift.calibrate_thresholds(drift.publish(whole))


def test_profiles_on_other_grids_are_not_compared():
    a = drift.publish(_acc([60.0] * 20))
    b = json.loads(json.dumps(a))
    b["features"]["temperature_c"]["bins"] = 10
    with pytest.raises(ValueError, match="same expectation suite ranges"):
        drift.compare_profiles(a, b)


def test_validation_profiles_the_data_while_it_streams(tmp_path):
    """The profile validate_partitions returns is that of all rows, whatever the chunking and the parts per day."""
    import datetime as dt
    import io

    import pandas as pd

    from edge_training.validation import PartitionSource, validate_partitions

    files = {}
    for day in (dt.date(2026, 11, 1), dt.date(2026, 11, 2)):
        profiles, wear = GENERATE._machine_profiles(5, 20), GENERATE._day_wear(5, day, 20)
        for part, first in enumerate(range(0, 600, 200)):
            table = GENERATE._block_table(5, day, first, 200, 600, 20, profiles, wear)
            files[GENERATE.partition_name(day, part)] = GENERATE._csv_bytes(table, header=True)
    sources = [
        PartitionSource(name=n, etag='"e"', size=len(b), opener=lambda b=b: io.BytesIO(b)) for n, b in files.items()
    ]
    summary = validate_partitions(
        sources, [dt.date(2026, 11, 1), dt.date(2026, 11, 2)], suite_path=config.EXPECTATION_SUITE_PATH,
        docs_dir=tmp_path / "docs", chunk_rows=97,
    )
    profile = summary["profile"]
    frame = pd.concat(pd.read_csv(io.BytesIO(b)) for b in files.values())
    grid = drift.grid_from_suite(SUITE, drift.range_columns(SUITE))
    expected = drift.ProfileAccumulator(grid)
    expected.add_rows(frame, len(frame))
    one_pass = drift.publish(expected)
    assert profile["rows"] == 1200 and sorted(profile["days"]) == ["2026-11-01", "2026-11-02"]
    for name, feature in one_pass["features"].items():
        assert profile["features"][name]["counts"] == feature["counts"]
        assert profile["features"][name]["mean"] == pytest.approx(feature["mean"], rel=1e-6)
    assert drift.compare_profiles(one_pass, profile, thresholds={m: 1e-9 for m in drift.METRICS}).drifted is False


def test_train_script_writes_the_windows_reference_profile_next_to_the_model(tmp_path):
    """train.py, run as on the edge VM, profiles the window it trained on with the same code and grid."""
    import datetime as dt
    import io
    import subprocess
    import sys

    import pandas as pd

    from tests.unit._sensor_data import partition_csvs, write_local

    files = partition_csvs(dt.date(2026, 11, 1), 3, rows_per_day=300, parts_per_day=1, seed=3)
    source = write_local(tmp_path / "blob", "readings", files)
    grid = drift.suite_grid()
    proc = subprocess.run(
        [sys.executable, str(config.INCLUDE_DIR / "training" / "train.py"), "--container", "readings",
         "--start", "2026-11-01", "--end", "2026-11-04", "--out", str(tmp_path / "out"), "--scratch",
         str(tmp_path / "scratch"), "--source-dir", str(source), "--params",
         '{"n_estimators": 5, "max_depth": 3, "n_jobs": 1}', "--profile-grid", json.dumps(grid)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = drift.read_profile(tmp_path / "out" / drift.REFERENCE_PROFILE_FILE)
    assert sorted(reference["days"]) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert reference["rows"] == 900 and reference["k"] == drift.DEFAULT_K
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert sorted(reference["features"]) == sorted(metrics["features"])
    # Same grid and counts as the Airflow side computes over the same rows.
    frame = pd.concat(pd.read_csv(io.BytesIO(data)) for data in files.values())
    here = drift.ProfileAccumulator({f: grid[f] for f in metrics["features"]})
    here.add_rows(frame, len(frame))
    assert reference["features"]["temperature_c"]["counts"] == drift.publish(here)["features"]["temperature_c"]["counts"]
    assert drift.compare_profiles(reference, drift.publish(here)).drifted is False


def test_the_report_is_one_self_contained_page_naming_the_drifted_feature_and_no_value():
    from edge_training.drift_report import render_drift_report

    rng = np.random.default_rng(6)
    reference = drift.publish(_acc(rng.normal(60, 5, 4000).round(2), rng.normal(1600, 80, 4000)))
    values = np.concatenate([rng.normal(75, 5, 4000).round(2), [141.23] * 3])
    current = drift.publish(_acc(values, rng.normal(1600, 80, 4003)))
    result = drift.compare_profiles(reference, current)
    page = render_drift_report(result, reference, current, title="dt=2026-06-10 against m version 3",
                               details={"champion version": "3"})
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    assert "DRIFT in temperature_c" in page and "rpm: <span class=\"ok\">ok</span>" in page
    for metric in drift.METRICS:
        assert metric in page
    assert "<script" not in page and "src=" not in page and "href=" not in page
    # A small group of readings (3 rows at 141.23) is suppressed in the profile, so the page cannot show it.
    assert "141.23" not in page and "141.2" not in page
