"""Residency audit: run the pipeline once and search everything it moves off the edge for training-data rows.

What leaves the edge: XCom values (the metadata DB), task logs (the run's output and log files), registry uploads
(MLflow artifacts and the registry store with its model version tags), report files (Data Docs), and the local copy
of what the training job sent back from the VM. Only models, metrics and summaries may be there; any row of the
training data (full CSV line, machine_id + timestamp, or its sensor readings) fails the audit, naming where it was.

The run is the real one: ``airflow dags test edge_training`` in its own Airflow home, on data generated into its own
container of the stack's Azurite, trained by the real training job on the stack's sshd "VM".
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests._pipeline import FAST_TRAINING, delete_container, isolated_settings, seed_sensor_data
from tests._residency import RowSignatures, audit, files_under, scan_text

pytestmark = pytest.mark.integration

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
TASKS = ("validate_data", "check_edge_vm", "train_on_edge_vm", "register_model", "build_image")
# The run trains on the edge VM: the branch skips the Azure ML training task.
EXPECTED_STATES = {**dict.fromkeys(TASKS, "success"), "choose_training_backend": "success", "train_on_azureml": "skipped"}
ROWS_PER_DAY = 1500
CONF = {"window_days": 3, "training_params": FAST_TRAINING}


def _table_dump(db: Path) -> str:
    """Every row of every table of a SQLite store, as text (what a reader of that store sees)."""
    with sqlite3.connect(db) as conn:
        return "\n".join(conn.iterdump())


@pytest.fixture(scope="module")
def audited_run(edge_stack, tmp_path_factory):
    work = tmp_path_factory.mktemp("residency-audit")
    container = f"residency-{uuid.uuid4().hex[:10]}"
    partitions = seed_sensor_data(edge_stack.blob_connection_string, container, CONF["window_days"], ROWS_PER_DAY, 23)
    env = {
        **os.environ,
        **edge_stack.airflow_env,
        **isolated_settings(work, container),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "AIRFLOW_HOME": str(work / "airflow"),
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run(
        [AIRFLOW, "pools", "set", "edge_vm", "1", "edge VM", "--include-deferred"],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    today = dt.datetime.now(dt.timezone.utc).date()
    run = subprocess.run(
        [AIRFLOW, "dags", "test", "edge_training", f"{today.isoformat()}T02:00:00+00:00", "--conf", json.dumps(CONF)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    yield {"work": work, "run": run, "partitions": partitions}
    delete_container(edge_stack.blob_connection_string, container)


@pytest.fixture(scope="module")
def signatures(audited_run) -> RowSignatures:
    return RowSignatures.from_csv_texts(audited_run["partitions"])


def test_the_audited_run_succeeded(audited_run):
    run, db = audited_run["run"], audited_run["work"] / "airflow" / "airflow.db"
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT task_id, state FROM task_instance WHERE dag_id = 'edge_training'"))
    assert states == EXPECTED_STATES, f"exit {run.returncode}; states {states}\n{run.stdout[-3000:]}"


def test_signatures_find_the_real_rows(audited_run, signatures):
    # The audit is only as good as its signatures: they must recognise the partitions they were built from.
    assert signatures.rows == ROWS_PER_DAY * (CONF["window_days"] + 3)
    assert scan_text("partition", audited_run["partitions"][0], signatures)


def test_nothing_that_left_the_edge_contains_a_training_row(audited_run, signatures):
    work, run = audited_run["work"], audited_run["run"]
    db = work / "airflow" / "airflow.db"
    with sqlite3.connect(db) as conn:
        xcoms = conn.execute("SELECT task_id, key, value FROM xcom WHERE dag_id = 'edge_training'").fetchall()
    material = {
        "xcom": [(f"xcom {task}.{key}", str(value)) for task, key, value in xcoms],
        "task logs": [("dags test output", run.stdout + run.stderr), *files_under(work / "airflow" / "logs")],
        "registry uploads": list(files_under(work / "mlflow" / "artifacts")),
        "registry store and model version tags": [("mlflow.db", _table_dump(work / "mlflow" / "mlflow.db"))],
        "reports": list(files_under(work / "reports")),
        "returned from the VM": list(files_under(work / "artifacts")),
    }
    # Each kind of material must really be there, or the audit would pass by looking at nothing.
    assert {task for task, _, _ in xcoms} >= set(TASKS), f"XCom of {sorted({t for t, _, _ in xcoms})}"
    assert any(src.endswith(".html") for src, _ in material["reports"]), "no Data Docs report was written"
    assert any(src.endswith("model.onnx") for src, _ in material["registry uploads"]), "no model was uploaded"
    assert "model_version_tags" in material["registry store and model version tags"][0][1]
    assert "data_fingerprint" in material["registry store and model version tags"][0][1]

    report, failures = [], []
    for kind, items in material.items():
        findings, sources, chars = audit(items, signatures)
        report.append(f"{kind}: {sources} sources, {chars} chars, {len(findings)} rows found")
        failures.extend(f"[{kind}] {f}" for f in findings[:5])
    print("\n".join(report))
    assert not failures, "training-data rows left the edge:\n" + "\n".join(failures)
