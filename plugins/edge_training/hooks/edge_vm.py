"""SSH and SFTP to the edge VM, with a pinned host key and errors that say what to fix.

``EdgeVMHook`` is the provider's ``SSHHook`` with four changes that matter for a VM that trains next to
regulated data:

* it refuses a connection that does not pin the VM's host key (``host_key`` extra), pins a malformed one, or
  turns host key checking off, because the VM receives code and credentials;
* the pinned key is the only key it trusts: no system or user ``known_hosts``, no SSH agent, no key files found
  in ``~/.ssh``, no ``~/.ssh/config`` (``ProxyCommand``, ``IdentityFile``) take part in the connection;
* paramiko and socket failures become ``EdgeVMHostKeyMismatchError``, ``EdgeVMAuthError`` or
  ``EdgeVMUnreachableError``, so the retry policy can fail fast on the first two and retry the third;
* ``run`` neither logs command output (it may contain data) nor raises on a non-zero exit status.

Secrets for the remote side go through ``run(..., input=...)`` or ``put_bytes``: the command line is logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import selectors
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import paramiko
from airflow.providers.ssh.hooks.ssh import SSHHook
from paramiko.config import SSH_PORT

from edge_training.exceptions import (
    EdgeTrainingError,
    EdgeVMAuthError,
    EdgeVMCommandTimeoutError,
    EdgeVMConfigError,
    EdgeVMHostKeyMismatchError,
    EdgeVMUnreachableError,
)


@dataclass(frozen=True)
class RemoteResult:
    """What a command on the edge VM returned."""

    exit_status: int
    stdout: str
    stderr: str


def key_fingerprint(key: paramiko.PKey) -> str:
    """Return the OpenSSH-style fingerprint (``SHA256:...``) of a public key, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


HOST_KEY_FORM = (
    "one line '<key type> <base64 key data>', as `ssh-keyscan -p PORT HOST` prints it without the host name, "
    "e.g. 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...'"
)


def parse_host_key(line: str) -> paramiko.PKey:
    """
    Parse a pinned host key line (``<key type> <base64 key data> [comment]``) into a public key.

    Stricter than ``SSHHook``: the key type must be given and supported, the data must be base64 that encodes
    exactly one key of that type. The message of the ``ValueError`` never repeats the value (a private key pasted
    into the wrong field must not reach a log).

    :param line: the ``host_key`` extra of the connection.
    :raises ValueError: the line is not of that form; the message says what is wrong with it.
    """
    parts = line.split()
    types = SSHHook._host_key_mappings
    if len(parts) >= 3 and parts[0] not in types and parts[1] in types:
        raise ValueError("it starts with a host name; keep only the key type and the key data")
    if len(parts) < 2:
        raise ValueError(
            f"it has {len(parts)} field(s), not a key type followed by key data (bare base64 lacks the key type)"
        )
    key_type, data = parts[:2]
    constructor = types.get(key_type)
    if constructor is None:
        raise ValueError(f"its key type is not one of {', '.join(sorted(types))}")
    try:
        blob = base64.b64decode(data, validate=True)
        key = constructor(data=blob)
    except (binascii.Error, ValueError, paramiko.SSHException) as err:
        raise ValueError(f"its key data is not a base64 {key_type} public key ({type(err).__name__})") from None
    if key.asbytes() != blob or (key_type != "ssh-ecdsa" and key.get_name() != key_type):
        raise ValueError(f"its key data is truncated or is not a {key_type} public key")
    return key


class _PinnedKeyOnly(paramiko.MissingHostKeyPolicy):
    """Refuse any host key but the pinned one, reporting it as a mismatch (not as an unknown host)."""

    def __init__(self, pinned: paramiko.PKey) -> None:
        self.pinned = pinned

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        # Reached when the server offers a key of another type than the pin: that is a different key, too.
        raise paramiko.BadHostKeyException(hostname, key, self.pinned)


