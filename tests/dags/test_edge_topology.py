"""EDGE_EXECUTOR_TOPOLOGY: all-in-one by default; "edge" sends the data and VM tasks to the edge worker's queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGE_EXECUTORS = "LocalExecutor,airflow.providers.edge3.executors.EdgeExecutor"


def parsed_tasks(**env: str) -> dict[str, dict]:
    """Parse the DAG folder in a fresh interpreter (settings are read at import) and describe each task."""
    probe = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "dag = bag.dags['edge_training']\n"
        "print(json.dumps({t.task_id: {'executor': t.executor, 'queue': t.queue,\n"
        "    'deferrable': getattr(t, 'deferrable', None)} for t in dag.tasks}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_default_runs_every_task_on_the_default_executor_and_queue():
    env = {k: v for k, v in os.environ.items() if k != "EDGE_EXECUTOR_TOPOLOGY"}
    tasks = parsed_tasks(**env, EDGE_EXECUTOR_TOPOLOGY="local")
    assert {t["executor"] for t in tasks.values()} == {None}
    assert {t["queue"] for t in tasks.values()} == {"default"}
    assert tasks["train_on_edge_vm"]["deferrable"] is True


def test_edge_topology_sends_data_and_vm_tasks_to_the_edge_worker():
    from edge_training.topology import EDGE_SITE_TASKS

    tasks = parsed_tasks(EDGE_EXECUTOR_TOPOLOGY="edge", AIRFLOW__CORE__EXECUTOR=EDGE_EXECUTORS)
    at_edge = {name for name, t in tasks.items() if t["executor"] == "EdgeExecutor" and t["queue"] == "edge"}
    assert at_edge == set(EDGE_SITE_TASKS) & set(tasks)
    assert {"validate_data", "check_edge_vm", "train_on_edge_vm"} <= at_edge
    central = {name: t for name, t in tasks.items() if name not in at_edge}
    assert all(t["executor"] is None and t["queue"] == "default" for t in central.values()), central
    # The central triggerer cannot reach the VM: at the site the worker itself waits for the training job.
    assert tasks["train_on_edge_vm"]["deferrable"] is False
