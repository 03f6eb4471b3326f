"""Validate generated sensor readings in real Azurite through the operator (WasbHook, Airflow connection)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_training.exceptions import DataValidationError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GENERATE = REPO / "include" / "sample_data" / "generate.py"
RUN_ID = "scheduled__2026-11-04T02:00:00+00:00"


def generate(stack, container: str, *extra: str) -> str:
    """Run the sample data CLI against the stack's Azurite; return its output."""
    env = {**os.environ, "EDGE_TEST_BLOB_CS": stack.blob_connection_string}
    done = subprocess.run(
        [
            sys.executable, str(GENERATE), "--connection-string-env", "EDGE_TEST_BLOB_CS", "--container", container,
            "--start", "2026-11-01", "--days", "3", "--rows-per-day", "3000", "--parts-per-day", "2", *extra,
        ],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def context() -> dict:
    end = datetime(2026, 11, 4, 2, tzinfo=timezone.utc)
    return {
        "data_interval_start": datetime(2026, 11, 3, 2, tzinfo=timezone.utc),
        "data_interval_end": end,
        "dag_run": SimpleNamespace(run_after=end),
        "run_id": RUN_ID,
    }


def operator(container: str, reports_dir: Path):
    from airflow.sdk import DAG

    from edge_training.operators.validate import ValidateTrainingDataOperator

    with DAG("edge_training_validate_it", schedule=None):
        return ValidateTrainingDataOperator(
            task_id="validate_data", container=container, window_days=3, reports_dir=reports_dir, chunk_rows=1000
        )


@pytest.fixture
def container(edge_env):
    from azure.storage.blob import BlobServiceClient

    name = f"readings-{uuid.uuid4().hex[:10]}"
    yield name
    BlobServiceClient.from_connection_string(edge_env.blob_connection_string).delete_container(name)


def test_clean_window_passes_and_reports(edge_env, container, tmp_path):
    generate(edge_env, container)
    summary = operator(container, tmp_path).execute(context())

    assert summary["success"] is True
    assert summary["window"] == "2026-11-01..2026-11-04"
    assert summary["partitions"] == [
        f"dt=2026-11-0{d}/part-000{p}.csv" for d in (1, 2, 3) for p in (0, 1)
    ]
    assert summary["row_count"] == 9000
    assert set(summary["rows_per_partition"].values()) == {1500}
    docs = tmp_path / "edge_training_validate_it" / "scheduled__2026-11-04T02_00_00_00_00" / "index.html"
    assert summary["data_docs"] == str(docs) and docs.is_file()
    json.dumps(summary)  # XCom-safe
    assert "M-0001" not in json.dumps(summary)


def test_corrupt_partition_fails_naming_the_blob(edge_env, container, tmp_path):
    generate(edge_env, container, "--corrupt", "out-of-range", "--corrupt-date", "2026-11-02")
    with pytest.raises(DataValidationError) as caught:
        operator(container, tmp_path).execute(context())
    message = str(caught.value)
    assert "dt=2026-11-02/part-0000.csv: expect_column_values_to_be_between(temperature_c)" in message
    assert "observed max 912.0, allowed ≤ 150.0" in message
    assert "1 failure(s) in 1 of 6 partition(s)" in message
    docs = next(tmp_path.rglob("index.html"))
    assert f"Data Docs report: {docs}" in message


def test_missing_day_fails(edge_env, container, tmp_path):
    generate(edge_env, container)
    op = operator(container, tmp_path)
    op.window_days = 4
    with pytest.raises(DataValidationError, match=r"dt=2026-10-31/: .*no blobs in this partition"):
        op.execute(context())


def test_fingerprint_follows_the_content(edge_env, container, tmp_path):
    generate(edge_env, container)
    before = operator(container, tmp_path).execute(context())["data_fingerprint"]
    # Same bytes uploaded again (new ETags): the stored Content-MD5 keeps the fingerprint.
    generate(edge_env, container)
    assert operator(container, tmp_path).execute(context())["data_fingerprint"] == before
    generate(edge_env, container, "--seed", "7")
    assert operator(container, tmp_path).execute(context())["data_fingerprint"] != before


def test_generator_is_deterministic(edge_env, container):
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(edge_env.blob_connection_string)
    second = f"{container}-b"
    try:
        generate(edge_env, container, "--seed", "3")
        generate(edge_env, second, "--seed", "3")

        def digests(name):
            client = service.get_container_client(name)
            return {
                b.name: hashlib.sha256(client.download_blob(b.name).readall()).hexdigest()
                for b in client.list_blobs()
            }

        first_digests = digests(container)
        assert len(first_digests) == 6
        assert first_digests == digests(second)
    finally:
        service.delete_container(second)
