"""Trigger one edge_training run on the local Airflow through its REST API, follow it, and summarise it.

    python scripts/run_summary.py [--state-dir DIR] [--conf '{"window_days": 7}'] [--timeout 1800] [--site NAME ...]

With a sites file (``include/sites.yaml`` or ``EDGE_SITES_FILE``) it triggers one run of every site's pipeline
(``edge_training_<site>``; ``--site`` picks some), follows them all, summarises each, and ends with one line per site:
its run's state, the model version it registered, or the task it failed at and that task's error.

Prints one line per task state change while the run goes, then what a user wants to know: the run's state and
data interval, each task's state, the validation summary and Data Docs path, the model version and its tags,
the model card's path and URL, the image reference (when the DAG builds one), for a run the data drift started the
drift check's reason and its drift report's URL, the first error of a failed run, and the UI URL with how to log in.
Everything comes from the REST API (XCom holds summaries only; no data row is printed). Exit 0 if the run succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "plugins"))

from scripts.airflow_local import DEFAULT_STATE_DIR, AirflowApiError, AirflowClient, AirflowLocal  # noqa: E402

DAG_ID = "edge_training"


def trigger_latest_interval(client: AirflowClient, conf: dict, dag_id: str = DAG_ID) -> dict:
    """Trigger a run for the scheduler's next data interval when it has already ended, else a run with no logical
    date (its window ends at its run_after time, as for a run started from the UI).

    Taking the scheduler's next interval (same logical date, same interval) means unpausing the DAG does not start
    a second, scheduled run for it.
    """
    dag = client.dag_api.get_dag(dag_id)
    start, end = dag.next_dagrun_data_interval_start, dag.next_dagrun_data_interval_end
    logical_date = dag.next_dagrun_logical_date
    if logical_date and start and end and end <= datetime.now(timezone.utc):
        try:
            return client.trigger(dag_id, conf=conf, logical_date=logical_date, data_interval=(start, end))
        except AirflowApiError as err:
            if err.status != 409:  # 409: a run for that interval exists already
                raise
    return client.trigger(dag_id, conf=conf)


def first_error(client: AirflowClient, run_id: str, ti: dict, dag_id: str = DAG_ID) -> str:
    """Class and message of the exception a failed task raised, from its structured task log."""
    try:
        content = client.task_log(dag_id, run_id, ti["task_id"], max(ti.get("try_number") or 1, 1))
    except AirflowApiError as err:
        return f"(task log not readable: HTTP {err.status})"
    except ValueError as err:  # an answer the client's log model does not describe
        return f"(task log not readable: {err})"
    for event in content:
        if isinstance(event, dict) and event.get("error_detail"):
            detail = event["error_detail"][0]
            return f"{detail.get('exc_type')}: {detail.get('exc_value')}"
    return "(no exception in the task log; open the task log in the UI)"


def failed_first(tis: list[dict]) -> dict | None:
    """The task instance a failed run failed at: the first failed one (upstream_failed ones only follow it)."""
    failed = [ti for ti in tis if ti["state"] == "failed"] or [ti for ti in tis if ti["state"] == "upstream_failed"]
    return failed[0] if failed else None


def site_line(site: str, run: dict, failed_task: str | None, error: str | None, registered: dict | None) -> str:
    """One line of the sites overview: what a site's run did (model version registered) or where and why it failed."""
    head = f"{site:<16} {run['dag_run_id']}: {run['state']}"
    if run["state"] == "success":
        if registered:
            promoted = "promoted to champion" if registered.get("promoted") else "not promoted"
            return f"{head}, model {registered['model_name']} version {registered['version']} ({promoted})"
        return head
    if failed_task:
        # The error's first line: the site's whole message is in its own summary above.
        first = next((line.strip() for line in (error or "").splitlines() if line.strip()), "(no error recorded)")
        return f"{head} at {failed_task}: {first}"
    return f"{head} (no task failed; open the run in the UI)"


