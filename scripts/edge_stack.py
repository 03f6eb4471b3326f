"""Local edge stack: real stand-ins for the Azure Stack Hub parts the pipeline talks to.

Three services, all bound to 127.0.0.1, all state under one folder (default ``<repo>/.edge-stack``):

* ``blob``     - Azurite blob emulator (Stack Hub blob storage), container ``sensor-readings`` created on start;
* ``ssh``      - OpenSSH ``sshd`` with its own config, host key and client key (the training "edge VM");
* ``registry`` - CNCF distribution registry with htpasswd auth (Azure Container Registry).

Usage::

    python scripts/edge_stack.py start  [--state-dir DIR] [--free-ports]
    python scripts/edge_stack.py status [--state-dir DIR]     # exit 0 if all running, else 3
    python scripts/edge_stack.py env    [--state-dir DIR]     # prints <state>/airflow.env
    python scripts/edge_stack.py stop   [--state-dir DIR]

``start`` writes ``<state>/airflow.env`` (``export NAME='value'`` lines, mode 0600) with the Airflow connections
``AIRFLOW_CONN_EDGE_BLOB``, ``AIRFLOW_CONN_EDGE_VM``, ``AIRFLOW_CONN_IMAGE_REGISTRY`` and the local MLflow / report
locations; ``source`` it before running Airflow. Only ``env`` prints secrets; nothing else does.

The module is also the Python API the tests use: ``EdgeStack(state_dir, free_ports=True).start() -> StackInfo``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import getpass
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = REPO_ROOT / ".edge-stack"
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"

HOST = "127.0.0.1"
DEFAULT_PORTS = {"blob": 10000, "ssh": 2222, "registry": 5000}
SERVICES = ("blob", "ssh", "registry")
BLOB_CONTAINER = "sensor-readings"
REGISTRY_USER = "edge"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
EXIT_NOT_RUNNING = 3
# Environment variable carried by every process of a stack (services and edge VM sessions): stop() finds them by it.
STACK_MARKER = "EDGE_STACK_STATE_DIR"

# Azurite's documented development account; it is public and identical on every install.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class EdgeStackError(RuntimeError):
    """The local edge stack could not be started, checked or stopped; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class StackInfo:
    """Where the running stack's services are and how to reach them."""

    blob_connection_string: str
    blob_endpoint: str
    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_private_key_path: Path
    ssh_host_key: str
    registry_host: str
    registry_user: str
    registry_password: str
    state_dir: Path
    airflow_env: dict[str, str]

    def __repr__(self) -> str:
        # Keeps the registry password and the private key (inside airflow_env) out of pytest output and logs.
        return (
            f"StackInfo(blob_endpoint={self.blob_endpoint!r}, ssh={self.ssh_user}@{self.ssh_host}:{self.ssh_port}, "
            f"registry_host={self.registry_host!r}, state_dir={str(self.state_dir)!r})"
        )


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (the file may hold secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode is ignored when the file already existed.


def _free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _read_cmdline(pid: int, settle_s: float = 2.0) -> str:
    """The command line of ``pid``, or "" when there is no such process.

    A process that is between fork and exec (``#!/usr/bin/env node`` execs twice) shows an empty command line for
    a moment: a live process with an empty one is read again until it settles.
    """
    deadline = time.monotonic() + settle_s
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return ""
        if raw or not _running(pid) or time.monotonic() > deadline:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.05)


