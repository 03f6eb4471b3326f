"""The model registry on a real central MLflow tracking server with basic auth (scripts/mlflow_server.py).

What the two-host split relies on: the edge site registers over HTTP with its own non-admin user and no shared disk,
central's image build downloads the model with its user, anonymous callers get nothing, and refused credentials
fail with a message that names the server and the user (never the password).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from edge_training.exceptions import ModelRegistryAuthError
from edge_training.registry import CHAMPION_ALIAS, MLflowModelRegistry, get_model_registry
from edge_training.retry import FAIL_AT_ONCE
from scripts.mlflow_server import ADMIN_USER, _AdminApi
from tests._models import assert_lease_is_free, write_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    folder = write_model(tmp_path_factory.mktemp("onnx"), seed=5, trees=5)
    (folder / "metrics.json").write_text(json.dumps({"metrics": {"roc_auc": 0.91, "n_train": 10}}))
    return folder


@pytest.fixture
def model(mlflow_server) -> str:
    """A registered model of this test's own, created and granted by the server's provisioning."""
    name = f"srv-{uuid.uuid4().hex[:8]}"
    mlflow_server.provision(models=[name])
    return name


def _as(monkeypatch, env: dict[str, str], tmp_path: Path) -> MLflowModelRegistry:
    """The registry as a worker with ``env`` (one side's MLFLOW_* settings) builds it."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EDGE_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "no-local-artifacts"))
    registry = get_model_registry("mlflow")
    assert isinstance(registry, MLflowModelRegistry) and registry.is_tracking_server
    return registry


def _get(url: str, user: str | None = None, password: str | None = None) -> int:
    return _status(urllib.request.Request(url, headers=_auth(user, password)))


def _post(url: str, body: dict, user: str, password: str, method: str = "POST") -> int:
    headers = {**_auth(user, password), "Content-Type": "application/json"}
    return _status(urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method=method))


def _auth(user: str | None, password: str | None) -> dict[str, str]:
    if user is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_anonymous_requests_get_401_and_the_site_user_is_no_admin(mlflow_server, model):
    info = mlflow_server.info()
    uri = info.tracking_uri
    for path in ("/api/2.0/mlflow/experiments/search?max_results=5",
                 f"/api/2.0/mlflow/registered-models/get?name={model}",
                 "/api/2.0/mlflow-artifacts/artifacts?path=1",
                 "/api/2.0/mlflow/users/list"):  # fmt: skip
        assert _get(uri + path) == 401, path
    site = info.site_env()
    user, password = site["MLFLOW_TRACKING_USERNAME"], site["MLFLOW_TRACKING_PASSWORD"]
    assert _get(f"{uri}/api/2.0/mlflow/registered-models/get?name={model}", user, password) == 200
    # Not an admin: creating users and making itself admin are refused.
    assert _post(f"{uri}/api/2.0/mlflow/users/create", {"username": "x-" + uuid.uuid4().hex[:6],
                                                         "password": uuid.uuid4().hex}, user, password) == 403
    assert _post(f"{uri}/api/2.0/mlflow/users/update-admin", {"username": user, "is_admin": True},
                 user, password, method="PATCH") == 403
    # A model the admin made without granting it: invisible to the site, as is the Default experiment.
    other = f"srv-other-{uuid.uuid4().hex[:6]}"
    admin = _AdminApi(uri, ADMIN_USER, (info.state_dir / "secrets" / "admin_password").read_text().strip())
    admin.ensure_registered_model(other)
    assert _get(f"{uri}/api/2.0/mlflow/registered-models/get?name={other}", user, password) == 403
    assert _get(f"{uri}/api/2.0/mlflow/experiments/get?experiment_id=0", user, password) == 403
    # The secrets and env files the sides source are the owner's only.
    for path in [*(info.state_dir / "secrets").iterdir(), info.state_dir / "site.env", info.state_dir / "central.env"]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


