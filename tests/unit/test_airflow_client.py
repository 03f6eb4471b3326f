"""The REST client of scripts/airflow_local.py (the official apache-airflow-client plus a login, retries and
``follow``) against an HTTP server on loopback that answers as Airflow's api-server does: the same paths and
status codes, JSON documents the official models accept.

What a user would notice: a backfill asked for while SQLite is locked is asked again and created; ``follow`` rides out
an api-server that answers late; errors name what was asked, what came back and what to do, without the token or the
password; a stopped api-server is reported as such.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from airflow_client.client.exceptions import ApiException

from scripts.airflow_local import AirflowApiError, AirflowApiTimeout, AirflowClient, AirflowLocalError

PASSWORD = "pw-Ee3v9"
TOKEN = "tok-Qz81xR"
NOW = "2026-11-20T02:00:00Z"


def _run(state: str) -> dict:
    return {"dag_id": "edge_training", "dag_display_name": "edge_training", "dag_run_id": "manual__1",
            "dag_versions": [], "run_after": NOW, "run_type": "manual", "state": state, "logical_date": None}  # fmt: skip


def _ti(state: str | None, try_number: int = 1) -> dict:
    return {"id": "0191f6f8-5a4e-7d3a-9b1e-3f0c6c2a1b10", "dag_id": "edge_training",
            "dag_display_name": "edge_training", "dag_run_id": "manual__1", "task_id": "train_on_edge_vm",
            "task_display_name": "train_on_edge_vm", "executor_config": "{}", "map_index": -1, "max_tries": 2,
            "pool": "edge_vm", "pool_slots": 1, "run_after": NOW, "try_number": try_number, "state": state,
            "start_date": NOW}  # fmt: skip


BACKFILL = {"id": 7, "dag_id": "edge_training", "dag_display_name": "edge_training", "from_date": NOW,
            "to_date": NOW, "created_at": NOW, "updated_at": NOW, "completed_at": None, "is_paused": False,
            "max_active_runs": 3, "reprocess_behavior": "none", "dag_run_conf": {}}  # fmt: skip


class FakeApiServer:
    """Answers each request with the next scripted answer for its method and path: ``(status, body, delay_s)``."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[tuple[int, object, float]]] = {}
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path = self.path.split("?", 1)[0]
                server.requests.append({"method": self.command, "path": path, "body": body,
                                        "authorization": self.headers.get("Authorization")})  # fmt: skip
                if self.command == "POST" and path == "/auth/token":
                    ok = body == {"username": "admin", "password": PASSWORD}
                    status, answer, delay = (201, {"access_token": TOKEN}, 0) if ok else (
                        401, {"detail": "Invalid credentials"}, 0)  # fmt: skip
                elif self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    status, answer, delay = 401, {"detail": "Not authenticated"}, 0
                else:
                    queue = server.answers.get((self.command, path)) or [(404, {"detail": "Not Found"}, 0)]
                    status, answer, delay = queue.pop(0) if len(queue) > 1 else queue[0]
                time.sleep(delay)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (its timeout): what the test is about

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def script(self, method: str, path: str, *answers: tuple[int, object, float]) -> None:
        self.answers[(method, path)] = list(answers)

    def count(self, method: str, path: str) -> int:
        return sum(r["method"] == method and r["path"] == path for r in self.requests)


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()
    thread = threading.Thread(target=fake.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.httpd.shutdown()
        fake.httpd.server_close()


@pytest.fixture
def client(server) -> AirflowClient:
    return AirflowClient(server.url, "admin", PASSWORD, timeout=1.0)


def _raised(call: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


def test_logs_in_once_and_sends_the_token_as_bearer(server, client):
    server.script("GET", "/api/v2/dags/edge_training/dagRuns", (200, {"dag_runs": [_run("success")],
                                                                      "total_entries": 1}, 0))  # fmt: skip
    assert [r["state"] for r in client.dag_runs("edge_training")] == ["success"]
    assert [r["logical_date"] for r in client.dag_runs("edge_training")] == [None], "nulls kept, as the API sent"
    assert server.count("POST", "/auth/token") == 1
    assert {r["authorization"] for r in server.requests if r["path"] != "/auth/token"} == {f"Bearer {TOKEN}"}
    assert TOKEN not in repr(client) and PASSWORD not in repr(client)


# What the api-server answers while another writer holds SQLite's lock: its backfill insert waited too long (503), or
# the audit log's insert before it did (500, the cause hidden).
LOCKED_503 = {"detail": "Database is locked. Backfill creation is not supported on SQLite under concurrent access. "
              "Please use PostgreSQL or MySQL."}  # fmt: skip
LOCKED_500 = {"detail": {"reason": "Database error", "statement": "hidden", "orig_error": "hidden",
                         "message": "Serious error when handling your request. Check logs for more details - you will "
                         "find it in api server when you look for ID sdtxqoN3"}}  # fmt: skip


@pytest.mark.parametrize(("status", "answer"), [(503, LOCKED_503), (500, LOCKED_500)], ids=["503", "500"])
def test_backfill_is_asked_again_while_sqlite_is_locked(server, client, status, answer):
    server.script("POST", "/api/v2/backfills", (status, answer, 0), (200, BACKFILL, 0))
    backfill = client.create_backfill("edge_training", NOW, NOW, max_active_runs=3, conf={"skip_image_build": True})
    assert backfill["id"] == 7
    posts = [r for r in server.requests if r["path"] == "/api/v2/backfills"]
    assert len(posts) == 2, "one refusal while locked, then created"
    assert posts[-1]["body"]["dag_run_conf"] == {"skip_image_build": True}
    assert posts[-1]["body"]["reprocess_behavior"] == "none" and posts[-1]["body"]["max_active_runs"] == 3


def test_other_backfill_errors_are_raised_at_once_with_what_to_do(server, client):
    server.script("POST", "/api/v2/backfills", (503, {"detail": "Service Unavailable"}, 0), (200, BACKFILL, 0))
    # A 500 that is not the database's: raised at once as well.
    server.script("POST", "/api/v2/backfills", (500, {"detail": "Internal Server Error"}, 0), (200, BACKFILL, 0))
    error = _raised(lambda: client.create_backfill("edge_training", NOW, NOW))
    assert isinstance(error, AirflowApiError) and error.status == 500
    assert server.count("POST", "/api/v2/backfills") == 1
    server.requests.clear()
    server.script("POST", "/api/v2/backfills", (503, {"detail": "Service Unavailable"}, 0), (200, BACKFILL, 0))
    error = _raised(lambda: client.create_backfill("edge_training", NOW, NOW))
    assert isinstance(error, AirflowApiError) and isinstance(error, ApiException)
    assert (error.status, error.detail, error.method, error.path) == (
        503, "Service Unavailable", "POST", "/api/v2/backfills")
    assert str(error).startswith("POST /api/v2/backfills answered HTTP 503: Service Unavailable. ")
    assert "see its log" in str(error)
    assert server.count("POST", "/api/v2/backfills") == 1


def test_a_refusal_from_a_generated_api_names_the_request_the_answer_and_the_fix(server, client):
    error = _raised(lambda: client.dag_api.get_dag("no_such_dag"))
    assert isinstance(error, AirflowApiError) and isinstance(error, ApiException)
    assert str(error).startswith("GET /api/v2/dags/no_such_dag answered HTTP 404: Not Found. Check the name")
    assert TOKEN not in str(error) and PASSWORD not in str(error)


def test_a_refused_login_says_so_without_the_password(server):
    client = AirflowClient(server.url, "admin", "wrong-" + PASSWORD, timeout=1.0)
    error = _raised(lambda: client.task_instances("edge_training", "manual__1"))
    assert isinstance(error, AirflowApiError) and error.status == 401
    assert str(error).startswith("POST /auth/token answered HTTP 401: Invalid credentials. The login was refused")
    assert PASSWORD not in str(error) and PASSWORD not in repr(error.args)


def test_follow_rides_out_answers_that_come_too_late(server, client):
    tis = "/api/v2/dags/edge_training/dagRuns/manual__1/taskInstances"
    # The api-server is busy for two polls (answers after the client's 1 s timeout), then reports progress.
    server.script("GET", tis, (200, {"task_instances": [], "total_entries": 0}, 1.5),
                  (200, {"task_instances": [], "total_entries": 0}, 1.5),
                  (200, {"task_instances": [_ti("running")], "total_entries": 1}, 0),
                  (200, {"task_instances": [_ti("success", try_number=2)], "total_entries": 1}, 0))  # fmt: skip
    server.script("GET", "/api/v2/dags/edge_training/dagRuns/manual__1", (200, _run("running"), 0),
                  (200, _run("success"), 0))  # fmt: skip
    lines: list[str] = []
    final = client.follow("edge_training", "manual__1", on_change=lines.append, timeout=30, poll=0.1)
    assert final["state"] == "success"
    assert [line.split()[1:] for line in lines] == [
        ["train_on_edge_vm", "running"], ["train_on_edge_vm", "success", "(try", "2)"]]
    assert server.count("GET", tis) == 4


def test_a_late_answer_outside_follow_is_a_timeout_that_names_the_request(server, client):
    server.script("GET", "/api/v2/pools/edge_vm", (200, {}, 1.5))
    error = _raised(lambda: client.pool_api.get_pool("edge_vm"))
    assert isinstance(error, AirflowApiTimeout) and isinstance(error, TimeoutError)
    assert str(error).startswith(f"GET /api/v2/pools/edge_vm: no answer from the Airflow API at {server.url} within 1s")


def test_a_stopped_api_server_is_reported_with_how_to_check_it(server):
    url = server.url
    server.httpd.shutdown()
    server.httpd.server_close()
    error = _raised(lambda: AirflowClient(url, "admin", PASSWORD, timeout=1.0).unpause("edge_training"))
    assert type(error) is AirflowLocalError and not isinstance(error, TimeoutError)
    assert "could not connect to the Airflow API" in str(error) and "airflow_local.py status" in str(error)
    assert PASSWORD not in str(error)