def _reap(pid: int) -> None:
    # When the stack was started from this very process (tests), its services are our children: collect their
    # exit status so they do not linger as zombies.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _terminate(pid: int, grace: float, kill_grace: float, send=os.kill) -> None:
    """SIGTERM ``pid``, wait up to ``grace`` s for it to end, then SIGKILL and wait up to ``kill_grace`` s.

    :param send: ``os.kill`` for the process, ``os.killpg`` for its process group (a session leader's pid).
    """
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_grace)):
        try:
            send(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _running(pid):
            return


def _ancestry(pid: int) -> set[int]:
    chain = set()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return chain


def _shell_export(name: str, value: str) -> str:
    return f"export {name}='" + value.replace("'", "'\"'\"'") + "'"


def _http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int:
    """Return the HTTP status of a GET, also for 4xx/5xx answers (they prove the server is up)."""
    return _http_status_of(urllib.request.Request(url, headers=headers or {}), timeout)


def _http_status_of(request: urllib.request.Request, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def _require(what: str, path: str | Path | None, install: str) -> str:
    if path is None or not Path(path).exists():
        raise EdgeStackError(f"Prerequisite missing: {what} was not found. Install it with: {install}")
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# The stack
# ----------------------------------------------------------------------------------------------------------------


class EdgeStack:
    """Start, check and stop the local edge stack whose state lives in ``state_dir``.

    :param state_dir: folder for every file the stack writes (keys, configs, data, logs, pid files).
    :param free_ports: pick free loopback ports instead of the defaults (10000, 2222, 5000) the first time the
        stack starts in ``state_dir``; later starts reuse the ports remembered in ``<state_dir>/stack.json``.
    :param services: the services this stack runs, a subset of ``SERVICES``: a site runs ``("blob", "ssh")``, a
        central host ``("registry",)``; the connections written to ``airflow.env`` are those of these services.
    """

    def __init__(self, state_dir: Path | str = DEFAULT_STATE_DIR, free_ports: bool = False,
                 services: tuple[str, ...] = SERVICES) -> None:  # fmt: skip
        unknown = set(services) - set(SERVICES)
        if unknown or not services:
            raise EdgeStackError(f"Services {sorted(unknown) or '(none)'} are not of this stack; choose from {SERVICES}")
        self.state_dir = Path(state_dir).resolve()
        self.free_ports = free_ports
        self.services = tuple(s for s in SERVICES if s in services)
        self.user = getpass.getuser()

    # -- paths -----------------------------------------------------------------------------------------------

    @property
    def stack_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "airflow.env"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def ssh_private_key_path(self) -> Path:
        return self.ssh_dir / "client_ed25519_key"

    @property
    def known_hosts_path(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def registry_dir(self) -> Path:
        return self.state_dir / "registry"

    def pid_file(self, service: str) -> Path:
        return self.state_dir / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.state_dir / f"{service}.log"

    # -- persisted state -------------------------------------------------------------------------------------

    def _load_state(self) -> dict:
        try:
            return json.loads(self.stack_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict) -> None:
        self.stack_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _ports(self) -> dict[str, int]:
        return {name: int(port) for name, port in self._load_state().get("ports", {}).items()}

    # -- process bookkeeping ---------------------------------------------------------------------------------

    def _pid(self, service: str) -> int | None:
        """The pid of ``service`` if a process started by this stack is alive, else None.

        A pid file alone is not enough: after a reboot or a crash the pid may belong to an unrelated process, so the
        process's command line must also mention this stack's state folder.
        """
        try:
            pid = int(self.pid_file(service).read_text().strip())
        except (OSError, ValueError):
            return None
        if str(self.state_dir) not in _read_cmdline(pid):
            return None
        return pid

    def _spawn(self, service: str, argv: list[str]) -> int:
        log = open(self.log_file(service), "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            # Own session: a Ctrl-C in the shell that ran `start` must not take the services down with it.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env={**os.environ, STACK_MARKER: str(self.state_dir)},
                start_new_session=True,
            )
        finally:
            log.close()
        self.pid_file(service).write_text(f"{proc.pid}\n")
        return proc.pid

    def _alive(self, pid: int) -> bool:
        """The service process ``pid`` still runs and is still ours (its command line names the state folder)."""
        _reap(pid)
        return str(self.state_dir) in _read_cmdline(pid)

    def _stop_service(self, service: str) -> None:
        pid = self._pid(service)
        if pid is not None:
            _terminate(pid, STOP_TIMEOUT_S, 2.0)
        self.pid_file(service).unlink(missing_ok=True)

    def _stack_processes(self) -> set[int]:
        """Every live process that belongs to this stack.

        That is each service, everything it forked (sshd's per-connection processes rename themselves, so their
        command line no longer names the state folder), and every process started through the edge VM's SSH
        sessions - also detached ones (``nohup ... &``) that no longer descend from sshd: they all carry
        ``EDGE_STACK_STATE_DIR=<state folder>`` in their environment, set by this script and by sshd's SetEnv.
        """
        marker = f"{STACK_MARKER}={self.state_dir}".encode()
        parents: dict[int, int] = {}
        marked: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                stat = (entry / "stat").read_text()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            if marker in environ.split(b"\0"):
                marked.add(pid)
        roots = {pid for service in self.services if (pid := self._pid(service)) is not None}
        found = roots | marked
        frontier = set(found)
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
            found |= frontier
        # Never the caller itself, nor whatever started it.
        found -= _ancestry(os.getpid())
        return {pid for pid in found if _running(pid)}

    # -- public API ------------------------------------------------------------------------------------------

    def start(self) -> StackInfo:
        """Start every service that is not already running, wait until all answer, and return how to reach them.

        Services that are already running (pid alive and its command line names this state folder) are left alone.

        :raises EdgeStackError: a prerequisite is missing, a port is taken, or a service did not become ready.
        """
        tools = self._check_prerequisites()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Holds keys, the registry password and (in Azurite's folder) the sample data: owner only.
        os.chmod(self.state_dir, 0o700)
        for sub in ("mlflow/artifacts", "reports", *(("azurite",) if "blob" in self.services else ())):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)

        state = self._load_state()
        ports = self._choose_ports(state.get("ports", {}))
        state["ports"] = ports
        self._save_state(state)

        if "ssh" in self.services:
            self._ensure_ssh_keys(tools)
            self._write_sshd_config(ports["ssh"], set_path=state.get("ssh_set_path", False))
        if "registry" in self.services:
            self._ensure_registry_credentials()
            self._write_registry_config(ports["registry"])

        builders: dict[str, Callable[[], list[str]]] = {
            "blob": lambda: [
                str(AZURITE_BIN), "--blobHost", HOST, "--blobPort", str(ports["blob"]), "--skipApiVersionCheck",
                "--loose", "--location", str(self.state_dir / "azurite"), "--silent",
                # Telemetry would phone home (unreachable offline) and keeps Azurite alive ~10 s after SIGTERM.
                "--disableTelemetry",
            ],
            "ssh": lambda: [
                tools["sshd"], "-D", "-f", str(self.ssh_dir / "sshd_config"), "-E", str(self.log_file("ssh")),
            ],
            "registry": lambda: [tools["docker-registry"], "serve", str(self.registry_dir / "config.yml")],
        }
        started = []
        for service in self.services:
            if self._pid(service) is None:
                if _port_in_use(ports[service]):
                    raise EdgeStackError(
                        f"Port {HOST}:{ports[service]} for {service} is already in use by a process this stack did "
                        f"not start (no live pid in {self.pid_file(service)}). Stop that process, or start with "
                        f"--free-ports in a fresh --state-dir."
                    )
                if service == "ssh" and os.geteuid() == 0:
                    # sshd refuses to start as root without its privilege-separation folder.
                    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
                self._spawn(service, builders[service]())
                started.append(service)

        for service in self.services:
            self._wait_ready(service, ports[service])
        if "blob" in self.services:
            self._create_container(ports["blob"])
        if "ssh" in started and not self._remote_python_has_venv():
            if state.get("ssh_set_path"):
                raise EdgeStackError(self._no_venv_message())
            # The sshd session PATH has no python3 with venv: hand the caller's PATH to SSH sessions and restart.
            state["ssh_set_path"] = True
            self._save_state(state)
            self._stop_service("ssh")
            self._write_sshd_config(ports["ssh"], set_path=True)
            self._spawn("ssh", builders["ssh"]())
            self._wait_ready("ssh", ports["ssh"])
            if not self._remote_python_has_venv():
                raise EdgeStackError(self._no_venv_message())

        info = self.info()
        _write_private(
            self.env_file, "".join(_shell_export(k, v) + "\n" for k, v in info.airflow_env.items())
        )
        return info

    def stop(self) -> None:
        """Stop the services this stack started, and every process they or the edge VM's SSH sessions spawned.

        Only processes that provably belong to this stack are signalled (see ``_stack_processes``); a pid file whose
        pid now belongs to an unrelated process is ignored.
        """
        targets = self._stack_processes()
        for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 2.0)):
            for pid in targets:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while targets and time.monotonic() < deadline:
                targets = {pid for pid in targets if _running(pid)}
                if targets:
                    time.sleep(0.1)
            if not targets:
                break
        if targets:
            raise EdgeStackError(
                f"Sent SIGKILL to the edge stack in {self.state_dir}, but pids {sorted(targets)} still run. "
                f"Check them with `ps -o pid,stat,cmd -p {','.join(map(str, sorted(targets)))}`."
            )
        for service in self.services:
            self.pid_file(service).unlink(missing_ok=True)

    def stop_service(self, service: str) -> None:
        """Stop one service of this stack and nothing else (e.g. the registry, to see how a push copes with it going
        away); the others keep running. ``start()`` starts it again on the same port, with the same data.

        :raises EdgeStackError: ``service`` is not one this stack runs.
        """
        if service not in self.services:
            raise EdgeStackError(f"Service {service!r} is not one of this stack's {self.services}; nothing stopped.")
        self._stop_service(service)

    def status(self) -> dict[str, dict]:
        """Per service: ``{"running": bool, "pid": int | None, "port": int | None}``."""
        ports = self._ports()
        result = {}
        for service in self.services:
            pid = self._pid(service)
            result[service] = {"running": pid is not None, "pid": pid, "port": ports.get(service)}
        return result

    def info(self) -> StackInfo:
        """How to reach the stack, from the files in the state folder (does not check that it runs).

        Fields and connections of services this stack does not run are empty / absent.
        """
        ports = self._ports()
        if not set(self.services) <= set(ports):
            raise EdgeStackError(
                f"No stack has been started in {self.state_dir} ({self.stack_file} lacks ports). "
                f"Run: python scripts/edge_stack.py start --state-dir {self.state_dir}"
            )
        airflow_env: dict[str, str] = {}
        blob_endpoint = blob_connection_string = host_key = registry_host = password = ""
        if "blob" in self.services:
            blob_endpoint = f"http://{HOST}:{ports['blob']}/{AZURITE_ACCOUNT}"
            blob_connection_string = (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={blob_endpoint};"
            )
            airflow_env["AIRFLOW_CONN_EDGE_BLOB"] = json.dumps(
                {"conn_type": "wasb", "extra": {"connection_string": blob_connection_string}}
            )
        if "ssh" in self.services:
            host_key = self._host_key_line()
            airflow_env["AIRFLOW_CONN_EDGE_VM"] = json.dumps(
                {
                    "conn_type": "ssh",
                    "host": HOST,
                    "port": ports["ssh"],
                    "login": self.user,
                    "extra": {
                        "private_key": self.ssh_private_key_path.read_text(),
                        "host_key": host_key,
                        "conn_timeout": 10,
                    },
                }
            )
        if "registry" in self.services:
            registry_host = f"{HOST}:{ports['registry']}"
            password = (self.registry_dir / "password").read_text().strip()
            airflow_env["AIRFLOW_CONN_IMAGE_REGISTRY"] = json.dumps(
                {
                    "conn_type": "generic",
                    "host": registry_host,
                    "login": REGISTRY_USER,
                    "password": password,
                    "extra": {"tls_verify": False},
                }
            )
        airflow_env.update({
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}",
            "EDGE_MLFLOW_ARTIFACTS_DIR": str(self.state_dir / "mlflow" / "artifacts"),
            "EDGE_REPORTS_DIR": str(self.state_dir / "reports"),
        })  # fmt: skip
        return StackInfo(
            blob_connection_string=blob_connection_string,
            blob_endpoint=blob_endpoint,
            ssh_host=HOST,
            ssh_port=ports.get("ssh", 0),
            ssh_user=self.user,
            ssh_private_key_path=self.ssh_private_key_path,
            ssh_host_key=host_key,
            registry_host=registry_host,
            registry_user=REGISTRY_USER,
            registry_password=password,
            state_dir=self.state_dir,
            airflow_env=airflow_env,
        )

    def ssh_command(self, *remote: str) -> list[str]:
        """An ``ssh`` argv that logs into the edge VM with the stack's key and pinned host key."""
        ports = self._ports()
        return [
            "ssh", "-i", str(self.ssh_private_key_path), "-p", str(ports["ssh"]),
            "-o", f"UserKnownHostsFile={self.known_hosts_path}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
            f"{self.user}@{HOST}", *remote,
        ]

    # -- steps of start() ------------------------------------------------------------------------------------

    def _check_prerequisites(self) -> dict[str, str]:
        _require("Azurite (node_modules/.bin/azurite-blob)", AZURITE_BIN, f"cd {REPO_ROOT} && npm ci")
        _require("Node.js (node, needed by Azurite)", shutil.which("node"), "apt-get install nodejs")
        tools = {
            "sshd": _require(
                "OpenSSH server (sshd)", shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin"),
                "apt-get install openssh-server",
            ),
            "ssh-keygen": _require("ssh-keygen", shutil.which("ssh-keygen"), "apt-get install openssh-client"),
            "ssh": _require("ssh client", shutil.which("ssh"), "apt-get install openssh-client"),
            "docker-registry": _require(
                "CNCF distribution registry (docker-registry)", shutil.which("docker-registry"),
                "apt-get install docker-registry",
            ),
        }
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            tools["htpasswd"] = _require(
                "bcrypt hashing (python package bcrypt or htpasswd)", shutil.which("htpasswd"),
                "apt-get install apache2-utils (or pip install bcrypt)",
            )
        return tools

    def _choose_ports(self, remembered: dict) -> dict[str, int]:
        ports: dict[str, int] = {}
        for service in self.services:
            port = remembered.get(service)
            if port is not None:
                port = int(port)
                # A remembered free port may since have been taken by someone else; with --free-ports pick anew.
                if self.free_ports and self._pid(service) is None and _port_in_use(port):
                    port = None
            if port is None:
                port = _free_port() if self.free_ports else DEFAULT_PORTS[service]
            ports[service] = port
        return ports

    def _ensure_ssh_keys(self, tools: dict[str, str]) -> None:
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.ssh_dir, 0o700)
        for name, comment in (("host_ed25519_key", "edge-vm-host"), ("client_ed25519_key", "edge-airflow")):
            key = self.ssh_dir / name
            if not key.exists():
                subprocess.run(
                    [tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                    check=True, stdout=subprocess.DEVNULL,
                )
        client_pub = (self.ssh_dir / "client_ed25519_key.pub").read_text().strip()
        _write_private(self.ssh_dir / "authorized_keys", client_pub + "\n")

    def _host_key_line(self) -> str:
        """``"ssh-ed25519 AAAA..."``: key type and base64 data, the form SSHHook's ``host_key`` extra takes."""
        key_type, key_data = (self.ssh_dir / "host_ed25519_key.pub").read_text().split()[:2]
        return f"{key_type} {key_data}"

    def _write_sshd_config(self, port: int, set_path: bool) -> None:
        lines = [
            f"Port {port}",
            f"ListenAddress {HOST}",
            f"HostKey {self.ssh_dir / 'host_ed25519_key'}",
            f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}",
            f"PidFile {self.ssh_dir / 'sshd.pid'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            f"AllowUsers {self.user}",
            # StrictModes checks every folder above authorized_keys; pytest's state folders sit under the
            # world-writable /tmp, which it rejects. The key files themselves are 0600 in a 0700 folder.
            "StrictModes no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        session_env = {STACK_MARKER: str(self.state_dir)}
        if set_path:
            session_env["PATH"] = self._session_path()
        # One SetEnv line: sshd keeps only the first SetEnv directive it reads.
        lines.append("SetEnv " + " ".join(f'"{name}={value}"' for name, value in session_env.items()))
        (self.ssh_dir / "sshd_config").write_text("\n".join(lines) + "\n")
        self.known_hosts_path.write_text(f"[{HOST}]:{port} {self._host_key_line()}\n")

    @staticmethod
    def _session_path() -> str:
        # The caller's PATH minus any virtualenv: the edge VM gets a plain python3 on which it makes its own venv.
        venv = os.environ.get("VIRTUAL_ENV")
        skip = {str(Path(venv) / "bin")} if venv else set()
        if sys.prefix != sys.base_prefix:
            skip.add(str(Path(sys.prefix) / "bin"))
        parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in skip]
        return os.pathsep.join(dict.fromkeys(parts))

    def _remote_python_has_venv(self) -> bool:
        result = subprocess.run(
            self.ssh_command("python3", "-m", "venv", "--help"),
            capture_output=True, timeout=30, check=False,
        )
        return result.returncode == 0

    def _no_venv_message(self) -> str:
        return (
            f"Checked that an SSH session on the edge VM finds `python3 -m venv`; it does not, even with "
            f"SetEnv PATH={self._session_path()} in {self.ssh_dir / 'sshd_config'}. "
            f"Install it (apt-get install python3-venv) and run start again; sshd log: {self.log_file('ssh')}"
        )

    def _ensure_registry_credentials(self) -> None:
        path = self.registry_dir / "password"
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24) + "\n")
        password = path.read_text().strip()
        htpasswd = self.registry_dir / "htpasswd"
        if not htpasswd.exists():
            try:
                import bcrypt
            except ImportError:
                # -i reads the password from stdin, so it never shows in the process list.
                subprocess.run(
                    ["htpasswd", "-Bic", str(htpasswd), REGISTRY_USER],
                    input=password + "\n", text=True, check=True, capture_output=True,
                )
                os.chmod(htpasswd, 0o600)
            else:
                hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
                _write_private(htpasswd, f"{REGISTRY_USER}:{hashed}\n")

    def _write_registry_config(self, port: int) -> None:
        http_secret_file = self.registry_dir / "http_secret"
        if not http_secret_file.exists():
            _write_private(http_secret_file, secrets.token_hex(16) + "\n")
        (self.registry_dir / "data").mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "info", "fields": {"service": "edge-registry"}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.registry_dir / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"{HOST}:{port}", "secret": http_secret_file.read_text().strip()},
            "auth": {"htpasswd": {"realm": "edge-registry", "path": str(self.registry_dir / "htpasswd")}},
        }
        # JSON is valid YAML, and keeps this script free of a YAML dependency.
        _write_private(self.registry_dir / "config.yml", json.dumps(config, indent=2) + "\n")

    def _wait_ready(self, service: str, port: int) -> None:
        probe = {"blob": self._blob_ready, "ssh": self._ssh_ready, "registry": self._registry_ready}[service]
        pid = self._pid(service)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if pid is None or not self._alive(pid):
                raise EdgeStackError(
                    f"{service} exited while starting (checked its process on {HOST}:{port}). "
                    f"See its log {self.log_file(service)}; last lines:\n{_tail(self.log_file(service))}"
                )
            try:
                if probe(port):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise EdgeStackError(
            f"{service} did not answer on {HOST}:{port} within {READY_TIMEOUT_S:.0f} s (pid {pid} is alive). "
            f"See its log {self.log_file(service)}; last lines:\n{_tail(self.log_file(service))}"
        )

    @staticmethod
    def _blob_ready(port: int) -> bool:
        # Any HTTP answer (Azurite returns 400/403 for an unsigned request) means the server is up.
        return _http_status(f"http://{HOST}:{port}/{AZURITE_ACCOUNT}?comp=list") > 0

    @staticmethod
    def _registry_ready(port: int) -> bool:
        return _http_status(f"http://{HOST}:{port}/v2/") == 401

    @staticmethod
    def _ssh_ready(port: int) -> bool:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            return sock.recv(64).startswith(b"SSH-2.0-")

    def _create_container(self, port: int, attempts: int = 10) -> None:
        """Create the blob container (Shared Key signed REST call: keeps this script free of the Azure SDK).

        Azurite can answer 404 for a moment after its port opens, while it loads its metadata: retried briefly.
        """
        for _ in range(attempts):
            status = self._put_container(port)
            if status in (201, 409):  # 409: the container already exists.
                return
            time.sleep(1.0)
        raise EdgeStackError(
            f"Creating blob container {BLOB_CONTAINER!r} on {HOST}:{port} answered HTTP {status} "
            f"(expected 201 or 409) {attempts} times in a row. See {self.log_file('blob')} and restart the stack."
        )

    def _put_container(self, port: int) -> int:
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        version = "2021-12-02"
        # Path-style emulator URLs repeat the account name: /<account>/<account>/<container>.
        content_type = "application/octet-stream"
        # VERB, Content-Encoding, -Language, -Length ("" for 0), -MD5, -Type, Date, If-* (4), Range; then x-ms-*.
        string_to_sign = "\n".join(["PUT", "", "", "", "", content_type, "", "", "", "", "", ""]) + "\n" + (
            f"x-ms-date:{date}\nx-ms-version:{version}\n"
            f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{BLOB_CONTAINER}\nrestype:container"
        )
        signature = base64.b64encode(
            hmac.new(base64.b64decode(AZURITE_KEY), string_to_sign.encode(), hashlib.sha256).digest()
        ).decode()
        request = urllib.request.Request(
            f"http://{HOST}:{port}/{AZURITE_ACCOUNT}/{BLOB_CONTAINER}?restype=container",
            method="PUT",
            data=b"",
            headers={
                "Content-Type": content_type,
                "x-ms-date": date,
                "x-ms-version": version,
                "Authorization": f"SharedKey {AZURITE_ACCOUNT}:{signature}",
            },
        )
        return _http_status_of(request)


