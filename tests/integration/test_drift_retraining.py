"""Drift-aware retraining on the real stack: Azurite, the edge VM over SSH, MLflow, Airflow's own DB and scheduler.

The session's first pipeline run (``first_run``) trains the champion on the VM, which writes the training window's
reference profile. ``edge_drift_check`` then checks a later day twice with ``airflow dags test``: as generated (no
drift: no asset event, no training run), and regenerated with every temperature reading 15 °C higher
(``generate.py --shift temperature_c:15``): the report names temperature_c, the asset event carries the reason, and
one scheduler loop turns it into an ``edge_training`` run, whose tasks then run (``airflow tasks test``) on the days up
to the drifted one and register a version whose tags and model card link the drift report. A day whose partition
never landed fails the check's sensor saying the partition is missing: no verdict, no event.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests._residency import RowSignatures, audit
from tests.integration.conftest import ROOT, ROWS_PER_DAY, SEED, VENV_BIN, WINDOW_DAYS

DRIFT_DAG = "edge_drift_check"
DRIFT_URI_SUFFIX = "/data-drift"
# first_run trains on 2026-06-07..09; the check looks at the day before its interval end, past the seeded days.
CHECK_LOGICAL_DATE = "2026-06-21T02:00:00+00:00"
CHECKED_DAY = "2026-06-20"
# The drift-started training run trains on WINDOW_DAYS days up to the checked one: these two and CHECKED_DAY.
DAYS_BEFORE_CHECKED = ("2026-06-18", 2)
# No partition is ever written for the day before this one.
MISSING_LOGICAL_DATE = "2026-06-27T02:00:00+00:00"
# The edge_training DAG's default_args retries.
TASK_RETRIES = 3


def _db(pipeline) -> sqlite3.Connection:
    return sqlite3.connect(pipeline.home / "airflow.db")


def _generate(pipeline, start: str, days: int, *shift: str) -> None:
    """Write ``days`` partitions from ``start`` into the pipeline's container (``generate.py``, ``shift`` args)."""
    seeded = subprocess.run(
        [sys.executable, str(ROOT / "include" / "sample_data" / "generate.py"),
         "--connection-string-env", "EDGE_BLOB_CONNECTION_STRING", "--container", pipeline.container,
         "--start", start, "--days", str(days), "--rows-per-day", str(ROWS_PER_DAY), "--seed", str(SEED), *shift],
        env=pipeline.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr[-3000:]


def _training_runs(pipeline) -> dict[str, str]:
    with _db(pipeline) as db:
        return dict(db.execute("SELECT run_id, run_type FROM dag_run WHERE dag_id = 'edge_training'"))


def _scheduler_loop(env) -> None:
    """One scheduler loop: it turns queued asset events into edge_training runs (and is stopped right after)."""
    loop = subprocess.run([str(VENV_BIN / "airflow"), "scheduler", "--num-runs", "1"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert loop.returncode == 0, loop.stderr[-3000:]


def _run_check(pipeline, *shift: str, logical_date: str = CHECK_LOGICAL_DATE, env: dict | None = None) -> dict:
    """Write the checked day (``generate.py`` with ``shift`` arguments; nothing when ``shift`` is None), run the drift
    check on it with ``airflow dags test``; its task states, XCom values, asset events, report text and the day's
    CSV texts."""
    if shift != (None,):
        _generate(pipeline, CHECKED_DAY, 1, *shift)
    day_texts = [t for t in pipeline.partition_texts() if f"{CHECKED_DAY}T" in t.split("\n", 2)[1]]
    env = {**pipeline.env, "EDGE_RETRAIN_POLICY": "drift", **(env or {})}
    done = subprocess.run(
        [str(VENV_BIN / "airflow"), "dags", "test", DRIFT_DAG, logical_date], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    with _db(pipeline) as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DRIFT_DAG,)
        ).fetchone()
        states = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                                 (DRIFT_DAG, run_id)))
        xcom = {t: json.loads(v) for t, v in db.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
            (DRIFT_DAG, run_id))}
        links = [json.loads(v) for (v,) in db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'check_drift' "
            "AND key != 'return_value'", (DRIFT_DAG, run_id))]
        events = [json.loads(extra or "{}") for (extra,) in db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri LIKE ? "
            "AND e.source_dag_id = ? AND e.source_run_id = ?", (f"%{DRIFT_URI_SUFFIX}", DRIFT_DAG, run_id))]
    report = (xcom.get("check_drift") or {}).get("report")
    return {"returncode": done.returncode, "log": done.stdout + done.stderr, "states": states, "xcom": xcom,
            "events": events, "links": links, "report": Path(report).read_text() if report else None, "day_texts": day_texts}


