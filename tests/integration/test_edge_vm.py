"""EdgeVMHook and the edge VM health check against the real local stack (sshd as the edge VM, Azurite as storage)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from edge_training.exceptions import (
    EdgeVMAuthError,
    EdgeVMCommandTimeoutError,
    EdgeVMConfigError,
    EdgeVMHealthError,
    EdgeVMHostKeyMismatchError,
    EdgeVMUnreachableError,
)
from edge_training.health import HealthThresholds
from edge_training.retry import EDGE_RETRY_POLICY

pytestmark = pytest.mark.integration

# Loose limits for what a shared test machine can always offer; each test tightens the one it is about.
ROOMY = HealthThresholds(
    min_free_disk_gb=0.01,
    min_free_memory_gb=0.01,
    max_load_per_cpu=1000,
    min_python=(3, 9),
    max_clock_skew_s=60,
    require_gpu=False,
    require_docker=False,
)


def _hook(**kwargs):
    from edge_training.hooks.edge_vm import EdgeVMHook

    return EdgeVMHook(**kwargs)


def _health_check(thresholds: HealthThresholds = ROOMY, **kwargs):
    from edge_training.operators.health import EdgeVMHealthCheckOperator

    return EdgeVMHealthCheckOperator(task_id="check_edge_vm", thresholds=thresholds, **kwargs)


def _vm_conn(edge_env) -> dict:
    return json.loads(edge_env.airflow_env["AIRFLOW_CONN_EDGE_VM"])


def _set_vm_conn(monkeypatch: pytest.MonkeyPatch, conn: dict) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_EDGE_VM", json.dumps(conn))


def _new_key(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _fingerprint(public_key_line: str, tmp_path: Path) -> str:
    pub = tmp_path / f"{uuid.uuid4().hex}.pub"
    pub.write_text(public_key_line + "\n")
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def remote_dir(edge_env):
    """A fresh folder under the SSH user's home on the edge VM, removed afterwards."""
    path = f"edge-vm-test-{uuid.uuid4().hex[:12]}"
    yield path
    with _hook() as hook:
        hook.run(f"rm -rf ~/{path}")


# -- health check -----------------------------------------------------------------------------------------------


def test_healthy_vm_passes_and_the_vm_itself_reaches_azurite(edge_env, tmp_path, remote_dir):
    result = _health_check(work_dir=f"~/{remote_dir}/work").execute(context={})

    assert result["verdict"]["ok"] is True, result["verdict"]["failures"]
    assert result["blob_endpoint"] == edge_env.blob_endpoint
    assert result["blob_endpoint_reachable"] is True
    # Azurite answers the bare account URL with an HTTP error status: any status proves the route works.
    assert isinstance(result["blob_endpoint_status"], int)
    assert result["host_key_fingerprint"] == _fingerprint(edge_env.ssh_host_key, tmp_path)
    assert result["work_dir"].endswith(f"/{remote_dir}/work") and result["work_dir_writable"] is True
    statuses = {check["name"]: check["status"] for check in result["verdict"]["checks"]}
    assert statuses["clock_skew"] == "ok" and statuses["blob_endpoint"] == "ok"
    # XCom carries the report, never the storage credentials.
    assert "AccountKey" not in json.dumps(result) and "Eby8vdM02x" not in json.dumps(result)


def test_health_check_logs_one_line_per_check(edge_env, remote_dir, capsys):
    _health_check(work_dir=f"~/{remote_dir}").execute(context={})

    # Task logs go through Airflow's structlog setup, which writes to stdout here.
    logged = re.findall(r"\[(OK|WARNING|FAILED)\] (\w+):", capsys.readouterr().out)
    assert [name for _, name in logged] == [
        "python", "work_dir", "disk", "memory", "load", "clock_skew", "gpu", "docker", "blob_endpoint",
    ]
    assert {status for status, _ in logged} <= {"OK", "WARNING"}


