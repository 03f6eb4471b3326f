"""docker-compose.yaml: the official Airflow 3.3 shape plus the edge site, valid and complete.

It is not started here (no Docker engine runs in CI): these tests parse it, check the topology (what runs where,
which network reaches which) and, where docker-compose is installed, let it validate the file with .env.example.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edge_training import config

ROOT = Path(__file__).resolve().parents[2]
CENTRAL = {
    "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker",
}  # fmt: skip
EDGE_SITE = {"azurite", "edge-vm", "airflow-edge-worker"}
EDGE_CONNECTIONS = ("AIRFLOW_CONN_EDGE_BLOB", "AIRFLOW_CONN_EDGE_VM")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_central_airflow_and_edge_site_services(services):
    missing = (CENTRAL | EDGE_SITE | {"registry"}) - set(services)
    assert not missing, f"missing services: {sorted(missing)}"


def test_central_airflow_runs_celery_and_the_edge_executor(services):
    for name in CENTRAL - {"postgres", "redis"}:
        env = services[name]["environment"]
        executors = env["AIRFLOW__CORE__EXECUTOR"].split(",")
        assert executors[0] == "CeleryExecutor", f"{name}: default executor {executors[0]}"
        assert "airflow.providers.edge3.executors.EdgeExecutor" in executors, name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:") or "@redis:" in env[
            "AIRFLOW__CELERY__BROKER_URL"
        ]
    assert services["airflow-apiserver"]["environment"]["AIRFLOW__EDGE__API_ENABLED"] == "true"
    assert services["airflow-worker"]["command"] == "celery worker"


def test_edge_worker_serves_the_edge_queue_through_the_api_server_without_a_database(services):
    worker = services["airflow-edge-worker"]
    command = worker["command"].split()
    assert command[:2] == ["edge", "worker"]
    assert command[command.index("--queues") + 1] == config.EDGE_WORKER_QUEUE
    env = worker["environment"]
    assert env["EDGE_EXECUTOR_TOPOLOGY"] == "edge"
    assert env["AIRFLOW__EDGE__API_URL"].startswith("http://airflow-apiserver:8080/edge_worker/")
    central = services["airflow-apiserver"]["environment"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == central["AIRFLOW__API_AUTH__JWT_SECRET"]
    # The worker parses the DAG: tasks that name EdgeExecutor only load where the same executors are configured.
    assert env["AIRFLOW__CORE__EXECUTOR"] == central["AIRFLOW__CORE__EXECUTOR"]
    assert not any("SQL_ALCHEMY_CONN" in key or "BROKER_URL" in key for key in env), "the edge worker needs no DB"


def test_only_the_edge_worker_holds_the_edge_site_connections(services):
    for name, service in services.items():
        held = [c for c in EDGE_CONNECTIONS if c in (service.get("environment") or {})]
        assert held == ([*EDGE_CONNECTIONS] if name == "airflow-edge-worker" else []), f"{name} holds {held}"
    assert "env_file" not in services["airflow-scheduler"], "an env_file would hand the site's credentials to central"


def test_nothing_central_can_reach_into_the_edge_site(services):
    for name in CENTRAL | {"registry"}:
        assert "edge-site" not in services[name]["networks"], f"{name} is on the edge-site network"
    for name in ("azurite", "edge-vm"):
        assert services[name]["networks"] == ["edge-site"], name
        assert "ports" not in services[name], f"{name} publishes a port: the edge site must need no inbound port"
    # The edge worker is the one bridge, and it only dials out.
    assert set(services["airflow-edge-worker"]["networks"]) == {"edge-site", "central"}
    assert "ports" not in services["airflow-edge-worker"]


def test_edge_vm_keeps_its_host_key_on_a_volume(services):
    assert any(v.endswith(":/etc/ssh/host") for v in services["edge-vm"]["volumes"])
    dockerfile = (ROOT / "docker" / "edge-vm.Dockerfile").read_text()
    assert "openssh-server" in dockerfile and "python3-venv" in dockerfile
    assert "PasswordAuthentication no" in dockerfile


def test_named_volumes_and_networks_are_declared(compose):
    used_volumes, used_networks = set(), set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                used_volumes.add(source)
        used_networks.update(service.get("networks", []))
    assert used_volumes <= set(compose["volumes"]), f"undeclared volumes: {sorted(used_volumes - set(compose['volumes']))}"
    assert used_networks <= set(compose["networks"]), f"undeclared networks: {sorted(used_networks - set(compose['networks']))}"


def test_airflow_image_builds_from_the_official_image_with_requirements():
    dockerfile = (ROOT / "docker" / "airflow.Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2", dockerfile, re.M)
    assert "requirements.txt" in dockerfile and "constraints.txt" in dockerfile
    assert "apache-airflow-providers-edge3==" in (ROOT / "requirements.txt").read_text()


def test_no_secret_in_compose_file():
    text = (ROOT / "docker-compose.yaml").read_text()
    assert "AccountKey=" not in text and "private_key" not in text and "BEGIN OPENSSH" not in text
    # Every secret is a ${VAR} substituted from .env; none has a literal value here.
    for key in ("POSTGRES_PASSWORD", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "_AIRFLOW_WWW_USER_PASSWORD"):
        for value in re.findall(rf"^\s*{key}:\s*(.+)$", text, re.M):
            assert value.strip().startswith("${"), f"{key} has a literal value"


def test_env_example_documents_every_variable_the_compose_file_needs():
    needed = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)[:?}-]", (ROOT / "docker-compose.yaml").read_text()))
    documented = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert needed <= documented, f"not in .env.example: {sorted(needed - documented)}"


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed; YAML checks above still ran")
def test_docker_compose_config(tmp_path):
    (tmp_path / "docker-compose.yaml").write_text((ROOT / "docker-compose.yaml").read_text())
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    result = subprocess.run(["docker-compose", "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
