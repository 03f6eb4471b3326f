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
CENTRAL_REGISTRIES = {"mlflow", "mlflow-init", "registry"}
EDGE_CONNECTIONS = ("AIRFLOW_CONN_EDGE_BLOB", "AIRFLOW_CONN_EDGE_VM")
# What the site may dial: the api-server (edge worker API, Execution API) and the MLflow server. Nothing else central.
SITE_UPLINK = {"airflow-edge-worker", "airflow-apiserver", "mlflow"}


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_central_airflow_and_edge_site_services(services):
    missing = (CENTRAL | EDGE_SITE | CENTRAL_REGISTRIES) - set(services)
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


def test_nothing_central_can_reach_into_the_edge_site(services, compose):
    for name in CENTRAL | CENTRAL_REGISTRIES:
        assert "edge-site" not in services[name]["networks"], f"{name} is on the edge-site network"
    for name in ("azurite", "edge-vm"):
        assert services[name]["networks"][0] == "edge-site" and "site-uplink" not in services[name]["networks"], name
        assert "ports" not in services[name], f"{name} publishes a port: the edge site must need no inbound port"
    # The edge worker is the one bridge, and it only dials out: to the api-server and MLflow, on the uplink.
    assert set(services["airflow-edge-worker"]["networks"]) == {"edge-site", "site-uplink"}
    assert "ports" not in services["airflow-edge-worker"]
    on_uplink = {name for name, service in services.items() if "site-uplink" in service.get("networks", [])}
    assert on_uplink == SITE_UPLINK, f"on the site uplink: {sorted(on_uplink)}"


def test_the_edge_worker_has_egress_to_central_only(compose):
    # Internal networks have no route out: the worker's only peers are the site's services and the uplink's.
    for network in ("edge-site", "site-uplink"):
        assert (compose["networks"][network] or {}).get("internal") is True, f"network {network} is not internal"


def test_edge_worker_holds_no_central_credentials_and_no_shared_registry_disk(services):
    worker = services["airflow-edge-worker"]
    env = worker["environment"]
    assert "AIRFLOW_CONN_IMAGE_REGISTRY" not in env, "pushing images is central's job"
    assert not any("REDIS" in key or "POSTGRES" in key for key in env)
    assert not any(":/opt/airflow/mlflow" in volume for volume in worker["volumes"]), "the registry is a server now"


def test_mlflow_server_is_central_with_basic_auth_and_proxied_artifacts(services):
    server = services["mlflow"]
    command = server["command"]
    assert command[0] == "server" and "--app-name=basic-auth" in command and "--serve-artifacts" in command
    assert any(arg.startswith("--artifacts-destination=/mlflow/") for arg in command)
    assert any(arg.startswith("--backend-store-uri=sqlite:////mlflow/") for arg in command)
    assert set(server["networks"]) == {"central", "site-uplink"} and "ports" not in server
    env = server["environment"]
    ini = env["MLFLOW_AUTH_CONFIG_PATH"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in server["volumes"] if v.startswith("./")}
    [(target, source)] = [(t, s) for t, s in mounted.items() if ini.startswith(t + "/")]
    settings = (ROOT / source / ini.removeprefix(target + "/")).read_text()
    assert re.search(r"^default_permission = NO_PERMISSIONS$", settings, re.M), "anyone could read every model"
    assert not re.search(r"^admin_password\s*=", settings, re.M), "the admin password belongs in .env"
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key].startswith("${"), key
    init = services["mlflow-init"]
    assert init["command"][:1] == ["provision"] and init["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["airflow-edge-worker"]["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully"


def test_build_image_runs_where_the_registry_and_the_model_are_reachable(services):
    from edge_training.topology import EDGE_SITE_TASKS

    assert "build_image" not in EDGE_SITE_TASKS  # so it runs on the central Celery worker
    worker = services["airflow-worker"]
    env = worker["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["AIRFLOW_CONN_IMAGE_REGISTRY"].startswith("${")
    for peer in ("mlflow", "registry"):
        assert set(worker["networks"]) & set(services[peer]["networks"]), f"airflow-worker cannot reach {peer}"


def test_each_side_has_its_own_mlflow_user_with_the_password_from_env(services):
    users = {"airflow-edge-worker": "edge-site", "airflow-worker": "edge-central"}
    for name, service in services.items():
        env = service.get("environment") or {}
        if name in users:
            assert env["MLFLOW_TRACKING_USERNAME"] == users[name], name
            assert env["MLFLOW_TRACKING_PASSWORD"].startswith("${"), name
            assert "@" not in env["MLFLOW_TRACKING_URI"], f"{name}: credentials in the tracking URI"
        else:
            assert "MLFLOW_TRACKING_PASSWORD" not in env, f"{name} holds an MLflow user's password"
    assert services["airflow-edge-worker"]["environment"]["MLFLOW_TRACKING_PASSWORD"] != services["airflow-worker"][
        "environment"]["MLFLOW_TRACKING_PASSWORD"]


def test_redis_requires_a_password_kept_off_command_lines(services):
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "requirepass" in command and "--requirepass" not in command, "the password would show in `ps`"
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${")
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    for name in CENTRAL - {"postgres", "redis"}:
        broker = services[name]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
        assert broker.startswith("redis://:${REDIS_PASSWORD"), f"{name}: broker URL without the password"


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
    for key in ("POSTGRES_PASSWORD", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "_AIRFLOW_WWW_USER_PASSWORD",
                "REDIS_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                "EDGE_MLFLOW_SITE_PASSWORD", "EDGE_MLFLOW_CENTRAL_PASSWORD"):
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