def test_threshold_above_what_the_vm_has_fails_naming_the_check(edge_env, remote_dir):
    demanding = replace(ROOMY, min_free_memory_gb=99999, require_gpu=True)

    with pytest.raises(EdgeVMHealthError) as err:
        _health_check(demanding, work_dir=f"~/{remote_dir}").execute(context={})

    message = str(err.value)
    assert "2 check(s) failed" in message
    assert "memory:" in message and "minimum 99999 GB" in message and "EDGE_VM_MIN_FREE_MEMORY_GB" in message
    assert "gpu:" in message and "EDGE_VM_REQUIRE_GPU" in message


def test_blob_endpoint_unreachable_from_the_vm_fails_naming_it(edge_env, monkeypatch, remote_dir):
    dead = f"http://127.0.0.1:{_closed_port()}/devstoreaccount1"
    monkeypatch.setenv(
        "AIRFLOW_CONN_EDGE_BLOB",
        json.dumps(
            {"conn_type": "wasb", "extra": {"connection_string": f"AccountName=devstoreaccount1;BlobEndpoint={dead}"}}
        ),
    )

    with pytest.raises(EdgeVMHealthError) as err:
        _health_check(work_dir=f"~/{remote_dir}").execute(context={})

    assert "1 check(s) failed" in str(err.value)
    assert f"blob_endpoint: the edge VM cannot reach the blob endpoint {dead}" in str(err.value)
    assert "Connection refused" in str(err.value)


def test_blob_endpoint_from_the_connection_host_when_there_is_no_connection_string(edge_env, monkeypatch, remote_dir):
    monkeypatch.setenv(
        "AIRFLOW_CONN_EDGE_BLOB",
        json.dumps(
            {"conn_type": "wasb", "host": f"{edge_env.blob_endpoint}/?sv=2024&sig=secret", "login": "devstoreaccount1"}
        ),
    )

    result = _health_check(work_dir=f"~/{remote_dir}").execute(context={})

    assert result["blob_endpoint"] == edge_env.blob_endpoint
    assert result["blob_endpoint_reachable"] is True


# -- connection failures ----------------------------------------------------------------------------------------


def test_closed_port_is_unreachable(edge_env, monkeypatch):
    port = _closed_port()
    _set_vm_conn(monkeypatch, {**_vm_conn(edge_env), "port": port})

    with pytest.raises(EdgeVMUnreachableError) as err:
        _hook(connect_attempts=2, connect_retry_wait=0.1).run("true")

    assert f"127.0.0.1:{port}" in str(err.value)
    assert "Unable to connect" in str(err.value) and "sshd listens" in str(err.value)


def test_unknown_host_name_is_unreachable(edge_env, monkeypatch):
    _set_vm_conn(monkeypatch, {**_vm_conn(edge_env), "host": "edge-vm.invalid"})

    with pytest.raises(EdgeVMUnreachableError) as err:
        _hook(connect_attempts=1).run("true")

    assert "edge-vm.invalid:" in str(err.value) and "gaierror" in str(err.value)


def test_peer_that_never_speaks_ssh_is_unreachable(edge_env, monkeypatch):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        conn = {**_vm_conn(edge_env), "port": silent.getsockname()[1]}
        conn["extra"] = {**conn["extra"], "conn_timeout": 1}
        _set_vm_conn(monkeypatch, conn)
        hook = _hook(connect_attempts=1)
        hook.banner_timeout = 1

        # paramiko reports this as "Error reading SSH protocol banner" or, racing its reader thread, as
        # "No existing session": either way an SSHException that must read as an unreachable VM.
        with pytest.raises(EdgeVMUnreachableError, match=f"127.0.0.1:{conn['port']} over SSH.*SSHException"):
            hook.run("true")


def test_host_key_mismatch_names_both_fingerprints(edge_env, monkeypatch, tmp_path):
    impostor = _new_key(tmp_path, "impostor")
    pinned = " ".join(impostor.with_suffix(".pub").read_text().split()[:2])
    conn = _vm_conn(edge_env)
    conn["extra"] = {**conn["extra"], "host_key": pinned}
    _set_vm_conn(monkeypatch, conn)

    with pytest.raises(EdgeVMHostKeyMismatchError) as err:
        _hook().run("true")

    message = str(err.value)
    assert f"expected ssh-ed25519 {_fingerprint(pinned, tmp_path)}" in message
    assert f"presented ssh-ed25519 {_fingerprint(edge_env.ssh_host_key, tmp_path)}" in message
    assert "update the connection's 'host_key' extra" in message


