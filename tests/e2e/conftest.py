"""A real Airflow (``airflow standalone``: scheduler, dag-processor, api-server, triggerer) on the session's edge stack.

* ``e2e_airflow`` (module): ``scripts.airflow_local.AirflowLocal`` started on a free port with an AIRFLOW_HOME of the
  module's own (the edge stack's connections), the ``edge_vm`` pool (1 slot, deferred tasks count), short poll
  intervals, 3-day training windows, and an edge VM work dir of its own (so job counts belong to this session only; the
  training venv, keyed by its requirements hash, is shared with the integration tests to skip a pip install).
  Sample data (few rows per day) covers the last ``SEEDED_DAYS`` days. The daily cron ticks 12 hours away from the
  start (``schedule_away_from_now``), so no new interval opens while the module runs, whatever the time of day. Stopped (by pid) when the module is done,
  so it never runs beside another test module's Airflow.
* ``e2e_airflow_env`` (module): extra settings for that Airflow, none here; a module overrides this fixture to give its
  Airflow more (an alert connection, a registry of its own, shorter retry delays).
* ``api`` (module): a REST client logged in as standalone's generated admin user, ``edge_training`` unpaused.
* ``vm_jobs``: the training jobs started on the edge VM in this session, read from their ``job.json``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

DAG_ID = "edge_training"
SEEDED_DAYS = 12
# Few rows, but enough that the suite's 1 % missing-value tolerance is not crossed by chance.
ROWS_PER_DAY = 2000
WINDOW_DAYS = 3
SHARED_ENVS = Path.home() / "edge-training-test" / "envs"


@dataclass(frozen=True)
class E2EAirflow:
    airflow: object  # scripts.airflow_local.AirflowLocal
    vm_base: Path
    tracking_uri: str
    today: date
    container: str  # the module's own data container in the stack's Azurite


def vm_jobs(vm_base: Path) -> list[dict]:
    """Every training job started on the edge VM under ``vm_base`` (set-aside failed attempts included)."""
    jobs = []
    for job_json in sorted((vm_base / "jobs").glob("*/job.json")):
        meta = json.loads(job_json.read_text())
        exit_code = job_json.parent / "exit_code"
        meta["finished_at_epoch"] = exit_code.stat().st_mtime if exit_code.exists() else None
        jobs.append(meta)
    return jobs


def model_versions(tracking_uri: str, model_name: str = "predictive-maintenance") -> list:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_model_versions(
        f"name = '{model_name}'"
    )


@pytest.fixture(scope="module")
def e2e_airflow_env() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def e2e_airflow(edge_stack, tmp_path_factory, e2e_airflow_env) -> Iterator[E2EAirflow]:
    from azure.storage.blob import BlobServiceClient

    from include.sample_data.generate import generate
    from scripts.airflow_local import AirflowLocal, _free_port
    from tests._pipeline import isolated_settings, schedule_away_from_now

    today = datetime.now(timezone.utc).date()
    # A container and model registry of its own: other tests on the same stack do not change the counts here.
    container = f"e2e-{uuid.uuid4().hex[:10]}"
    settings = isolated_settings(tmp_path_factory.mktemp("e2e-airflow"), container)
    service = BlobServiceClient.from_connection_string(edge_stack.blob_connection_string)
    generate(
        service.get_container_client(container),
        today - timedelta(days=SEEDED_DAYS),
        SEEDED_DAYS,
        rows_per_day=ROWS_PER_DAY,
        seed=7,
    )

    # The edge VM of the local stack is this machine, as this user: its work dir is a local folder.
    vm_base = Path.home() / f"edge-training-e2e-{uuid.uuid4().hex[:8]}"
    SHARED_ENVS.mkdir(parents=True, exist_ok=True)
    vm_base.mkdir(mode=0o700)
    (vm_base / "envs").symlink_to(SHARED_ENVS)

    # An Airflow home (metadata DB, logs) of this module's own: runs, tries and XCom of another module's Airflow on
    # the same stack (its validated manifests, for one) must not be picked up here. The connections are the stack's.
    state_dir = tmp_path_factory.mktemp("e2e-airflow-state")
    (state_dir / "airflow.env").symlink_to(edge_stack.state_dir / "airflow.env")
    airflow = AirflowLocal(
        state_dir,
        port=_free_port(),
        env={
            **settings,
            "EDGE_VM_WORK_DIR": str(vm_base),
            "EDGE_TRAINING_WINDOW_DAYS": str(WINDOW_DAYS),
            "EDGE_TRAINING_SCHEDULE": schedule_away_from_now(),
            # The local edge VM is this shared test machine: its load says nothing about the pipeline.
            "EDGE_VM_MAX_LOAD_PER_CPU": "1000",
            **e2e_airflow_env,
        },
    )
    try:
        airflow.start()
        yield E2EAirflow(airflow, vm_base, settings["MLFLOW_TRACKING_URI"], today, container)
    finally:
        airflow.stop()
        shutil.rmtree(vm_base, ignore_errors=True)
        service.delete_container(container)


@pytest.fixture(scope="module")
def api(e2e_airflow):
    client = e2e_airflow.airflow.client()
    client.wait_for_dag(DAG_ID)
    client.unpause(DAG_ID)
    return client
