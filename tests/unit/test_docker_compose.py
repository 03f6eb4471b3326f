"""docker-compose.yaml is valid and complete (it is not started here: no Docker engine runs in CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_central_airflow_and_edge_site_services(compose):
    services = set(compose["services"])
    central = {"postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
    edge = {"azurite", "edge-vm", "registry"}
    assert central | edge <= services, f"missing services: {sorted((central | edge) - services)}"


def test_named_volumes_are_declared(compose):
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used <= set(compose["volumes"]), f"undeclared volumes: {sorted(used - set(compose['volumes']))}"


def test_airflow_image_builds_from_the_official_image_with_requirements():
    dockerfile = (ROOT / "docker" / "airflow.Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2", dockerfile, re.M)
    assert "requirements.txt" in dockerfile


def test_no_secret_in_compose_file():
    text = (ROOT / "docker-compose.yaml").read_text()
    assert "AccountKey=" not in text and "private_key" not in text and "PASSWORD:" not in text.replace("POSTGRES_PASSWORD:", "")


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed; YAML checks above still ran")
def test_docker_compose_config(tmp_path):
    (tmp_path / "docker-compose.yaml").write_text((ROOT / "docker-compose.yaml").read_text())
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    result = subprocess.run(["docker-compose", "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