def print_summary(client: AirflowClient, run: dict, dag_id: str = DAG_ID) -> tuple[str | None, str | None]:
    """Print what a user wants to know about a finished run; return the task it failed at and that task's error."""
    run_id = run["dag_run_id"]
    tis = sorted(client.task_instances(dag_id, run_id), key=lambda t: t.get("start_date") or "~")
    print(f"\n== Run {run_id}: {run['state']}")
    print(f"   data interval {run.get('data_interval_start')} .. {run.get('data_interval_end')}")
    for ti in tis:
        print(f"   {ti['task_id']:<20} {ti['state']}")

    def xcom(task_id: str) -> Any:
        return client.xcom(dag_id, run_id, task_id)

    validation = xcom("validate_data")
    if validation:
        print(
            f"\nvalidation: window {validation['window']}, {len(validation['partitions'])} partitions, "
            f"{validation['row_count']} rows, fingerprint {validation['data_fingerprint']}"
        )
        print(f"Data Docs: {validation['data_docs']}")
    if run.get("run_type") == "asset_triggered":
        # A drift-started run: name the reason and the drift report the edge_drift_check run wrote.
        for event in client.dag_run_api.get_upstream_asset_events(dag_id, run_id).asset_events:
            extra = event.extra or {}
            if extra.get("reason"):
                print(f"started by {event.uri}: {extra['reason']}")
                where = f"{client.url}{extra['report_url']}" if extra.get("report_url") else extra.get("report")
                print(f"Drift report: {where} (the drift check run {event.source_run_id})")
    health = xcom("check_edge_vm")
    if health:
        print(f"edge VM: {health.get('hostname')} host key {health.get('host_key_fingerprint')}")
    for task_id in ("train_on_edge_vm", "train_on_azureml"):
        training = xcom(task_id)
        if training:
            metrics = (training.get("metrics") or {}).get("metrics", {})
            print(
                f"training ({task_id}): job {training['job_id']}, code version {training.get('code_version')}, "
                f"window {training.get('window')}, holdout roc_auc {metrics.get('roc_auc')}"
            )
            artifacts = training.get("artifacts") or {}
            if artifacts.get("blobs"):
                # Where register_model downloads the model from: the site's blob storage, not a worker's disk.
                sizes = ", ".join(f"{name} {blob['size']} B" for name, blob in artifacts["blobs"].items())
                print(f"   outputs in blob storage: {artifacts['container']}/{artifacts.get('prefix', '')} ({sizes})")
            reference = training.get("reference_profile")
            if reference:
                print(f"   reference data profile: {reference['rows']} rows, {len(reference['features'])} features, "
                      f"bins under {reference['k']} rows suppressed (what drift is measured against)")
    registered = xcom("register_model")
    if registered:
        promoted = "promoted to champion" if registered["promoted"] else "not promoted"
        print(f"\nmodel: {registered['model_name']} version {registered['version']}, {promoted}")
        print(f"   {registered['decision']['reason']}")
        for key, value in sorted(registered["tags"].items()):
            print(f"   {key} = {value}")
        if registered.get("model_card"):
            # The file as build_image left it (rebuilt with the image), and where the api-server serves it.
            print(f"\nmodel card: {registered['model_card']}")
            print(f"   in the UI: {client.url}{registered['model_card_url']} (the register_model task's \"Model card\" link)")
    image = xcom("build_image")
    if image:
        smoke = image.get("smoke_test") or {}
        print(f"\nimage: {image['image']}")
        if smoke.get("passed"):
            print(f"   smoke test passed: /health {smoke['health']}, {smoke['rows']} rows scored, "
                  f"max |diff| vs the registered model {smoke['max_abs_diff']:.2g}")  # fmt: skip
        else:
            print(f"   {smoke.get('reason', 'smoke test not run')}")

    if run["state"] != "success":
        failed = failed_first(tis)
        if failed:
            error = first_error(client, run_id, failed, dag_id)
            print(f"\nThe run failed at {failed['task_id']}. First error:")
            print("   " + error.replace("\n", "\n   "))
            return failed["task_id"], error
    return None, None


def pipelines(names: list[str] | None) -> list[tuple[str, str]]:
    """``(site, dag_id)`` of each site's pipeline (the sites file's, or the one ``edge_training``), ``names`` only."""
    from edge_training.sites import load_sites

    sites = [(site.name, site.dag_id) for site in load_sites()]
    if names:
        unknown = sorted(set(names) - {name for name, _ in sites})
        if unknown:
            raise SystemExit(
                f"Checked --site {', '.join(unknown)} against the sites file: no such site (sites: "
                f"{', '.join(name for name, _ in sites)}). Name a site of the file."
            )
        sites = [site for site in sites if site[0] in names]
    return sites


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument("--conf", type=json.loads, default={}, help="run conf (the trigger form's Params), JSON")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to follow the run")
    parser.add_argument("--site", action="append", help="with a sites file: this site's pipeline only (repeatable)")
    args = parser.parse_args(argv)

    airflow = AirflowLocal(args.state_dir)
    info = airflow.info()
    client = airflow.client()
    started = {}
    # Every site's run is started before any is followed: the sites train at the same time, each on its own.
    for site, dag_id in pipelines(args.site):
        client.wait_for_dag(dag_id)
        try:
            started[site] = (dag_id, trigger_latest_interval(client, args.conf, dag_id)["dag_run_id"])
        except AirflowApiError as err:
            print(f"The run of {dag_id} was refused (HTTP {err.status}): {err.detail}")
            return 1
        client.unpause(dag_id)
        print(f"== Triggered {dag_id} {started[site][1]} through {info.url}/api/v2 (conf {json.dumps(args.conf)})")
    lines = []
    for site, (dag_id, run_id) in started.items():
        prefix = f"   {dag_id}: " if len(started) > 1 else "   "
        run = client.follow(dag_id, run_id, on_change=lambda line, p=prefix: print(f"{p}{line}", flush=True),
                            timeout=args.timeout)  # fmt: skip
        failed_task, error = print_summary(client, run, dag_id)
        print(f"\nAirflow UI: {info.url}/dags/{dag_id}/runs/{run_id}")
        lines.append((run, site_line(site, run, failed_task, error, client.xcom(dag_id, run_id, "register_model"))))
    if len(started) > 1:
        # Which site failed and why, in one place: a failed site never stops the others' runs.
        print(f"\n== Sites: {sum(run['state'] == 'success' for run, _ in lines)} of {len(lines)} succeeded")
        for _, line in lines:
            print(f"   {line}")
    print(f"\n   log in as {info.username}, password: the value in {info.password_file}")
    print("   the stack and Airflow keep running for exploring; `make stop` stops both.")
    return 0 if all(run["state"] == "success" for run, _ in lines) else 1


if __name__ == "__main__":
    raise SystemExit(main())
