"""A real Airflow next to the local edge stack: ``airflow standalone`` in the background, and its REST API client.

``airflow standalone`` runs the scheduler, dag-processor, api-server and triggerer (LocalExecutor, SQLite,
SimpleAuthManager) with ``AIRFLOW_HOME=<state>/airflow``, this project's ``dags/`` and ``plugins/``, the
connections of ``<state>/airflow.env`` and the ``edge_vm`` pool (1 slot, deferred tasks count).

Usage::

    python scripts/airflow_local.py start  [--state-dir DIR] [--port PORT]   # waits until healthy
    python scripts/airflow_local.py status [--state-dir DIR]                 # exit 0 if running and healthy, else 3
    python scripts/airflow_local.py stop   [--state-dir DIR]

The API port is ``--port``, else ``EDGE_AIRFLOW_PORT``, else 8080 when free, else a free port; it is remembered in
``<state>/airflow.json``. Stop signals only the process group that ``start`` created (checked by its pid file,
command line and Airflow home), nothing else.

Python API (the e2e tests and benchmarks use it)::

    airflow = AirflowLocal(state_dir, env={"EDGE_TRAINING_POLL_INTERVAL_S": "2"})
    info = airflow.start()
    client = airflow.client()                  # AirflowClient, logged in as the generated admin user
    run = client.trigger("edge_training", conf={"window_days": 3})
    final = client.follow("edge_training", run["dag_run_id"], on_change=print)
    pool = client.pool_api.get_pool("edge_vm")  # any endpoint: the official client's typed API and models
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3
from airflow_client.client import ApiClient, Configuration
from airflow_client.client.api import (
    BackfillApi, DAGApi, DagRunApi, ExtraLinksApi, MonitorApi, PoolApi, TaskInstanceApi, XComApi,
)  # fmt: skip
from airflow_client.client.exceptions import ApiException
from airflow_client.client.models import BackfillPostBody, DAGPatchBody, TriggerDAGRunPostBody

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a script: make `scripts.edge_stack` importable

from scripts.edge_stack import HOST, _free_port, _port_in_use, _running, _tail  # noqa: E402

DEFAULT_STATE_DIR = REPO_ROOT / ".edge-stack"
VENV_BIN = Path(sys.executable).parent
DEFAULT_PORT = 8080
ADMIN_USER = "admin"
POOL_DESCRIPTION = "Concurrent trainings on the edge VM"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
EXIT_NOT_RUNNING = 3
TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowLocalError(RuntimeError):
    """Airflow could not be started, reached or stopped; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class AirflowInfo:
    """Where the running Airflow is and how to log in (the password stays in its file, never printed)."""

    home: Path
    url: str
    pid: int
    username: str
    password_file: Path
    log_file: Path


def read_env_file(path: Path) -> dict[str, str]:
    """Values of an ``export NAME='value'`` file as written by ``scripts/edge_stack.py``."""
    values = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            values[name] = value
    return values


# ----------------------------------------------------------------------------------------------------------------
# REST client: the official apache-airflow-client, plus what it does not do (log in, ride out a busy SQLite
# api-server, follow a run)
# ----------------------------------------------------------------------------------------------------------------

# What to do about an error answer, by HTTP status (the API's own detail says what it refused).
_ERROR_HINTS = {
    400: "Correct the request: the detail names the field the API refused.",
    401: "The login was refused or has expired: check the user and its password (airflow standalone writes them to "
    "simple_auth_manager_passwords.json.generated in AIRFLOW_HOME).",
    403: "The user may not do this: log in as a user with that permission.",
    404: "Check the name: a DAG is there once the dag-processor has parsed it without an import error (see the "
    "UI's import errors); a run, task instance or key only once it was created.",
    409: "It exists already: use another id, or read the existing one.",
    422: "Correct the request: the detail names the field the API refused.",
}
_SERVER_ERROR_HINT = "The api-server failed to answer: see its log (airflow.log in the stack folder), then ask again."


