"""Fixtures for integration tests that run the real DAG on the local edge stack.

* ``vm_work_dir`` (session): a work dir of this session's own on the edge VM (so a scan of it sees only this
  session's jobs), whose ``envs/`` links to the training-env cache under ``~/edge-training-test`` that every test
  session shares: the env is built by pip once per requirements hash, not once per session.
* ``pipeline`` (session): a :class:`Pipeline` that runs ``dags/edge_training.py`` with ``airflow dags test`` in a
  subprocess, against a private, migrated Airflow home (pool ``edge_vm`` created, as the README asks), the stack's
  connections, a blob container seeded by ``include/sample_data/generate.py`` and a model name of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DAG_ID = "edge_training"
# Shared with tests/integration/test_train_on_vm.py: the training env lives (and stays) there.
ENV_CACHE_DIR = "edge-training-test/envs"
# Days seeded into the pipeline's container; each run's window (WINDOW_DAYS days) must lie inside.
SEED_START = dt.date(2026, 6, 4)
SEED_DAYS = 10
ROWS_PER_DAY = 2000
SEED = 11
WINDOW_DAYS = 3
# Small forest: the run stays quick on a shared machine and the model still learns the failure signal.
FAST_PARAMS = {"n_estimators": 30, "max_depth": 6, "n_jobs": 1}


def _ssh(stack, command: str) -> str:
    from scripts.edge_stack import EdgeStack

    argv = EdgeStack(stack.state_dir).ssh_command(command)
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(scope="session")
def vm_work_dir(edge_stack) -> str:
    """Absolute path of this session's work dir on the edge VM (``envs/`` shared with other sessions)."""
    name = f"edge-training-it-{uuid.uuid4().hex[:10]}"
    base = _ssh(
        edge_stack,
        f'set -e; umask 077; mkdir -p "$HOME/{ENV_CACHE_DIR}" "$HOME/{name}"; '
        f'ln -s "$HOME/{ENV_CACHE_DIR}" "$HOME/{name}/envs"; cd "$HOME/{name}" && pwd -P',
    ).strip()
    yield base
    # rm -r removes the envs link, not the shared env it points to.
    _ssh(edge_stack, f"rm -rf {base}")


@dataclass
class RunResult:
    """What one `airflow dags test` run left behind: exit code, console log, run id, task states, XCom values."""

    returncode: int
    log: str
    run_id: str
    states: dict[str, str]
    xcom: dict[tuple[str, str], object] = field(repr=False)

    def value(self, task_id: str, key: str = "return_value"):
        return self.xcom.get((task_id, key))


class Pipeline:
    """Runs the real DAG in a subprocess with a private Airflow home and the edge stack's settings."""

    def __init__(self, stack, home: Path, vm_work_dir: str) -> None:
        self.stack = stack
        self.home = home
        self.container = f"it-pipeline-{uuid.uuid4().hex[:10]}"
        self.model_name = f"it-model-{uuid.uuid4().hex[:8]}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))},
            **stack.airflow_env,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "EDGE_BLOB_CONTAINER": self.container,
            "EDGE_MODEL_NAME": self.model_name,
            "EDGE_VM_WORK_DIR": vm_work_dir,
            "EDGE_TRAINING_POLL_INTERVAL_S": "1",
            # The VM is this machine, shared with other test sessions: its load says nothing about the pipeline.
            "EDGE_VM_MAX_LOAD_PER_CPU": "1000",
            "EDGE_BLOB_CONNECTION_STRING": stack.blob_connection_string,
        }

    def airflow(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "airflow"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def prepare(self) -> None:
        for args in (("db", "migrate"), ("pools", "set", "edge_vm", "1", "edge VM", "--include-deferred")):
            done = self.airflow(*args)
            assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        seeded = subprocess.run(
            [sys.executable, str(ROOT / "include" / "sample_data" / "generate.py"),
             "--connection-string-env", "EDGE_BLOB_CONNECTION_STRING", "--container", self.container,
             "--start", SEED_START.isoformat(), "--days", str(SEED_DAYS), "--rows-per-day", str(ROWS_PER_DAY),
             "--seed", str(SEED)],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert seeded.returncode == 0, seeded.stderr[-3000:]

    def partition_texts(self) -> list[str]:
        """The seeded CSV partitions, as stored in blob storage (to look for their rows elsewhere)."""
        from azure.storage.blob import ContainerClient

        client = ContainerClient.from_connection_string(self.stack.blob_connection_string, self.container)
        return [client.download_blob(b.name).readall().decode() for b in client.list_blobs()]

    def run(self, interval_end: dt.date, conf: dict | None = None, env: dict | None = None,
            no_retries: bool = False, dag_id: str = DAG_ID) -> RunResult:  # fmt: skip
        """Run the DAG once for the data interval ending at ``interval_end`` 02:00 UTC (its training window ends
        there). ``no_retries`` runs it through ``dag.test()`` with every task's retries set to 0, for a failure
        that must end the run now instead of after the DAG's 30 s+ retry delays. ``dag_id`` picks a site's
        pipeline when ``env`` names a sites file (``EDGE_SITES_FILE``)."""
        logical_date = f"{interval_end.isoformat()}T02:00:00+00:00"
        # The scoring image has tests of its own (tests/integration/test_image_build.py); these runs end at the registry.
        conf = {"window_days": WINDOW_DAYS, "training_params": FAST_PARAMS, "skip_image_build": True, **(conf or {})}
        if no_retries:
            argv = [sys.executable, "-c", _NO_RETRIES_RUNNER, logical_date, json.dumps(conf), dag_id]
        else:
            argv = [str(VENV_BIN / "airflow"), "dags", "test", dag_id, logical_date, "-c", json.dumps(conf)]
        done = subprocess.run(
            argv, env={**self.env, **(env or {})}, cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        return self._result(done.returncode, done.stdout + done.stderr, dag_id)

    def _result(self, returncode: int, log: str, dag_id: str = DAG_ID) -> RunResult:
        with sqlite3.connect(self.home / "airflow.db") as db:
            (run_id,) = db.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()
            states = dict(
                db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
            )
            xcom = {
                (task_id, key): json.loads(value)
                for task_id, key, value in db.execute(
                    "SELECT task_id, key, value FROM xcom WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
                )
            }
        return RunResult(returncode, log, run_id, states, xcom)


# dag.test() on the real DAG file, every task's retries set to 0 (the same loop `airflow dags test` runs).
_NO_RETRIES_RUNNER = """
import json, sys
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder="dags/edge_training.py").get_dag(sys.argv[3] if len(sys.argv) > 3 else "edge_training")
for task in dag.tasks:
    task.retries = 0
dag.test(logical_date=datetime.fromisoformat(sys.argv[1]), run_conf=json.loads(sys.argv[2]))
"""


@pytest.fixture(scope="session")
def pipeline(edge_stack, vm_work_dir, tmp_path_factory) -> Pipeline:
    runner = Pipeline(edge_stack, tmp_path_factory.mktemp("airflow-home"), vm_work_dir)
    runner.prepare()
    return runner


@pytest.fixture(scope="session")
def first_run(pipeline) -> RunResult:
    """The pipeline's first run: no champion yet, so its model becomes the champion."""
    return pipeline.run(dt.date(2026, 6, 10))
