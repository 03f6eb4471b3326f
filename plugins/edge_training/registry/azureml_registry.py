"""Azure ML model registry: the :class:`~edge_training.registry.base.ModelRegistry` interface on an Azure ML workspace.

A model trained by an Azure ML job is registered from the job's output (``azureml://jobs/<job>/outputs/model``),
so nothing is uploaded: the files stay where the job wrote them (the Stack Hub output datastore). A model
trained elsewhere (the edge VM) is uploaded from the local artifacts folder by azure-ai-ml.

Every registration uses an explicit version and carries the registration key as a tag, so a retry finds the
version it registered before instead of creating another. Registration is create-only: the next version is
looked up (404) before it is written, a write that collides with a concurrent registration (the service refuses
to change an existing version's model path) is retried with the next number, and the written version is read back
to check that it carries this registration's key.

Azure ML has no aliases and no conditional writes on tags, so the champion is kept as an append-only record:
promotion ``n`` is version ``n`` of the companion model ``<model>-champion`` (pointing at the champion's files,
tagged with its version). Creating version ``n+1`` is the compare-and-set: of two promotions that both read record
``n``, the service accepts only one. The versions themselves also carry ``champion=true``/``false`` (with
``champion.since``) so the workspace UI shows the champion; the record is what counts.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from edge_training import azureml_naming as naming
from edge_training import config
from edge_training.exceptions import ChampionChangedError, ModelRegistryError
from edge_training.registry.base import (
    CHAMPION_ALIAS,
    ONNX_FILE,
    REGISTRATION_COMPLETE_TAG,
    REGISTRATION_KEY_TAG,
    RegisteredModelVersion,
    champion_must_move,
    read_artifacts,
    version_number,
)

log = logging.getLogger(__name__)

CHAMPION_TAG = CHAMPION_ALIAS
CHAMPION_SINCE_TAG = "champion.since"
MODEL_BLOB_TAG = "edge.model_blob"
CHAMPION_RECORD_SUFFIX = "-champion"
CHAMPION_VERSION_TAG = "edge.champion_version"
ATTACHMENT_TAG_PREFIX = "edge.attachment."
# Concurrent registrations of one model that may collide before each finds a free version number.
REGISTER_ATTEMPTS = 8
# What the service answers a write that would change an existing version's model path (azure-ai-ml compares the
# error text with this constant: azure/ai/ml/_artifacts/_constants.py ASSET_PATH_ERROR).
ASSET_PATH_ERROR_MESSAGE = "Asset paths cannot be updated."


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
        output_container: str = config.OUTPUT_CONTAINER,
        output_prefix: str = config.OUTPUT_PREFIX,
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
        found = self.find_versions_by_tag(model_name, REGISTRATION_KEY_TAG, run_id)
        return found[0] if found else None

    def find_versions_by_tag(self, model_name: str, key: str, value: str) -> list[RegisteredModelVersion]:
        found = [m for m in self._versions(model_name) if (m.tags or {}).get(key) == value]
        return [self._to_version(m) for m in sorted(found, key=lambda m: version_number(m.version))]

    def list_versions(self, model_name: str) -> list[RegisteredModelVersion]:
        return [self._to_version(m) for m in sorted(self._versions(model_name), key=lambda m: version_number(m.version))]

    def _get(self, model_name: str, version: str):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with self.hook.translate_errors(f"read model {model_name} version {version}"):
                return self.hook.client.models.get(model_name, version=str(version))
        except ResourceNotFoundError:
            return None

    def get_version(self, model_name: str, version: str) -> RegisteredModelVersion | None:
        model = self._get(model_name, version)
        return None if model is None else self._to_version(model)

    def _champion_record(self, model_name: str):
        """The newest promotion record, or None if this model was never promoted through records."""
        records = self._versions(model_name + CHAMPION_RECORD_SUFFIX)
        return max(records, key=lambda m: version_number(m.version)) if records else None

    def get_champion(self, model_name: str) -> RegisteredModelVersion | None:
        record = self._champion_record(model_name)
        if record is not None:
            return self.get_version(model_name, (record.tags or {}).get(CHAMPION_VERSION_TAG, ""))
        # A workspace promoted before records existed: the newest champion tag.
        tagged = [m for m in self._versions(model_name) if (m.tags or {}).get(CHAMPION_TAG) == "true"]
        if not tagged:
            return None
        newest = max(tagged, key=lambda m: ((m.tags or {}).get(CHAMPION_SINCE_TAG, ""), version_number(m.version)))
        return self._to_version(newest)

    # -- writes --------------------------------------------------------------------------------------------

    def register(self, model_name: str, artifacts_dir: Path, run_id: str, tags: dict) -> RegisteredModelVersion:
        """Register the trained model; see :meth:`edge_training.registry.base.ModelRegistry.register`.

        ``run_id`` is the training job id. When the workspace has an Azure ML job of that name, the version is
        registered from that job's ``model`` output; otherwise ``artifacts_dir`` is uploaded.
        One PUT carries every tag, so a version that exists is complete.

        :raises ModelRegistryError: no free version was found after :data:`REGISTER_ATTEMPTS` collisions.
        """
        from azure.ai.ml.entities import Model

        existing = self.find_version_by_run(model_name, run_id)
        if existing is not None:
            log.info("Model %s version %s is already registered for run %s", model_name, existing.version, run_id)
            return existing
        read_artifacts(Path(artifacts_dir))  # the same checks as every backend: model.onnx present, metrics JSON
        extra = {REGISTRATION_KEY_TAG: run_id}
        if self.hook.get_job(run_id) is not None:
            path = naming.job_output_uri(run_id)
            extra[MODEL_BLOB_TAG] = f"{self.output_container}/{naming.output_prefix(self.output_prefix, run_id)}{ONNX_FILE}"
        else:
            path = str(artifacts_dir)
        all_tags = {**{k: str(v) for k, v in tags.items()}, **extra, REGISTRATION_COMPLETE_TAG: "true"}
        description = f"model.onnx + metrics.json of training job {run_id}"
        taken: list[str] = []
        for _ in range(REGISTER_ATTEMPTS):
            version = self._next_version(model_name)
            model = Model(name=model_name, version=version, path=path, type="custom_model", description=description,
                          tags=all_tags)
            created = self._create_only(model, REGISTRATION_KEY_TAG, run_id)
            if created is not None:
                log.info("Registered model %s version %s for run %s from %s", model_name, version, run_id, path)
                return self._to_version(created)
            taken.append(version)
            mine = self.find_version_by_run(model_name, run_id)
            if mine is not None:  # an earlier attempt of this same run got there first
                return mine
        raise ModelRegistryError(
            f"Model {model_name}: versions {', '.join(taken)} were each taken by a concurrent registration before "
            f"run {run_id} could write them ({REGISTER_ATTEMPTS} attempts). Retry the task."
        )

    def _next_version(self, model_name: str) -> str:
        """One more than the highest version that exists (the service's own order is by number)."""
        return str(max((version_number(m.version) for m in self._versions(model_name)), default=0) + 1)

    def _create_only(self, model, tag: str, value: str):
        """Write ``model`` only if its version is free; None if another registration holds it.

        The SDK has no create-only call (it PUTs and the service updates an existing version), so: the version
        must not exist, the service refuses a PUT that would change an existing version's path, and the version
        read back must carry ``tag`` = ``value`` (two writers of the same path would otherwise both think they won).
        """
        from azure.ai.ml.exceptions import AssetPathException
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        if self._get(model.name, model.version) is not None:
            return None
        try:
            with self.hook.translate_errors(f"create model {model.name} version {model.version}"):
                self.hook.client.models.create_or_update(model)
        except (AssetPathException, ResourceExistsError):
            return None
        except HttpResponseError as err:
            if ASSET_PATH_ERROR_MESSAGE in str(getattr(getattr(err, "error", None), "message", "") or err):
                return None
            raise
        written = self._get(model.name, model.version)
        if written is None or (written.tags or {}).get(tag) != value:
            return None
        return written

    def set_tags(self, model_name: str, version: str, tags: dict) -> None:
        with self.hook.translate_errors(f"tag model {model_name} version {version}"):
            model = self.hook.client.models.get(model_name, version=str(version))
            model.tags = {**(model.tags or {}), **{k: str(v) for k, v in tags.items()}}
            self.hook.client.models.create_or_update(model)

    def set_description(self, model_name: str, version: str, description: str) -> None:
        with self.hook.translate_errors(f"describe model {model_name} version {version}"):
            model = self.hook.client.models.get(model_name, version=str(version))
            model.description = description
            self.hook.client.models.create_or_update(model)

    def promote(self, model_name: str, version: str, *, expected: str | None) -> None:
        from azure.ai.ml.entities import Model

        target = self._get(model_name, version)
        if target is None:
            raise ModelRegistryError(f"Model {model_name} has no version {version} to promote.")
        record = self._champion_record(model_name)
        current = self.get_champion(model_name)
        now = current.version if current is not None else None
        if not champion_must_move(model_name, version, now, expected):
            log.info("Model %s version %s is already the %s", model_name, version, CHAMPION_TAG)
            return
        since = datetime.now(timezone.utc).isoformat()
        n = version_number(record.version) + 1 if record is not None else 1
        entry = Model(
            name=model_name + CHAMPION_RECORD_SUFFIX,
            version=str(n),
            path=target.path,
            type="custom_model",
            description=f"Promotion {n} of model {model_name}: version {version} is the champion.",
            tags={CHAMPION_VERSION_TAG: str(version), "edge.previous_champion": now or "none", CHAMPION_SINCE_TAG: since},
        )
        if self._create_only(entry, CHAMPION_VERSION_TAG, str(version)) is None:
            latest = self.get_champion(model_name)
            raise ChampionChangedError(
                f"Model {model_name}: promotion record {n} was written by another promotion (champion now version "
                f"{latest.version if latest else 'none'}) before version {version} could be promoted. Nothing was "
                "changed.",
                latest.version if latest else None,
            )
        # The visible state follows the record: new champion first, then the others lose the tag.
        self.set_tags(model_name, version, {CHAMPION_TAG: "true", CHAMPION_SINCE_TAG: since})
        for model in self._versions(model_name):
            if (model.tags or {}).get(CHAMPION_TAG) == "true" and str(model.version) != str(version):
                self.set_tags(model_name, str(model.version), {CHAMPION_TAG: "false"})
        log.info("Model %s version %s is now the %s (promotion record %s)", model_name, version, CHAMPION_TAG, n)

    def attach_file(self, model_name: str, version: str, path: Path) -> str:
        """Upload ``path`` next to the job outputs (the Stack Hub output container) and tag its blob on the version.

        Azure ML model versions are immutable in their files, so attachments live beside them; the tag
        ``edge.attachment.<file name>`` names the blob.
        """
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        path = Path(path)
        if not path.is_file():
            raise ModelRegistryError(f"Model registry: cannot attach {path} to model {model_name} version {version}: "
                                     "no such file.")
        if self._get(model_name, version) is None:
            raise ModelRegistryError(f"Model {model_name} has no version {version} to attach {path.name} to.")
        blob = f"{naming.output_prefix(self.output_prefix, f'{model_name}-v{version}-attachments')}{path.name}"
        client = WasbHook(wasb_conn_id=self.wasb_conn_id).get_conn().get_blob_client(self.output_container, blob)
        with path.open("rb") as data:
            client.upload_blob(data, overwrite=True)
        self.set_tags(model_name, version, {ATTACHMENT_TAG_PREFIX + path.name: f"{self.output_container}/{blob}"})
        return client.url.split("?", 1)[0]

    def download_attachment(self, version: RegisteredModelVersion, name: str, dest_dir: Path) -> Path | None:
        """Copy the blob the tag ``edge.attachment.<name>`` names into ``dest_dir``; None without tag or blob."""
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
        from azure.core.exceptions import ResourceNotFoundError

        where = version.tags.get(ATTACHMENT_TAG_PREFIX + name)
        if not where:
            return None
        container, blob = where.split("/", 1)
        client = WasbHook(wasb_conn_id=self.wasb_conn_id).get_conn().get_blob_client(container, blob)
        target = Path(dest_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.write_bytes(client.download_blob().readall())
        except ResourceNotFoundError:
            return None
        return target

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
