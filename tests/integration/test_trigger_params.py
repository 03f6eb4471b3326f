"""A run asking for out-of-bounds training_params is refused by Airflow itself, before any task runs.

``airflow dags test`` creates the run the way the REST API's trigger endpoint (and so the UI's trigger form) does:
``create_dagrun`` merges the conf into the DAG's Params and validates each against its JSON schema.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("training_params", "field"),
    [({"n_estimators": 10**6}, "n_estimators"), ({"n_jobs": -1}, "n_jobs"), ({"max_depth": 0}, "max_depth"),
     ({"learning_rate": 0.1}, "learning_rate")],  # fmt: skip
)
def test_trigger_with_bad_training_params_is_refused_naming_the_field(pipeline, training_params, field):
    logical_date = "2026-06-09T02:00:00+00:00"
    with sqlite3.connect(pipeline.home / "airflow.db") as db:
        (tasks_before,) = db.execute("SELECT count(*) FROM task_instance").fetchone()

    done = pipeline.airflow(
        "dags", "test", "edge_training", logical_date, "-c", json.dumps({"training_params": training_params})
    )

    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "Invalid input for param training_params" in output and field in output, output[-3000:]
    with sqlite3.connect(pipeline.home / "airflow.db") as db:
        (tasks_after,) = db.execute("SELECT count(*) FROM task_instance").fetchone()
    assert tasks_after == tasks_before, "a task instance was created for a refused run"
