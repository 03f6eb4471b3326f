"""The manifest ``validate_data`` hands to training, built here by listing the container the same way.

Shape of the contract: ``{"name", "etag", "content_md5", "size"}`` per data blob, the ETag exactly as the storage
SDK returns it (usable for If-Match), the Content-MD5 as hex or None; ``data_fingerprint`` over that list.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable


def validation_result(container_client, prefixes: Iterable[str] = ("",)) -> dict:
    """A validation result (``validation_id``, ``data_fingerprint``, ``manifest``) of the data blobs listed."""
    from edge_training.fingerprint import blob_manifest

    blobs = []
    for prefix in prefixes:
        for blob in container_client.list_blobs(name_starts_with=prefix or None):
            if not blob_manifest.is_data_blob(blob.name):
                continue
            md5 = blob.content_settings.content_md5 if blob.content_settings else None
            blobs.append({"name": blob.name, "etag": blob.etag, "content_md5": bytes(md5).hex() if md5 else None,
                          "size": int(blob.size)})  # fmt: skip
    return {"validation_id": f"test-{uuid.uuid4().hex[:8]}", "data_fingerprint": blob_manifest.data_fingerprint(blobs),
            "manifest": blobs}  # fmt: skip


def manifest_document(validation: dict) -> dict:
    """What the operator writes to the job dir for ``train.py --manifest``."""
    return {"validation_id": validation["validation_id"], "data_fingerprint": validation["data_fingerprint"],
            "blobs": validation["manifest"]}  # fmt: skip