def test_wrong_client_key_is_an_auth_error(edge_env, monkeypatch, tmp_path):
    stranger = _new_key(tmp_path, "stranger")
    conn = _vm_conn(edge_env)
    conn["extra"] = {**conn["extra"], "private_key": stranger.read_text()}
    _set_vm_conn(monkeypatch, conn)

    with pytest.raises(EdgeVMAuthError) as err:
        _hook().run("true")

    assert f"{edge_env.ssh_host}:{edge_env.ssh_port}" in str(err.value)
    assert "authorized_keys" in str(err.value)
    assert "BEGIN OPENSSH" not in str(err.value)


@pytest.mark.parametrize(
    ("extra_change", "expected"),
    [
        ({"host_key": None}, "does not pin the VM's host key"),
        ({"host_key": None, "no_host_key_check": "true"}, "turns host key checking off"),
        ({"no_host_key_check": "true"}, "unusable host key setting"),
        ({"host_key": None, "allow_host_key_change": "true"}, "turns host key checking off"),
    ],
)
def test_connection_without_a_pinned_host_key_is_refused(edge_env, monkeypatch, extra_change, expected):
    conn = _vm_conn(edge_env)
    extra = {**conn["extra"], **extra_change}
    conn["extra"] = {k: v for k, v in extra.items() if v is not None}
    _set_vm_conn(monkeypatch, conn)

    with pytest.raises(EdgeVMConfigError, match=expected) as err:
        _hook()

    assert "'host_key'" in str(err.value)


# -- commands and files -----------------------------------------------------------------------------------------


def test_run_returns_exit_status_output_and_takes_stdin(edge_env):
    with _hook() as hook:
        echoed = hook.run("cat; echo oops >&2; exit 3", input=b"sent on stdin\n")
        assert hook.run("printf '%s' \"$HOME\"").stdout.startswith("/")

    assert echoed.exit_status == 3
    assert echoed.stdout == "sent on stdin\n"
    assert echoed.stderr == "oops\n"


def test_run_gives_up_after_its_timeout(edge_env):
    with _hook() as hook:
        with pytest.raises(EdgeVMCommandTimeoutError, match="did not finish within 1 s"):
            hook.run("sleep 30", timeout=1)
        # The connection stays usable after an abandoned command.
        assert hook.run("echo still here").stdout == "still here\n"


def test_sftp_round_trip(edge_env, tmp_path, remote_dir):
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("alpha\n")
    (local / "sub" / "b.bin").write_bytes(bytes(range(256)))

    with _hook() as hook:
        hook.put_bytes(b"token=123\n", f"~/{remote_dir}/secrets/env")
        hook.put_file(local / "a.txt", f"~/{remote_dir}/out/a.txt")
        hook.put_file(local / "sub" / "b.bin", f"~/{remote_dir}/out/sub/b.bin")
        modes = hook.run(f"stat -c '%a %n' ~/{remote_dir}/secrets/env").stdout
        listing = hook.run(f"cd ~/{remote_dir} && find out -type f | sort").stdout

        hook.get_file(f"~/{remote_dir}/secrets/env", tmp_path / "back" / "env")
        hook.get_dir(f"~/{remote_dir}/out", tmp_path / "back" / "out")
        with pytest.raises(FileNotFoundError, match="does not exist on edge VM"):
            hook.get_file(f"~/{remote_dir}/missing", tmp_path / "missing")

    assert modes.startswith("600 ")
    assert listing.split() == ["out/a.txt", "out/sub/b.bin"]
    assert (tmp_path / "back" / "env").read_bytes() == b"token=123\n"
    assert (tmp_path / "back" / "out" / "a.txt").read_text() == "alpha\n"
    assert (tmp_path / "back" / "out" / "sub" / "b.bin").read_bytes() == bytes(range(256))


