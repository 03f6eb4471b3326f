"""The DAG's schedule switch (cron or new-partition asset), catchup and run limits, and the trigger form's schema."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_DESCRIBE = """
import json
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset

def uris(condition):
    # The SDK's Asset, or its serialized form (what an AssetOrTimeSchedule holds).
    if isinstance(condition, Asset) or type(condition).__name__ == "SerializedAsset":
        return [condition.uri]
    return sorted(u for c in getattr(condition, "objects", []) for u in uris(c))

bag = DagBag(dag_folder="dags")
info = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids)}
training = bag.dags.get("edge_training")
if training:
    info["timetable"] = type(training.timetable).__name__
    info["asset_uris"] = uris(getattr(training.timetable, "asset_condition", None))
    info["catchup"] = training.catchup
    info["max_active_runs"] = training.max_active_runs
watch = bag.dags.get("edge_partition_watch")
info["watch_outlets"] = [outlet.uri for task in watch.tasks for outlet in task.outlets] if watch else []
drift = bag.dags.get("edge_drift_check")
info["drift_outlets"] = [outlet.uri for task in drift.tasks for outlet in task.outlets] if drift else []
print(json.dumps(info))
"""


def describe(**env: str) -> dict:
    """Parse the DAG folder in a fresh interpreter (settings are read at import) with ``env`` set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_TRAINING_", "EDGE_RETRAIN_"))}
    out = subprocess.run(
        [sys.executable, "-c", _DESCRIBE], cwd=ROOT, env={**clean, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_is_the_cron_schedule_without_catchup_or_watch_dag():
    info = describe()
    assert info["errors"] == {}
    assert info["timetable"] == "CronDataIntervalTimetable"
    assert info["catchup"] is False
    assert info["max_active_runs"] == 3
    assert "edge_partition_watch" not in info["dag_ids"]


def test_asset_trigger_makes_training_wait_for_the_partition_watch():
    info = describe(EDGE_TRAINING_TRIGGER="asset", EDGE_TRAINING_CATCHUP="true", EDGE_TRAINING_MAX_ACTIVE_RUNS="1")
    assert info["errors"] == {}
    assert info["timetable"] == "AssetTriggeredTimetable"
    assert info["asset_uris"] == ["x-edge-blob://sensor-readings/daily-partitions"]
    assert info["watch_outlets"] == info["asset_uris"], "the watch DAG must update the asset training waits for"
    assert (info["catchup"], info["max_active_runs"]) == (True, 1)


DRIFT_URI = "x-edge-blob://sensor-readings/data-drift"


def test_drift_policy_trains_only_on_the_drift_checks_asset():
    info = describe(EDGE_RETRAIN_POLICY="drift")
    assert info["errors"] == {}
    assert info["timetable"] == "AssetTriggeredTimetable"
    assert info["asset_uris"] == [DRIFT_URI]
    assert info["drift_outlets"] == [DRIFT_URI], "the drift check must update the asset training waits for"


def test_both_policy_keeps_the_cron_and_adds_drift_runs():
    info = describe(EDGE_RETRAIN_POLICY="both")
    assert info["errors"] == {}
    assert info["timetable"] == "AssetOrTimeSchedule"
    assert info["asset_uris"] == [DRIFT_URI]
    both_assets = describe(EDGE_RETRAIN_POLICY="both", EDGE_TRAINING_TRIGGER="asset")
    assert both_assets["asset_uris"] == sorted([DRIFT_URI, "x-edge-blob://sensor-readings/daily-partitions"])


def test_schedule_policy_has_no_drift_check_and_an_unknown_policy_names_the_setting():
    assert "edge_drift_check" not in describe()["dag_ids"]
    info = describe(EDGE_RETRAIN_POLICY="sometimes")
    message = next(iter(info["errors"].values()))
    assert "EDGE_RETRAIN_POLICY" in message and "'sometimes'" in message


def test_unknown_trigger_is_an_import_error_naming_the_setting():
    info = describe(EDGE_TRAINING_TRIGGER="hourly")
    [message] = info["errors"].values()
    assert "EDGE_TRAINING_TRIGGER" in message and "'hourly'" in message


def resolve(params, conf: dict) -> dict:
    """What the API does with a trigger's conf: merge it into the DAG's Params, then validate every one."""
    merged = copy.deepcopy(params)
    merged.update(conf)
    return merged.validate()


@pytest.fixture(scope="module")
def params():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags["edge_training"].params


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"window_days": 1}, "window_days"),
        ({"window_days": "seven"}, "window_days"),
        ({"window_end": "2026-02-30"}, "window_end"),
        ({"window_end": "yesterday"}, "window_end"),
        ({"force_promote": "maybe"}, "force_promote"),
        ({"training_params": [1, 2]}, "training_params"),
    ],
)
def test_invalid_trigger_conf_is_refused_naming_the_field(params, conf, field):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"Invalid input for param {field}"):
        resolve(params, conf)


@pytest.mark.parametrize(
    ("training_params", "field"),
    [
        ({"n_estimators": 10**6}, "n_estimators"),
        ({"n_jobs": -1}, "n_jobs"),
        ({"max_depth": 0}, "max_depth"),
        ({"max_depth": "8"}, "max_depth"),
        ({"max_features": 1}, "max_features"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"random_state": 3}, "random_state"),
    ],
)
def test_out_of_bounds_training_params_are_refused_at_trigger_naming_the_key(params, training_params, field):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param training_params") as err:
        resolve(params, {"training_params": training_params})

    assert field in str(err.value)


def test_the_operators_refuse_what_the_trigger_form_refuses(params):
    """One schema: the Param's bounds are those ``parse_training_params`` enforces when the DAG is not in the way."""
    from airflow.sdk.exceptions import ParamValidationError

    from edge_training.exceptions import TrainingParamsError
    from edge_training.remote_job import parse_training_params

    for value in ({"n_estimators": 2001}, {"n_jobs": 0}, {"criterion": "mse"}, {"oob_score": True}):
        with pytest.raises(ParamValidationError):
            resolve(params, {"training_params": value})
        with pytest.raises(TrainingParamsError):
            parse_training_params(value)
    accepted = {"n_estimators": 2000, "max_depth": 64, "n_jobs": 4, "max_features": "sqrt", "class_weight": None}
    assert resolve(params, {"training_params": accepted})["training_params"] == accepted
    assert parse_training_params(accepted) == accepted


def test_valid_trigger_conf_passes(params):
    resolved = resolve(params, {"window_days": 3, "window_end": "2026-11-08", "force_promote": True})
    assert resolved["window_end"] == "2026-11-08" and resolved["window_days"] == 3
    assert resolve(params, {})["window_end"] is None