@pytest.fixture(scope="module")
def drift_policy(pipeline, first_run):
    """edge_training stored as the drift policy schedules it (on the drift asset) and unpaused, as a user sets it up."""
    assert first_run.returncode == 0, first_run.log[-4000:]
    env = {**pipeline.env, "EDGE_RETRAIN_POLICY": "drift"}
    for args in (("dags", "reserialize"), ("dags", "unpause", "edge_training")):
        done = subprocess.run([str(VENV_BIN / "airflow"), *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    yield env
    subprocess.run([str(VENV_BIN / "airflow"), "dags", "pause", "edge_training"], env=env, cwd=ROOT,
                   capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def quiet_check(pipeline, drift_policy):
    return _run_check(pipeline)


@pytest.fixture(scope="module")
def shifted_check(pipeline, drift_policy, quiet_check):
    return _run_check(pipeline, "--shift", "temperature_c:15")


@pytest.fixture(scope="module")
def drift_started_run(pipeline, drift_policy, shifted_check):
    """The edge_training run one scheduler loop makes of the drift event, its tasks then run with ``airflow tasks
    test`` (the health check has tests of its own): run id, task return values, states."""
    assert shifted_check["events"], shifted_check["log"][-4000:]
    _generate(pipeline, *DAYS_BEFORE_CHECKED)
    before = _training_runs(pipeline)
    _scheduler_loop(drift_policy)
    started = {r: t for r, t in _training_runs(pipeline).items() if r not in before}
    assert list(started.values()) == ["asset_triggered"], started
    [run_id] = started
    env = {**drift_policy, "EDGE_TRAINING_WINDOW_DAYS": str(WINDOW_DAYS)}
    logs = {}
    for task_id in ("validate_data", "train_on_edge_vm", "register_model"):
        logs[task_id], state = "", "up_for_retry"
        # `airflow tasks test` runs one try and exits 0 even when the task fails (a failed validate_data leaves no
        # result for the tasks after it): the task instance's state says how the try ended. A try ending
        # up_for_retry is run again, as the scheduler would, within the DAG's retries.
        for _ in range(1 + TASK_RETRIES):
            done = subprocess.run([str(VENV_BIN / "airflow"), "tasks", "test", "edge_training", task_id, run_id],
                                  env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
            logs[task_id] += done.stdout + done.stderr
            assert done.returncode == 0, logs[task_id][-4000:]
            with _db(pipeline) as db:
                (state,) = db.execute("SELECT state FROM task_instance WHERE dag_id = 'edge_training' "
                                      "AND run_id = ? AND task_id = ?", (run_id, task_id)).fetchone()
            if state != "up_for_retry":
                break
        assert state == "success", f"{task_id} ended {state}:\n{logs[task_id][-6000:]}"
    with _db(pipeline) as db:
        values = {t: json.loads(v) for t, v in db.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = 'edge_training' AND run_id = ? AND key = 'return_value'",
            (run_id,))}
        consumed = [json.loads(extra or "{}") for (extra,) in db.execute(
            "SELECT e.extra FROM asset_event e JOIN dagrun_asset_event d ON d.event_id = e.id "
            "JOIN dag_run r ON r.id = d.dag_run_id WHERE r.dag_id = 'edge_training' AND r.run_id = ?", (run_id,))]
    return {"run_id": run_id, "xcom": values, "consumed": consumed, "logs": logs}


@pytest.fixture(scope="module")
def missing_check(pipeline, drift_policy):
    """The drift check of a day whose partition never landed, the sensor's timeout at 0 s (no waiting in a test)."""
    return _run_check(pipeline, None, logical_date=MISSING_LOGICAL_DATE, env={"EDGE_PARTITION_WATCH_TIMEOUT_S": "0"})


def test_training_writes_the_reference_profile_of_its_window(first_run):
    reference = first_run.value("train_on_edge_vm")["reference_profile"]
    assert sorted(reference["days"]) == ["2026-06-07", "2026-06-08", "2026-06-09"]
    assert reference["rows"] == 3 * ROWS_PER_DAY
    # The grid is the suite's range for the feature, not the data's extremes.
    assert (reference["features"]["temperature_c"]["lo"], reference["features"]["temperature_c"]["hi"]) == (-40, 150)


def test_the_reference_profile_is_stored_with_the_model_version(pipeline, first_run, tmp_path):
    from edge_training.drift import REFERENCE_PROFILE_FILE, read_profile
    from edge_training.registry import MLflowModelRegistry

    assert first_run.returncode == 0, first_run.log[-4000:]
    env = pipeline.stack.airflow_env
    registry = MLflowModelRegistry(env["MLFLOW_TRACKING_URI"], env["EDGE_MLFLOW_ARTIFACTS_DIR"])
    champion = registry.get_champion(pipeline.model_name)
    assert champion is not None and champion.version == first_run.value("register_model")["version"]
    attached = registry.download_attachment(champion, REFERENCE_PROFILE_FILE, tmp_path)
    assert read_profile(attached) == first_run.value("train_on_edge_vm")["reference_profile"]
    assert registry.download_attachment(champion, "no-such-file.json", tmp_path / "other") is None


def test_an_unshifted_day_starts_no_training(pipeline, quiet_check, drift_policy):
    assert quiet_check["returncode"] == 0, quiet_check["log"][-4000:]
    summary = quiet_check["xcom"]["check_drift"]
    assert summary["drifted"] is False, summary["reason"]
    assert summary["partitions"].startswith(CHECKED_DAY)
    assert quiet_check["states"]["drift_found"] == "success"
    assert quiet_check["states"]["announce_drift"] == "skipped"
    assert quiet_check["events"] == []
    assert "no drift" in quiet_check["report"]
    # Nothing queued for the scheduler either: a loop starts no training run.
    before = _training_runs(pipeline)
    _scheduler_loop(drift_policy)
    assert _training_runs(pipeline) == before


def test_a_day_whose_partition_has_not_landed_is_reported_missing_not_checked(missing_check):
    states = missing_check["states"]
    assert states["wait_for_partition"] == "failed", (states, missing_check["log"][-4000:])
    assert {states[t] for t in ("validate_new_partition", "check_drift", "drift_found", "announce_drift")} == \
        {"upstream_failed"}
    assert "check_drift" not in missing_check["xcom"] and missing_check["events"] == []
    assert "Partition dt=2026-06-26/ is missing" in missing_check["log"], missing_check["log"][-4000:]


def test_a_shifted_day_is_reported_on_its_feature_and_starts_a_training_run(pipeline, shifted_check, drift_policy):
    assert shifted_check["returncode"] == 0, shifted_check["log"][-4000:]
    summary = shifted_check["xcom"]["check_drift"]
    assert summary["drifted_features"] == ["temperature_c"], summary["reason"]
    assert summary["metrics"]["temperature_c"]["normalized_wasserstein_distance"] > 1
    report = shifted_check["report"]
    assert "DRIFT in temperature_c" in report
    assert "<script" not in report and "http" not in report.replace("http://www.w3.org/2000/svg", "")
    # The task's "Drift report" link: the api-server serves the file from the run's report folder.
    assert [link for link in shifted_check["links"] if str(link).endswith("/drift_report.html")], shifted_check["links"]
    [event] = shifted_check["events"]
    assert event["drifted_features"] == ["temperature_c"] and "temperature_c" in event["reason"]
    assert event["report"] == summary["report"]

    assert event["report_url"].endswith("/drift_report.html") and event["window_end"] == "2026-06-21"


def test_the_drift_started_run_trains_up_to_the_drifted_day_and_links_the_report(shifted_check, drift_started_run):
    from edge_training import reports

    [event] = shifted_check["events"]
    assert drift_started_run["consumed"] == [event]
    values = drift_started_run["xcom"]
    # It trains on the days up to the drifted one, not on the days before the run started.
    assert values["validate_data"]["window"] == "2026-06-18..2026-06-21"
    assert values["train_on_edge_vm"]["window"] == "2026-06-18..2026-06-21"
    registered = values["register_model"]
    assert registered["tags"]["edge.drift_report"] == event["report_url"]
    assert "temperature_c" in registered["tags"]["edge.drift_reason"]
    # The URL is the one the api-server serves the report at: it maps to the file the check wrote.
    segments = event["report_url"].split(reports.URL_PREFIX + "/data-docs/", 1)[1].split("/")
    written = Path(shifted_check["xcom"]["check_drift"]["report"])
    assert reports.docs_dir_for_run(written.parents[2], segments[0], segments[1]) / segments[2] == written
    card = Path(registered["model_card"]).read_text()
    assert f'<a href="{event["report_url"]}">Drift report</a>' in card and "Retrained because the data drifted" in card


def test_profiles_report_and_xcom_hold_no_training_row(pipeline, quiet_check, shifted_check, drift_started_run):
    texts = pipeline.partition_texts() + quiet_check["day_texts"]
    sig = RowSignatures.from_csv_texts(texts)
    # Without this, a scan finding nothing would prove nothing.
    assert audit([("planted", texts[-1].splitlines()[5])], sig)[0]
    material = []
    for check in (quiet_check, shifted_check):
        material += [(f"xcom {task}", json.dumps(value)) for task, value in check["xcom"].items()]
        material += [("asset event", json.dumps(e)) for e in check["events"]]
        material.append(("drift report", check["report"]))
    material.append(("model card", Path(drift_started_run["xcom"]["register_model"]["model_card"]).read_text()))
    with _db(pipeline) as db:
        material += [(f"xcom edge_training {t}", v) for t, v in db.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = 'edge_training'")]
    findings, sources, _ = audit(material, sig)
    assert sources >= 8 and not findings, "\n".join(map(str, findings[:5]))
    profile = quiet_check["xcom"]["validate_new_partition"]["profile"]
    # The real day has thin tails: suppression happened, so the check below is not vacuous.
    assert sum(f["suppressed_bins"] for f in profile["features"].values()) > 0
    for feature in profile["features"].values():
        # Every published bin describes k rows or more (or none); no extreme is published.
        assert all(c is None or c == 0 or c >= profile["k"] for c in feature["counts"])
        assert not {"min", "max"} & set(feature)
