"""The REST client the demo, tests and benchmarks use (``scripts/airflow_local.py``: the official
apache-airflow-client plus a login, retries and ``follow``) against a real api-server of ``airflow standalone``.

What a user would notice: a refusal names what was asked, what came back and what to do, never the password or the
token; a backfill asked for while another writer holds the SQLite metadata database is created once the lock is
gone; the demo's summary of a failed run quotes the exception from the real structured task log.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import timedelta

import pytest
from airflow_client.client.exceptions import ApiException

from tests.e2e.conftest import DAG_ID

pytestmark = pytest.mark.e2e

ROLLBACK_DAG_ID = "edge_model_rollback"
LOCK_S = 8.0  # longer than SQLite's 5 s busy timeout in the api-server: the first ask must be refused


@pytest.fixture(scope="module")
def client(e2e_airflow):
    client = e2e_airflow.airflow.client()
    client.wait_for_dag(DAG_ID)  # edge_training stays paused here: a backfill creates runs that never start
    client.wait_for_dag(ROLLBACK_DAG_ID)
    return client


def _password(e2e_airflow) -> str:
    return json.loads(e2e_airflow.airflow.password_file.read_text())["admin"]


def test_errors_name_the_request_the_answer_and_what_to_do_without_secrets(e2e_airflow, client):
    from scripts.airflow_local import AirflowApiError, AirflowClient

    with pytest.raises(AirflowApiError) as missing:
        client.dag_api.get_dag("no_such_dag")
    assert isinstance(missing.value, ApiException), "callers catching the official client's error still catch it"
    assert missing.value.status == 404
    assert str(missing.value).startswith("GET /api/v2/dags/no_such_dag answered HTTP 404: ")
    assert "no_such_dag" in str(missing.value.detail) and "Check the name" in str(missing.value)

    with pytest.raises(AirflowApiError) as refused:
        client.trigger(ROLLBACK_DAG_ID, conf={"version": 0, "reason": "x"})
    assert refused.value.status == 400
    assert str(refused.value).startswith(f"POST /api/v2/dags/{ROLLBACK_DAG_ID}/dagRuns answered HTTP 400: ")
    assert "Correct the request" in str(refused.value)
    token = client.api_client.configuration.access_token
    assert token and token not in str(refused.value) and token not in repr(client)

    password = _password(e2e_airflow)
    wrong = AirflowClient(e2e_airflow.airflow.url, "admin", password + "-wrong")
    with pytest.raises(AirflowApiError) as login:
        wrong.dag_runs(DAG_ID)
    assert login.value.status == 401 and str(login.value).startswith("POST /auth/token answered HTTP 401: ")
    assert "The login was refused" in str(login.value) and password not in str(login.value)


def test_a_backfill_asked_for_while_the_metadata_db_is_locked_is_created_after_the_lock(e2e_airflow, client,
                                                                                          monkeypatch):  # fmt: skip
    day = e2e_airflow.today - timedelta(days=5)
    from_date, to_date = f"{day.isoformat()}T00:00:00Z", f"{day.isoformat()}T23:59:59Z"
    locked = threading.Event()

    def hold_write_lock() -> None:
        # Another writer (as the scheduler is, on SQLite) holds the database's write lock; readers go on.
        db = sqlite3.connect(e2e_airflow.airflow.home / "airflow.db", isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(LOCK_S)
            db.execute("ROLLBACK")
        finally:
            db.close()

    asked: list[float] = []
    create = client.backfill_api.create_backfill
    monkeypatch.setattr(client.backfill_api, "create_backfill", lambda *a, **k: asked.append(time.monotonic())
                        or create(*a, **k))  # fmt: skip
    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    assert locked.wait(30), "the test could not take the metadata database's write lock"
    backfill = client.create_backfill(DAG_ID, from_date, to_date, max_active_runs=1, conf={"skip_image_build": True})
    holder.join()
    assert len(asked) >= 2, "the api-server waits 5 s for a lock held 8 s: the first ask must have been refused"
    assert backfill["dag_id"] == DAG_ID and backfill["completed_at"] is None
    assert client.backfill_api.get_backfill(backfill["id"]).dag_run_conf == {"skip_image_build": True}
    runs = [r for r in client.dag_runs(DAG_ID) if r["run_type"] == "backfill"]
    assert [r["logical_date"][:10] for r in runs] == [day.isoformat()], "one run, for the asked day"


def test_the_summary_of_a_failed_run_quotes_its_exception_from_the_task_log(client):
    from scripts.run_summary import first_error

    client.unpause(ROLLBACK_DAG_ID)
    run = client.trigger(ROLLBACK_DAG_ID, conf={"version": 99, "reason": "no such version here"})
    final = client.follow(ROLLBACK_DAG_ID, run["dag_run_id"], timeout=300)
    assert final["state"] == "failed"
    [ti] = client.task_instances(ROLLBACK_DAG_ID, run["dag_run_id"])
    assert ti["try_number"] == 1, "a version that does not exist is a permanent error: no retry"
    error = first_error(client, run["dag_run_id"], ti, dag_id=ROLLBACK_DAG_ID)
    assert error.startswith("RollbackRefusedError: ") and "no version '99'" in error, error
