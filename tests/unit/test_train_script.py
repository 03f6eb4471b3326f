"""include/training/train.py run as the edge VM runs it: a subprocess, here reading a local copy of the blob layout."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit._sensor_data import partition_csvs, write_local

TRAIN = Path(__file__).resolve().parents[2] / "include" / "training" / "train.py"
CONTAINER = "sensor-readings"
START = dt.date(2026, 11, 1)
DAYS = 5
ROWS_PER_DAY = 400
FAST = '{"n_estimators": 40, "max_depth": 6, "n_jobs": 1}'


def run_train(tmp: Path, *extra: str, source: Path | None, env: dict | None = None,
              start: str = "2026-11-01", end: str = "2026-11-06") -> subprocess.CompletedProcess:
    argv = [sys.executable, str(TRAIN), "--container", CONTAINER, "--start", start, "--end", end,
            "--out", str(tmp / "out"), "--scratch", str(tmp / "scratch"), *extra]
    if source is not None:
        argv += ["--source-dir", str(source)]
    run_env = {k: v for k, v in os.environ.items() if k != "EDGE_BLOB_CONNECTION_STRING"} | (env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=run_env)


READING_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def assert_no_data_rows(text: str) -> None:
    # Machine ids and reading timestamps (UTC, "Z" suffix) only occur inside data rows; the log's own timestamps carry
    # no zone suffix, so the check does not depend on the time of day the test runs at.
    assert "M-00" not in text, "a data row leaked"
    assert not READING_TIMESTAMP.search(text), "a data row leaked"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_local(tmp_path_factory.mktemp("blob"), CONTAINER, partition_csvs(START, DAYS, ROWS_PER_DAY))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, source):
    tmp = tmp_path_factory.mktemp("run1")
    proc = run_train(tmp, "--params", FAST, "--seed", "0", source=source)
    return tmp, proc


def test_trains_a_useful_model_and_writes_only_model_and_metrics(first_run):
    tmp, proc = first_run
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["metrics.json", "model.onnx"]
    assert not (tmp / "scratch").exists(), "scratch folder must be removed"

    doc = json.loads((tmp / "out" / "metrics.json").read_text())
    m = doc["metrics"]
    assert m["roc_auc"] > 0.75, m  # the helper's signal is learnable
    assert 0 < m["pr_auc"] <= 1 and 0 <= m["f1"] <= 1 and 0.5 < m["accuracy"] <= 1
    assert 0 < m["positive_rate"] < 0.5
    assert (m["n_train"], m["n_holdout"]) == ((DAYS - 1) * ROWS_PER_DAY, ROWS_PER_DAY)
    assert doc["champion_metrics"] is None
    assert doc["window"] == {"start": "2026-11-01", "end": "2026-11-06", "days": 5}
    assert doc["train_window"] == {"start": "2026-11-01", "end": "2026-11-05", "days": 4}
    assert doc["holdout_window"] == {"start": "2026-11-05", "end": "2026-11-06", "days": 1}
    assert [p["partition"] for p in doc["partitions"]] == [f"dt=2026-11-0{d}" for d in range(1, 6)]
    assert all(p["parts"] == 2 and p["rows"] == ROWS_PER_DAY for p in doc["partitions"])
    assert doc["rows"] == {"read": 2000, "dropped_incomplete": 0, "train": 1600, "holdout": 400}
    assert doc["onnx_parity"]["max_abs_diff"] <= 1e-4 and doc["onnx_parity"]["rows_compared"] == 400
    assert doc["data_fingerprint"].startswith("sha256:")
    assert doc["training_seconds"] > 0
    assert doc["versions"]["scikit-learn"] and doc["versions"]["onnxruntime"]
    assert doc["features"] == ["temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct", "power_kw"]

    log = proc.stdout + proc.stderr
    assert "dt=2026-11-03: 2 part(s), 400 rows" in log
    assert "done: roc_auc=" in log.strip().splitlines()[-1]
    assert_no_data_rows(log)
    assert_no_data_rows((tmp / "out" / "metrics.json").read_text())


def test_onnx_model_scores_like_the_reported_metrics(first_run, source):
    """Anyone holding only model.onnx + metrics.json can reproduce the holdout score."""
    import numpy as np
    import onnxruntime as ort
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    tmp, proc = first_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp / "out" / "metrics.json").read_text())
    holdout = pd.concat(pd.read_csv(p) for p in sorted((source / CONTAINER / "dt=2026-11-05").glob("part-*.csv")))
    session = ort.InferenceSession(str(tmp / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    (proba,) = session.run(["probabilities"], {"input": holdout[doc["features"]].to_numpy(np.float32)})
    assert proba.shape == (ROWS_PER_DAY, 2)
    assert roc_auc_score(holdout["failure_within_24h"], proba[:, 1]) == pytest.approx(doc["metrics"]["roc_auc"])


def test_champion_is_scored_on_the_same_holdout(first_run, source, tmp_path):
    tmp1, proc1 = first_run
    assert proc1.returncode == 0, proc1.stderr[-3000:]
    first = json.loads((tmp1 / "out" / "metrics.json").read_text())

    proc = run_train(tmp_path, "--params", '{"n_estimators": 10, "max_depth": 2, "n_jobs": 1}', "--seed", "1",
                     "--champion", str(tmp1 / "out" / "model.onnx"), source=source)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    champion = doc["champion_metrics"]
    assert champion is not None
    assert doc["holdout_window"] == first["holdout_window"]
    assert champion["n_holdout"] == doc["metrics"]["n_holdout"] == first["metrics"]["n_holdout"]
    # Same model on the same rows gives the same score it had when it was trained.
    for key in ("roc_auc", "pr_auc", "f1", "accuracy", "positive_rate"):
        assert champion[key] == pytest.approx(first["metrics"][key]), key
    assert doc["metrics"]["roc_auc"] != pytest.approx(champion["roc_auc"])  # a different model, really
    assert "champion" in proc.stderr and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "metrics.json", "model.onnx"]


def test_window_of_one_day_exits_2_with_advice(source, tmp_path):
    proc = run_train(tmp_path, source=source, start="2026-11-01", end="2026-11-02")
    assert proc.returncode == 2
    assert "has 1 day(s); it needs at least 2" in proc.stderr
    assert not (tmp_path / "scratch").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_partition_exits_2_naming_it_and_cleans_up(tmp_path):
    files = partition_csvs(START, 4, 100)
    files = {k: v for k, v in files.items() if not k.startswith("dt=2026-11-03/")}
    source = write_local(tmp_path / "blob", CONTAINER, files)
    proc = run_train(tmp_path, "--params", FAST, source=source, end="2026-11-05")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-2:]
    assert any("no data for 1 of its 4 day(s): ['dt=2026-11-03']" in line for line in last), proc.stderr
    assert "Upload those partitions" in proc.stderr
    assert not (tmp_path / "scratch").exists(), "scratch must be removed on failure too"
    assert list((tmp_path / "out").iterdir()) == []


def test_stale_outputs_of_an_earlier_attempt_do_not_survive_a_failure(tmp_path, source):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.onnx").write_bytes(b"old")
    (tmp_path / "out" / "metrics.json").write_text("{}")
    proc = run_train(tmp_path, "--params", FAST, source=source, end="2026-11-09")  # 11-06.. do not exist
    assert proc.returncode == 2
    assert list((tmp_path / "out").iterdir()) == []


def test_unknown_hyperparameter_exits_2_listing_allowed_keys(tmp_path, source):
    proc = run_train(tmp_path, "--params", '{"max_iter": 200}', source=source)
    assert proc.returncode == 2
    assert "unsupported key(s) ['max_iter']" in proc.stderr and "'n_estimators'" in proc.stderr


def test_invalid_hyperparameter_value_exits_2_before_reading_data(tmp_path, source):
    proc = run_train(tmp_path, "--params", '{"max_depth": "deep"}', source=source)
    assert proc.returncode == 2
    assert "max_depth" in proc.stderr and "dt=2026-11-01:" not in proc.stderr


def test_connection_string_file_readable_by_others_is_refused_without_echoing_it(tmp_path):
    secret = "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==;BlobEndpoint=http://x"
    cs = tmp_path / "blob.cs"
    cs.write_text(secret)
    cs.chmod(0o644)
    proc = run_train(tmp_path, "--connection-string-file", str(cs), source=None)
    assert proc.returncode == 2
    assert "chmod 600" in proc.stderr
    assert "c2VjcmV0LWtleQ" not in proc.stdout + proc.stderr


def test_no_credentials_exits_2_naming_both_options(tmp_path):
    proc = run_train(tmp_path, source=None)
    assert proc.returncode == 2
    assert "--connection-string-file" in proc.stderr and "EDGE_BLOB_CONNECTION_STRING" in proc.stderr


def test_scratch_folder_with_foreign_files_is_refused_and_left_alone(tmp_path, source):
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "keep.txt").write_text("not ours")
    proc = run_train(tmp_path, "--params", FAST, source=source)
    assert proc.returncode == 2
    assert "holds files this script did not create" in proc.stderr
    assert (tmp_path / "scratch" / "keep.txt").read_text() == "not ours"


def test_bad_label_values_exit_2_with_a_count(tmp_path):
    files = partition_csvs(START, 2, 50, parts_per_day=1)
    name = "dt=2026-11-02/part-0000.csv"
    lines = files[name].decode().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",7"
    files[name] = ("\n".join(lines) + "\n").encode()
    source = write_local(tmp_path / "blob", CONTAINER, files)
    proc = run_train(tmp_path, source=source, end="2026-11-03")
    assert proc.returncode == 2
    assert "1 row(s) have a failure_within_24h value other than 0 or 1" in proc.stderr
    assert_no_data_rows(proc.stderr)


def test_sigterm_stops_the_job_with_143_and_removes_scratch(tmp_path, source):
    """What the operator's kill does to a running job: stop it, leave no data behind, no model."""
    import signal

    argv = [sys.executable, str(TRAIN), "--container", CONTAINER, "--start", "2026-11-01", "--end", "2026-11-06",
            "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch"), "--source-dir", str(source),
            "--params", '{"n_estimators": 20000, "max_depth": 4, "n_jobs": 1}']
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "training RandomForestClassifier" in line:
                break
        assert (tmp_path / "scratch").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert "stopped by signal SIGTERM" in rest
    assert not (tmp_path / "scratch").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_end_before_start_exits_2(tmp_path, source):
    proc = run_train(tmp_path, source=source, start="2026-11-05", end="2026-11-01")
    assert proc.returncode == 2
    assert "--end 2026-11-01 is not after --start 2026-11-05" in proc.stderr