def _sftp_path(remote_path: str) -> str:
    # SFTP does not expand "~"; relative paths resolve against the login directory, which is what "~" means.
    if remote_path == "~":
        return "."
    if remote_path.startswith("~/"):
        return remote_path[2:]
    return remote_path


class EdgeVMHook(SSHHook):
    """
    Run commands and copy files on the edge VM over SSH, verifying its pinned host key.

    The Airflow connection (type ``ssh``) needs host, port, login, a private key (``private_key`` or
    ``key_file`` extra) and the VM's public host key in the ``host_key`` extra, as one line of
    ``ssh-keyscan -p PORT HOST`` without the host name, e.g. ``ssh-ed25519 AAAAC3Nz...``.

    :param ssh_conn_id: Airflow connection id of the edge VM.
    :param cmd_timeout: default seconds a command may run before ``run`` gives up on it.
    :param conn_timeout: seconds to wait for the TCP connection and the SSH banner (connection extra
        ``conn_timeout`` is used when not given).
    :param connect_attempts: how many times to try connecting when the VM is unreachable; host key and
        authentication failures are never retried here.
    :param connect_retry_wait: seconds between connection attempts.
    """

    default_conn_name = "edge_vm"
    hook_name = "Edge VM (SSH)"

    def __init__(
        self,
        ssh_conn_id: str = default_conn_name,
        cmd_timeout: float = 60,
        conn_timeout: int | None = None,
        connect_attempts: int = 3,
        connect_retry_wait: float = 2.0,
    ) -> None:
        # Checked before SSHHook parses it: SSHHook takes bare base64 for an RSA key and fails obscurely (or not at
        # all, for truncated data) on a malformed line, which would surface as a retried SSH error.
        extra = self.get_connection(ssh_conn_id).extra_dejson or {}
        pinned = None
        if extra.get("host_key") is not None:
            try:
                pinned = parse_host_key(str(extra["host_key"]))
            except ValueError as err:
                raise EdgeVMConfigError(
                    f"Connection {ssh_conn_id!r} for the edge VM has a malformed 'host_key' extra: {err}. Expected "
                    f"{HOST_KEY_FORM}; check the fingerprint against the VM's own "
                    "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` before trusting it."
                ) from None
        try:
            super().__init__(
                ssh_conn_id=ssh_conn_id,
                cmd_timeout=cmd_timeout,
                conn_timeout=conn_timeout,
                # Retried below, and only for network faults: a wrong key fails the same way every time.
                conn_retry_attempts=1,
            )
        except ValueError as err:
            # SSHHook refuses host_key together with no_host_key_check; say which connection and what to do.
            raise EdgeVMConfigError(
                f"Connection {ssh_conn_id!r} for the edge VM has an unusable host key setting: {err}. "
                "Remove 'no_host_key_check' and keep 'host_key' set to the VM's public host key line "
                "(e.g. 'ssh-ed25519 AAAA...', from `ssh-keyscan -p PORT HOST`)."
            ) from err
        if self.no_host_key_check or self.allow_host_key_change:
            raise EdgeVMConfigError(
                f"Connection {ssh_conn_id!r} for the edge VM turns host key checking off "
                f"(no_host_key_check={self.no_host_key_check}, allow_host_key_change={self.allow_host_key_change}). "
                "The edge VM receives training code and storage credentials, so its identity must be verified: "
                "remove those extras and set 'host_key' to the VM's public host key line."
            )
        if self.host_key is None:
            raise EdgeVMConfigError(
                f"Connection {ssh_conn_id!r} for the edge VM does not pin the VM's host key. "
                "Add the extra 'host_key' with the VM's public host key line, e.g. the output of "
                f"`ssh-keyscan -p {self.port} {self.remote_host}` without the host name "
                "('ssh-ed25519 AAAA...'); check it against the VM's own "
                "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` before trusting it."
            )
        self.host_key = pinned
        # SSHHook takes a ProxyCommand and an IdentityFile from ~/.ssh/config; only the connection counts here.
        self.host_proxy_cmd = None
        self.key_file = extra.get("key_file")
        self.connect_attempts = max(1, connect_attempts)
        self.connect_retry_wait = connect_retry_wait
        self._sftp: paramiko.SFTPClient | None = None

    # -- connection ---------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` of the edge VM, for messages."""
        return f"{self.remote_host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name the pinned key is recorded under, as OpenSSH writes it (``[host]:port`` off port 22)."""
        return self.remote_host if self.port == SSH_PORT else f"[{self.remote_host}]:{self.port}"

    def host_key_fingerprint(self) -> str:
        """Return the ``SHA256:...`` fingerprint of the pinned host key."""
        assert self.host_key is not None  # guaranteed by __init__
        return key_fingerprint(self.host_key)

    def presented_host_key_fingerprint(self) -> str:
        """Return the ``SHA256:...`` fingerprint of the host key the VM presented on the open connection.

        This is what lineage records: the key that was actually verified, read from the SSH transport, not the
        configuration. Connects if no connection is open.
        """
        transport = self.get_conn().get_transport()
        if transport is None:
            raise EdgeVMUnreachableError(f"The SSH connection to edge VM {self.address} closed before it was used.")
        return key_fingerprint(transport.get_remote_server_key())

    @contextmanager
    def _translated_errors(self, doing: str) -> Iterator[None]:
        """Turn paramiko and socket failures into the pipeline's edge VM errors."""
        # While connecting any OSError is the network (refused, unreachable, DNS); afterwards an OSError that is
        # not a socket fault is an SFTP status (no such file, permission denied) and must reach the caller as is.
        network_errors: tuple[type[BaseException], ...] = (
            (OSError,) if doing == "connecting" else (ConnectionError, TimeoutError, socket.gaierror)
        )
        try:
            yield
        except EdgeTrainingError:
            raise  # already says what happened (e.g. a command timeout, which is also a TimeoutError)
        except paramiko.BadHostKeyException as err:
            expected = key_fingerprint(err.expected_key)
            presented = key_fingerprint(err.key)
            advice = (
                "Do not connect until you know why: if the VM was rebuilt or its host keys were rotated, "
                "confirm the new fingerprint on the VM's console (`ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub`) and update the connection's 'host_key' extra; otherwise "
                "treat it as a possible interception and alert the network team. Entries in known_hosts files "
                "are not consulted: only the pinned key is trusted."
            )
            raise EdgeVMHostKeyMismatchError(
                f"Host key check failed while {doing} on edge VM {self.address} (connection "
                f"{self.ssh_conn_id!r}): expected {err.expected_key.get_name()} {expected}, the server presented "
                f"{err.key.get_name()} {presented}. {advice}"
            ) from err
        except paramiko.AuthenticationException as err:
            raise EdgeVMAuthError(
                f"Edge VM {self.address} refused the SSH credentials of connection {self.ssh_conn_id!r} for user "
                f"{self.username!r} while {doing} ({type(err).__name__}: {err}). Check that the connection's "
                "private key matches a line in that user's ~/.ssh/authorized_keys on the VM and that the login "
                "name is right."
            ) from err
        except (*network_errors, EOFError, paramiko.SSHException) as err:
            # OSError covers refused connections, timeouts, DNS failures and resets; SSHException covers a
            # peer that accepts TCP but never speaks SSH (banner timeout) or drops the session.
            cause = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            raise EdgeVMUnreachableError(
                f"Could not reach edge VM {self.address} over SSH (connection {self.ssh_conn_id!r}) while "
                f"{doing}: {cause}. Check that the VM is running, that sshd listens on port {self.port}, and that "
                "firewalls/DNS between the Airflow worker and the VM allow it; the task is retried."
            ) from err

    def get_conn(self) -> paramiko.SSHClient:
        """Connect (or reuse the open connection), translating failures into edge VM errors."""
        for attempt in range(1, self.connect_attempts + 1):
            try:
                with self._translated_errors("connecting"):
                    return self._connect()
            except EdgeVMUnreachableError as err:
                if attempt == self.connect_attempts:
                    raise
                self.log.warning(
                    "Edge VM %s not reachable (attempt %d of %d): %s; retrying in %.0f s",
                    self.address,
                    attempt,
                    self.connect_attempts,
                    err.__cause__,
                    self.connect_retry_wait,
                )
                time.sleep(self.connect_retry_wait)
        raise AssertionError("unreachable")  # the loop either returns or raises

    def _connect(self) -> paramiko.SSHClient:
        """Open (or reuse) the SSH connection, trusting the pinned host key and the connection's credentials only.

        Replaces ``SSHHook.get_conn``, which loads the system and user known_hosts (where another key for the VM
        would be trusted instead of the pin), and lets paramiko try the SSH agent and ``~/.ssh/id_*`` keys.
        """
        if self.client is not None:
            transport = self.client.get_transport()
            if transport is not None and transport.is_active():
                return self.client
        assert self.host_key is not None  # guaranteed by __init__
        client = paramiko.SSHClient()
        client.get_host_keys().add(self.known_hosts_name, self.host_key.get_name(), self.host_key)
        client.set_missing_host_key_policy(_PinnedKeyOnly(self.host_key))
        credentials: dict[str, object] = {"pkey": self.pkey, "key_filename": self.key_file}
        if self.password:
            credentials["password"] = self.password.strip()
        try:
            client.connect(
                hostname=self.remote_host,
                port=self.port,
                username=self.username,
                timeout=self.conn_timeout,
                banner_timeout=self.banner_timeout,
                auth_timeout=self.auth_timeout,
                compress=self.compress,
                disabled_algorithms=self.disabled_algorithms,
                sock=None,
                allow_agent=False,
                look_for_keys=False,
                **credentials,
            )
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        assert transport is not None  # connect() succeeded
        if self.keepalive_interval:
            transport.set_keepalive(self.keepalive_interval)
        if self.ciphers:
            transport.get_security_options().ciphers = self.ciphers
        self.client = client
        return client

    def close(self) -> None:
        """Close the SFTP session and the SSH connection (safe to call twice)."""
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> EdgeVMHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- commands -----------------------------------------------------------------------------------------

    def run(self, command: str, timeout: float | None = None, input: bytes | None = None) -> RemoteResult:
        """
        Run ``command`` through the login shell on the edge VM and return its exit status and output.

        A non-zero exit status is returned, not raised. Output is not logged (it may contain data).

        :param command: shell command line; it is logged, so pass secrets through ``input`` instead.
        :param timeout: seconds before the command is abandoned (``EdgeVMCommandTimeoutError``);
            defaults to the hook's ``cmd_timeout``.
        :param input: bytes written to the command's stdin, which is then closed.
        """
        limit = float(timeout if timeout is not None else (self.cmd_timeout or 60))
        self.log.info("Running on edge VM %s: %s", self.address, command)
        client = self.get_conn()
        with self._translated_errors("running a command"):
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("SSH session is closed")
            channel = transport.open_session(timeout=limit)
            try:
                return self._collect(channel, command, input, limit)
            finally:
                channel.close()

    def _collect(self, channel: paramiko.Channel, command: str, data: bytes | None, limit: float) -> RemoteResult:
        deadline = time.monotonic() + limit
        channel.settimeout(limit)
        channel.exec_command(command)
        try:
            if data:
                channel.sendall(data)
            channel.shutdown_write()
        except socket.timeout as err:
            raise self._timeout_error(command, limit) from err
        stdout, stderr = bytearray(), bytearray()
        with selectors.DefaultSelector() as selector:
            selector.register(channel, selectors.EVENT_READ)
            while True:
                while channel.recv_ready():
                    stdout += channel.recv(65536)
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                if channel.exit_status_ready() and channel.eof_received:
                    if not channel.recv_ready() and not channel.recv_stderr_ready():
                        break
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout_error(command, limit)
                selector.select(min(remaining, 1.0))
        return RemoteResult(
            exit_status=channel.recv_exit_status(),
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
        )

    def _timeout_error(self, command: str, limit: float) -> EdgeVMCommandTimeoutError:
        first_word = command.split(maxsplit=1)[0] if command.strip() else "(empty)"
        return EdgeVMCommandTimeoutError(
            f"Command {first_word!r}... on edge VM {self.address} did not finish within {limit:.0f} s; its channel "
            "was closed. Check the VM's load and the command itself, or pass a longer timeout."
        )

    # -- files (SFTP) -------------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self.get_conn()
        if self._sftp is None or self._sftp.get_channel() is None or self._sftp.get_channel().closed:
            with self._translated_errors("opening SFTP"):
                self._sftp = client.open_sftp()
        return self._sftp

    def _mkdirs(self, sftp: paramiko.SFTPClient, remote_dir: str) -> None:
        path = PurePosixPath(remote_dir)
        # Walk down from the top so every missing level is created, like `mkdir -p`.
        for depth in range(1, len(path.parts) + 1):
            part = str(PurePosixPath(*path.parts[:depth]))
            if part in ("/", "."):
                continue
            try:
                sftp.stat(part)
            except FileNotFoundError:
                sftp.mkdir(part, mode=0o700)

    def _parent(self, remote: str) -> str:
        return str(PurePosixPath(remote).parent)

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o600) -> None:
        """
        Write ``data`` to ``remote_path`` atomically, creating parent directories.

        The file gets ``mode`` before any byte is written, so secrets are never readable by others.
        """
        remote = _sftp_path(remote_path)
        sftp = self._sftp_client()
        with self._translated_errors(f"writing {remote_path}"):
            self._mkdirs(sftp, self._parent(remote))
            partial = f"{remote}.partial"
            with sftp.open(partial, "wb") as handle:
                sftp.chmod(partial, mode)
                handle.write(data)
            sftp.posix_rename(partial, remote)

    def put_file(self, local: Path, remote_path: str) -> None:
        """Copy the local file ``local`` to ``remote_path``, creating parent directories; keeps its permissions."""
        remote = _sftp_path(remote_path)
        sftp = self._sftp_client()
        with self._translated_errors(f"uploading {local.name}"):
            self._mkdirs(sftp, self._parent(remote))
            sftp.put(str(local), remote)
            sftp.chmod(remote, stat.S_IMODE(Path(local).stat().st_mode))

    def get_file(self, remote_path: str, local: Path) -> None:
        """Copy ``remote_path`` from the edge VM to the local file ``local``, creating its parent directories."""
        sftp = self._sftp_client()
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._translated_errors(f"downloading {remote_path}"):
                sftp.get(_sftp_path(remote_path), str(local))
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{remote_path} does not exist on edge VM {self.address}; check the path (relative paths and '~' "
                "resolve against the SSH user's home directory)."
            ) from err

    def get_dir(self, remote_dir: str, local_dir: Path) -> None:
        """Copy the directory tree ``remote_dir`` from the edge VM into ``local_dir`` (created if missing)."""
        sftp = self._sftp_client()
        try:
            with self._translated_errors(f"downloading {remote_dir}"):
                self._get_tree(sftp, _sftp_path(remote_dir), Path(local_dir))
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{remote_dir} (or a file in it) does not exist on edge VM {self.address}; check the path."
            ) from err

    def _get_tree(self, sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
        local.mkdir(parents=True, exist_ok=True)
        for entry in sftp.listdir_attr(remote):
            source = f"{remote.rstrip('/')}/{entry.filename}"
            if stat.S_ISDIR(entry.st_mode or 0):
                self._get_tree(sftp, source, local / entry.filename)
            elif stat.S_ISREG(entry.st_mode or 0):
                sftp.get(source, str(local / entry.filename))
