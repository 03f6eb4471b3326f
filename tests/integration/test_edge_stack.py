"""The local edge stack really runs, and is locked down the way the pipeline relies on (real services, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scripts.edge_stack import SERVICES, EdgeStack, EdgeStackError, registry_basic_auth

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(REPO_ROOT / "scripts" / "edge_stack.py")]


def _ssh_hook():
    from airflow.providers.ssh.hooks.ssh import SSHHook

    # One attempt: the failures below are permanent, retrying would only slow the test down.
    return SSHHook(ssh_conn_id="edge_vm", conn_retry_attempts=1)


def _run_over_ssh(command: str) -> tuple[int, str]:
    hook = _ssh_hook()
    with hook.get_conn() as client:
        exit_status, stdout, _ = hook.exec_ssh_client_command(client, command, get_pty=False, environment=None)
    return exit_status, stdout.decode()


def _other_ed25519_key(tmp_path: Path) -> Path:
    key = tmp_path / "other_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _set_vm_extra(monkeypatch: pytest.MonkeyPatch, edge_env, **extra: str) -> None:
    conn = json.loads(edge_env.airflow_env["AIRFLOW_CONN_EDGE_VM"])
    conn["extra"].update(extra)
    monkeypatch.setenv("AIRFLOW_CONN_EDGE_VM", json.dumps(conn))


def _http_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stack_pids_alive(state_dir: Path) -> list[int]:
    """Live processes whose command line or environment names the stack's state folder."""
    needle = str(state_dir).encode()
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            mentions = needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes()
        except OSError:
            continue
        if mentions and _alive(int(entry.name)):
            alive.append(int(entry.name))
    return alive


def test_start_again_leaves_running_services_alone(edge_stack):
    stack = EdgeStack(edge_stack.state_dir, free_ports=True)
    before = stack.status()

    again = stack.start()

    assert stack.status() == before
    assert all(entry["running"] for entry in before.values())
    assert (again.ssh_port, again.registry_host, again.blob_endpoint) == (
        edge_stack.ssh_port, edge_stack.registry_host, edge_stack.blob_endpoint,
    )
    assert again.ssh_host_key == edge_stack.ssh_host_key
    assert again.registry_password == edge_stack.registry_password


