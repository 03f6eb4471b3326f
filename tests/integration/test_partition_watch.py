"""The partition watch's sensor against real Azurite: a day counts as landed only once it holds a data blob."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# The watch DAG exists only with EDGE_TRAINING_TRIGGER=asset, read when the DAG file is imported: a fresh interpreter.
_POKE = """
import json, sys
from datetime import datetime, timezone
from airflow.dag_processing.dagbag import DagBag

watch = DagBag(dag_folder="dags").dags["edge_partition_watch"]
sensor = watch.get_task("wait_for_partition")
result = sensor.poke({"data_interval_end": datetime(2026, 11, 4, 2, tzinfo=timezone.utc)})
print(json.dumps({"is_done": result.is_done, "xcom": result.xcom_value}))
"""


def poke(stack, container: str) -> dict:
    env = {
        **os.environ,
        **stack.airflow_env,
        "EDGE_TRAINING_TRIGGER": "asset",
        "EDGE_BLOB_CONTAINER": container,
        "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}",
    }
    done = subprocess.run(
        [sys.executable, "-c", _POKE], cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_markers_alone_do_not_count_as_a_landed_partition(edge_env):
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(edge_env.blob_connection_string)
    name = f"watch-{uuid.uuid4().hex[:10]}"
    container = service.create_container(name)
    try:
        assert poke(edge_env, name)["is_done"] is False  # nothing there yet

        # A writer that has only dropped its markers and temporary files so far (Spark, ADF, AzCopy).
        for blob in ("dt=2026-11-03/_SUCCESS", "dt=2026-11-03/_temporary/0/part-0000.csv", "dt=2026-11-03/.part.crc"):
            container.upload_blob(blob, b"")
        assert poke(edge_env, name)["is_done"] is False

        container.upload_blob("dt=2026-11-03/part-0000.csv", b"machine_id\n")
        assert poke(edge_env, name) == {"is_done": True, "xcom": {"partition": "2026-11-03"}}
    finally:
        service.delete_container(name)
