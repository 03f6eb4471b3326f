"""include/training/train.py reading its training window from real blob storage (Azurite of the local edge stack)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.unit._sensor_data import partition_csvs, upload, write_local

pytestmark = pytest.mark.integration

TRAIN = Path(__file__).resolve().parents[2] / "include" / "training" / "train.py"
START = dt.date(2026, 11, 1)
FAST = '{"n_estimators": 30, "max_depth": 6, "n_jobs": 1}'


def run_train(tmp: Path, container: str, *extra: str, env: dict | None = None,
              end: str = "2026-11-05") -> subprocess.CompletedProcess:
    argv = [sys.executable, str(TRAIN), "--container", container, "--start", "2026-11-01", "--end", end,
            "--out", str(tmp / "out"), "--scratch", str(tmp / "scratch"), "--params", FAST, *extra]
    run_env = {k: v for k, v in os.environ.items() if k != "EDGE_BLOB_CONNECTION_STRING"} | (env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=run_env)


def account_key(connection_string: str) -> str:
    return re.search(r"AccountKey=([^;]+)", connection_string).group(1)


@pytest.fixture(scope="module")
def dataset():
    return partition_csvs(START, 4, rows_per_day=300, parts_per_day=3, seed=3)


@pytest.fixture(scope="module")
def container(edge_stack, dataset):
    """A container of its own in the stack's Azurite, so other tests' sample data cannot change these results."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(edge_stack.blob_connection_string)
    client = service.create_container(f"train-test-{uuid.uuid4().hex[:10]}")
    upload(client, dataset)
    yield client.container_name
    client.delete_container()


def test_trains_from_blob_storage_with_the_connection_string_in_env(edge_stack, container, tmp_path):
    cs = edge_stack.blob_connection_string
    proc = run_train(tmp_path, container, env={"EDGE_BLOB_CONNECTION_STRING": cs})
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "model.onnx"]
    assert not (tmp_path / "scratch").exists()
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["metrics"]["roc_auc"] > 0.7
    assert (doc["metrics"]["n_train"], doc["metrics"]["n_holdout"]) == (900, 300)
    assert [(p["partition"], p["parts"], p["rows"]) for p in doc["partitions"]] == [
        (f"dt=2026-11-0{d}", 3, 300) for d in range(1, 5)]
    assert f"from container {container} at {edge_stack.blob_endpoint}" in proc.stderr
    assert account_key(cs) not in proc.stdout + proc.stderr + (tmp_path / "out" / "metrics.json").read_text()


def test_blob_and_local_copy_give_the_same_data_fingerprint_and_model(edge_stack, container, dataset, tmp_path):
    """The chunked blob download is byte-exact: same fingerprint, same model, same score as the local files."""
    cs_file = tmp_path / "blob.cs"
    fd = os.open(cs_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, edge_stack.blob_connection_string.encode())
    os.close(fd)
    from_blob = run_train(tmp_path / "blob", container, "--connection-string-file", str(cs_file))
    assert from_blob.returncode == 0, from_blob.stderr[-3000:]
    local = write_local(tmp_path / "local-src", container, dataset)
    from_local = run_train(tmp_path / "local", container, "--source-dir", str(local))
    assert from_local.returncode == 0, from_local.stderr[-3000:]

    blob_doc = json.loads((tmp_path / "blob" / "out" / "metrics.json").read_text())
    local_doc = json.loads((tmp_path / "local" / "out" / "metrics.json").read_text())
    assert blob_doc["data_fingerprint"] == local_doc["data_fingerprint"]
    assert blob_doc["metrics"] == local_doc["metrics"]
    assert (tmp_path / "blob" / "out" / "model.onnx").read_bytes() == (tmp_path / "local" / "out" / "model.onnx").read_bytes()
    assert account_key(edge_stack.blob_connection_string) not in from_blob.stdout + from_blob.stderr


def test_window_beyond_the_uploaded_days_exits_2_naming_the_missing_partitions(edge_stack, container, tmp_path):
    proc = run_train(tmp_path, container, env={"EDGE_BLOB_CONNECTION_STRING": edge_stack.blob_connection_string},
                     end="2026-11-07")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no data for 2 of its 6 day(s): ['dt=2026-11-05', 'dt=2026-11-06']" in proc.stderr
    assert f"container {container}" in proc.stderr
    assert not (tmp_path / "scratch").exists()


def test_missing_container_exits_2(edge_stack, tmp_path):
    proc = run_train(tmp_path, "no-such-container",
                     env={"EDGE_BLOB_CONNECTION_STRING": edge_stack.blob_connection_string})
    assert proc.returncode == 2
    assert "Blob container 'no-such-container' does not exist" in proc.stderr


def test_wrong_account_key_exits_2_without_echoing_either_key(edge_stack, container, tmp_path):
    real = account_key(edge_stack.blob_connection_string)
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    proc = run_train(tmp_path, container,
                     env={"EDGE_BLOB_CONNECTION_STRING": edge_stack.blob_connection_string.replace(real, wrong)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "refused the credentials" in proc.stderr
    assert real not in proc.stderr and wrong not in proc.stderr
