"""Helpers for tests that run the whole pipeline: sample data in a container of its own, isolated local state."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The VM's training env is built once per requirements hash under this dir, shared with the other VM tests.
VM_WORK_DIR = "~/edge-training-test"
FAST_TRAINING = {"n_estimators": 20, "max_depth": 5, "n_jobs": 1}


def seed_sensor_data(blob_connection_string: str, container: str, window_days: int, rows_per_day: int,
                     seed: int) -> list[str]:  # fmt: skip
    """Generate days around a manual run's training window (ending today) and return each partition's CSV text."""
    from azure.storage.blob import ContainerClient

    first_day = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=window_days + 2)
    subprocess.run(
        [sys.executable, str(ROOT / "include/sample_data/generate.py"), "--connection-string-env",
         "EDGE_BLOB_CONNECTION_STRING", "--container", container, "--start", first_day.isoformat(),
         "--days", str(window_days + 3), "--rows-per-day", str(rows_per_day), "--seed", str(seed)],
        env={**os.environ, "EDGE_BLOB_CONNECTION_STRING": blob_connection_string},
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    client = ContainerClient.from_connection_string(blob_connection_string, container)
    return [client.download_blob(b.name).readall().decode() for b in client.list_blobs()]


def delete_container(blob_connection_string: str, container: str) -> None:
    from azure.storage.blob import ContainerClient

    ContainerClient.from_connection_string(blob_connection_string, container).delete_container()


def schedule_away_from_now(now: dt.datetime | None = None) -> str:
    """A daily cron ticking 12 hours away from ``now``, for ``EDGE_TRAINING_SCHEDULE`` in tests with a scheduler.

    With the default 02:00 tick, a run started shortly before 02:00 UTC would see the scheduler open a new interval
    (and start an extra scheduled run) in the middle of the test; a tick half a day away keeps the latest interval
    and the next one fixed for the whole run, whenever the test starts.

    :param now: the moment the test starts (default: the current UTC time).
    """
    tick = (now or dt.datetime.now(dt.timezone.utc)) + dt.timedelta(hours=12)
    return f"{tick.minute} {tick.hour} * * *"


def isolated_settings(work: Path, container: str) -> dict[str, str]:
    """Settings that give a run its own data container, MLflow registry and reports."""
    (work / "mlflow").mkdir(parents=True, exist_ok=True)
    return {
        "EDGE_BLOB_CONTAINER": container,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow' / 'mlflow.db'}",
        "EDGE_MLFLOW_ARTIFACTS_DIR": str(work / "mlflow" / "artifacts"),
        "EDGE_REPORTS_DIR": str(work / "reports"),
        "EDGE_VM_WORK_DIR": VM_WORK_DIR,
        "EDGE_TRAINING_POLL_INTERVAL_S": "2",
    }


def download_outputs(training: dict, folder: Path, wasb_conn_id: str = "edge_blob") -> Path:
    """Download the output blobs a training result names into ``folder`` (checked, as register_model does)."""
    from edge_training.hooks.model_artifacts import ModelArtifactsHook

    return ModelArtifactsHook(wasb_conn_id).download(training["artifacts"], folder)


def stage_outputs(folder: Path, job: str, wasb_conn_id: str = "edge_blob", container: str = "models") -> dict:
    """Upload a training job's outputs in ``folder`` as the training task does; return the result's ``artifacts``.

    Each call uses a prefix of its own, so tests that reuse a job id never see each other's blobs.
    """
    import uuid

    from edge_training.hooks.model_artifacts import ModelArtifactsHook
    from edge_training.model_artifacts import output_prefix

    prefix = output_prefix(f"test-{uuid.uuid4().hex[:10]}", job)
    return ModelArtifactsHook(wasb_conn_id).upload_outputs(container, prefix, folder, {})
