"""Shared setup of the scheduler benchmarks (P3, P4, P5): a private edge stack and a real Airflow on free ports.

Everything lives in a temporary folder and is stopped (by pid) on exit, so a running demo is not disturbed.
Runs train small and skip the scoring image (it has its own benchmark), so the figures are about orchestration;
P4 builds the image like the demo does (``image_build=True``: a buildah storage of the bench's own, base image
imported from the cached tarball).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
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
from tests._pipeline import schedule_away_from_now  # noqa: E402

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
def scheduler_stack(seed_days: int = 16, rows_per_day: int = ROWS_PER_DAY, window_days: int = WINDOW_DAYS,
                    image_build: bool = False) -> Iterator[BenchStack]:  # fmt: skip
    """A fresh edge stack with ``seed_days`` of sample data and Airflow running on it.

    :param seed_days: days of sample data, ending yesterday.
    :param rows_per_day: rows in each day's partition.
    :param window_days: the DAG's default training window.
    :param image_build: give Airflow a buildah storage with the base image, so runs can build the scoring image.
    """
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
        # A daily tick 12 hours away: no interval opens (no extra scheduled run) while the bench runs.
        "EDGE_TRAINING_SCHEDULE": schedule_away_from_now(),
    }
    if image_build:
        settings["EDGE_BUILDAH_ROOT"] = str(work / "buildah" / "root")
        settings["EDGE_BUILDAH_RUNROOT"] = str(work / "buildah" / "run")
    airflow = AirflowLocal(work / "stack", port=_free_port(), env=settings)
    try:
        info = stack.start()
        seed(info, seed_days, rows_per_day)
        if image_build:
            subprocess.run([str(ROOT / "scripts" / "build_base_image.sh")], env={**os.environ, **settings},
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
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


EXECUTOR_TITLE = "airflow worker -- LocalExecutor:"


def executor_slots(root_pid: int) -> list[str]:
    """What the LocalExecutor's worker processes under ``root_pid`` run now: one task instance id per busy slot.

    Read from the executor's side: each worker process names its workload in its process title
    (``airflow worker -- LocalExecutor: <task instance id>``, ``<idle>`` between workloads), so a slot is counted
    while the process holds it, whatever the task's state in the metadata DB says.

    :param root_pid: pid of the Airflow whose executor is read (its descendants only: other Airflows on the machine
        are not counted).
    """
    children: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            titles[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        children.setdefault(ppid, []).append(int(proc.name))
    busy, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        title = titles.get(pid, "").strip()
        if title.startswith(EXECUTOR_TITLE) and (workload := title[len(EXECUTOR_TITLE):].strip()) != "<idle>":
            # The task process the worker forks keeps the title until it sets its own: one slot per workload.
            busy.add(workload)
    return sorted(busy)


def logical(day: date) -> str:
    """A logical date on ``day`` for runs triggered with an explicit interval (any time of day: each run's window
    is the days before its interval end's date)."""
    return f"{day.isoformat()}T02:00:00Z"


def backfill_range(first: date, last: date) -> tuple[str, str]:
    """``from_date`` and ``to_date`` of a backfill of the daily ticks of ``first`` .. ``last`` (both included),
    whatever the tick's time of day."""
    return f"{first.isoformat()}T00:00:00Z", f"{last.isoformat()}T23:59:59Z"


def interval(day: date) -> tuple[str, str]:
    return logical(day), logical(day + timedelta(days=1))


def wait_backfill(client: AirflowClient, backfill_id: int, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while client.backfill_api.get_backfill(backfill_id).completed_at is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id} not complete after {timeout}s")
        time.sleep(1)


def unpause_and_settle(client: AirflowClient, conf: dict | None = None) -> float:
    """Run the latest interval as ``make demo`` does (trigger it over REST, unpause, follow it), so that unpausing
    schedules nothing else; returns its wall time from trigger to end. Paused DAGs run nothing, backfills included.

    :param client: the bench's Airflow.
    :param conf: the run's conf (default ``FAST_CONF``).
    """
    from scripts.run_summary import trigger_latest_interval

    started = time.perf_counter()
    run = trigger_latest_interval(client, FAST_CONF if conf is None else conf)
    client.unpause(DAG_ID)
    final = client.follow(DAG_ID, run["dag_run_id"], timeout=1800)
    if final["state"] != "success":
        raise RuntimeError(f"run {run['dag_run_id']} ended {final['state']}; see the task logs in {client.url}")
    return time.perf_counter() - started


def timed_run(client: AirflowClient, day: date, conf: dict, image_built: bool = False) -> float:
    """Trigger the run of ``day``'s scheduled interval over REST and follow it; its wall time, trigger to end.

    :param client: the bench's Airflow.
    :param day: the logical date's day.
    :param conf: the run's conf.
    :param image_built: the run must have built the scoring image (``build_image`` succeeded, not skipped).
    """
    started = time.perf_counter()
    run = client.trigger(DAG_ID, conf=conf, logical_date=logical(day), data_interval=interval(day))
    final = client.follow(DAG_ID, run["dag_run_id"], timeout=1800)
    elapsed = time.perf_counter() - started
    if final["state"] != "success":
        raise RuntimeError(f"run {run['dag_run_id']} ended {final['state']}; see the task logs in {client.url}")
    if image_built:
        states = {ti["task_id"]: ti["state"] for ti in client.task_instances(DAG_ID, run["dag_run_id"])}
        if states.get("build_image") != "success":
            raise RuntimeError(f"run {run['dag_run_id']} built no scoring image: tasks {states}")
    return elapsed