def test_site_registers_promotes_and_tags_central_downloads_the_model(mlflow_server, model, onnx_dir, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    info = mlflow_server.info()
    site = _as(monkeypatch, info.site_env(), tmp_path)
    version = site.register(model, onnx_dir, "job-srv-1", {"edge.dag_run_id": "manual__srv"})
    assert version.version == "1" and version.complete
    site.promote(model, version.version, expected=None)
    site.set_tags(model, version.version, {"champion.decision": "promoted_no_champion"})
    assert site.get_champion(model).version == "1"
    assert site.get_version(model, "1").tags["champion.decision"] == "promoted_no_champion"
    # Registering again for the same run is the same version (idempotent over HTTP as on SQLite).
    assert site.register(model, onnx_dir, "job-srv-1", {}).version == "1"
    # The files went to the server's artifact store, not to a local folder of the worker.
    assert not (tmp_path / "no-local-artifacts").exists()
    stored = list((info.state_dir / "artifacts").rglob("model.onnx"))
    assert stored, "the server's artifact store holds no model.onnx"
    assert_lease_is_free(site.client, model)
    # Least privilege: the site edits but cannot delete the model.
    with pytest.raises(ModelRegistryAuthError, match="403 .*as user 'edge-site'"):
        site.client.delete_registered_model(model)

    # Central's image build (another worker, so another environment): its own user downloads the ONNX file and records the image on the version.
    central = _as(monkeypatch, info.central_env(), tmp_path / "central")
    downloaded = central.download_onnx(central.get_champion(model), tmp_path / "download")
    assert downloaded.read_bytes() == (onnx_dir / "model.onnx").read_bytes()
    central.set_tags(model, "1", {"image.digest": "sha256:" + "0" * 64})
    assert site.get_version(model, "1").tags["image.digest"].startswith("sha256:")
    assert site.get_version(model, "1").tags.get(CHAMPION_ALIAS) is None  # the alias, not a tag, marks it

    # Least privilege: central only reads the experiment.
    experiment_id = central.client.get_experiment_by_name(info.experiment).experiment_id
    with pytest.raises(ModelRegistryAuthError, match="403 .*as user 'edge-central'"):
        central.client.create_run(experiment_id)


def test_a_wrong_password_or_no_user_is_a_clear_error_that_fails_at_once(mlflow_server, model, onnx_dir, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    info = mlflow_server.info()
    wrong = "not-the-password-" + uuid.uuid4().hex
    registry = _as(monkeypatch, {**info.site_env(), "MLFLOW_TRACKING_PASSWORD": wrong}, tmp_path)
    with pytest.raises(ModelRegistryAuthError) as caught:
        registry.register(model, onnx_dir, "job-wrong", {})
    message = str(caught.value)
    host = info.tracking_uri.removeprefix("http://")
    assert "401" in message and host in message and "'edge-site'" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert wrong not in message and info.site_password not in message
    assert ModelRegistryAuthError in FAIL_AT_ONCE  # the same answer on every retry: no retries

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(ModelRegistryAuthError, match="no MLFLOW_TRACKING_USERNAME set"):
        get_model_registry("mlflow").get_champion(model)

    # Credentials inside the URI are refused before any request, and not repeated in the message.
    with_password = info.tracking_uri.replace("http://", f"http://edge-site:{info.site_password}@")
    with pytest.raises(ModelRegistryAuthError, match="carries credentials in the URI") as caught:
        MLflowModelRegistry(with_password, tmp_path).get_champion(model)
    assert info.site_password not in str(caught.value)


def test_a_lease_left_by_a_stopped_holder_is_taken_back_and_a_missing_lease_is_named(mlflow_server, model, tmp_path,
                                                                                     monkeypatch):  # fmt: skip
    """A promotion that died holding the lease blocks the next one only until the lease's time is up; a server
    without the lease (not provisioned for this model) fails the promotion quickly with what to do."""
    from edge_training.exceptions import ModelRegistryError
    from edge_training.registry import locks

    site = _as(monkeypatch, mlflow_server.info().site_env(), tmp_path)
    free, held = locks.lease_names(model)
    site.client.rename_registered_model(free, held)  # taken by a worker that then stopped
    started = time.monotonic()
    with locks.mlflow_lease(site.client, model, wait_s=30, ttl_s=2):
        waited = time.monotonic() - started
        assert site.client.get_registered_model(held).tags[locks.LEASE_OWNER_TAG].endswith(tuple("0123456789abcdef"))
    assert 1.5 < waited < 20, f"took the stale lease back after {waited:.1f} s (time-to-live 2 s)"
    assert_lease_is_free(site.client, model)

    with pytest.raises(ModelRegistryError, match=r"neither 'never-provisioned\.champion-lease' nor .* could be read"):
        with locks.mlflow_lease(site.client, "never-provisioned", wait_s=60):
            pass