def test_host_key_fingerprint_is_that_of_the_pinned_key(edge_env, tmp_path):
    assert _hook().host_key_fingerprint() == _fingerprint(edge_env.ssh_host_key, tmp_path)


# -- only the pinned host key is trusted ------------------------------------------------------------------------


def _fails_at_once(error: BaseException) -> bool:
    from airflow.sdk import RetryAction

    return EDGE_RETRY_POLICY.evaluate(error, 1, 4, {}).action == RetryAction.FAIL


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"sshd did not listen on {port}: {log.read_text()[-2000:]}")


@pytest.fixture
def rekeyed_vm(edge_stack, tmp_path):
    """The edge VM after its host key was regenerated: its sshd config, user and authorized key, a new host key.

    Served by a second sshd on a port of its own, so the stack's sshd (and its pinned key) keeps serving the other
    tests. Yields ``(port, new host key line)``.
    """
    key = _new_key(tmp_path, "regenerated_host_ed25519_key")
    port = _closed_port()
    kept = [
        line
        for line in (edge_stack.state_dir / "ssh" / "sshd_config").read_text().splitlines()
        if line.split(maxsplit=1)[:1] not in (["Port"], ["HostKey"], ["PidFile"])
    ]
    config = tmp_path / "sshd_config"
    config.write_text("\n".join([f"Port {port}", f"HostKey {key}", f"PidFile {tmp_path / 'sshd.pid'}", *kept]) + "\n")
    log = tmp_path / "sshd.log"
    sshd = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(log)])
    try:
        _wait_for_port(port, sshd, log)
        yield port, " ".join(key.with_suffix(".pub").read_text().split()[:2])
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


@pytest.fixture
def worker_home(tmp_path, monkeypatch):
    """An empty home directory for the Airflow worker (``~/.ssh`` of its own), set as ``HOME`` for the test."""
    home = tmp_path / "worker-home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_a_known_hosts_entry_for_a_regenerated_host_key_is_not_trusted(edge_env, monkeypatch, tmp_path,
                                                                        rekeyed_vm, worker_home):  # fmt: skip
    from airflow.providers.ssh.hooks.ssh import SSHHook

    port, new_key = rekeyed_vm
    known_hosts = worker_home / ".ssh" / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {new_key}\n")
    # The pin stays the VM's old key: only the address changed to where the regenerated key is served.
    _set_vm_conn(monkeypatch, {**_vm_conn(edge_env), "port": port})
    # The provider's hook trusts the known_hosts entry over the pin: that is the hole being closed.
    baseline = SSHHook(ssh_conn_id="edge_vm")
    assert baseline.get_conn().get_transport().is_active()
    baseline.get_conn().close()

    with pytest.raises(EdgeVMHostKeyMismatchError) as err:
        _health_check().execute(context={})

    message = str(err.value)
    assert f"127.0.0.1:{port}" in message
    assert f"expected ssh-ed25519 {_fingerprint(edge_env.ssh_host_key, tmp_path)}" in message
    assert f"presented ssh-ed25519 {_fingerprint(new_key, tmp_path)}" in message
    assert _fails_at_once(err.value), "a host key mismatch must fail the task at try 1, not be retried"
    assert known_hosts.read_text() == f"[127.0.0.1]:{port} {new_key}\n", "nothing is written to known_hosts"


def test_the_regenerated_key_is_trusted_once_it_is_pinned(edge_env, monkeypatch, tmp_path, rekeyed_vm):
    port, new_key = rekeyed_vm
    conn = _vm_conn(edge_env)
    _set_vm_conn(monkeypatch, {**conn, "port": port, "extra": {**conn["extra"], "host_key": new_key}})

    with _hook() as hook:
        assert hook.run("echo ok").stdout == "ok\n"
        assert hook.presented_host_key_fingerprint() == _fingerprint(new_key, tmp_path)