def _detail(body: str | None) -> Any:
    """The ``detail`` of an error answer (FastAPI's shape), else the start of its body."""
    text = body or ""
    try:
        answer = json.loads(text)
    except ValueError:
        return text[:500] or "(empty answer)"
    return answer.get("detail", answer) if isinstance(answer, dict) else answer


class AirflowApiError(AirflowLocalError, ApiException):
    """The REST API answered with an error status.

    Raised by every call made through ``AirflowClient`` (its own methods and the generated ``*Api`` objects it
    holds), in place of the official client's ``ApiException`` (of which it is one, so ``except ApiException`` still
    catches it). The message says what was asked, what came back and what to do; ``status`` and ``detail`` hold
    what the API said, ``method`` and ``path`` what was asked.
    """

    def __init__(self, method: str, path: str, status: int, detail: Any, reason: str | None = None,
                 body: str | None = None) -> None:  # fmt: skip
        hint = _ERROR_HINTS.get(status, _SERVER_ERROR_HINT if status >= 500 else "")
        message = f"{method} {path} answered HTTP {status}: {detail}" + (f". {hint}" if hint else "")
        AirflowLocalError.__init__(self, message)
        ApiException.__init__(self, status=status, reason=reason, body=body)
        self.method = method
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return self.args[0]


class AirflowApiTimeout(AirflowLocalError, TimeoutError):
    """The api-server did not answer within the client's timeout (it is busy, or hangs)."""


class _ApiClient(ApiClient):
    """The official client's transport with a timeout on every request, a login on the first call that needs one,
    and this project's errors (``AirflowApiError``, ``AirflowApiTimeout``, ``AirflowLocalError``)."""

    def __init__(self, configuration: Configuration, timeout: float, login: Callable[[], str] | None) -> None:
        super().__init__(configuration)
        self.timeout = timeout
        self._login = login

    def update_params_for_auth(self, headers, queries, auth_settings, resource_path, method, body,
                               request_auth=None) -> None:  # fmt: skip
        if auth_settings and self.configuration.access_token is None and self._login is not None:
            self.configuration.access_token = self._login()
        super().update_params_for_auth(headers, queries, auth_settings, resource_path, method, body, request_auth)

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        path = urllib.parse.urlsplit(url).path
        try:
            response = super().call_api(method, url, header_params, body, post_params,
                                        _request_timeout or self.timeout)  # fmt: skip
            response.read()  # the body too within the timeout, and here, where its errors are translated
        except urllib3.exceptions.NewConnectionError as err:  # first: urllib3 files it under connect timeouts
            raise AirflowLocalError(
                f"{method} {path}: could not connect to the Airflow API at {self.configuration.host} ({err}). "
                "Check it runs: python scripts/airflow_local.py status"
            ) from None
        except urllib3.exceptions.TimeoutError:
            raise AirflowApiTimeout(
                f"{method} {path}: no answer from the Airflow API at {self.configuration.host} within "
                f"{_request_timeout or self.timeout:.0f}s. The api-server is busy or hangs: ask again, or see its log."
            ) from None
        except urllib3.exceptions.HTTPError as err:
            raise AirflowLocalError(
                f"{method} {path}: could not reach the Airflow API at {self.configuration.host} "
                f"({type(err).__name__}). Check it runs: python scripts/airflow_local.py status"
            ) from None
        response.asked = (method, path)
        return response

    def response_deserialize(self, response_data, response_types_map=None):
        try:
            return super().response_deserialize(response_data, response_types_map)
        except ApiException as err:
            method, path = getattr(response_data, "asked", ("?", "?"))
            raise AirflowApiError(method, path, err.status, _detail(err.body), err.reason, err.body) from None


def _refused_while_db_locked(err: AirflowApiError) -> bool:
    """The api-server's answers to a write while another writer holds SQLite's lock (its detail hides the cause of a
    500: on SQLite under this project's load, a lock)."""
    if err.status == 503:
        return "locked" in str(err.detail).lower()
    return err.status == 500 and isinstance(err.detail, dict) and err.detail.get("reason") == "Database error"


