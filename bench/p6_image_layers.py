"""P6: bytes the registry receives for a second model version's scoring image, divided by its model layer's size.

Runs BuildScoringImageOperator twice (model versions 1 and 2: real RandomForests of 200 trees, depth 8, like the
training job's defaults) against a private edge stack (registry with htpasswd auth, MLflow) and a private buildah
storage; counts the bytes of the blobs (layers, config, manifest) that appear in the registry's storage during the
second push. Target <= 1.1: everything but the model layer is shared with the first version and not sent again;
the image config and manifest (~7 KB together) are the only overhead, so the ratio approaches 1 as the model grows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from _target import Figure, report

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]


def main() -> int:
    from scripts.edge_stack import EdgeStack
    from tests._models import write_model
    from tests.integration.test_image_build import BASE_IMAGE, MODEL, registry_blobs

    with tempfile.TemporaryDirectory(prefix="p6-") as scratch:
        scratch = Path(scratch)
        stack = EdgeStack(scratch / "stack", free_ports=True)
        try:
            info = stack.start()
            os.environ.update(info.airflow_env)
            storage = {"EDGE_BUILDAH_ROOT": str(scratch / "buildah" / "root"),
                       "EDGE_BUILDAH_RUNROOT": str(scratch / "buildah" / "run")}  # fmt: skip
            subprocess.run([str(ROOT / "scripts" / "build_base_image.sh")], env={**os.environ, **storage}, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip

            from edge_training.operators.image import BuildScoringImageOperator
            from edge_training.registry import get_model_registry

            registry = get_model_registry()
            results, seconds = [], []
            for seed in (1, 2):
                version = registry.register(MODEL, write_model(scratch / f"m{seed}", seed, trees=200), f"p6-{seed}", {})
                before = registry_blobs(info)
                started = time.monotonic()
                result = BuildScoringImageOperator(
                    task_id="build_image",
                    registered={"model_name": MODEL, "version": version.version},
                    buildah_root=storage["EDGE_BUILDAH_ROOT"],
                    buildah_runroot=storage["EDGE_BUILDAH_RUNROOT"],
                    base_image=BASE_IMAGE,
                ).execute({"ti": SimpleNamespace(run_id=f"p6-{seed}")})
                seconds.append(time.monotonic() - started)
                after = registry_blobs(info)
                results.append((result, sum(size for digest, size in after.items() if digest not in before)))

            from edge_training.hooks.image import ImageRegistryHook

            hook = ImageRegistryHook()
            _, manifest = hook.manifest(MODEL, results[1][0]["reference"].rsplit(":", 1)[1])
            model_layer = manifest["layers"][-1]["size"]
            pushed = results[1][1]
            print(f"P6 first_version_pushed_bytes: {results[0][1]} ({seconds[0]:.0f} s build+smoke+push)")
            print(f"P6 second_version_pushed_bytes: {pushed} ({seconds[1]:.0f} s build+smoke+push)")
            print(f"P6 model_layer_bytes: {model_layer}")
            return report(Figure("P6 second_version_pushed_bytes_ratio", pushed / model_layer, 1.1))
        finally:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
