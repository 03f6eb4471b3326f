"""Central MLflow tracking server with basic auth: the model registry the edge site and central Airflow share.

One ``mlflow server`` process (its uvicorn worker in the same process group) with a SQLite backend store
(``<state>/mlflow.db``), a proxied artifact store (``<state>/artifacts``: clients upload and download model files
over HTTP, no shared disk) and MLflow's basic-auth app (users in ``<state>/auth.db``, nobody may do anything unless
granted: ``default_permission = NO_PERMISSIONS``). On start it creates, through the auth REST API as the admin:

* user ``edge-site`` (the edge worker that registers models): EDIT on the experiment and on each registered model
  (runs, model files, versions, tags, the champion alias; not delete, not grant, not admin);
* user ``edge-central`` (the central worker that builds images): READ on the experiment (model files) and EDIT on
  each registered model (it records the image digest as version tags);
* the experiment (default ``EDGE_MLFLOW_EXPERIMENT``) and each ``--model`` (default ``EDGE_MODEL_NAME``).
* each model's champion lease ``<model>.champion-lease`` (EDIT for both users; promotions rename it while they move
  the champion alias, see ``edge_training.registry.locks``).

The auth settings are ``deploy/mlflow/basic_auth.ini`` (the one docker-compose uses too). Passwords (admin, both
users) and the Flask secret are generated into ``<state>/secrets/`` (mode 0600) and reach the
server through its environment, never its command line. ``<state>/site.env`` and ``<state>/central.env`` (0600)
hold what each side exports: ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``,
``EDGE_MLFLOW_EXPERIMENT``.

Usage::

    python scripts/mlflow_server.py start  [--state-dir DIR] [--host 127.0.0.1] [--port 5000 | --free-port]
                                           [--advertise-host ADDR] [--model NAME ...] [--experiment NAME]
    python scripts/mlflow_server.py status [--state-dir DIR]          # exit 0 if it answers, else 3
    python scripts/mlflow_server.py env    [--state-dir DIR] --side site|central   # prints secrets
    python scripts/mlflow_server.py stop   [--state-dir DIR]
    python scripts/mlflow_server.py provision --url http://mlflow:5000 [--model NAME ...]   # a server run elsewhere

In a network namespace: ``ip netns exec central .venv/bin/python scripts/mlflow_server.py start --host 10.0.0.1
--port 5000 --state-dir /tmp/central/mlflow`` (the server keeps running in that namespace; ``stop`` works from any).
The module is also the Python API the tests use: ``MlflowServer(state_dir, port=None).start() -> MlflowServerInfo``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "plugins"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))  # run as a script: make `scripts.edge_stack` and `edge_training` importable

from edge_training import config  # noqa: E402
from edge_training.registry.locks import lease_names  # noqa: E402
from scripts.edge_stack import (  # noqa: E402
    EXIT_NOT_RUNNING,
    _free_port,
    _http_status,
    _port_in_use,
    _read_cmdline,
    _running,
    _shell_export,
    _tail,
    _terminate,
    _write_private,
)

DEFAULT_STATE_DIR = REPO_ROOT / ".edge-stack" / "mlflow-server"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
ADMIN_USER = "admin"
SITE_USER = "edge-site"
CENTRAL_USER = "edge-central"
READY_TIMEOUT_S = 240.0  # the server imports MLflow twice (CLI, then its uvicorn worker): ~40 s on a busy machine
STOP_TIMEOUT_S = 15.0
MLFLOW_BIN = Path(sys.executable).parent / "mlflow"
AUTH_INI = REPO_ROOT / "deploy" / "mlflow" / "basic_auth.ini"
# `provision --url` (docker-compose's mlflow-init) reads the passwords from these variables.
PASSWORD_ENV = {ADMIN_USER: "MLFLOW_AUTH_ADMIN_PASSWORD", SITE_USER: "EDGE_MLFLOW_SITE_PASSWORD",
                CENTRAL_USER: "EDGE_MLFLOW_CENTRAL_PASSWORD"}

# What each user may do; MLflow permissions are READ < USE < EDIT < MANAGE (MANAGE also deletes and grants).
PASSWORD_FILES = {SITE_USER: "site_password", CENTRAL_USER: "central_password"}
GRANTS = {
    SITE_USER: {"experiment": "EDIT", "registered_model": "EDIT"},
    CENTRAL_USER: {"experiment": "READ", "registered_model": "EDIT"},
}


class MlflowServerError(RuntimeError):
    """The MLflow server could not be started, provisioned or stopped; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class MlflowServerInfo:
    """Where the running server is and what each side needs to reach it."""

    tracking_uri: str
    experiment: str
    models: tuple[str, ...]
    state_dir: Path
    site_password: str
    central_password: str

    def site_env(self) -> dict[str, str]:
        """Environment of the edge site's worker (registers and promotes models)."""
        return self._env(SITE_USER, self.site_password)

    def central_env(self) -> dict[str, str]:
        """Environment of the central worker that builds images (downloads models, tags versions)."""
        return self._env(CENTRAL_USER, self.central_password)

    def _env(self, user: str, password: str) -> dict[str, str]:
        return {
            "EDGE_MODEL_REGISTRY": "mlflow",
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
            "EDGE_MLFLOW_EXPERIMENT": self.experiment,
        }

    def __repr__(self) -> str:
        # Keeps the passwords out of pytest output and logs.
        return f"MlflowServerInfo(tracking_uri={self.tracking_uri!r}, state_dir={str(self.state_dir)!r})"


