"""Training outputs in the site's blob storage: upload a job's outputs, find them again, download them verified."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from edge_training import config
from edge_training.model_artifacts import (
    COMPLETE_MARKER,
    OUTPUT_FILES,
    ArtifactError,
    blob_entry,
    check_described,
    describe,
    md5_text,
    verify_blob,
)

log = logging.getLogger(__name__)
_CHUNK = 4 * 1024 * 1024


def _file_md5(path: Path) -> bytes:
    digest = hashlib.md5()  # noqa: S324 - Content-MD5 is what Azure Storage records, not a security hash
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.digest()


class ModelArtifactsHook:
    """The training output container of the site's blob storage, through the blob connection.

    :param wasb_conn_id: Blob connection (``edge_blob``) of the storage account holding the output container.
    """

    def __init__(self, wasb_conn_id: str = config.BLOB_CONN_ID) -> None:
        self.wasb_conn_id = wasb_conn_id

    @cached_property
    def service(self):
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        return WasbHook(wasb_conn_id=self.wasb_conn_id).get_conn()

    def container(self, container: str):
        """The container's client (no request is made)."""
        return self.service.get_container_client(container)

    @contextmanager
    def _access(self, container: str, action: str) -> Iterator[None]:
        """Turn the service's refusal (403) into an error that names the connection and the setting to change."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        try:
            yield
        except (ClientAuthenticationError, HttpResponseError) as err:
            if getattr(err, "status_code", None) not in (401, 403):
                raise
            raise ArtifactError(
                f"Checked access to the training output container {container} ({action}) with connection "
                f"{self.wasb_conn_id!r}: the storage service refused it ({err.status_code}). That connection may "
                "hold a SAS of the data container only: set EDGE_OUTPUT_CONN_ID to a connection that may read, "
                "write and create the output container (EDGE_OUTPUT_CONTAINER)."
            ) from None

    def ensure_container(self, container: str) -> None:
        """Create the output container if the storage account has none of that name."""
        from azure.core.exceptions import ResourceExistsError

        client = self.container(container)
        with self._access(container, "check it exists"):
            if client.exists():
                return
        try:
            with self._access(container, "create it"):
                client.create_container()
            log.info("Created the training output container %s (connection %r)", container, self.wasb_conn_id)
        except ResourceExistsError:  # created by a concurrent task in between
            pass

    # -- writing -------------------------------------------------------------------------------------------

    def upload_outputs(self, container: str, prefix: str, folder: Path, job: Mapping[str, Any]) -> dict[str, Any]:
        """Upload the outputs in ``folder`` under ``prefix``, then the completion marker; return their description.

        Only :data:`~edge_training.model_artifacts.OUTPUT_FILES` are uploaded, each with its Content-MD5.

        :param job: What the training result says about the job besides its outputs (code version, window...;
            plain values, no data): kept in the marker, so a retry can answer without the VM's job record.

        :raises ArtifactError: ``model.onnx`` or ``metrics.json`` is not in ``folder``.
        """
        present = [f for f in OUTPUT_FILES if (folder / f).is_file()]
        # Checked before the first upload, so a job without a model leaves nothing in the container.
        describe(container, prefix, {f: {} for f in present})
        self.ensure_container(container)
        client = self.container(container)
        with self._access(container, "upload the training outputs"):
            return self._upload(client, container, prefix, folder, present, job)

    def _upload(self, client, container: str, prefix: str, folder: Path, present: list[str],
                job: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
        from azure.storage.blob import ContentSettings

        described: dict[str, dict] = {}
        for file in present:
            path = folder / file
            md5 = _file_md5(path)
            with open(path, "rb") as data:
                written = client.get_blob_client(prefix + file).upload_blob(
                    data, overwrite=True, content_settings=ContentSettings(content_md5=bytearray(md5))
                )
            described[file] = blob_entry(prefix + file, written["etag"], md5_text(md5), path.stat().st_size)
        artifacts = describe(container, prefix, described)
        # Last: a retry that finds the marker knows every output above was written completely.
        marker = {"artifacts": artifacts, "job": dict(job)}
        client.upload_blob(prefix + COMPLETE_MARKER, json.dumps(marker, indent=2).encode(), overwrite=True)
        log.info(
            "Uploaded %s (%d bytes) to the training output container %s/%s",
            ", ".join(present), sum(b["size"] for b in artifacts["blobs"].values()), container, prefix,
        )  # fmt: skip
        return artifacts

    # -- finding -------------------------------------------------------------------------------------------

    def find_complete(self, container: str, prefix: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(artifacts, job)`` of a complete earlier upload under ``prefix`` (see :meth:`upload_outputs`), or None.

        Complete means: the marker is there and every blob it names is still there with the same ETag.
        """
        from azure.core.exceptions import ResourceNotFoundError

        client = self.container(container)
        try:
            with self._access(container, "look for a complete upload"):
                marker = json.loads(client.download_blob(prefix + COMPLETE_MARKER).readall())
            artifacts = check_described(marker.get("artifacts"))
            job = dict(marker.get("job") or {})
        except ResourceNotFoundError:
            return None
        except (ValueError, AttributeError, ArtifactError) as err:
            log.warning("Ignoring the unreadable upload marker %s/%s%s: %s", container, prefix, COMPLETE_MARKER, err)
            return None
        for file, entry in artifacts["blobs"].items():
            try:
                etag = client.get_blob_client(entry["name"]).get_blob_properties().etag
            except ResourceNotFoundError:
                etag = None
            if etag != entry["etag"]:
                log.warning(
                    "Upload marker %s/%s%s names %s with ETag %s, found %s: not reusing that upload",
                    container, prefix, COMPLETE_MARKER, file, entry["etag"], etag or "no blob",
                )  # fmt: skip
                return None
        return artifacts, job

    def find_outputs(self, container: str, prefix: str) -> dict[str, Any]:
        """Describe the outputs a job wrote itself under ``prefix`` (the Azure ML job's ``model`` output).

        :raises ArtifactError: ``model.onnx`` or ``metrics.json`` is not there.
        """
        from azure.core.exceptions import ResourceNotFoundError

        client = self.container(container)
        found: dict[str, dict] = {}
        for file in OUTPUT_FILES:
            try:
                props = client.get_blob_client(prefix + file).get_blob_properties()
            except ResourceNotFoundError:
                continue
            found[file] = blob_entry(prefix + file, props.etag, md5_text(props.content_settings.content_md5), props.size)
        return describe(container, prefix, found)

    # -- reading -------------------------------------------------------------------------------------------

    def _download(self, artifacts: Mapping[str, Any], file: str):
        """A download stream of ``file`` as it was when the training result was made (ETag must still match)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        container = artifacts["container"]
        entry = artifacts["blobs"][file]
        client = self.container(container)
        try:
            return client.download_blob(entry["name"], etag=entry["etag"], match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError):
            pass
        # The condition failed: say whether the blob is gone or was overwritten (the service answers either way).
        try:
            etag = client.get_blob_client(entry["name"]).get_blob_properties().etag
        except ResourceNotFoundError:
            raise ArtifactError(
                f"Checked the training output {file} at {container}/{entry['name']} (connection "
                f"{self.wasb_conn_id!r}): no such blob. It was deleted after training, or this worker's blob "
                "connection points at another storage account; fix the connection, or clear the training task to "
                "train and upload again."
            ) from None
        raise ArtifactError(
            f"Checked the training output {file} at {container}/{entry['name']}: its ETag is no longer "
            f"{entry['etag']} as the training result recorded but {etag}, so it was overwritten after training. "
            "Clear the training task to train and upload again."
        )

    def download(self, artifacts: Mapping[str, Any], folder: Path) -> Path:
        """Download every output the training result names into ``folder``, checked; return ``folder``.

        :raises ArtifactError: a blob is missing, or its ETag, size or MD5 is not what the result recorded.
        """
        artifacts = check_described(artifacts)
        folder.mkdir(parents=True, exist_ok=True)
        for file, entry in artifacts["blobs"].items():
            stream = self._download(artifacts, file)
            digest = hashlib.md5()  # noqa: S324 - compared with the blob's Content-MD5
            size = 0
            with open(folder / file, "wb") as out:
                for chunk in stream.chunks():
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            verify_blob(artifacts["container"], file, entry, size, md5_text(digest.digest()))
        return folder

    def read_json(self, artifacts: Mapping[str, Any], file: str) -> Any:
        """A JSON output the training result names (checked like :meth:`download`), or None if it names none."""
        if file not in artifacts["blobs"]:
            return None
        data = self._download(artifacts, file).readall()
        entry = artifacts["blobs"][file]
        verify_blob(artifacts["container"], file, entry, len(data), md5_text(hashlib.md5(data).digest()))  # noqa: S324
        try:
            return json.loads(data)
        except ValueError as err:
            raise ArtifactError(
                f"Checked the training output {file} at {artifacts['container']}/{entry['name']}: not JSON "
                f"({err}). Check the training job's log; clear the training task to train again."
            ) from None
