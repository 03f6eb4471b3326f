"""Shared setup of the scheduler benchmarks (P3, P4, P5): a private edge stack and a real Airflow on free ports.

Everything lives in a temporary folder and is stopped (by pid) on exit, so a running demo is not disturbed.
Runs skip the scoring image (it has its own benchmark) and train small, so the figures are about orchestration.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts.airflow_local import AirflowClient, AirflowLocal, _free_port  # noqa: E402
from scripts.edge_stack import EdgeStack, StackInfo  # noqa: E402

DAG_ID = "edge_training"
WINDOW_DAYS = 3
ROWS_PER_DAY = 2000
FAST_CONF = {"training_params": {"n_estimators": 20, "max_depth": 5, "n_jobs": 1}, "skip_image_build": True}
SHARED_ENVS = Path.home() / "edge-training-test" / "envs"


@dataclass
class BenchStack:
    stack: StackInfo
    airflow: AirflowLocal
    client: AirflowClient
    settings: dict[str, str]
    vm_base: Path
    today: date


def seed(stack: StackInfo, days: int, rows_per_day: int = ROWS_PER_DAY) -> None:
    from azure.storage.blob import BlobServiceClient

    from include.sample_data.generate import generate

    today = datetime.now(timezone.utc).date()
    container = BlobServiceClient.from_connection_string(stack.blob_connection_string).get_container_client(
        "sensor-readings"
    )
    generate(container, today - timedelta(days=days), days, rows_per_day=rows_per_day, seed=7)


@contextlib.contextmanager
def scheduler_stack(seed_days: int = 16, rows_per_day: int = ROWS_PER_DAY,
                    window_days: int = WINDOW_DAYS) -> Iterator[BenchStack]:  # fmt: skip
    """A fresh edge stack with ``seed_days`` of sample data and Airflow running on it."""
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    stack = EdgeStack(work / "stack", free_ports=True)
    # The local edge VM is this machine: a work dir of its own, the training venv shared with the tests.
    vm_base = Path.home() / f"edge-training-bench-{uuid.uuid4().hex[:8]}"
    SHARED_ENVS.mkdir(parents=True, exist_ok=True)
    vm_base.mkdir(mode=0o700)
    (vm_base / "envs").symlink_to(SHARED_ENVS)
    settings = {
        "EDGE_VM_WORK_DIR": str(vm_base),
        "EDGE_TRAINING_WINDOW_DAYS": str(window_days),
        "EDGE_TRAINING_POLL_INTERVAL_S": "2",
        # A shared benchmark machine is busy; its load says nothing about the pipeline.
        "EDGE_VM_MAX_LOAD_PER_CPU": "1000",
    }
    airflow = AirflowLocal(work / "stack", port=_free_port(), env=settings)
    try:
        info = stack.start()
        seed(info, seed_days, rows_per_day)
        airflow.start()
        client = airflow.client()
        client.wait_for_dag(DAG_ID)
        yield BenchStack(info, airflow, client, {**info.airflow_env, **settings}, vm_base,
                         datetime.now(timezone.utc).date())  # fmt: skip
    finally:
        airflow.stop()
        stack.stop()
        shutil.rmtree(vm_base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def logical(day: date) -> str:
    """The 02:00 UTC tick of ``day``: a logical date of the daily schedule."""
    return f"{day.isoformat()}T02:00:00Z"


def interval(day: date) -> tuple[str, str]:
    return logical(day), logical(day + timedelta(days=1))


def wait_backfill(client: AirflowClient, backfill_id: int, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while client.request("GET", f"/backfills/{backfill_id}")["completed_at"] is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id} not complete after {timeout}s")
        time.sleep(1)


def unpause_and_settle(client: AirflowClient) -> float:
    """Run the latest interval as ``make demo`` does (trigger it over REST, unpause, follow it), so that unpausing
    schedules nothing else; returns its wall time from trigger to end. Paused DAGs run nothing, backfills included.
    """
    from scripts.run_summary import trigger_latest_interval

    started = time.perf_counter()
    run = trigger_latest_interval(client, FAST_CONF)
    client.unpause(DAG_ID)
    final = client.follow(DAG_ID, run["dag_run_id"], timeout=1800)
    if final["state"] != "success":
        raise RuntimeError(f"run {run['dag_run_id']} ended {final['state']}; see the task logs in {client.url}")
    return time.perf_counter() - started


def timed_run(client: AirflowClient, day: date, conf: dict) -> float:
    """Trigger the run of ``day``'s scheduled interval over REST and follow it; its wall time, trigger to end."""
    started = time.perf_counter()
    run = client.trigger(DAG_ID, conf=conf, logical_date=logical(day), data_interval=interval(day))
    final = client.follow(DAG_ID, run["dag_run_id"], timeout=1800)
    if final["state"] != "success":
        raise RuntimeError(f"run {run['dag_run_id']} ended {final['state']}; see the task logs in {client.url}")
    return time.perf_counter() - started
