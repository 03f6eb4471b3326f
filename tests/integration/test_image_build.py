"""The scoring image end to end: real buildah (own vfs storage), the stack's registry with htpasswd auth, real MLflow.

Builds and pushes images for registered model versions with BuildScoringImageOperator, then reads the registry back
over its HTTP API (independently of the hook) to check the tag, digest, labels and layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_training.exceptions import ImageRegistryAuthError, ImageRegistryUnavailableError
from edge_training.hooks.image import Buildah, ImageRegistryHook
from edge_training.image_context import IMAGE_DIGEST_TAG, IMAGE_REFERENCE_TAG
from edge_training.operators.image import BuildScoringImageOperator
from edge_training.registry import RegisteredModelVersion, get_model_registry
from edge_training.retry import FAIL_AT_ONCE
from tests._models import FEATURES, write_model
from tests._registry import MANIFEST_ACCEPT, registry_get
from tests._serving import call, raw_exchange

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "edge-image-test"
BASE_IMAGE = "localhost/edge-python-base:bookworm"


def register(tmp: Path, seed: int, key: str) -> str:
    version = get_model_registry().register(
        MODEL, write_model(tmp / key, seed), key, {"edge.code_version": f"code-{seed}"}
    )
    return version.version


def version_tags(version: str) -> dict:
    return get_model_registry().client.get_model_version(MODEL, version).tags


def registry_blobs(stack) -> dict[str, int]:
    """Every blob the registry stores on disk (digest -> bytes): what pushes actually delivered."""
    root = stack.state_dir / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {p.parent.name: p.stat().st_size for p in root.glob("*/*/data")}


@pytest.fixture(scope="module")
def image_env(edge_stack, tmp_path_factory):
    """This module's own buildah storage with the base image imported (from the tarball cached by
    scripts/build_base_image.sh), and the environment the operator reads."""
    storage = tmp_path_factory.mktemp("buildah")
    env = {
        "EDGE_BUILDAH_ROOT": str(storage / "root"),
        "EDGE_BUILDAH_RUNROOT": str(storage / "run"),
    }
    subprocess.run([str(ROOT / "scripts" / "build_base_image.sh")], env={**os.environ, **env}, check=True,
                   capture_output=True, timeout=900)  # fmt: skip
    return SimpleNamespace(root=storage / "root", runroot=storage / "run")


def make_operator(image_env, version: str, task_id: str = "build_image", **kwargs) -> BuildScoringImageOperator:
    return BuildScoringImageOperator(
        task_id=task_id,
        registered={"model_name": MODEL, "version": version, "tags": {"edge.code_version": "code-test"}},
        buildah_root=image_env.root,
        buildah_runroot=image_env.runroot,
        base_image=BASE_IMAGE,
        **kwargs,
    )


def run(operator: BuildScoringImageOperator, run_id: str = "manual__2026-06-10T02:00:00+00:00") -> dict:
    return operator.execute({"ti": SimpleNamespace(run_id=run_id)})


@pytest.fixture(scope="module")
def first(edge_stack, image_env, tmp_path_factory):
    """Version 1 built, smoke-tested and pushed."""
    mp = pytest.MonkeyPatch()
    for name, value in edge_stack.airflow_env.items():
        mp.setenv(name, value)
    try:
        version = register(tmp_path_factory.mktemp("models"), seed=1, key="image-test-run-1")
        before = registry_blobs(edge_stack)
        result = run(make_operator(image_env, version))
        yield SimpleNamespace(version=version, result=result, blobs_before=before, blobs_after=registry_blobs(edge_stack))
    finally:
        mp.undo()


def test_build_push_and_record_digest(edge_env, first):
    result = first.result
    reference = f"{edge_env.registry_host}/{MODEL}:{first.version}"
    assert result["reference"] == reference
    assert result["image"] == f"{reference}@{result['digest']}"
    assert result["reused"] is False

    # The registry, read independently: the tag resolves to the digest the task reported.
    status, headers, body = registry_get(edge_env, f"/v2/{MODEL}/manifests/{first.version}", MANIFEST_ACCEPT)
    assert status == 200
    assert headers["Docker-Content-Digest"] == result["digest"]
    manifest = json.loads(body)
    status, _, config_blob = registry_get(edge_env, f"/v2/{MODEL}/blobs/{manifest['config']['digest']}")
    labels = json.loads(config_blob)["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == first.version
    assert labels["io.edge-training.model.name"] == MODEL
    assert labels["io.edge-training.model.version"] == first.version
    assert labels["io.edge-training.dag-run-id"] == "manual__2026-06-10T02:00:00+00:00"
    assert labels["io.edge-training.code-version"] == "code-test"
    assert labels["org.opencontainers.image.created"].startswith("20")
    assert json.loads(config_blob)["config"]["User"] == "10001"

    tags = version_tags(first.version)
    assert tags[IMAGE_DIGEST_TAG] == result["digest"]
    assert tags[IMAGE_REFERENCE_TAG] == result["image"]


def test_smoke_test_ran_inside_the_image(first):
    smoke = first.result["smoke_test"]
    assert smoke["passed"] is True
    assert smoke["health"] == "ok"
    assert smoke["rows"] == 16 and smoke["features"] == len(FEATURES)
    assert smoke["labels_match"] is True
    assert smoke["max_abs_diff"] <= 1e-5


@pytest.fixture(scope="module")
def image_server(image_env, first, tmp_path_factory):
    """The server of the newest local image of MODEL, started from the image with `buildah run` like the smoke test."""
    from edge_training.hooks.image import free_port
    from edge_training.operators.image import SERVER_PATH

    buildah = Buildah(image_env.root, image_env.runroot)
    names = [name for image in json.loads(buildah.run("images", "--json", what="Listing images") or "[]")
             for name in image.get("names") or [] if name.startswith(f"localhost/{MODEL}:")]  # fmt: skip
    assert names, f"no local image of {MODEL} after the build"
    port, log_path = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    command = ["python3", SERVER_PATH, "--host", "127.0.0.1", "--port", str(port)]
    with buildah.serve(names[0], command, log_path) as server:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
            try:
                if call(port, "GET", "/v2/health/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield SimpleNamespace(port=port, image=names[0], version=names[0].rsplit(":", 1)[1], log=log_path)


def test_image_answers_both_protocols(image_server):
    status, _, metadata = call(image_server.port, "GET", f"/v2/models/{MODEL}")
    assert status == 200 and metadata["versions"] == [image_server.version]
    assert metadata["parameters"]["features"] == FEATURES
    row = [70.0, 3.0, 5.0, 1500.0, 40.0, 10.0]
    status, _, mlflow_answer = call(image_server.port, "POST", "/invocations",
                                    {"dataframe_split": {"columns": FEATURES, "data": [row]}})  # fmt: skip
    assert status == 200 and len(mlflow_answer["predictions"]["label"]) == 1
    status, _, v2 = call(image_server.port, "POST", f"/v2/models/{MODEL}/infer",
                         {"inputs": [{"name": metadata["inputs"][0]["name"], "shape": [1, 6], "datatype": "FP32",
                                      "data": row}]})  # fmt: skip
    assert status == 200
    assert v2["outputs"][0]["data"] == mlflow_answer["predictions"]["label"]
    assert v2["outputs"][1]["data"] == mlflow_answer["predictions"]["probabilities"][0]


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b'{"inputs": [[70, 3, 5, ' + b"9" * 400 + b', 40, 10]]}', 400, "feature 'rpm'"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
        (b'{"inputs": [[70, 3, 5, 1500, 40, NaN]]}', 400, "JSON has no NaN"),
        (b'{"inputs": [[70, 3, 5, 1500, 40, 10]], "colour": 1}', 400, "exactly one of"),
        (None, 400, "non-negative Content-Length"),
    ],
    ids=["400-digit integer", "100,000-deep nesting", "NaN", "unknown key", "Content-Length -1"],
)
def test_image_answers_bad_requests_with_json_errors(image_server, request_bytes, status, says):
    if request_bytes is None:
        code, body, seconds = raw_exchange(
            image_server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}"
        )
        assert seconds < 5
    else:
        code, _, body = call(image_server.port, "POST", "/invocations", request_bytes)
    assert code == status
    assert says in (body.get("message") or body.get("error"))
    assert call(image_server.port, "GET", "/ping")[0] == 200  # and the server is still there


def test_image_server_log_holds_no_request_body(image_server):
    call(image_server.port, "POST", "/invocations", {"inputs": [[9876.5432, 3, 5, 1500, 40, 10]]})
    call(image_server.port, "POST", "/invocations", {"inputs": [[9876.5432, "x", 5, 1500, 40, 10]]})
    time.sleep(0.5)
    logged = image_server.log.read_text(errors="replace")
    assert '"POST /invocations HTTP/1.1" 200' in logged and '"POST /invocations HTTP/1.1" 400' in logged
    assert "9876" not in logged


def test_retry_with_same_content_neither_rebuilds_nor_pushes(edge_env, image_env, first):
    blobs = registry_blobs(edge_env)
    result = run(make_operator(image_env, first.version, task_id="build_image_retry"), run_id="a later run")
    assert result["reused"] is True
    assert result["digest"] == first.result["digest"]
    assert registry_blobs(edge_env) == blobs
    assert version_tags(first.version)[IMAGE_DIGEST_TAG] == first.result["digest"]


def test_second_version_pushes_only_the_model_layer(edge_env, image_env, first, tmp_path):
    version = register(tmp_path, seed=2, key="image-test-run-2")
    before = registry_blobs(edge_env)
    result = run(make_operator(image_env, version))
    new_blobs = set(registry_blobs(edge_env)) - set(before)

    def manifest(tag):
        return json.loads(registry_get(edge_env, f"/v2/{MODEL}/manifests/{tag}", MANIFEST_ACCEPT)[2])

    one, two = manifest(first.version), manifest(version)
    assert [layer["digest"] for layer in one["layers"][:-1]] == [layer["digest"] for layer in two["layers"][:-1]]
    assert one["layers"][-1]["digest"] != two["layers"][-1]["digest"]
    # Only the new model layer, the new image config and the manifest itself reached the registry.
    assert new_blobs == {
        two["layers"][-1]["digest"].split(":")[1], two["config"]["digest"].split(":")[1], result["digest"].split(":")[1]
    }
    assert result["smoke_test"]["passed"] is True


@pytest.fixture
def unpushed_version(edge_env, tmp_path, request):
    return register(tmp_path, seed=3, key=f"image-test-unpushed-{request.node.name}")


def test_wrong_password_fails_at_once_with_clear_message(edge_env, image_env, unpushed_version, monkeypatch):
    conn = json.loads(edge_env.airflow_env["AIRFLOW_CONN_IMAGE_REGISTRY"])
    conn["password"] = "not-the-password"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_REGISTRY", json.dumps(conn))
    with pytest.raises(ImageRegistryAuthError) as caught:
        run(make_operator(image_env, unpushed_version))
    message = str(caught.value)
    assert "refused" in message and "'edge'" in message and "password" in message
    assert "not-the-password" not in message
    assert ImageRegistryAuthError in FAIL_AT_ONCE
    assert IMAGE_DIGEST_TAG not in version_tags(unpushed_version)
    assert registry_get(edge_env, f"/v2/{MODEL}/manifests/{unpushed_version}", MANIFEST_ACCEPT)[0] == 404


def test_registry_down_is_retryable(edge_env, image_env, unpushed_version, monkeypatch):
    from scripts.edge_stack import _free_port

    conn = json.loads(edge_env.airflow_env["AIRFLOW_CONN_IMAGE_REGISTRY"])
    conn["host"] = f"127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_REGISTRY", json.dumps(conn))
    with pytest.raises(ImageRegistryUnavailableError) as caught:
        run(make_operator(image_env, unpushed_version))
    assert "down or unreachable" in str(caught.value) and "retried" in str(caught.value)
    assert not any(issubclass(ImageRegistryUnavailableError, cls) for cls in FAIL_AT_ONCE)
    assert IMAGE_DIGEST_TAG not in version_tags(unpushed_version)


def test_refused_push_leaves_no_tag(edge_env, image_env):
    """buildah's own push with credentials the registry refuses: a clear auth error, and no tag appears."""
    buildah = Buildah(image_env.root, image_env.runroot)
    hook = ImageRegistryHook()
    bad = Path(image_env.root).parent / "bad-auth.json"
    bad.write_text(json.dumps({"auths": {edge_env.registry_host: {"auth": "ZWRnZTp3cm9uZw=="}}}))  # edge:wrong
    with pytest.raises(ImageRegistryAuthError, match="refused the credentials"):
        buildah.push(BASE_IMAGE, f"{edge_env.registry_host}/{MODEL}-partial:1", bad, tls_verify=False)
    assert hook.manifest(f"{MODEL}-partial", "1") is None
