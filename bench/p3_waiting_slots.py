"""P3: worker slots held by trainings that wait, with 5 runs waiting on training (target 0).

A backfill of 5 windows puts 5 runs at ``train_on_edge_vm``. Every second, two views are sampled:

* the executor's: which task instance each LocalExecutor worker process is running (its process title), i.e. the
  worker slots actually occupied;
* the task states: waiting for the edge VM pool (``scheduled``), waiting for its job in the triggerer
  (``deferred``), or ``running``/``queued``.

A worker slot occupied by a training whose job has been training on the VM for more than a few seconds is a waiting
task holding a slot (a training is legitimately in a slot for the seconds it takes to start its job and defer).
The figures are the largest such counts seen at any sample, from each view; the executor's is the one that
matters, the task states' confirm it.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

from _scheduler import DAG_ID, FAST_CONF, backfill_range, executor_slots, scheduler_stack, unpause_and_settle
from _target import Figure, report

RUNS = 5
# A training task is legitimately running for the seconds it takes to start the job and to defer.
START_GRACE_S = 10.0


def training_jobs_on_vm(vm_base) -> dict[str, float]:
    """run_id -> seconds the job has been training, for jobs started and not finished on the VM."""
    now = time.time()
    training = {}
    for job_json in (vm_base / "jobs").glob("*/job.json"):
        if not (job_json.parent / "exit_code").exists():
            meta = json.loads(job_json.read_text())
            training[meta["run_id"]] = now - meta["submitted_at_epoch"]
    return training


def main() -> int:
    with scheduler_stack(seed_days=RUNS + 8) as bench:
        client = bench.client
        first, last = bench.today - timedelta(days=RUNS + 2), bench.today - timedelta(days=3)
        unpause_and_settle(client)
        backfill = client.create_backfill(DAG_ID, *backfill_range(first, last), conf=FAST_CONF,
                                          max_active_runs=RUNS)  # fmt: skip
        root_pid = bench.airflow.info().pid
        held_max, slots_held_max, slots_busy_max, waiting_max, samples = 0, 0, 0, 0, 0
        deadline = time.monotonic() + 3600
        while client.backfill_api.get_backfill(backfill["id"]).completed_at is None:
            assert time.monotonic() < deadline, "backfill did not complete within an hour"
            jobs = training_jobs_on_vm(bench.vm_base)
            busy = executor_slots(root_pid)
            states, training_ids = {}, {}
            for run in client.dag_runs(DAG_ID):
                if run["run_type"] != "backfill":
                    continue
                for ti in client.task_instances(DAG_ID, run["dag_run_id"]):
                    if ti["task_id"] == "train_on_edge_vm":
                        states[run["dag_run_id"]] = ti["state"]
                        training_ids[ti["id"]] = run["dag_run_id"]
            waiting = sum(state in ("scheduled", "deferred", "running", "queued") for state in states.values())
            held = sum(
                state in ("running", "queued") and jobs.get(run_id, 0.0) > START_GRACE_S
                for run_id, state in states.items()
            )
            slots_held = sum(
                workload in training_ids and jobs.get(training_ids[workload], 0.0) > START_GRACE_S for workload in busy
            )
            slots_held_max = max(slots_held_max, slots_held)
            slots_busy_max = max(slots_busy_max, len(busy))
            waiting_max = max(waiting_max, waiting)
            held_max = max(held_max, held)
            samples += 1
            time.sleep(1)
        runs = [r for r in client.dag_runs(DAG_ID) if r["run_type"] == "backfill"]
        assert len(runs) == RUNS and all(r["state"] == "success" for r in runs), [r["state"] for r in runs]

    print(f"p3_runs_waiting_on_training_max: {waiting_max}")
    print(f"p3_samples: {samples}")
    print(f"p3_executor_slots_busy_max: {slots_busy_max} (any task)")
    return report(
        # Fewer waiting runs than started would measure nothing: the figure only counts with all of them waiting.
        Figure("p3_runs_waiting_on_training_max", waiting_max, RUNS, op=">=", fmt="d"),
        # Some slot must have been seen busy (validation, health checks), or the executor view saw nothing.
        Figure("p3_executor_slots_busy_max", slots_busy_max, 1, op=">=", fmt="d"),
        Figure("p3_executor_slots_held_by_waiting_trainings", slots_held_max, 0, fmt="d"),
        Figure("p3_task_states_running_waiting_trainings", held_max, 0, fmt="d"),
    )


if __name__ == "__main__":
    raise SystemExit(main())
