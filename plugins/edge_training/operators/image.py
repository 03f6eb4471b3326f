"""Package a registered model version as a scoring image: build (buildah, no daemon), smoke-test, push, record."""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk import BaseOperator

from edge_training import config
from edge_training.exceptions import EdgeTrainingError, ImageBuildError, ImageRegistryError
from edge_training.image_context import (
    CONTENT_KEY_LABEL,
    assemble_context,
    compare_predictions,
    image_labels,
    image_reference,
    model_version_tags,
    smoke_rows,
    split_reference,
)
from edge_training.operators.links import ImageLink, record_version_links, ui_base_path
from edge_training.operators.register import _as_dict, parse_flag

if TYPE_CHECKING:
    from airflow.sdk import Context

    from edge_training.hooks.image import Buildah, ImageRegistryHook

    from edge_training.registry import ModelRegistry

SERVER_PATH = "/opt/serving/app.py"


def expected_scores(onnx_path: Path) -> tuple[list[dict[str, float]], list[float], list[int]]:
    """Synthetic rows for the model's features, scored by the model file itself (onnxruntime on this worker): what
    the image must reproduce.

    Returns ``(rows, probability of class 1 per row, label per row)``; the feature names come from the model's own
    ``features`` metadata, written by the training job.
    """
    import json

    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    features = json.loads(session.get_modelmeta().custom_metadata_map["features"])
    rows = smoke_rows(features)
    (model_input,) = session.get_inputs()
    dtype = np.float64 if model_input.type == "tensor(double)" else np.float32
    matrix = np.array([[row[name] for name in features] for row in rows], dtype=dtype)
    labels, proba = session.run(["label", "probabilities"], {model_input.name: matrix})
    return rows, np.asarray(proba, dtype=np.float64)[:, 1].tolist(), [int(v) for v in labels]