def _as_json(model: Any) -> Any:
    """A response model as the API's JSON document (field names and nulls as the REST reference documents them)."""
    return model.model_dump(mode="json", by_alias=True, exclude={"additional_properties"})


class AirflowClient:
    """The official client of the Airflow 3 REST API (``apache-airflow-client``), logged in to SimpleAuthManager.

    The generated API objects do the calls (``dag_api``, ``dag_run_api``, ``task_instance_api``, ``xcom_api``,
    ``backfill_api``, ``pool_api``, ``monitor_api``, ``extra_links_api``; any other one is built on ``api_client``,
    e.g. ``VariableApi(client.api_client)``) and return its typed models. The methods here add what it does not
    do: the bearer token from ``POST /auth/token`` (fetched on the first call that needs it, never logged), waiting
    for a DAG to be parsed, asking again while SQLite is locked, following a run, a task log with the fields its
    model drops. They return the API's JSON documents as dicts. Every error answer raises ``AirflowApiError``.

    :param url: base URL of the api-server, e.g. ``http://127.0.0.1:8080``.
    :param username: SimpleAuthManager user.
    :param password: its password (kept in memory only).
    :param timeout: seconds to wait for each answer.
    """

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        # A Configuration of its own (not the process-wide default): no token or host leaks to other clients.
        configuration = Configuration(host=self.url)
        configuration.retries = False  # a refused or late answer is reported at once; callers decide to ask again
        self.api_client = _ApiClient(configuration, timeout, self._fetch_token)
        self.dag_api = DAGApi(self.api_client)
        self.dag_run_api = DagRunApi(self.api_client)
        self.task_instance_api = TaskInstanceApi(self.api_client)
        self.xcom_api = XComApi(self.api_client)
        self.backfill_api = BackfillApi(self.api_client)
        self.pool_api = PoolApi(self.api_client)
        self.monitor_api = MonitorApi(self.api_client)
        self.extra_links_api = ExtraLinksApi(self.api_client)

    def __repr__(self) -> str:
        return f"AirflowClient(url={self.url!r}, username={self.username!r})"

    def _fetch_token(self) -> str:
        """A bearer token from SimpleAuthManager's ``POST /auth/token`` (not part of the generated client)."""
        response = self.api_client.call_api(
            "POST", f"{self.url}/auth/token",
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body={"username": self.username, "password": self._password},
        )  # fmt: skip
        answer = self.api_client.response_deserialize(response, {"2XX": "object"}).data
        return answer["access_token"]

    def unpause(self, dag_id: str) -> dict:
        return _as_json(self.dag_api.patch_dag(dag_id, DAGPatchBody(is_paused=False)))

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """Wait until the dag-processor has parsed ``dag_id`` (its first parse follows the start)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return _as_json(self.dag_api.get_dag(dag_id))
            except AirflowApiError as err:
                if err.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(1)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, logical_date: str | datetime | None = None,
                run_id: str | None = None, data_interval: tuple[str | datetime, str | datetime] | None = None,
                ) -> dict:  # fmt: skip
        """Start a manual run; ``logical_date`` None makes a run without a logical date (it uses run_after).

        ``data_interval`` (start, end) sets the run's interval; without it a run with a logical date gets the
        timetable's manual interval (the one that ends at the logical date). Dates are ISO strings or datetimes.
        """
        start, end = data_interval or (None, None)
        body = TriggerDAGRunPostBody(logical_date=logical_date, conf=dict(conf or {}), dag_run_id=run_id,
                                     data_interval_start=start, data_interval_end=end)  # fmt: skip
        return _as_json(self.dag_run_api.trigger_dag_run(dag_id, body))

    def dag_runs(self, dag_id: str) -> list[dict]:
        """The DAG's first 100 runs, oldest first."""
        return _as_json(self.dag_run_api.get_dag_runs(dag_id, limit=100, order_by=["id"]))["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return _as_json(self.task_instance_api.get_task_instances(dag_id, run_id, limit=100))["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """The deserialized XCom value, or None when there is none."""
        try:
            entry = self.xcom_api.get_xcom_entry(dag_id, task_id, run_id, key, deserialize=True, stringify=False)
        except AirflowApiError as err:
            if err.status == 404:
                return None
            raise
        return entry.actual_instance.value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list:
        """The lines of a task try's log as the API sends them: structured lines are dicts, with the fields of the
        exception a line logged (``error_detail``), which the generated log model leaves out."""
        answer = self.task_instance_api.get_log_with_http_info(dag_id, run_id, task_id, try_number, full_content=True)
        return json.loads(answer.raw_data).get("content") or []

    def create_backfill(self, dag_id: str, from_date: str, to_date: str, *, reprocess_behavior: str = "none",
                        max_active_runs: int = 10, conf: Mapping[str, Any] | None = None) -> dict:  # fmt: skip
        """Queue a backfill (the scheduler runs it); dates are ISO timestamps, both inclusive.

        On SQLite, while another writer (the scheduler) holds the write lock, the api-server refuses the request:
        503 "Database is locked" when the backfill's own insert waited too long, 500 "Database error" when the audit
        log's insert before it did. Nothing was created either way (and a second backfill of a DAG whose backfill is
        running would be refused with 409), so it is asked again for up to a minute; any other error is raised at
        once.
        """
        body = BackfillPostBody(
            dag_id=dag_id, from_date=from_date, to_date=to_date, run_backwards=False, dag_run_conf=dict(conf or {}),
            reprocess_behavior=reprocess_behavior, max_active_runs=max_active_runs,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                return _as_json(self.backfill_api.create_backfill(body))
            except AirflowApiError as err:
                if not _refused_while_db_locked(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def follow(self, dag_id: str, run_id: str, on_change: Callable[[str], None] | None = None,
               timeout: float = 1800.0, poll: float = 1.0) -> dict:  # fmt: skip
        """Poll a run until it ends; call ``on_change`` with one line per task state change. Returns the run."""
        seen: dict[str, str | None] = {}
        started = time.monotonic()
        while True:
            try:
                tis = self.task_instances(dag_id, run_id)
                run = _as_json(self.dag_run_api.get_dag_run(dag_id, run_id))
            except TimeoutError:
                # A busy api-server answers late (it builds its execution API on the first task's call, which
                # takes long on a loaded machine): ask again until the run's own timeout.
                if time.monotonic() - started > timeout:
                    raise
                continue
            for ti in sorted(tis, key=lambda t: t.get("start_date") or "~"):
                state = ti.get("state")
                if seen.get(ti["task_id"]) != state:
                    seen[ti["task_id"]] = state
                    if on_change and state is not None:  # None: not scheduled yet, nothing to report
                        tried = f" (try {ti['try_number']})" if ti.get("try_number", 0) > 1 else ""
                        on_change(f"{time.monotonic() - started:6.1f}s  {ti['task_id']:<20} {state}{tried}")
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() - started > timeout:
                raise AirflowLocalError(
                    f"Run {run_id} of {dag_id} is still {run['state']} after {timeout:.0f}s. "
                    "Look at it in the UI (task logs), or raise the timeout."
                )
            time.sleep(poll)


# ----------------------------------------------------------------------------------------------------------------
# The background Airflow
# ----------------------------------------------------------------------------------------------------------------


class AirflowLocal:
    """Start, check and stop ``airflow standalone`` whose state lives in ``<state_dir>/airflow``.

    :param state_dir: the edge stack's state folder (holds ``airflow.env``); Airflow's home is ``airflow/`` in it.
    :param port: API port; None takes the remembered one, then ``EDGE_AIRFLOW_PORT``, then 8080 or a free port.
    :param env: extra settings for every Airflow component (e.g. ``EDGE_TRAINING_POLL_INTERVAL_S``).
    :param pool_slots: slots of the edge VM pool created on start.
    :param netns: run Airflow inside this Linux network namespace (``ip netns exec``); None: this host's network.
    :param bind_host: address the api-server listens on (all addresses, ``0.0.0.0``, for other hosts to reach it).
    :param url_host: address clients of this object dial to reach the api-server (its address on their network).
    """

    def __init__(self, state_dir: Path | str = DEFAULT_STATE_DIR, port: int | None = None,
                 env: Mapping[str, str] | None = None, pool_slots: int = 1, netns: str | None = None,
                 bind_host: str = HOST, url_host: str = HOST) -> None:  # fmt: skip
        self.netns = netns
        self.bind_host = bind_host
        self.url_host = url_host
        self.state_dir = Path(state_dir).resolve()
        self.home = self.state_dir / "airflow"
        self.requested_port = port
        self.extra_env = dict(env or {})
        self.pool_slots = pool_slots

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "airflow.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "airflow.log"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "airflow.json"

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def _remembered_port(self) -> int | None:
        try:
            return int(json.loads(self.state_file.read_text())["port"])
        except (OSError, ValueError, KeyError):
            return None

    @property
    def port(self) -> int:
        port = self.requested_port or self._remembered_port() or int(os.getenv("EDGE_AIRFLOW_PORT", "0"))
        if not port:
            port = DEFAULT_PORT if not _port_in_use(DEFAULT_PORT) else _free_port()
        return port

    @property
    def url(self) -> str:
        return f"http://{self.url_host}:{self._remembered_port() or self.port}"

    def environment(self, port: int) -> dict[str, str]:
        """The environment of every Airflow component: the stack's connections, this project, one port."""
        env_file = self.state_dir / "airflow.env"
        if not env_file.exists():
            raise AirflowLocalError(
                f"{env_file} does not exist: the local edge stack has not been started in {self.state_dir}. "
                f"Run: python scripts/edge_stack.py start --state-dir {self.state_dir}"
            )
        env = {**os.environ, **read_env_file(env_file)}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # LocalExecutor starts one worker process per slot (32 by default): few suffice for one DAG here.
            "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "6"),
            "AIRFLOW__API__HOST": self.bind_host,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://{self.url_host}:{port}",
            # Tasks talk to the api-server's execution API: on a moved port they must be told where it is.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
            # A single DAG folder: notice edits quickly without re-parsing constantly on a shared machine.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # Log lines reach airflow.log as they happen (and are not lost if a component dies).
            "PYTHONUNBUFFERED": "1",
            # standalone starts its components as `airflow ...` from PATH: that must be this venv's.
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
        })  # fmt: skip
        env.update(self.extra_env)
        return env

    def _airflow(self, env: Mapping[str, str], *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [str(VENV_BIN / "airflow"), *args], env=dict(env), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AirflowLocalError(
                f"`airflow {' '.join(args)}` exited with status {result.returncode}: "
                f"{result.stderr.strip()[-1500:] or result.stdout.strip()[-1500:]}"
            )
        return result.stdout

    def pid(self) -> int | None:
        """The standalone's pid if it runs and is ours (command line says standalone, environment our home)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        # A live process can show a blank or partial command line for a moment (just after exec, or while it is
        # busy): look a few times before deciding it is not ours, or start() would stop a healthy standalone.
        for _ in range(20):
            if not _running(pid):
                return None
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                return None
            if b"standalone" in cmdline and f"AIRFLOW_HOME={self.home}".encode() in environ:
                return pid
            time.sleep(0.1)
        return None

    def info(self) -> AirflowInfo:
        pid = self.pid()
        if pid is None:
            raise AirflowLocalError(
                f"Airflow is not running for {self.state_dir}. Start it: python scripts/airflow_local.py start"
            )
        return AirflowInfo(self.home, self.url, pid, ADMIN_USER, self.password_file, self.log_file)

    def client(self) -> AirflowClient:
        """A REST client logged in as the admin user whose password standalone generated."""
        try:
            password = json.loads(self.password_file.read_text())[ADMIN_USER]
        except (OSError, ValueError, KeyError):
            raise AirflowLocalError(
                f"Checked {self.password_file} for the {ADMIN_USER!r} password: not found. It is written on the "
                "first start of airflow standalone; start it with: python scripts/airflow_local.py start"
            ) from None
        return AirflowClient(self.url, ADMIN_USER, password)

    def start(self, timeout: float = START_TIMEOUT_S) -> AirflowInfo:
        """Start standalone unless it already runs, create the pool, and wait until every component is healthy."""
        if self.pid() is not None:
            self._wait_healthy(timeout)
            return self.info()
        port = self.port
        if self.netns is None and _port_in_use(port):
            raise AirflowLocalError(
                f"Port {HOST}:{port} for the Airflow API is in use by another process. "
                "Pass --port (or set EDGE_AIRFLOW_PORT) to a free port."
            )
        self.home.mkdir(parents=True, exist_ok=True)
        env = self.environment(port)
        self._airflow(env, "db", "migrate")
        pool = env.get("EDGE_VM_POOL", "edge_vm")
        self._airflow(env, "pools", "set", pool, str(self.pool_slots), POOL_DESCRIPTION, "--include-deferred")
        self.state_file.write_text(json.dumps({"port": port}) + "\n")

        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            # Own session and process group: stop() signals exactly this group, and a Ctrl-C in the shell
            # that ran `start` does not take Airflow down.
            netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            proc = subprocess.Popen(
                [*netns, str(VENV_BIN / "airflow"), "standalone"], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=self.home, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self.info()

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = AirflowClient(self.url, ADMIN_USER, "")
        last: Any = "no answer yet"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise AirflowLocalError(
                    f"airflow standalone exited during start. Last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            try:
                last = _as_json(client.monitor_api.get_health())  # needs no login
                parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                if all((last.get(part) or {}).get("status") == "healthy" for part in parts):
                    if self.password_file.exists():
                        return
            except (AirflowLocalError, OSError, ValueError) as err:
                last = err
            time.sleep(1)
        raise AirflowLocalError(
            f"Airflow at {self.url} was not healthy after {timeout:.0f}s (last health answer: {last}). "
            f"Last lines of {self.log_file}:\n{_tail(self.log_file)}"
        )

    def stop(self) -> bool:
        """Stop the process group started by ``start``; returns False when nothing of ours was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(pid):
                self.pid()  # reaps the leader when it is our child
                time.sleep(0.2)
            if not _group_alive(pid):
                break
        self.pid_file.unlink(missing_ok=True)
        return True


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process still in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="airflow standalone next to the local edge stack.")
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument("--port", type=int, default=None, help="API port (default: remembered, 8080 or free)")
    args = parser.parse_args(argv)
    airflow = AirflowLocal(args.state_dir, port=args.port)
    try:
        if args.command == "start":
            info = airflow.start()
            print(f"Airflow   {info.url} (pid {info.pid}, home {info.home}, log {info.log_file})")
            print(f"login     user {info.username}, password in {info.password_file}")
            return 0
        if args.command == "stop":
            print("Airflow stopped" if airflow.stop() else "Airflow was not running")
            return 0
        pid = airflow.pid()
        if pid is None:
            print(f"airflow   stopped ({airflow.state_dir})")
            return EXIT_NOT_RUNNING
        health = _as_json(airflow.client().monitor_api.get_health())
        parts = {k: (v or {}).get("status") for k, v in health.items() if isinstance(v, dict)}
        print(f"airflow   running  {airflow.url}  pid {pid}  " + " ".join(f"{k}={v}" for k, v in parts.items()))
        return 0 if all(v == "healthy" for v in parts.values()) else EXIT_NOT_RUNNING
    except AirflowLocalError as exc:
        print(f"airflow_local: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
