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
from tests._data_docs import docs_text, docs_tokens

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


def test_part_without_header_fails_without_echoing_its_first_row(edge_env, container, tmp_path, caplog):
    import logging

    from azure.storage.blob import ContainerClient

    caplog.set_level(logging.INFO)

    out = generate(edge_env, container, "--corrupt", "no-header", "--corrupt-date", "2026-11-02")
    assert "the header line is missing" in out
    client = ContainerClient.from_connection_string(edge_env.blob_connection_string, container)
    first_line = client.download_blob("dt=2026-11-02/part-0000.csv").readall().decode().split("\n", 1)[0]
    cells = first_line.split(",")
    assert cells[0].startswith("M-") and len(cells) == 9  # a data row, really

    with pytest.raises(DataValidationError) as caught:
        operator(container, tmp_path).execute(context())
    message = str(caught.value)
    assert (
        "dt=2026-11-02/part-0000.csv: expect_table_columns_to_match_ordered_list: the first line has 9 field(s) and "
        "none is an expected column name: it looks like a data row"
    ) in message
    assert "1 failure(s) in 1 of 6 partition(s)" in message
    text, tokens = docs_text(tmp_path), docs_tokens(tmp_path)
    assert "it looks like a data row" in text
    for cell in cells:
        if cell in ("0", "1"):
            continue  # the label: digits every page holds
        for where, found in (("error", message), ("log", caplog.text), ("Data Docs", tokens)):
            assert cell not in found, f"cell {cell!r} of the first row is in the {where}"
    assert cells[0] not in text and cells[1] not in text  # machine id, timestamp: not even inside a longer word


def test_markers_beside_the_parts_are_ignored_and_listed(edge_env, container, tmp_path, caplog):
    import logging

    out = generate(edge_env, container, "--corrupt", "markers", "--corrupt-date", "2026-11-02")
    assert "Added to dt=2026-11-02/: a _SUCCESS marker" in out
    caplog.set_level(logging.INFO)
    summary = operator(container, tmp_path).execute(context())

    assert summary["success"] is True
    assert summary["ignored_blobs"] == ["dt=2026-11-02/.part-0000.csv.crc", "dt=2026-11-02/_SUCCESS"]
    assert summary["ignored_blob_count"] == 2
    assert len(summary["partitions"]) == 6 and summary["row_count"] == 9000
    assert (
        "Ignoring 2 blob(s) that are not data (markers, checksums, hidden or non-CSV files), not validated: "
        "dt=2026-11-02/.part-0000.csv.crc, dt=2026-11-02/_SUCCESS"
    ) in caplog.text
    assert "_SUCCESS: 0 rows" not in caplog.text


def test_manifest_is_what_the_store_lists(edge_env, container, tmp_path):
    from azure.storage.blob import ContainerClient

    from edge_training.fingerprint import blob_manifest

    generate(edge_env, container, "--corrupt", "markers", "--corrupt-date", "2026-11-01")
    summary = operator(container, tmp_path).execute(context())
    client = ContainerClient.from_connection_string(edge_env.blob_connection_string, container)
    listed = {
        b.name: {
            "name": b.name, "etag": b.etag, "content_md5": bytes(b.content_settings.content_md5).hex(), "size": b.size,
        }
        for b in client.list_blobs() if b.name.endswith(".csv") and not b.name.split("/")[-1].startswith(".")
    }  # fmt: skip
    assert summary["manifest"] == [listed[name] for name in sorted(listed)]
    assert summary["data_fingerprint"] == blob_manifest.data_fingerprint(summary["manifest"])
    # The ETag is the service's own: a conditional read with it is accepted as long as the blob is unchanged.
    first = summary["manifest"][0]
    from azure.core import MatchConditions

    data = client.download_blob(first["name"], etag=first["etag"], match_condition=MatchConditions.IfNotModified)
    assert len(data.readall()) == first["size"]


class _RewritingClient:
    """A real ContainerClient that overwrites one blob (in Azurite) right after the first range of it was read."""

    def __init__(self, client, name: str) -> None:
        self._client, self._name, self.rewritten = client, name, False

    def __getattr__(self, attr):
        return getattr(self._client, attr)

    def download_blob(self, name, **kwargs):
        downloader = self._client.download_blob(name, **kwargs)
        if name == self._name and not self.rewritten:
            # A writer re-exports the part (a new version, as the service's ETag says) while it is being read.
            content = self._client.download_blob(name).readall()
            self._client.upload_blob(name, content.replace(b"M-0001", b"M-0002", 1), overwrite=True)
            self.rewritten = True
        return downloader


def test_blob_rewritten_during_validation_fails_and_says_to_rerun(edge_env, container, tmp_path, monkeypatch):
    from azure.storage.blob import ContainerClient

    from edge_training import config, validation
    from edge_training.exceptions import EdgeTrainingError
    from edge_training.window import TrainingWindow

    generate(edge_env, container)
    # Several ranges per blob, so a rewrite lands between two reads of the same blob.
    monkeypatch.setattr(validation, "DOWNLOAD_RANGE_BYTES", 16 * 1024)
    real = ContainerClient.from_connection_string(edge_env.blob_connection_string, container)
    client = _RewritingClient(real, "dt=2026-11-02/part-0001.csv")
    window = TrainingWindow(start=datetime(2026, 11, 1).date(), end=datetime(2026, 11, 4).date())
    with pytest.raises(EdgeTrainingError) as caught:
        validation.validate_partitions(
            validation.blob_partitions(client, window), window.days, suite_path=config.EXPECTATION_SUITE_PATH,
            docs_dir=tmp_path, chunk_rows=1000, window_label=window.label,
        )
    assert client.rewritten
    message = str(caught.value)
    assert not isinstance(caught.value, DataValidationError)  # retried: the data is not known to be bad
    assert message.startswith(
        "Blob dt=2026-11-02/part-0001.csv was rewritten while the training window was being validated"
    )
    assert "Re-run validate_data" in message


def test_task_log_holds_the_pipelines_lines_not_great_expectations_internals(pipeline):
    """The real task in Airflow (``airflow tasks test`` on the DAG file): its log is what a person reads.

    Before Great Expectations' loggers were quieted in the task this printed 275 lines, 248 of them its internals.
    """
    from tests.integration.conftest import ROWS_PER_DAY

    done = pipeline.airflow(
        "tasks", "test", "edge_training", "validate_data", "2026-06-10T02:00:00+00:00",
        "-t", json.dumps({"window_days": 3}), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    lines = [line for line in log.splitlines() if line.strip()]
    for noise in ("Skipping registering function", "_get_default_value called with key", "great_expectations"):
        assert noise not in log
    # The pipeline's own lines are all there.
    window = "2026-06-07..2026-06-10"
    for line in (
        f"Validating training window {window}: 3 blobs listed",
        *(f"Validated dt=2026-06-0{d}/part-0000.csv: {ROWS_PER_DAY} rows, passed" for d in (7, 8, 9)),
        "Data Docs report: ",
        f"Training window {window} passed: {3 * ROWS_PER_DAY} rows in 3 data blobs",
    ):
        assert line in log
    assert len(lines) < 40, "\n".join(lines)