def test_ssh_config_of_the_worker_takes_no_part(edge_env, worker_home, tmp_path):
    marker = tmp_path / "proxy-command-ran"
    (worker_home / ".ssh" / "config").write_text(
        "Host 127.0.0.1\n"
        f"  ProxyCommand sh -c 'touch {marker}; exit 1'\n"
        f"  IdentityFile {tmp_path / 'no-such-key'}\n"
    )

    with _hook() as hook:
        assert hook.run("echo ok").stdout == "ok\n"

    assert not marker.exists(), "the ProxyCommand of ~/.ssh/config was run"


def test_agent_and_home_keys_do_not_stand_in_for_the_connection_key(edge_env, monkeypatch, worker_home, tmp_path):
    from airflow.providers.ssh.hooks.ssh import SSHHook

    # The key the VM accepts sits in ~/.ssh and in a running agent; the connection holds a key the VM does not know.
    shutil.copy(edge_env.ssh_private_key_path, worker_home / ".ssh" / "id_ed25519")
    os.chmod(worker_home / ".ssh" / "id_ed25519", 0o600)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(edge_env.ssh_private_key_path)], env=env, check=True,
                       capture_output=True)  # fmt: skip
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        conn = _vm_conn(edge_env)
        stranger = _new_key(tmp_path, "stranger")
        _set_vm_conn(monkeypatch, {**conn, "extra": {**conn["extra"], "private_key": stranger.read_text()}})
        # The provider's hook logs in with the agent's or ~/.ssh's key instead: what must not happen here.
        baseline = SSHHook(ssh_conn_id="edge_vm")
        assert baseline.get_conn().get_transport().is_authenticated()
        baseline.get_conn().close()

        with pytest.raises(EdgeVMAuthError) as err:
            _hook().run("true")
    finally:
        agent.terminate()
        agent.wait(timeout=10)

    assert _fails_at_once(err.value)


def test_presented_host_key_is_the_one_the_vm_holds(edge_env, tmp_path, remote_dir):
    served = (edge_env.state_dir / "ssh" / "host_ed25519_key.pub").read_text().strip()

    result = _health_check(work_dir=f"~/{remote_dir}").execute(context={})
    with _hook() as hook:
        presented = hook.presented_host_key_fingerprint()

    assert presented == result["host_key_fingerprint"] == _fingerprint(served, tmp_path)


@pytest.mark.parametrize(
    ("pin", "problem"),
    [
        ("bare-base64", "not a key type followed by key data"),
        ("garbage", "its key type is not one of"),
        ("ssh-ed25519 not*base64", "not a base64 ssh-ed25519 public key"),
        ("ssh-rsa of-the-ed25519-key", "not a base64 ssh-rsa public key"),
        ("truncated", "truncated"),
        ("with-host-name", "starts with a host name"),
        ("private-key", "its key type is not one of"),
    ],
)
def test_malformed_pin_is_a_configuration_error_at_once(edge_env, monkeypatch, tmp_path, pin, problem):
    key_type, data = edge_env.ssh_host_key.split()
    private = edge_env.ssh_private_key_path.read_text()
    value = {
        "bare-base64": data,
        "garbage": "not a host key",
        "ssh-ed25519 not*base64": "ssh-ed25519 not*base64",
        "ssh-rsa of-the-ed25519-key": f"ssh-rsa {data}",
        "truncated": f"{key_type} {data[:-8]}",
        "with-host-name": f"[127.0.0.1]:{edge_env.ssh_port} {key_type} {data}",
        "private-key": private,
    }[pin]
    conn = _vm_conn(edge_env)
    _set_vm_conn(monkeypatch, {**conn, "extra": {**conn["extra"], "host_key": value}})

    with pytest.raises(EdgeVMConfigError) as err:
        _health_check().execute(context={})

    message = str(err.value)
    assert "Connection 'edge_vm'" in message and "malformed 'host_key' extra" in message
    assert problem in message
    assert "'<key type> <base64 key data>'" in message and "ssh-keyscan" in message
    assert value not in message and private.splitlines()[1] not in message, "the pinned value is not echoed"
    assert _fails_at_once(err.value)
