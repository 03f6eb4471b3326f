"""deploy/kubernetes/scoring.yaml agrees with the image it deploys: probes on paths the server answers, the port and
user the Dockerfile sets, a Service that selects the Deployment's pods."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests._models import write_model
from tests._serving import call, load_app, start, stop

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "scoring.yaml"
DOCKERFILE = ROOT / "include" / "serving" / "Dockerfile"


@pytest.fixture(scope="module")
def manifest() -> dict:
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}
    assert set(documents) == {"Deployment", "Service"}
    return documents


def container(manifest) -> dict:
    (only,) = manifest["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_probes_use_the_v2_health_endpoints_on_the_served_port(manifest):
    scoring = container(manifest)
    assert scoring["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert scoring["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    (port,) = scoring["ports"]
    dockerfile = DOCKERFILE.read_text()
    assert f"EXPOSE {port['containerPort']}" in dockerfile and f"PORT={port['containerPort']}" in dockerfile
    user = re.search(r"^USER (\d+)$", dockerfile, re.M).group(1)
    assert manifest["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user)


def test_service_selects_the_deployments_pods_on_the_named_port(manifest):
    deployment, service = manifest["Deployment"], manifest["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [p["name"] for p in container(manifest)["ports"]]


def test_the_server_answers_the_probe_paths(manifest, tmp_path):
    app = load_app()
    folder = write_model(tmp_path, seed=1, trees=2)
    server, thread, port = start(app, app.Model(folder / "model.onnx", "pm", "1"), app.Limits(), access_log=False)
    try:
        for probe in ("readinessProbe", "livenessProbe"):
            assert call(port, "GET", container(manifest)[probe]["httpGet"]["path"])[0] == 200
    finally:
        stop(server, thread)