class MlflowServer:
    """Start, provision, check and stop the central MLflow server whose state lives in ``state_dir``.

    :param state_dir: Folder for every file the server writes (stores, secrets, log, pid file).
    :param host: Interface to bind (``0.0.0.0`` for all).
    :param port: Port to listen on; None picks a free one on the first start (remembered in ``server.json``).
    :param advertise_host: Host name or address clients use in ``MLFLOW_TRACKING_URI`` (default: ``host``, or
        127.0.0.1 when binding all interfaces).
    :param experiment: The experiment the site registers into.
    :param models: Registered models to create and grant the users on.
    :param workers: uvicorn worker processes.
    :param allowed_hosts: Extra ``Host`` header values the server accepts (MLflow refuses unknown hosts to stop DNS
        rebinding); the bind and advertised hosts are always allowed.
    """

    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        host: str = DEFAULT_HOST,
        port: int | None = DEFAULT_PORT,
        advertise_host: str | None = None,
        experiment: str = config.MLFLOW_EXPERIMENT,
        models: tuple[str, ...] | list[str] = (config.MODEL_NAME,),
        workers: int = 1,
        allowed_hosts: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.port = port
        self.advertise_host = advertise_host or (DEFAULT_HOST if host == "0.0.0.0" else host)
        self.experiment = experiment
        self.models = tuple(models)
        self.workers = workers
        self.allowed_hosts = tuple(allowed_hosts)

    # -- paths -----------------------------------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "server.json"

    def secret_file(self, name: str) -> Path:
        return self.state_dir / "secrets" / name

    def env_file(self, side: str) -> Path:
        return self.state_dir / f"{side}.env"

    # -- state -----------------------------------------------------------------------------------------------

    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _secret(self, name: str) -> str:
        path = self.secret_file(name)
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24) + "\n")  # 32 characters: MLflow wants 12 or more
        return path.read_text().strip()

    def pid(self) -> int | None:
        """The server's pid if a process started from this state folder is alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _running(pid) or str(self.state_dir) not in _read_cmdline(pid):
            return None  # gone, or the pid now belongs to an unrelated process
        return pid

    # -- public API ------------------------------------------------------------------------------------------

    def start(self) -> MlflowServerInfo:
        """Start the server unless it runs, wait until it answers, create the users, experiment and models.

        :raises MlflowServerError: MLflow is missing, the port is taken, the server did not come up, or the
            provisioning through the auth API failed.
        """
        if not MLFLOW_BIN.exists():
            raise MlflowServerError(
                f"Checked for the mlflow command at {MLFLOW_BIN}; it is missing. Run `make install`."
            )
        for folder in (self.state_dir, self.state_dir / "secrets"):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)  # stores and secrets: owner only
        (self.state_dir / "artifacts").mkdir(exist_ok=True)
        state = self._load_state()
        if self.pid() is None:
            port = self.port or state.get("port") or _free_port(self.host)
            probe = self._probe_host()
            if _port_in_use(port, probe):
                raise MlflowServerError(
                    f"Port {probe}:{port} is already in use by a process this server did not start (no live pid "
                    f"in {self.pid_file}). Stop that process or pick another --port."
                )
            state = {"host": self.host, "port": port, "advertise_host": self.advertise_host}
            self.state_file.write_text(json.dumps(state, indent=2) + "\n")
            self._spawn(port)
        port = int(state["port"])
        self._wait_ready(port)
        self.provision(port)
        info = self.info()
        for side, env in (("site", info.site_env()), ("central", info.central_env())):
            _write_private(self.env_file(side), "".join(_shell_export(k, v) + "\n" for k, v in env.items()))
        return info

    def info(self) -> MlflowServerInfo:
        """How to reach the server, from the files in the state folder (does not check that it runs)."""
        state = self._load_state()
        if "port" not in state:
            raise MlflowServerError(
                f"No MLflow server has been started in {self.state_dir}. "
                f"Run: python scripts/mlflow_server.py start --state-dir {self.state_dir}"
            )
        return MlflowServerInfo(
            tracking_uri=f"http://{state['advertise_host']}:{state['port']}",
            experiment=state.get("experiment", self.experiment),
            models=tuple(state.get("models", self.models)),
            state_dir=self.state_dir,
            site_password=self._secret(PASSWORD_FILES[SITE_USER]),
            central_password=self._secret(PASSWORD_FILES[CENTRAL_USER]),
        )

    def stop(self) -> None:
        """Stop the server and its worker (its own process group), only if this state folder started it."""
        pid = self.pid()
        if pid is not None:
            # The server was started in a session of its own: its pgid is its pid.
            _terminate(pid, STOP_TIMEOUT_S, 5.0, send=os.killpg)
        self.pid_file.unlink(missing_ok=True)

    def provision(self, port: int | None = None, models: tuple[str, ...] | list[str] = ()) -> None:
        """Create the users, the experiment and the models (``self.models`` plus ``models``), and grant the users.

        Idempotent: existing users get the password of the state folder again, existing grants are set anew.
        """
        port = port or int(self._load_state()["port"])
        state = self._load_state()
        wanted = tuple(dict.fromkeys([*state.get("models", []), *self.models, *models]))
        experiment_id = provision(
            f"http://{self._probe_host()}:{port}", self._secret("admin_password"),
            {user: self._secret(name) for user, name in PASSWORD_FILES.items()}, self.experiment, wanted,
        )  # fmt: skip
        state.update(experiment=self.experiment, experiment_id=experiment_id, models=list(wanted))
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    # -- steps -----------------------------------------------------------------------------------------------

    def _probe_host(self) -> str:
        return DEFAULT_HOST if self.host == "0.0.0.0" else self.host

    def _spawn(self, port: int) -> None:
        ini = self.state_dir / "basic_auth.ini"
        # The deployment's settings with this state folder's user store; no password in the file.
        ini.write_text("".join(
            f"database_uri = sqlite:///{self.state_dir / 'auth.db'}\n" if line.startswith("database_uri") else line
            for line in AUTH_INI.read_text().splitlines(keepends=True)
        ))
        allowed = [self.host, self.advertise_host, "localhost", DEFAULT_HOST, *self.allowed_hosts]
        allowed_hosts = ",".join(dict.fromkeys(h for name in allowed for h in (name, f"{name}:{port}")))
        argv = [
            str(MLFLOW_BIN), "server",
            "--backend-store-uri", f"sqlite:///{self.state_dir / 'mlflow.db'}",
            "--artifacts-destination", str(self.state_dir / "artifacts"), "--serve-artifacts",
            "--host", self.host, "--port", str(port), "--workers", str(self.workers),
            "--app-name", "basic-auth", "--allowed-hosts", allowed_hosts,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=self._secret("admin_password"),
            MLFLOW_FLASK_SERVER_SECRET_KEY=self._secret("flask_secret_key"),
            # The GenAI job runner is one more ~250 MB process this registry does not use.
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.state_dir, env=env,
                start_new_session=True,  # own process group: stop() signals exactly the server and its worker
            )  # fmt: skip
        self.pid_file.write_text(f"{proc.pid}\n")

    def _wait_ready(self, port: int) -> None:
        url = f"http://{self._probe_host()}:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise MlflowServerError(
                    f"The MLflow server exited while starting on {url}. See {self.log_file}; last lines:\n"
                    f"{_tail(self.log_file)}"
                )
            if _status(f"{url}/health") == 200:
                # Up; and it must refuse an anonymous API call, or auth is not on.
                found = _status(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
                if found != 401:
                    raise MlflowServerError(
                        f"Checked that the MLflow server at {url} refuses an unauthenticated request; it answered "
                        f"{found}, not 401. Another server may hold the port; see {self.log_file}."
                    )
                return
            time.sleep(0.5)
        raise MlflowServerError(
            f"The MLflow server did not answer on {url} within {READY_TIMEOUT_S:.0f} s (pid {self.pid()}). "
            f"See {self.log_file}; last lines:\n{_tail(self.log_file)}"
        )

    def status(self) -> dict:
        """``{"running": bool, "pid": int | None, "tracking_uri": str | None}``."""
        state = self._load_state()
        uri = f"http://{state['advertise_host']}:{state['port']}" if "port" in state else None
        return {"running": self.pid() is not None, "pid": self.pid(), "tracking_uri": uri}


def provision(url: str, admin_password: str, passwords: dict[str, str], experiment: str, models) -> str:
    """As the admin of the server at ``url``: create or update the users of :data:`GRANTS` with ``passwords``,
    create the experiment and the registered models, grant each user its permissions; return the experiment id.
    """
    admin = _AdminApi(url, ADMIN_USER, admin_password)
    for user in GRANTS:
        admin.ensure_user(user, passwords[user])
    experiment_id = admin.ensure_experiment(experiment)
    registered = []
    for name in models:
        admin.ensure_registered_model(name)
        registered += [name, admin.ensure_lease(name)]
    for user, grants in GRANTS.items():
        admin.grant(user, "experiment", experiment_id, grants["experiment"])
        for name in registered:
            admin.grant(user, "registered_model", name, grants["registered_model"])
    return experiment_id


def _status(url: str) -> int:
    """The HTTP status of a GET (4xx/5xx included), or 0 while nothing answers."""
    try:
        return _http_status(url, timeout=3.0)
    except OSError:
        return 0


class _AdminApi:
    """The few calls of MLflow's REST and auth APIs that provisioning needs, as the admin (basic auth)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> tuple[int, dict]:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(
            url, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the server we started
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode(errors="replace")
        try:
            payload = json.loads(text) if text.strip() else {}
        except ValueError:
            payload = {"message": text[:300]}
        if status == 401:
            raise MlflowServerError(
                f"The MLflow server at {self.url} refused the admin's login ({path}). The admin password is read "
                "from secrets/admin_password of the state folder; it only applies when auth.db is created. If "
                "auth.db predates that file, stop the server and remove auth.db to recreate the users."
            )
        return status, payload

    def ok(self, method: str, path: str, body: dict | None = None, query: dict | None = None,
           accept: tuple[str, ...] = ()) -> dict:  # fmt: skip
        status, payload = self.call(method, path, body, query)
        if status == 200 or payload.get("error_code") in accept:
            return payload
        raise MlflowServerError(
            f"Provisioning the MLflow server: {method} {path} answered {status}: {payload.get('message', payload)}. "
            "See the server log in the state folder."
        )

    def ensure_user(self, user: str, password: str) -> None:
        status, _ = self.call("GET", "/api/2.0/mlflow/users/get", query={"username": user})
        if status == 200:
            self.ok("PATCH", "/api/2.0/mlflow/users/update-password", {"username": user, "password": password})
        else:
            self.ok("POST", "/api/2.0/mlflow/users/create", {"username": user, "password": password})

    def ensure_experiment(self, name: str) -> str:
        status, found = self.call("GET", "/api/2.0/mlflow/experiments/get-by-name", query={"experiment_name": name})
        if status == 200:
            return found["experiment"]["experiment_id"]
        # No artifact_location: the server's proxied artifact store holds it (mlflow-artifacts:/<id>).
        return self.ok("POST", "/api/2.0/mlflow/experiments/create", {"name": name})["experiment_id"]

    def ensure_registered_model(self, name: str) -> None:
        self.ok("POST", "/api/2.0/mlflow/registered-models/create", {"name": name}, accept=("RESOURCE_ALREADY_EXISTS",))

    def ensure_lease(self, model: str) -> str:
        """Create ``model``'s champion lease unless it exists, free or held; return the name it has now."""
        free, held = lease_names(model)
        # Free first, then held: a lease renamed in between is found under its other name, never created twice.
        for name in (free, held):
            if self.call("GET", "/api/2.0/mlflow/registered-models/get", query={"name": name})[0] == 200:
                return name
        self.ensure_registered_model(free)
        return free

    def grant(self, user: str, resource_type: str, resource_id: str, permission: str) -> None:
        body = {"username": user, "resource_type": resource_type, "resource_id": resource_id}
        # A grant that exists is replaced, so a changed permission level takes effect on restart.
        self.ok("POST", "/api/3.0/mlflow/users/permissions/revoke", body, accept=("RESOURCE_DOES_NOT_EXIST",))
        self.ok("POST", "/api/3.0/mlflow/users/permissions/grant", {**body, "permission": permission})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Central MLflow tracking server with basic auth.")
    parser.add_argument("command", choices=("start", "stop", "status", "env", "provision"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default: %(default)s)")
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument("--port", type=int, help=f"port (default: {DEFAULT_PORT}, or the one remembered)")
    ports.add_argument("--free-port", action="store_true", help="pick a free port on first start")
    parser.add_argument("--advertise-host", help="host clients put in MLFLOW_TRACKING_URI (default: --host)")
    parser.add_argument("--allowed-host", action="append", default=[], help="extra Host header to accept")
    parser.add_argument("--experiment", default=config.MLFLOW_EXPERIMENT, help="default: %(default)s")
    parser.add_argument("--model", action="append", help=f"registered model to provision (default: {config.MODEL_NAME})")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (default: %(default)s)")
    parser.add_argument("--side", choices=("site", "central"), help="env: whose environment to print")
    parser.add_argument("--url", help="provision: a running server's URL (passwords from " +
                        ", ".join(PASSWORD_ENV.values()) + ")")
    args = parser.parse_args(argv)
    remembered = MlflowServer(args.state_dir)._load_state().get("port")
    port = None if args.free_port else (args.port or remembered or DEFAULT_PORT)
    server = MlflowServer(
        args.state_dir, host=args.host, port=port, advertise_host=args.advertise_host, experiment=args.experiment,
        models=args.model or (config.MODEL_NAME,), workers=args.workers, allowed_hosts=args.allowed_host,
    )  # fmt: skip
    try:
        if args.command == "start":
            info = server.start()
            print(f"MLflow server {info.tracking_uri} (experiment {info.experiment}, models {', '.join(info.models)})")
            print(f"site:    source {server.env_file('site')}    (user {SITE_USER})")
            print(f"central: source {server.env_file('central')} (user {CENTRAL_USER})")
            print(f"admin:   user {ADMIN_USER}, password in {server.secret_file('admin_password')}")
            return 0
        if args.command == "stop":
            server.stop()
            print(f"MLflow server in {server.state_dir} stopped")
            return 0
        if args.command == "provision":
            if not args.url:
                parser.error("provision needs --url of a running server")
            missing = [name for name in PASSWORD_ENV.values() if not os.getenv(name)]
            if missing:
                raise MlflowServerError(f"provision reads the passwords from the environment; not set: {missing}.")
            passwords = {user: os.environ[name] for user, name in PASSWORD_ENV.items()}
            admin_password = passwords.pop(ADMIN_USER)
            models = args.model or (config.MODEL_NAME,)
            provision(args.url.rstrip("/"), admin_password, passwords, args.experiment, models)
            print(f"provisioned {args.url}: users {', '.join(GRANTS)}, experiment {args.experiment}, "
                  f"models {', '.join(models)}")
            return 0
        if args.command == "status":
            status = server.status()
            print(f"mlflow-server {'running' if status['running'] else 'stopped'} {status['tracking_uri'] or '-'} "
                  f"pid {status['pid'] or '-'}")
            return 0 if status["running"] else EXIT_NOT_RUNNING
        if args.side is None:
            parser.error("env needs --side site or --side central")
        path = server.env_file(args.side)
        if not path.exists():
            raise MlflowServerError(f"{path} does not exist: start the server first (state folder {server.state_dir}).")
        sys.stdout.write(path.read_text())
        return 0
    except MlflowServerError as exc:
        print(f"mlflow_server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
