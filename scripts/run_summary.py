"""Print what a user wants to know after a demo run: task states, validation summary, model version and tags.

Reads the Airflow metadata DB of the demo's AIRFLOW_HOME (this is a command-line tool, not a task) and, on failure,
the error the failing task raised, from the run's log.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

DAG_ID = "edge_training"
ERROR_LINE = re.compile(r"(edge_training\.exceptions\.\w+|AirflowException|\w+Error): ")


def latest_run():
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc()).first()
        if run is None:
            return None, [], {}
        tis = sorted(run.get_task_instances(session=session), key=lambda ti: ti.start_date or run.start_date)
        states = [(ti.task_id, str(ti.state)) for ti in tis]
        xcoms = {ti.task_id: xcom_value(session, ti) for ti in tis}
        return run, states, xcoms


def xcom_value(session, ti):
    from airflow.models.xcom import XComModel

    row = (
        session.query(XComModel)
        .filter_by(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, key="return_value")
        .first()
    )
    return XComModel.deserialize_value(row) if row else None


def error_excerpt(log: Path, lines: int = 12) -> list[str]:
    """The first error raised by a task, from the run log."""
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    for i, line in enumerate(text):
        if ERROR_LINE.search(line) and "Traceback" not in line:
            return text[i : i + lines]
    return text[-lines:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--exit-code", type=int, required=True)
    args = parser.parse_args()

    run, states, xcoms = latest_run()
    if run is None:
        print(f"no run of {DAG_ID} found; see {args.log}")
        return 1
    print(f"\n== Run {run.run_id}: {run.state}")
    print(f"   data interval {run.data_interval_start} .. {run.data_interval_end}")
    for task_id, state in states:
        print(f"   {task_id:<20} {state}")

    validation = xcoms.get("validate_data")
    if validation:
        print(
            f"\nvalidation: window {validation['window']}, {len(validation['partitions'])} partitions, "
            f"{validation['row_count']} rows, fingerprint {validation['data_fingerprint']}"
        )
        print(f"Data Docs: {validation['data_docs']}")
    health = xcoms.get("check_edge_vm")
    if health:
        print(f"edge VM: {health.get('hostname')} host key {health.get('host_key_fingerprint')}")
    training = xcoms.get("train_on_edge_vm")
    if training:
        metrics = (training.get("metrics") or {}).get("metrics", {})
        print(
            f"training on the edge VM: job {training['job_id']}, code version {training['code_version']}, "
            f"holdout roc_auc {metrics.get('roc_auc')}"
        )
    registered = xcoms.get("register_model")
    if registered:
        promoted = "promoted to champion" if registered["promoted"] else "not promoted"
        print(f"\nmodel: {registered['model_name']} version {registered['version']}, {promoted}")
        print(f"   {registered['decision']['reason']}")
        for key, value in sorted(registered["tags"].items()):
            print(f"   {key} = {value}")
    image = xcoms.get("build_image")
    if image:
        smoke = image.get("smoke_test") or {}
        print(f"\nimage: {image['image']}")
        if smoke.get("passed"):
            print(f"   smoke test passed: /health {smoke['health']}, {smoke['rows']} rows scored, "
                  f"max |diff| vs the registered model {smoke['max_abs_diff']:.2g}")
        else:
            print(f"   {smoke.get('reason', 'smoke test not run')}")

    if args.exit_code != 0 or str(run.state) != "success":
        print("\nThe run failed. First error:")
        for line in error_excerpt(args.log):
            print(f"   {line}")
        print(f"Full log: {args.log}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
