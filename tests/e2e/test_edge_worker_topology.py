"""The edge topology on real Airflow components, without Docker.

Central Airflow (``airflow standalone``: scheduler, dag-processor, api-server, triggerer) runs the LocalExecutor
alongside the EdgeExecutor and serves the edge worker API; it has **no** connection to the edge site (no blob, no
VM credentials), so a data or VM task that ran centrally would fail. One ``airflow edge worker --queues edge``
process plays the site: it holds the site's connections, reaches central Airflow only over its HTTP API, and has
no metadata DB (its database setting points at a folder that does not exist, so any database access fails).

The run must succeed with every task of ``EDGE_SITE_TASKS`` executed by that worker (edge job records name it)
and every other task centrally; what the worker sent to central Airflow (XCom, the task logs it pushed) must hold
no training-data row.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from scripts.airflow_local import AirflowLocal, _free_port
from scripts.run_summary import trigger_latest_interval
from tests._pipeline import (
    FAST_TRAINING,
    ROOT,
    delete_container,
    isolated_settings,
    schedule_away_from_now,
    seed_sensor_data,
)
from tests._residency import RowSignatures, audit, files_under

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
EDGE_WORKER_NAME = "edge-site-1"
# The scoring image is built centrally and has its own tests: skipping it keeps this run to the topology.
CONF = {"window_days": 3, "training_params": FAST_TRAINING, "skip_image_build": True}
# Tasks that end skipped by design: the other training backend, and the image build (skip_image_build).
SKIPPED_BY_DESIGN = {"train_on_azureml", "build_image"}
EXECUTORS = "LocalExecutor,airflow.providers.edge3.executors.EdgeExecutor"


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group this test started (the edge worker and its task supervisors)."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue


def _wait_for_worker(db_path: Path, worker: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until the edge worker has registered with central Airflow (over the API) and is idle."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline and worker.poll() is None:
        with sqlite3.connect(db_path) as db:
            row = db.execute("SELECT state FROM edge_worker WHERE worker_name = ?", (EDGE_WORKER_NAME,)).fetchone()
        state = row and row[0]
        if state == "idle":
            return
        time.sleep(1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    pytest.fail(f"edge worker {EDGE_WORKER_NAME} not idle after {timeout:.0f}s (state {state}, exit {worker.poll()}):\n{tail}")


@pytest.fixture(scope="module")
def edge_run(edge_stack, tmp_path_factory):
    work = tmp_path_factory.mktemp("edge-topology")
    container = f"edge-topology-{uuid.uuid4().hex[:10]}"
    partitions = seed_sensor_data(edge_stack.blob_connection_string, container, CONF["window_days"], 1000, 31)
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    # Both sides: the same topology, executors (the worker parses the DAG, whose edge tasks name the EdgeExecutor)
    # and the shared secret that signs the edge worker's API tokens.
    both = {
        "EDGE_EXECUTOR_TOPOLOGY": "edge",
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS,
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__EDGE__API_URL": f"{api}/edge_worker/v1/rpcapi",
        "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "5",
        "AIRFLOW__EDGE__JOB_POLL_INTERVAL": "1",
        # No interval may open mid-test (an extra scheduled run), whatever the time of day.
        "EDGE_TRAINING_SCHEDULE": schedule_away_from_now(),
    }
    central_state = work / "central"
    central_state.mkdir()
    # The central side's connections file: empty on purpose, the edge site's credentials stay at the site.
    (central_state / "airflow.env").write_text("# central Airflow: no connection to the edge site\n")
    central = AirflowLocal(central_state, port=port, env={
        **both,
        "AIRFLOW__EDGE__API_ENABLED": "True",
        # Keep finished edge jobs long enough to be inspected below.
        "AIRFLOW__EDGE__JOB_SUCCESS_PURGE": "600",
    })  # fmt: skip

    no_db = work / "no-metadata-db-at-the-edge"
    edge_home = work / "edge-site" / "airflow"
    edge_home.mkdir(parents=True)
    edge_env = {
        **os.environ,
        **edge_stack.airflow_env,
        **isolated_settings(work / "edge-site", container),
        **both,
        "AIRFLOW_HOME": str(edge_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The local edge VM is this shared test machine: its load says nothing about the topology.
        "EDGE_VM_MAX_LOAD_PER_CPU": "1000",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{no_db / 'airflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    worker = None
    try:
        central.start()
        with open(work / "edge-worker.log", "wb") as log:
            worker = subprocess.Popen(
                [AIRFLOW, "edge", "worker", "--queues", "edge", "--edge-hostname", EDGE_WORKER_NAME,
                 "--concurrency", "2"],
                env=edge_env, cwd=edge_home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _wait_for_worker(central.home / "airflow.db", worker, work / "edge-worker.log")
        client = central.client()
        client.wait_for_dag("edge_training", timeout=180)
        # The run takes the scheduler's latest interval, so unpausing starts no second (scheduled) run.
        started = trigger_latest_interval(client, CONF)
        client.unpause("edge_training")
        run = client.follow("edge_training", started["dag_run_id"], timeout=240)
        tis = {ti["task_id"]: ti for ti in client.task_instances("edge_training", run["dag_run_id"])}
        with sqlite3.connect(central.home / "airflow.db") as db:
            jobs = {
                row[0]: {"edge_worker": row[1], "queue": row[2], "state": row[3]}
                for row in db.execute(
                    "SELECT task_id, edge_worker, queue, state FROM edge_job WHERE run_id = ?", (run["dag_run_id"],)
                )
            }
            xcoms = db.execute("SELECT task_id, key, value FROM xcom WHERE run_id = ?", (run["dag_run_id"],)).fetchall()
        central_env = Path(f"/proc/{central.info().pid}/environ").read_bytes().decode(errors="replace")
        yield {
            "run": run, "tis": tis, "jobs": jobs, "xcoms": xcoms, "central_env": central_env, "edge_env": edge_env,
            "central_logs": central.home / "logs", "partitions": partitions,
            "worker_log": work / "edge-worker.log", "airflow_log": central.log_file,
        }  # fmt: skip
    finally:
        if worker is not None:
            _stop_group(worker)
        central.stop()
        delete_container(edge_stack.blob_connection_string, container)


def test_the_run_succeeds(edge_run):
    states = {task: ti["state"] for task, ti in edge_run["tis"].items()}
    assert edge_run["run"]["state"] == "success", (
        f"run {edge_run['run']['state']}, tasks {states}; see {edge_run['worker_log']} and {edge_run['airflow_log']}"
    )
    assert {task for task, state in states.items() if state != "success"} == SKIPPED_BY_DESIGN, states


def test_data_and_vm_tasks_ran_on_the_edge_worker_and_the_rest_centrally(edge_run):
    from edge_training.topology import EDGE_SITE_TASKS

    tis, jobs = edge_run["tis"], edge_run["jobs"]
    assert {"validate_data", "check_edge_vm", "train_on_edge_vm"} <= set(EDGE_SITE_TASKS) & set(tis)
    for task_id, ti in tis.items():
        if task_id in EDGE_SITE_TASKS:
            assert (ti["executor"], ti["queue"], ti["hostname"]) == ("EdgeExecutor", "edge", EDGE_WORKER_NAME), (
                f"{task_id}: {ti}"
            )
            assert jobs.get(task_id) == {"edge_worker": EDGE_WORKER_NAME, "queue": "edge", "state": "success"}, (
                f"{task_id} has no successful job of edge worker {EDGE_WORKER_NAME}: {jobs.get(task_id)}"
            )
        else:
            assert ti["executor"] in (None, "LocalExecutor") and ti["hostname"] != EDGE_WORKER_NAME, f"{task_id}: {ti}"
            assert task_id not in jobs, f"{task_id} ran centrally yet has an edge job: {jobs[task_id]}"


def test_central_airflow_holds_no_edge_site_credentials_and_the_worker_no_metadata_db(edge_run):
    assert "AIRFLOW_CONN_EDGE_VM=" not in edge_run["central_env"]
    assert "AIRFLOW_CONN_EDGE_BLOB=" not in edge_run["central_env"]
    # The run succeeded on the worker's settings; with those same settings, opening the metadata DB fails: the
    # worker and its tasks did their work without it.
    check = subprocess.run([AIRFLOW, "db", "check"], env=edge_run["edge_env"], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert check.returncode != 0, f"the edge worker's settings reach a metadata DB:\n{check.stdout[-2000:]}"
    assert "unable to open database file" in check.stdout + check.stderr, (check.stdout + check.stderr)[-2000:]


def test_what_the_edge_worker_sent_to_central_airflow_holds_no_training_row(edge_run):
    signatures = RowSignatures.from_csv_texts(edge_run["partitions"])
    logs = list(files_under(edge_run["central_logs"]))
    # The worker pushes each task's log to central Airflow: they must be there for the scan to mean anything.
    assert any("train_on_edge_vm" in path for path, _ in logs), f"no pushed log of train_on_edge_vm in {logs[:5]}"
    material = [(f"xcom {task}.{key}", str(value)) for task, key, value in edge_run["xcoms"]] + logs
    findings, sources, chars = audit(material, signatures)
    print(f"central Airflow: {sources} sources, {chars} chars scanned, {len(findings)} training rows found")
    assert not findings, "training-data rows reached central Airflow:\n" + "\n".join(map(str, findings[:10]))
