"""Scheduled, manual and backfilled runs of edge_training on a real scheduler + triggerer and the local edge stack.

What a user would notice: a bad trigger form is refused before anything runs, each run trains on its own window,
a backfill trains each window once (and not again when reprocessed), and the edge VM never trains two models at once.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

import pytest

from tests._pipeline import FAST_TRAINING
from tests.e2e.conftest import DAG_ID, WINDOW_DAYS, model_versions, vm_jobs

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 900  # three backfilled windows train one at a time; a loaded 2-core machine needs minutes each
BACKFILL_DAYS_AGO = (8, 7, 6)  # logical dates (interval starts) of the backfilled windows, in days before today
# Small, quick trainings; the scoring image has tests of its own (only the scheduled run here builds one).
FAST = {"training_params": FAST_TRAINING, "skip_image_build": True}


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _tags_by_run(tracking_uri: str) -> dict[str, list[dict]]:
    by_run: dict[str, list[dict]] = {}
    for version in model_versions(tracking_uri):
        by_run.setdefault(version.tags.get("edge.dag_run_id"), []).append(version.tags)
    return by_run


def _wait_runs(api, run_ids: set[str], timeout: float = RUN_TIMEOUT_S) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = {r["dag_run_id"]: r for r in api.dag_runs(DAG_ID) if r["dag_run_id"] in run_ids}
        if len(runs) == len(run_ids) and all(r["state"] in ("success", "failed") for r in runs.values()):
            return runs
        assert time.monotonic() < deadline, f"runs still going after {timeout}s: {runs}"
        time.sleep(2)


def test_unpausing_without_catchup_schedules_only_the_latest_interval(api, e2e_airflow):
    # start_date is 2026-01-01: with catchup on there would be a run for every day since.
    deadline = time.monotonic() + 60
    while not (scheduled := [r for r in api.dag_runs(DAG_ID) if r["run_type"] == "scheduled"]):
        assert time.monotonic() < deadline, "the scheduler created no run after the DAG was unpaused"
        time.sleep(1)
    [run] = scheduled
    start, end = _parse(run["data_interval_start"]), _parse(run["data_interval_end"])
    assert end - start == timedelta(days=1), "the daily cron gives each run a one-day data interval"
    assert timedelta(0) < datetime.now(timezone.utc) - end <= timedelta(days=1), "the latest complete interval"
    lines: list[str] = []
    final = api.follow(DAG_ID, run["dag_run_id"], on_change=lines.append, timeout=RUN_TIMEOUT_S)
    assert final["state"] == "success", "\n".join(lines)


def test_manual_run_with_valid_conf_trains_the_requested_window(api, e2e_airflow):
    window_end = (e2e_airflow.today - timedelta(days=2)).isoformat()
    run = api.trigger(
        DAG_ID,
        conf={**FAST, "window_days": WINDOW_DAYS, "window_end": window_end},
    )
    assert run["logical_date"] is None, "a run triggered without a logical date (as from the UI form)"
    lines: list[str] = []
    final = api.follow(DAG_ID, run["dag_run_id"], on_change=lines.append, timeout=RUN_TIMEOUT_S)
    assert final["state"] == "success", "\n".join(lines)
    assert any("register_model" in line and line.endswith("success") for line in lines)

    [tags] = _tags_by_run(e2e_airflow.tracking_uri)[run["dag_run_id"]]
    expected_start = (e2e_airflow.today - timedelta(days=2 + WINDOW_DAYS)).isoformat()
    assert tags["edge.training_window"] == f"{expected_start}..{window_end}"
    [job] = [j for j in vm_jobs(e2e_airflow.vm_base) if j["run_id"] == run["dag_run_id"]]
    assert (job["window_start"], job["window_end"]) == (expected_start, window_end)
    assert job["training_params"] == FAST_TRAINING


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"window_days": 1}, "window_days"),
        ({"window_end": "2026-02-30"}, "window_end"),
        ({"force_promote": "yes please"}, "force_promote"),
        ({"training_params": "n_estimators=5"}, "training_params"),
    ],
)
def test_invalid_conf_is_refused_before_anything_runs(api, e2e_airflow, conf, field):
    from scripts.airflow_local import AirflowApiError

    runs_before = {r["dag_run_id"] for r in api.dag_runs(DAG_ID)}
    jobs_before = len(vm_jobs(e2e_airflow.vm_base))
    with pytest.raises(AirflowApiError) as refused:
        api.trigger(DAG_ID, conf=conf)
    assert refused.value.status == 400
    assert f"Invalid input for param {field}" in str(refused.value.detail)
    assert {r["dag_run_id"] for r in api.dag_runs(DAG_ID)} == runs_before, "no run may be created"
    assert len(vm_jobs(e2e_airflow.vm_base)) == jobs_before


@pytest.fixture(scope="module")
def backfill_range(e2e_airflow) -> tuple[str, str, list[date]]:
    days = [e2e_airflow.today - timedelta(days=n) for n in BACKFILL_DAYS_AGO]
    # Both ends inclusive, on logical dates: the daily ticks of the three days, whatever the tick's time of day.
    return f"{days[0].isoformat()}T00:00:00Z", f"{days[-1].isoformat()}T23:59:59Z", days


def _wait_backfill(api, backfill: dict, samples: list[dict], timeout: float = RUN_TIMEOUT_S) -> None:
    """Wait until the backfill completes, sampling the edge_vm pool and the training tasks all the while."""
    deadline = time.monotonic() + timeout
    while api.backfill_api.get_backfill(backfill["id"]).completed_at is None:
        pool = api.pool_api.get_pool("edge_vm")
        trainings = []
        for run in api.dag_runs(DAG_ID):
            if run["run_type"] == "backfill" and run["state"] in ("queued", "running"):
                tis = api.task_instances(DAG_ID, run["dag_run_id"])
                trainings += [t["state"] for t in tis if t["task_id"] == "train_on_edge_vm"]
        samples.append({"pool": pool, "trainings": trainings})
        assert time.monotonic() < deadline, f"backfill {backfill['id']} not complete after {timeout}s"
        time.sleep(1)


def test_backfill_trains_each_window_once_and_one_at_a_time(api, e2e_airflow, backfill_range):
    from_date, to_date, days = backfill_range
    backfill = api.create_backfill(DAG_ID, from_date, to_date, max_active_runs=3,
                                   conf=FAST)  # fmt: skip
    samples: list[dict] = []
    _wait_backfill(api, backfill, samples)

    runs = sorted((r for r in api.dag_runs(DAG_ID) if r["run_type"] == "backfill"), key=lambda r: r["logical_date"])
    assert [r["state"] for r in runs] == ["success"] * 3
    assert [_parse(r["logical_date"]).date() for r in runs] == days

    # One model version per window, its interval tags equal to the run's data interval and window.
    tags_by_run = _tags_by_run(e2e_airflow.tracking_uri)
    for run in runs:
        [tags] = tags_by_run[run["dag_run_id"]]
        assert _parse(tags["edge.data_interval_start"]) == _parse(run["data_interval_start"])
        assert _parse(tags["edge.data_interval_end"]) == _parse(run["data_interval_end"])
        end = _parse(run["data_interval_end"]).date()
        assert tags["edge.training_window"] == f"{end - timedelta(days=WINDOW_DAYS)}..{end}"

    # Exactly three trainings on the edge VM, never two at the same time.
    jobs = sorted((j for j in vm_jobs(e2e_airflow.vm_base) if j["run_id"].startswith("backfill__")),
                  key=lambda j: j["submitted_at_epoch"])  # fmt: skip
    assert len(jobs) == 3
    for earlier, later in zip(jobs, jobs[1:]):
        assert earlier["finished_at_epoch"] <= later["submitted_at_epoch"], "two trainings overlapped on the VM"

    # The pool bounded the trainings while the runs waited for it (deferred trainings count).
    assert all(s["pool"].occupied_slots <= s["pool"].slots == 1 for s in samples), samples
    assert all(sum(state in ("running", "deferred") for state in s["trainings"]) <= 1 for s in samples)
    assert any(s["trainings"].count("scheduled") + s["trainings"].count(None) >= 1
               and any(state in ("running", "deferred") for state in s["trainings"]) for s in samples), (
        "the test never saw a training wait for the pool while another trained"
    )  # fmt: skip


def test_reprocessing_a_backfill_does_not_train_or_register_again(api, e2e_airflow, backfill_range):
    from_date, to_date, _ = backfill_range
    backfill_jobs = lambda: [j for j in vm_jobs(e2e_airflow.vm_base) if j["run_id"].startswith("backfill__")]  # noqa: E731
    jobs_before = backfill_jobs()
    versions_before = sorted(v.version for v in model_versions(e2e_airflow.tracking_uri))
    assert len(jobs_before) == 3, "runs after test_backfill_trains_each_window_once_and_one_at_a_time"

    backfill = api.create_backfill(DAG_ID, from_date, to_date, reprocess_behavior="completed", max_active_runs=3,
                                   conf=FAST)  # fmt: skip
    _wait_backfill(api, backfill, [])

    runs = [r for r in api.dag_runs(DAG_ID) if r["run_type"] == "backfill"]
    assert len(runs) == 3 and all(r["state"] == "success" for r in runs)
    assert all(r["end_date"] and _parse(r["end_date"]) > _parse(backfill["created_at"]) for r in runs), (
        "reprocessing must have run the completed windows again"
    )
    assert backfill_jobs() == jobs_before, "a completed window was trained again"
    assert sorted(v.version for v in model_versions(e2e_airflow.tracking_uri)) == versions_before