def test_status_cli_lists_every_service_running_and_exits_0(edge_stack):
    result = subprocess.run(
        [*CLI, "status", "--state-dir", str(edge_stack.state_dir)], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(SERVICES)
    assert all(line.split()[1] == "running" for line in lines)
    assert f"port {edge_stack.ssh_port} " in lines[1]


def test_env_file_is_private_and_sourceable(edge_stack):
    env_file = edge_stack.state_dir / "airflow.env"
    assert env_file.stat().st_mode & 0o777 == 0o600

    dump_environ = f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    dumped = subprocess.run(
        ["bash", "-c", f"source {env_file} && {dump_environ}"],
        capture_output=True, text=True, check=True, timeout=30,
    )

    environ = json.loads(dumped.stdout)
    for name, value in edge_stack.airflow_env.items():
        assert environ[name] == value
    vm = json.loads(environ["AIRFLOW_CONN_EDGE_VM"])
    assert vm["extra"]["host_key"] == edge_stack.ssh_host_key
    assert vm["extra"]["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_ssh_hook_from_env_connection_runs_a_command(edge_env):
    assert _run_over_ssh("echo ok") == (0, "ok\n")


def test_edge_vm_session_finds_python3_with_venv(edge_env):
    exit_status, _ = _run_over_ssh("python3 -m venv --help")

    assert exit_status == 0


def test_ssh_hook_rejects_a_different_pinned_host_key(edge_env, monkeypatch, tmp_path):
    import paramiko

    other_key = (_other_ed25519_key(tmp_path).with_suffix(".pub")).read_text().split()
    _set_vm_extra(monkeypatch, edge_env, host_key=f"{other_key[0]} {other_key[1]}")

    with pytest.raises(paramiko.BadHostKeyException):
        _ssh_hook().get_conn()


def test_sshd_refuses_password_auth(edge_stack):
    import paramiko

    transport = paramiko.Transport((edge_stack.ssh_host, edge_stack.ssh_port))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password(edge_stack.ssh_user, "any-password")
    finally:
        transport.close()

    assert refused.value.allowed_types == ["publickey"]


def test_sshd_refuses_an_unknown_client_key(edge_env, monkeypatch, tmp_path):
    import paramiko

    _set_vm_extra(monkeypatch, edge_env, private_key=_other_ed25519_key(tmp_path).read_text(), look_for_keys="false")

    with pytest.raises(paramiko.AuthenticationException):
        _ssh_hook().get_conn()


def test_registry_requires_credentials(edge_stack):
    url = f"http://{edge_stack.registry_host}/v2/"

    assert _http_status(url) == 401
    assert _http_status(url, registry_basic_auth(edge_stack.registry_user, "wrong-password")) == 401
    assert _http_status(url, registry_basic_auth(edge_stack.registry_user, edge_stack.registry_password)) == 200


def test_wasb_hook_from_env_connection_sees_the_container(edge_env):
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    containers = [container.name for container in WasbHook(wasb_conn_id="edge_blob").get_conn().list_containers()]

    assert "sensor-readings" in containers


def test_stop_ends_every_process_of_the_stack(tmp_path):
    # Its own stack: stopping the session's would break the tests that share it.
    state_dir = tmp_path / "stack"
    stack = EdgeStack(state_dir, free_ports=True)
    stack.start()
    try:
        # A job left running on the edge VM, detached from its SSH session, is part of the stack too.
        detached = subprocess.run(
            stack.ssh_command("nohup sleep 300 >/dev/null 2>&1 & echo $!"),
            capture_output=True, text=True, check=True, timeout=30,
        )
        job_pid = int(detached.stdout.strip())
        assert _alive(job_pid)
        assert len(_stack_pids_alive(state_dir)) >= len(SERVICES) + 1
    finally:
        stack.stop()

    assert _stack_pids_alive(state_dir) == []
    assert not _alive(job_pid)
    assert not any(entry["running"] for entry in stack.status().values())
    status = subprocess.run([*CLI, "status", "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=30)
    assert status.returncode == 3
    assert [line.split()[1] for line in status.stdout.splitlines()] == ["stopped"] * len(SERVICES)


def test_a_recycled_pid_is_neither_reported_running_nor_killed(tmp_path):
    # A pid file left behind by a crash, whose pid now belongs to some unrelated process.
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "blob.pid").write_text(f"{unrelated.pid}\n")
        stack = EdgeStack(tmp_path, free_ports=True)

        assert stack.status()["blob"]["running"] is False
        stack.stop()

        assert unrelated.poll() is None
        assert not (tmp_path / "blob.pid").exists()
    finally:
        unrelated.kill()
        unrelated.wait()


def test_missing_azurite_names_the_install_command(tmp_path, monkeypatch):
    from scripts import edge_stack

    monkeypatch.setattr(edge_stack, "AZURITE_BIN", tmp_path / "node_modules" / ".bin" / "azurite-blob")

    with pytest.raises(edge_stack.EdgeStackError, match=r"Azurite .* not found\. Install it with: cd .* && npm ci"):
        EdgeStack(tmp_path / "stack", free_ports=True).start()


def test_a_taken_port_is_reported_not_stolen(tmp_path):
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (tmp_path / "stack.json").write_text(json.dumps({"ports": {"blob": taken, "ssh": 1, "registry": 1}}))
        stack = EdgeStack(tmp_path)

        with pytest.raises(EdgeStackError, match=rf"Port 127\.0\.0\.1:{taken} for blob is already in use"):
            stack.start()

    assert _stack_pids_alive(tmp_path) == []


def test_a_service_that_dies_on_start_points_to_its_log(tmp_path):
    stack = EdgeStack(tmp_path, free_ports=True)
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    # An unreadable host key makes sshd exit at once.
    (ssh_dir / "host_ed25519_key").write_text("not a key\n")
    (ssh_dir / "host_ed25519_key.pub").write_text("ssh-ed25519 AAAAnotakey edge-vm-host\n")
    try:
        with pytest.raises(EdgeStackError, match=r"ssh exited while starting") as failed:
            stack.start()
    finally:
        stack.stop()

    assert str(tmp_path / "ssh.log") in str(failed.value)
    assert _stack_pids_alive(tmp_path) == []
