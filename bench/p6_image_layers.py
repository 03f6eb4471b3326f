"""P6: bytes sent to the registry for a second model version's scoring image, divided by its model layer's size.

Runs BuildScoringImageOperator twice (model versions 1 and 2: real RandomForests of 200 trees, depth 8, like the
training job's defaults) against a private edge stack (registry with htpasswd auth, MLflow) and a private buildah
storage. The operator reaches the registry only through a counting proxy (bench/_registry_meter.py) that records
the body bytes of every request on the wire: blob uploads (POST/PATCH/PUT under /v2/<name>/blobs/uploads/) and
the manifest PUT. The registry stores by content, so its storage cannot tell a layer sent again from one skipped;
the wire can. Target <= 1.1: everything but the model layer is shared with the first version and not sent again;
the image config and manifest (~7 KB together) are the only overhead.

Control (always run, so the meter is shown able to fail): the second version's image is pushed once more by a
plain pusher that uploads every layer without asking the registry whether it has it; the same count must miss the
target (by far: the base layers are ~100x the model layer), or the figure above would mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from _registry_meter import CountingProxy, pushed_bytes
from _target import Figure, report

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

TARGET = 1.1


def push_every_layer(proxy_host: str, registry_host: str, auth: dict[str, str], repository: str, tag: str) -> None:
    """Push ``repository:tag`` again through ``proxy_host`` the naive way: every blob uploaded, none checked first.

    :param proxy_host: ``host:port`` of the counting proxy.
    :param registry_host: ``host:port`` of the registry itself (blobs are read from it directly, uncounted).
    :param auth: basic-auth headers.
    :param repository: repository name.
    :param tag: tag whose manifest (and its config and layers) is pushed again.
    """
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

    def call(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(url, data=body, method=method, headers={**auth, **(headers or {})})
        with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - loopback only
            return response.headers, response.read()

    headers, raw = call("GET", f"http://{registry_host}/v2/{repository}/manifests/{tag}", headers={"Accept": accept})
    manifest = json.loads(raw)
    for blob in [manifest["config"], *manifest["layers"]]:
        _, data = call("GET", f"http://{registry_host}/v2/{repository}/blobs/{blob['digest']}")
        started, _ = call("POST", f"http://{proxy_host}/v2/{repository}/blobs/uploads/", body=b"")
        location = started["Location"]
        location = location if location.startswith("http") else f"http://{proxy_host}{location}"
        sep = "&" if "?" in location else "?"
        call("PUT", f"{location}{sep}digest={blob['digest']}", body=data,
             headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    call("PUT", f"http://{proxy_host}/v2/{repository}/manifests/{tag}", body=raw,
         headers={"Content-Type": headers["Content-Type"]})  # fmt: skip


def main() -> int:
    from scripts.edge_stack import EdgeStack, registry_basic_auth
    from tests._models import write_model
    from tests.integration.test_image_build import BASE_IMAGE, MODEL

    with tempfile.TemporaryDirectory(prefix="p6-") as scratch:
        scratch = Path(scratch)
        stack = EdgeStack(scratch / "stack", free_ports=True)
        proxy = None
        try:
            info = stack.start()
            os.environ.update(info.airflow_env)
            proxy = CountingProxy(info.registry_host)
            # The pusher under test knows the registry only by the proxy's address.
            connection = json.loads(info.airflow_env["AIRFLOW_CONN_IMAGE_REGISTRY"])
            os.environ["AIRFLOW_CONN_IMAGE_REGISTRY"] = json.dumps({**connection, "host": proxy.host})
            storage = {"EDGE_BUILDAH_ROOT": str(scratch / "buildah" / "root"),
                       "EDGE_BUILDAH_RUNROOT": str(scratch / "buildah" / "run")}  # fmt: skip
            subprocess.run([str(ROOT / "scripts" / "build_base_image.sh")], env={**os.environ, **storage}, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip

            from edge_training.operators.image import BuildScoringImageOperator
            from edge_training.registry import get_model_registry

            registry = get_model_registry()
            results, seconds, sent = [], [], []
            for seed in (1, 2):
                version = registry.register(MODEL, write_model(scratch / f"m{seed}", seed, trees=200), f"p6-{seed}", {})
                proxy.reset()
                started = time.monotonic()
                results.append(BuildScoringImageOperator(
                    task_id="build_image",
                    registered={"model_name": MODEL, "version": version.version},
                    buildah_root=storage["EDGE_BUILDAH_ROOT"],
                    buildah_runroot=storage["EDGE_BUILDAH_RUNROOT"],
                    base_image=BASE_IMAGE,
                ).execute({"ti": SimpleNamespace(run_id=f"p6-{seed}")}))  # fmt: skip
                seconds.append(time.monotonic() - started)
                sent.append(pushed_bytes(proxy.requests()))

            from edge_training.hooks.image import ImageRegistryHook

            tag = results[1]["reference"].split("@", 1)[0].rsplit(":", 1)[1]
            _, manifest = ImageRegistryHook().manifest(MODEL, tag)
            model_layer = manifest["layers"][-1]["size"]
            image_bytes = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])

            proxy.reset()
            auth = registry_basic_auth(info.registry_user, info.registry_password)
            push_every_layer(proxy.host, info.registry_host, auth, MODEL, tag)
            naive = pushed_bytes(proxy.requests())

            print(f"P6 first_version_sent_bytes: {sent[0]} ({seconds[0]:.0f} s build+smoke+push)")
            print(f"P6 second_version_sent_bytes: {sent[1]} ({seconds[1]:.0f} s build+smoke+push)")
            print(f"P6 model_layer_bytes: {model_layer} (image: {image_bytes} bytes in {len(manifest['layers'])} layers)")
            print(f"P6 control: a pusher re-sending every layer sent {naive} bytes")
            return report(
                Figure("P6 second_version_sent_bytes_ratio", sent[1] / model_layer, TARGET),
                # The meter must see a re-sent layer: the control has to miss the target.
                Figure("P6 control_resend_every_layer_ratio", naive / model_layer, TARGET, op=">="),
            )
        finally:
            if proxy is not None:
                proxy.close()
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