class BuildScoringImageOperator(BaseOperator):
    """
    Build the scoring image for a registered model version, smoke-test it, push it as ``<registry>/<model>:<version>``
    and record its digest on the model version (tags ``image.reference`` = ``<registry>/<model>:<version>@sha256:…``
    and ``image.digest``), then rebuild the version's model card with them. The task's "Image" extra link opens the
    image's page on the api-server.

    Retry-safe: when the tag already holds an image built from exactly the same content (model file, serving app,
    wheels, base image; label ``io.edge-training.content-key``), nothing is rebuilt or pushed and the existing digest
    is recorded. A retry after a failed push reuses the image an earlier try built on the same worker from the same
    content (smoke-tested again, not rebuilt), so only the push is repeated. The model version is tagged only after
    the registry confirms the pushed digest under the tag.

    Returns ``{"image", "reference", "digest", "reused", "smoke_test"}``.

    :param registered: The register_model task's result (XComArg or dict) with ``model_name`` and ``version`` (and
        ``tags["edge.code_version"]`` for the labels). Templated.
    :param skip: Skip the task (the manual-run Param ``skip_image_build``). Templated.
    :param image_registry_conn_id: Registry connection: host (login server), login, password, extra ``tls_verify``.
    :param base_image: ``BASE_IMAGE`` for the Dockerfile (``EDGE_IMAGE_BASE``); must exist in buildah's storage.
    :param registry_backend: Model registry backend; None uses ``EDGE_MODEL_REGISTRY``.
    :param buildah_root: buildah storage root (``EDGE_BUILDAH_ROOT``).
    :param buildah_runroot: buildah runtime folder (``EDGE_BUILDAH_RUNROOT``).
    :param wheels_dir: Cache folder for the image's wheels (``EDGE_IMAGE_WHEELS_DIR``).
    :param serving_dir: Folder with the Dockerfile, app.py and requirements.txt (``include/serving``).
    """

    template_fields = ("registered", "skip")
    ui_color = "#e8eef8"
    operator_extra_links = (ImageLink(),)

    def __init__(
        self,
        *,
        registered: Any,
        skip: Any = False,
        image_registry_conn_id: str = config.REGISTRY_CONN_ID,
        base_image: str = config.IMAGE_BASE,
        registry_backend: str | None = None,
        buildah_root: str | Path = config.BUILDAH_ROOT,
        buildah_runroot: str | Path = config.BUILDAH_RUNROOT,
        wheels_dir: str | Path = config.IMAGE_WHEELS_DIR,
        serving_dir: str | Path = config.IMAGE_SERVING_DIR,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.registered = registered
        self.skip = skip
        self.image_registry_conn_id = image_registry_conn_id
        self.base_image = base_image
        self.registry_backend = registry_backend
        self.buildah_root = buildah_root
        self.buildah_runroot = buildah_runroot
        self.wheels_dir = wheels_dir
        self.serving_dir = serving_dir

    @cached_property
    def hook(self) -> ImageRegistryHook:
        # The hooks are imported when a task runs, not each time the DAG file is parsed.
        from edge_training.hooks.image import ImageRegistryHook

        return ImageRegistryHook(image_registry_conn_id=self.image_registry_conn_id)

    @cached_property
    def buildah(self) -> Buildah:
        from edge_training.hooks.image import Buildah

        return Buildah(self.buildah_root, self.buildah_runroot)

    @cached_property
    def model_registry(self) -> ModelRegistry:
        from edge_training.registry import get_model_registry

        return get_model_registry(self.registry_backend)

    def execute(self, context: Context) -> dict[str, Any]:
        if parse_flag("skip_image_build", self.skip):
            raise AirflowSkipException("skip_image_build is set for this run: no scoring image is built.")
        registered = _as_dict("register_model", self.registered)
        if not registered.get("model_name") or registered.get("version") in (None, ""):
            raise EdgeTrainingError(
                f"Checked the register_model result for model_name and version: found keys {sorted(registered)}. "
                "Pass the register_model task's output as registered=."
            )
        model_name, version = str(registered["model_name"]), str(registered["version"])
        code_version = str((registered.get("tags") or {}).get("edge.code_version") or "unknown")

        # Credentials first: a wrong password should fail in a second, not after a build.
        self.hook.check_credentials()
        reference = image_reference(self.hook.host, model_name, version)
        _, repository, tag = split_reference(reference)

        with tempfile.TemporaryDirectory(prefix="edge-image-") as scratch:
            from edge_training.hooks.image import download_wheels
            from edge_training.registry import RegisteredModelVersion

            onnx_path = self.model_registry.download_onnx(
                RegisteredModelVersion(name=model_name, version=version, run_id=None), Path(scratch) / "download"
            )
            serving_dir = Path(self.serving_dir)
            wheels = download_wheels(serving_dir / "requirements.txt", Path(self.wheels_dir))
            build_context = assemble_context(Path(scratch) / "context", serving_dir, wheels, onnx_path, self.base_image)

            digest = self._already_pushed(repository, tag, build_context.content_key)
            if digest is not None:
                self.log.info("%s already holds this image (%s): not rebuilt, not pushed again", reference, digest)
                smoke: dict[str, Any] = {"passed": None, "reason": "image already in the registry; not rebuilt"}
            else:
                digest, smoke = self._build_and_push(
                    context, build_context, reference, repository, tag, model_name, version, code_version, scratch
                )

        tags = model_version_tags(reference, digest)
        self.model_registry.set_tags(model_name, version, tags)
        self.log.info("image: %s", tags["image.reference"])
        record_version_links(self, model_name, version, image=True)
        self._update_card(model_name, version)
        return {
            "image": tags["image.reference"],
            "reference": reference,
            "digest": digest,
            "reused": smoke.get("passed") is None,
            "smoke_test": smoke,
        }

    def _update_card(self, model_name: str, version: str) -> None:
        """Rebuild the version's model card now that it has an image reference and digest."""
        from edge_training.model_card_store import publish_model_card
        from edge_training.reports import reports_root

        publish_model_card(self.model_registry, model_name, version, reports_dir=reports_root(),
                           base_url=ui_base_path())

    def _already_pushed(self, repository: str, tag: str, content_key: str) -> str | None:
        found = self.hook.manifest(repository, tag)
        if found is None:
            return None
        digest, manifest = found
        labels = self.hook.image_config(repository, manifest).get("config", {}).get("Labels") or {}
        if labels.get(CONTENT_KEY_LABEL) == content_key:
            return digest
        self.log.warning(
            "%s/%s:%s holds %s built from other content (content key %s, now %s): building and replacing it",
            self.hook.host, repository, tag, digest, labels.get(CONTENT_KEY_LABEL), content_key,
        )  # fmt: skip
        return None

    def _build_and_push(
        self, context, build_context, reference, repository, tag, model_name, version, code_version, scratch
    ) -> tuple[str, dict]:
        self.buildah.require_image(
            self.base_image,
            "Build it with scripts/build_base_image.sh (Debian bookworm + python3 via mmdebstrap; `make base-image`), "
            "or set EDGE_IMAGE_BASE to an image in that storage.",
        )
        local = f"localhost/{repository}:{tag}"
        if self._built_here(local, build_context.content_key):
            # An earlier try (or run) on this worker built it, then its push failed (e.g. the registry went down).
            self.log.info("%s is already built on this worker from this content: not rebuilt", local)
        else:
            labels = image_labels(
                model_name=model_name,
                version=version,
                dag_run_id=context["ti"].run_id,
                code_version=code_version,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                content=build_context.content_key,
            )
            started = time.monotonic()
            self.buildah.build(
                build_context.path,
                local,
                build_args={"BASE_IMAGE": self.base_image, "MODEL_NAME": model_name, "MODEL_VERSION": version},
                labels=labels,
            )
            self.log.info("Built %s in %.1f s", local, time.monotonic() - started)
        smoke = self.smoke_test(local, build_context.model_path, Path(scratch) / "smoke.log")
        with self.hook.authfile() as authfile:
            digest = self.buildah.push(local, reference, authfile, self.hook.settings.tls_verify)
        confirmed = self.hook.manifest(repository, tag)
        if confirmed is None or confirmed[0] != digest:
            raise ImageRegistryError(
                f"Pushed {reference} and buildah reported {digest}, but the registry's tag now points at "
                f"{confirmed[0] if confirmed else 'nothing'}. Another push may have raced this one; the model "
                "version is not tagged. Retry the task."
            )
        self.log.info("Pushed %s (%s)", reference, digest)
        removed = self.buildah.remove_other_tags(local)
        if removed:
            self.log.info("Removed older local images %s (the registry holds them)", removed)
        return digest, smoke

    def _built_here(self, local: str, content_key: str) -> bool:
        """``local`` is in this worker's buildah storage, built from exactly this content (same content-key label)."""
        return self.buildah.image_exists(local) and self.buildah.labels(local).get(CONTENT_KEY_LABEL) == content_key

    def smoke_test(self, image: str, model_path: Path, log_path: Path) -> dict[str, Any]:
        """Start the image's server with ``buildah run`` and check it as a deployer's client would: readiness
        (``/v2/health/ready``), a refused bad request, and predictions on synthetic rows through both protocols
        (MLflow ``/invocations`` and KServe V2 ``infer``) against the model file scored on this worker.

        :raises ImageBuildError: the server does not start or answer, or its predictions differ.
        """
        from edge_training.hooks.image import free_port, request_json

        rows, expected, expected_labels = expected_scores(model_path)
        features = list(rows[0])
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        command = ["python3", SERVER_PATH, "--host", "127.0.0.1", "--port", str(port)]
        with self.buildah.serve(image, command, log_path) as server:
            health = self._wait_healthy(server, base, log_path, started)
            model_name = health.get("model", "")
            status, refused = request_json(f"{base}/invocations", {"dataframe_records": [{"not_a_feature": 1}]})
            if status != 400 or "not_a_feature" not in str(refused.get("message", "")):
                raise ImageBuildError(
                    f"Smoke test of {image}: a row with an unknown feature got HTTP {status} {refused}, expected 400 "
                    "with a message naming it. Check include/serving/app.py."
                )
            split = {"dataframe_split": {"columns": features, "data": [[row[f] for f in features] for row in rows]}}
            status, served = request_json(f"{base}/invocations", split)
            _, metadata = request_json(f"{base}/v2/models/{model_name}")
            tensor = {"name": (metadata.get("inputs") or [{}])[0].get("name", "X"), "datatype": "FP32",
                      "shape": [len(rows), len(features)], "data": split["dataframe_split"]["data"]}  # fmt: skip
            v2_status, v2 = request_json(f"{base}/v2/models/{model_name}/infer", {"inputs": [tensor]})
        if status != 200 or v2_status != 200:
            raise ImageBuildError(
                f"Smoke test of {image}: {len(rows)} synthetic rows got HTTP {status} from POST /invocations "
                f"({served.get('message', '') if status != 200 else 'ok'}) and HTTP {v2_status} from V2 infer "
                f"({v2.get('error', '') if v2_status != 200 else 'ok'}). Server log: "
                f"{log_path.read_text(errors='replace')[-800:]}"
            )
        predictions = served.get("predictions", {})
        verdict = compare_predictions(
            expected, [p[1] for p in predictions.get("probabilities", [])], expected_labels,
            predictions.get("label", []), config.IMAGE_SMOKE_TOLERANCE,
        )  # fmt: skip
        v2_outputs = {o.get("name"): o.get("data", []) for o in v2.get("outputs", [])}
        v2_verdict = compare_predictions(
            expected, v2_outputs.get("probabilities", [])[1::2], expected_labels, v2_outputs.get("label", []),
            config.IMAGE_SMOKE_TOLERANCE,
        )  # fmt: skip
        if not (verdict["passed"] and v2_verdict["passed"]):
            raise ImageBuildError(
                f"Smoke test of {image}: the image's predictions differ from the registered model's on "
                f"{verdict['rows']} synthetic rows (/invocations: max |diff| {verdict['max_abs_diff']}, labels match "
                f"{verdict['labels_match']}; V2 infer: max |diff| {v2_verdict['max_abs_diff']}, labels match "
                f"{v2_verdict['labels_match']}; tolerance {config.IMAGE_SMOKE_TOLERANCE}). Check that "
                "include/serving/requirements.txt pins the onnxruntime the training job uses."
            )
        result = {
            **verdict,
            "health": health.get("status"),
            "features": len(features),
            "protocols": ["mlflow", "v2"],
            "seconds": round(time.monotonic() - started, 1),
        }
        self.log.info("Smoke test of %s passed: %s", image, result)
        return result

    def _wait_healthy(self, server, base: str, log_path: Path, started: float) -> dict:
        from edge_training.hooks.image import request_json

        deadline = started + config.IMAGE_SMOKE_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise ImageBuildError(
                    f"Smoke test: the image's server exited with {server.returncode} before it was ready. "
                    f"Its output ends with:\n{log_path.read_text(errors='replace')[-800:]}"
                )
            try:
                status, ready = request_json(f"{base}/v2/health/ready", timeout=2)
                if status == 200 and ready.get("ready") is True:
                    return request_json(f"{base}/health", timeout=2)[1]
            except OSError:
                pass
            time.sleep(0.5)
        raise ImageBuildError(
            f"Smoke test: the image's server did not answer GET /v2/health/ready on {base} within "
            f"{config.IMAGE_SMOKE_TIMEOUT_S:.0f} s (EDGE_IMAGE_SMOKE_TIMEOUT_S). Its output ends with:\n"
            f"{log_path.read_text(errors='replace')[-800:]}"
        )
