"""P10: the scheduler's time to create the runs and task instances of 50 sites at once, against one site alone.

A real Airflow (``airflow standalone``: scheduler, dag-processor, api-server) parses the DAG file with a sites file of
one site ``solo`` and 50 sites ``site00`` .. ``site49``, every site's connections defined (the dag-processor checks
them at each parse). Nothing is run: the default pool has no slot, so task instances stop at ``scheduled``.

1. ``solo`` is unpaused alone: its scheduled run (the latest daily interval) is created with its task instances and
   its first task scheduled; the time from the unpause request to that is the one-site figure.
2. The 50 sites are unpaused with one request (as when their shared cron fires): the time until all 50 runs exist
   with all their task instances and every first task is scheduled is the 50-site figure.

The target: 50 sites within 10 times one site. The scheduler creates at most ``max_dagruns_to_create_per_loop`` (10)
runs per loop, so 50 sites take at least five loops where one site takes one; twice that leaves room for a busy
machine while still failing a scheduler (or a DAG file) whose cost grows faster than the loops it needs. Also
printed: the dag-processor's parse time of the 51-site file (connection checks included).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _target import Figure, report

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts.airflow_local import AirflowClient, AirflowLocal, _free_port  # noqa: E402

SITES = 50
TARGET = 10.0
TIMEOUT_S = 600
FIRST_TASK = "validate_data"
SOLO = "solo"


def sites_file(folder: Path) -> tuple[Path, list[str]]:
    names = [SOLO] + [f"site{i:02d}" for i in range(SITES)]
    path = folder / "sites.yaml"
    path.write_text(json.dumps({"sites": [{"name": name} for name in names]}))
    return path, names


def connections_env(state_dir: Path, names: list[str]) -> None:
    """The stack's settings file Airflow reads (``airflow.env``): each site's blob and VM connection."""
    lines = []
    for name in names:
        for conn_id, conn in ((f"edge_blob_{name}", {"conn_type": "wasb"}),
                              (f"edge_vm_{name}", {"conn_type": "ssh", "host": "127.0.0.1"})):  # fmt: skip
            lines.append(f"export AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(json.dumps(conn))}")
    state_dir.mkdir(parents=True)
    (state_dir / "airflow.env").write_text("\n".join(lines) + "\n")


def wait_created(client: AirflowClient, pattern: str, runs: int, tasks_per_run: int, started: datetime) -> float:
    """Seconds from ``started`` until ``runs`` runs of the DAGs matching ``pattern`` exist with all their task
    instances and the first task of each is scheduled (read from the task instances' own ``scheduled_when``)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        scheduled = client.task_instance_api.get_task_instances(
            "~", "~", dag_id_prefix_pattern=pattern, task_id=FIRST_TASK, state=["scheduled"], limit=100
        ).task_instances
        if len(scheduled) >= runs:
            total = client.task_instance_api.get_task_instances("~", "~", dag_id_prefix_pattern=pattern, limit=1)
            if total.total_entries != runs * tasks_per_run:
                raise RuntimeError(f"{total.total_entries} task instances for {runs} runs of {pattern}*, expected "
                                   f"{runs * tasks_per_run}")  # fmt: skip
            return (max(ti.scheduled_when for ti in scheduled) - started).total_seconds()
        time.sleep(0.2)
    raise TimeoutError(f"{pattern}*: fewer than {runs} first tasks scheduled after {TIMEOUT_S} s")


def main() -> int:
    from airflow_client.client.api.task_api import TaskApi
    from airflow_client.client.models.dag_patch_body import DAGPatchBody
    from airflow_client.client.models.pool_patch_body import PoolPatchBody

    work = Path(tempfile.mkdtemp(prefix="p10-"))
    path, names = sites_file(work)
    connections_env(work / "stack", names)
    airflow = AirflowLocal(work / "stack", port=_free_port(), env={"EDGE_SITES_FILE": str(path)})
    try:
        airflow.start()
        client = airflow.client()
        solo = client.wait_for_dag(f"edge_training_{SOLO}", timeout=300)
        tasks_per_run = len(TaskApi(client.api_client).get_tasks(f"edge_training_{SOLO}").tasks)
        # No slot: task instances are created and scheduled, and none runs.
        client.pool_api.patch_pool("default_pool", PoolPatchBody(slots=0), update_mask=["slots"])

        started = datetime.now(timezone.utc)
        client.unpause(f"edge_training_{SOLO}")
        one = wait_created(client, f"edge_training_{SOLO}", 1, tasks_per_run, started)

        started = datetime.now(timezone.utc)
        unpaused = client.dag_api.patch_dags(DAGPatchBody(is_paused=False), update_mask=["is_paused"],
                                             dag_id_pattern="edge_training_site", limit=SITES)  # fmt: skip
        if unpaused.total_entries != SITES or any(dag.is_paused for dag in unpaused.dags):
            raise RuntimeError(f"unpausing edge_training_site*: {unpaused.total_entries} DAGs matched, "
                               f"{sum(not d.is_paused for d in unpaused.dags)} unpaused; expected {SITES}")  # fmt: skip
        fifty = wait_created(client, "edge_training_site", SITES, tasks_per_run, started)
    finally:
        airflow.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"P10 dag_processor_parse_{len(names)}_sites_s: {solo['last_parse_duration']:.2f}")
    print(f"P10 tasks_per_run: {tasks_per_run}")
    print(f"P10 one_site_runs_created_s: {one:.2f}")
    print(f"P10 {SITES}_sites_runs_created_s: {fifty:.2f} ({fifty / SITES * 1000:.0f} ms per site)")
    return report(Figure(f"P10 scheduler_{SITES}_sites_vs_one_site_ratio", fifty / one, TARGET, fmt=".2f"))


if __name__ == "__main__":
    raise SystemExit(main())
