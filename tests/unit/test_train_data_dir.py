"""train.py --data-dir: the training window read from a folder holding the partitions (an Azure ML job's mount)."""

from __future__ import annotations

import json

from tests.unit._sensor_data import partition_csvs, write_local
from tests.unit.test_train_script import CONTAINER, DAYS, FAST, ROWS_PER_DAY, START, run_train


def test_a_mounted_folder_trains_the_same_model_as_the_blob_layout(tmp_path):
    root = write_local(tmp_path / "blob", CONTAINER, partition_csvs(START, DAYS, ROWS_PER_DAY))
    via_source = run_train(tmp_path / "a", "--params", FAST, source=root)
    # The mount holds the container's contents directly: dt=YYYY-MM-DD/part-NNNN.csv, no container folder.
    via_mount = run_train(tmp_path / "b", "--params", FAST, "--data-dir", str(root / CONTAINER), source=None)
    assert via_source.returncode == 0, via_source.stderr[-2000:]
    assert via_mount.returncode == 0, via_mount.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "out" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "out" / "metrics.json").read_text())
    assert a["metrics"] == b["metrics"] and a["data_fingerprint"] == b["data_fingerprint"]


def test_a_missing_data_dir_is_bad_input(tmp_path):
    done = run_train(tmp_path, "--data-dir", str(tmp_path / "nowhere"), source=None)
    assert done.returncode == 2
    assert "Check --data-dir" in done.stderr