def registry_basic_auth(user: str, password: str) -> dict[str, str]:
    """HTTP headers for basic auth against the local registry."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local edge stack: Azurite blob, sshd edge VM, image registry.")
    parser.add_argument("command", choices=("start", "stop", "status", "env"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument(
        "--free-ports", action="store_true", help="pick free ports on first start instead of 10000/2222/5000"
    )
    parser.add_argument(
        "--services", default=",".join(SERVICES),
        help="comma-separated services to run (default: %(default)s); e.g. blob,ssh for a site's own stack",
    )  # fmt: skip
    args = parser.parse_args(argv)

    try:
        stack = EdgeStack(args.state_dir, free_ports=args.free_ports, services=tuple(args.services.split(",")))
        if args.command == "start":
            info = stack.start()
            if info.blob_endpoint:
                print(f"blob      {info.blob_endpoint} (container {BLOB_CONTAINER})")
            if info.ssh_host_key:
                print(f"edge VM   ssh {info.ssh_user}@{info.ssh_host} -p {info.ssh_port} -i {info.ssh_private_key_path}")
            if info.registry_host:
                password_file = stack.registry_dir / "password"
                print(f"registry  {info.registry_host} (user {info.registry_user}, password in {password_file})")
            print(f"Airflow connections and settings: source {stack.env_file}")
            return 0
        if args.command == "stop":
            stack.stop()
            print(f"edge stack in {stack.state_dir} stopped")
            return 0
        if args.command == "status":
            status = stack.status()
            for service, entry in status.items():
                state = "running" if entry["running"] else "stopped"
                print(f"{service:<9} {state:<8} port {entry['port'] or '-'}  pid {entry['pid'] or '-'}")
            return 0 if all(entry["running"] for entry in status.values()) else EXIT_NOT_RUNNING
        # env
        if not stack.env_file.exists():
            raise EdgeStackError(
                f"{stack.env_file} does not exist: the stack was never started in {stack.state_dir}. "
                f"Run: python scripts/edge_stack.py start --state-dir {stack.state_dir}"
            )
        sys.stdout.write(stack.env_file.read_text())
        return 0
    except EdgeStackError as exc:
        print(f"edge_stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
