"""Azure ML model registry: the :class:`~edge_training.registry.ModelRegistry` interface on an Azure ML workspace.

A model trained by an Azure ML job is registered from the job's output (``azureml://jobs/<job>/outputs/model``),
so nothing is uploaded: the files stay where the job wrote them (the Stack Hub output datastore). A model
trained elsewhere (the edge VM) is uploaded from the local artifacts folder by azure-ai-ml.

Every registration uses an explicit version and carries the registration key as a tag, so a retry finds the
version it registered before instead of creating another. Azure ML has no aliases: the champion is the version
tagged ``champion=true`` (with ``champion.since``), and only :meth:`AzureMLModelRegistry.promote` moves it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from edge_training import azureml_naming as naming
from edge_training import config
from edge_training.exceptions import ModelRegistryError
from edge_training.registry import (
    CHAMPION_ALIAS,
    ONNX_FILE,
    REGISTRATION_COMPLETE_TAG,
    REGISTRATION_KEY_TAG,
    RegisteredModelVersion,
    read_artifacts,
)

log = logging.getLogger(__name__)

CHAMPION_TAG = CHAMPION_ALIAS
CHAMPION_SINCE_TAG = "champion.since"
MODEL_BLOB_TAG = "edge.model_blob"


class AzureMLModelRegistry:
    """Model versions in an Azure ML workspace.

    :param azureml_conn_id: Airflow ``azure`` connection of the workspace (see ``AzureMLHook``).
    :param wasb_conn_id: Blob connection of the Stack Hub storage holding Azure ML job outputs (to read a
        champion's model.onnx back).
    :param output_container: Blob container of the job output datastore.
    :param output_prefix: Folder of the job outputs in that container.
    """

    def __init__(
        self,
        azureml_conn_id: str = config.AZUREML_CONN_ID,
        wasb_conn_id: str = config.BLOB_CONN_ID,
        output_container: str = config.AZUREML_OUTPUT_CONTAINER,
        output_prefix: str = config.AZUREML_OUTPUT_PREFIX,
    ) -> None:
        self.azureml_conn_id = azureml_conn_id
        self.wasb_conn_id = wasb_conn_id
        self.output_container = output_container
        self.output_prefix = output_prefix

    def __repr__(self) -> str:
        return f"AzureMLModelRegistry(azureml_conn_id={self.azureml_conn_id!r})"

    @cached_property
    def hook(self):
        from edge_training.hooks.azureml import AzureMLHook

        return AzureMLHook(azureml_conn_id=self.azureml_conn_id)

    # -- lookups -------------------------------------------------------------------------------------------

    def _versions(self, model_name: str) -> list:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with self.hook.translate_errors(f"list the versions of model {model_name}"):
                return list(self.hook.client.models.list(name=model_name))
        except ResourceNotFoundError:
            return []

    @staticmethod
    def _to_version(model) -> RegisteredModelVersion:
        tags = {str(k): str(v) for k, v in (model.tags or {}).items()}
        return RegisteredModelVersion(
            name=model.name,
            version=str(model.version),
            run_id=tags.get(REGISTRATION_KEY_TAG),
            tags=tags,
            source=str(model.path or ""),
            uri=f"azureml:{model.name}:{model.version}",
        )

    def find_version_by_run(self, model_name: str, run_id: str) -> RegisteredModelVersion | None:
        found = [m for m in self._versions(model_name) if (m.tags or {}).get(REGISTRATION_KEY_TAG) == run_id]
        if not found:
            return None
        return self._to_version(min(found, key=lambda m: _version_number(m.version)))

    def get_champion(self, model_name: str) -> RegisteredModelVersion | None:
        tagged = [m for m in self._versions(model_name) if (m.tags or {}).get(CHAMPION_TAG) == "true"]
        if not tagged:
            return None
        # Two tagged versions only exist if a promotion stopped half-way: the newer promotion wins.
        newest = max(tagged, key=lambda m: ((m.tags or {}).get(CHAMPION_SINCE_TAG, ""), _version_number(m.version)))
        return self._to_version(newest)

    # -- writes --------------------------------------------------------------------------------------------

    def register(self, model_name: str, artifacts_dir: Path, run_id: str, tags: dict) -> RegisteredModelVersion:
        """Register the trained model; see :meth:`edge_training.registry.ModelRegistry.register`.

        ``run_id`` is the training job id. When the workspace has an Azure ML job of that name, the version is
        registered from that job's ``model`` output; otherwise ``artifacts_dir`` is uploaded.
        One PUT carries every tag, so a version that exists is complete.
        """
        from azure.ai.ml.entities import Model

        existing = self.find_version_by_run(model_name, run_id)
        if existing is not None:
            log.info("Model %s version %s is already registered for run %s", model_name, existing.version, run_id)
            return existing
        read_artifacts(Path(artifacts_dir))  # the same checks as every backend: model.onnx present, metrics JSON
        version = str(max((_version_number(m.version) for m in self._versions(model_name)), default=0) + 1)
        extra = {REGISTRATION_KEY_TAG: run_id}
        if self.hook.get_job(run_id) is not None:
            path = naming.job_output_uri(run_id)
            extra[MODEL_BLOB_TAG] = f"{self.output_container}/{naming.output_prefix(self.output_prefix, run_id)}{ONNX_FILE}"
        else:
            path = str(artifacts_dir)
        model = Model(
            name=model_name,
            version=version,
            path=path,
            type="custom_model",
            description=f"model.onnx + metrics.json of training job {run_id}",
            tags={**{k: str(v) for k, v in tags.items()}, **extra, REGISTRATION_COMPLETE_TAG: "true"},
        )
        with self.hook.translate_errors(f"register model {model_name} version {version}"):
            created = self.hook.client.models.create_or_update(model)
        log.info("Registered model %s version %s for run %s from %s", model_name, version, run_id, path)
        return self._to_version(created)

    def set_tags(self, model_name: str, version: str, tags: dict) -> None:
        with self.hook.translate_errors(f"tag model {model_name} version {version}"):
            model = self.hook.client.models.get(model_name, version=str(version))
            model.tags = {**(model.tags or {}), **{k: str(v) for k, v in tags.items()}}
            self.hook.client.models.create_or_update(model)

    def promote(self, model_name: str, version: str) -> None:
        previous = [
            m for m in self._versions(model_name)
            if (m.tags or {}).get(CHAMPION_TAG) == "true" and str(m.version) != str(version)
        ]  # fmt: skip
        since = datetime.now(timezone.utc).isoformat()
        # New champion first: if untagging the old one fails, get_champion still picks the newer promotion.
        self.set_tags(model_name, version, {CHAMPION_TAG: "true", CHAMPION_SINCE_TAG: since})
        for model in previous:
            self.set_tags(model_name, str(model.version), {CHAMPION_TAG: "false"})
        log.info("Model %s version %s is now the %s", model_name, version, CHAMPION_TAG)

    def download_onnx(self, version: RegisteredModelVersion, dest_dir: Path) -> Path:
        """Copy the version's model.onnx into ``dest_dir``: from the Stack Hub output datastore for a model an
        Azure ML job trained, else through the workspace (azure-ai-ml download)."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / ONNX_FILE
        blob = version.tags.get(MODEL_BLOB_TAG)
        if blob:
            from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
            from azure.core.exceptions import ResourceNotFoundError

            container, name = blob.split("/", 1)
            try:
                data = WasbHook(wasb_conn_id=self.wasb_conn_id).get_conn().get_blob_client(container, name)
                target.write_bytes(data.download_blob().readall())
            except ResourceNotFoundError:
                raise ModelRegistryError(
                    f"Model {version.name} version {version.version}: its model.onnx is not at blob {blob} "
                    f"(connection {self.wasb_conn_id!r}). Was the job output deleted? Promote another version."
                ) from None
            return target
        with self.hook.translate_errors(f"download model {version.name} version {version.version}"):
            self.hook.client.models.download(version.name, version=version.version, download_path=str(dest_dir))
        found = sorted(dest_dir.rglob(ONNX_FILE))
        if not found:
            raise ModelRegistryError(
                f"Model {version.name} version {version.version} has no {ONNX_FILE}; only models registered by "
                "this pipeline can be packaged."
            )
        return found[0]


def _version_number(version) -> int:
    text = str(version)
    return int(text) if text.isdigit() else 0
