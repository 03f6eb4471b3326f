"""A real Airflow next to the local edge stack: ``airflow standalone`` in the background, plus a small REST client.

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
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
# REST client
# ----------------------------------------------------------------------------------------------------------------


class AirflowApiError(AirflowLocalError):
    """The REST API answered with an error status; ``status`` and ``detail`` hold what it said."""

    def __init__(self, method: str, path: str, status: int, detail: Any) -> None:
        super().__init__(f"{method} {path} answered HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class AirflowClient:
    """Minimal client of the Airflow 3 REST API (``/api/v2``), authenticated with a SimpleAuthManager token.

    :param url: base URL of the api-server, e.g. ``http://127.0.0.1:8080``.
    :param username: SimpleAuthManager user.
    :param password: its password (kept in memory only).
    """

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"AirflowClient(url={self.url!r}, username={self.username!r})"

    def _send(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - loopback API
                raw = response.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                detail = json.loads(raw).get("detail", raw.decode(errors="replace"))
            except ValueError:
                detail = raw.decode(errors="replace")[:500]
            raise AirflowApiError(method, path, err.code, detail) from None
        except urllib.error.URLError as err:
            raise AirflowLocalError(
                f"Could not reach the Airflow API at {self.url} ({err.reason}). "
                "Check it runs: python scripts/airflow_local.py status"
            ) from None
        return json.loads(raw) if raw else None

    def token(self) -> str:
        """A bearer token from ``POST /auth/token`` (fetched once, then reused)."""
        if self._token is None:
            answer = self._send(
                "POST", "/auth/token", {"username": self.username, "password": self._password}, auth=False
            )
            self._token = answer["access_token"]
        return self._token

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call ``/api/v2`` + ``path``; raises ``AirflowApiError`` with the API's detail on a 4xx/5xx."""
        return self._send(method, "/api/v2" + path, body)

    def health(self) -> dict:
        """``/api/v2/monitor/health`` (no login needed)."""
        return self._send("GET", "/api/v2/monitor/health", auth=False)

    def dag(self, dag_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}")

    def unpause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """Wait until the dag-processor has parsed ``dag_id`` (its first parse follows the start)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.dag(dag_id)
            except AirflowApiError as err:
                if err.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(1)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, logical_date: str | None = None,
                run_id: str | None = None, data_interval: tuple[str, str] | None = None) -> dict:  # fmt: skip
        """Start a manual run; ``logical_date`` None makes a run without a logical date (it uses run_after).

        ``data_interval`` (start, end) sets the run's interval; without it a run with a logical date gets the
        timetable's manual interval (the one that ends at the logical date).
        """
        body: dict[str, Any] = {"logical_date": logical_date, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        if data_interval:
            body["data_interval_start"], body["data_interval_end"] = data_interval
        return self.request("POST", f"/dags/{dag_id}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns?limit=100&order_by=id")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances?limit=100"
        return self.request("GET", path)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """The deserialized XCom value, or None when there is none."""
        path = (
            f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/xcomEntries/{key}?deserialize=true&stringify=false"
        )
        try:
            return self.request("GET", path).get("value")
        except AirflowApiError as err:
            if err.status == 404:
                return None
            raise

    def create_backfill(self, dag_id: str, from_date: str, to_date: str, *, reprocess_behavior: str = "none",
                        max_active_runs: int = 10, conf: Mapping[str, Any] | None = None) -> dict:  # fmt: skip
        """Queue a backfill (the scheduler runs it); dates are ISO timestamps, both inclusive.

        On SQLite the api-server answers 503 "Database is locked" while the scheduler holds the write lock: that
        is asked again for up to a minute (nothing was created), any other error is raised at once.
        """
        body = {
            "dag_id": dag_id, "from_date": from_date, "to_date": to_date, "run_backwards": False,
            "dag_run_conf": dict(conf or {}), "reprocess_behavior": reprocess_behavior,
            "max_active_runs": max_active_runs,
        }  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                return self.request("POST", "/backfills", body)
            except AirflowApiError as err:
                if err.status != 503 or "locked" not in str(err.detail).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def follow(self, dag_id: str, run_id: str, on_change: Callable[[str], None] | None = None,
               timeout: float = 1800.0, poll: float = 1.0) -> dict:  # fmt: skip
        """Poll a run until it ends; call ``on_change`` with one line per task state change. Returns the run."""
        seen: dict[str, str | None] = {}
        started = time.monotonic()
        while True:
            try:
                tis, run = self.task_instances(dag_id, run_id), self.dag_run(dag_id, run_id)
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
                last = client.health()
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
        health = airflow.client().health()
        parts = {k: (v or {}).get("status") for k, v in health.items() if isinstance(v, dict)}
        print(f"airflow   running  {airflow.url}  pid {pid}  " + " ".join(f"{k}={v}" for k, v in parts.items()))
        return 0 if all(v == "healthy" for v in parts.values()) else EXIT_NOT_RUNNING
    except AirflowLocalError as exc:
        print(f"airflow_local: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
