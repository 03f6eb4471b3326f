"""EdgeVMHook and the edge VM health check against the real local stack (sshd as the edge VM, Azurite as storage)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
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
