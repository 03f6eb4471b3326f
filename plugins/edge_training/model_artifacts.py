"""A training job's outputs in the site's blob storage: where they live and how the training result names them.

Both training backends leave ``model.onnx``, ``metrics.json`` and (when written) ``reference_profile.json`` in the
training output container, under ``<prefix>/<job id>/``. The training result names those blobs (container, blob
names, ETag, Content-MD5, size) instead of a folder on some worker's disk, so ``register_model`` can run on
another worker than training: it downloads exactly the blobs named, and refuses any that changed since.

Pure logic (no Airflow, no Azure SDK): the hook (:mod:`edge_training.hooks.model_artifacts`) does the I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from edge_training.exceptions import EdgeTrainingError

ONNX_FILE = "model.onnx"
METRICS_FILE = "metrics.json"
# Written by train.py next to model.onnx: the training window's published data profile, what drift is measured against.
REFERENCE_PROFILE_FILE = "reference_profile.json"
REQUIRED_FILES = (ONNX_FILE, METRICS_FILE)
# Only these leave the job's out/ folder: whatever else a training script writes there stays on the VM.
OUTPUT_FILES = (*REQUIRED_FILES, REFERENCE_PROFILE_FILE)
# Uploaded last, beside the outputs: the upload is complete (a retry reuses it instead of needing the VM's copy).
COMPLETE_MARKER = "_complete.json"


class ArtifactError(EdgeTrainingError):
    """A training output in blob storage is missing, changed since training, or not what the result names."""


def output_prefix(prefix: str, job: str) -> str:
    """Blob name prefix (in the output container) of one job's outputs: ``<prefix>/<job>/``."""
    return f"{prefix.strip('/')}/{job}/" if prefix.strip("/") else f"{job}/"


def md5_text(digest: bytes | bytearray | None) -> str | None:
    """A Content-MD5 as the service reports it (base64 of the 16 bytes), or None when the blob has none."""
    return base64.b64encode(bytes(digest)).decode() if digest else None


def blob_entry(name: str, etag: str, content_md5: str | None, size: int) -> dict[str, Any]:
    """One output blob as the training result names it."""
    return {"name": name, "etag": etag, "content_md5": content_md5, "size": int(size)}


def describe(container: str, prefix: str, blobs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The training result's ``artifacts`` value: the container, the job's prefix and each output blob by file name.

    :param container: Training output container.
    :param prefix: The job's blob name prefix (:func:`output_prefix`).
    :param blobs: ``{file name: blob_entry(...)}`` of the outputs found; the required ones must be there.
    :raises ArtifactError: a required output is missing.
    """
    missing = [f for f in REQUIRED_FILES if f not in blobs]
    if missing:
        raise ArtifactError(
            f"Checked the training outputs in {container}/{prefix}: {', '.join(missing)} missing (found "
            f"{', '.join(sorted(blobs)) or 'nothing'}). The job must write model.onnx and metrics.json; check its log."
        )
    return {"container": container, "prefix": prefix, "blobs": {f: dict(blobs[f]) for f in OUTPUT_FILES if f in blobs}}


def check_described(artifacts: Any) -> dict[str, Any]:
    """Check a training result's ``artifacts`` value before anything is downloaded; return it.

    :raises ArtifactError: it is not a description of the training outputs (wrong shape, a required file missing).
    """
    ok = (
        isinstance(artifacts, Mapping)
        and isinstance(artifacts.get("container"), str)
        and isinstance(artifacts.get("blobs"), Mapping)
        and all(
            isinstance(b, Mapping) and isinstance(b.get("name"), str) and b.get("etag") and isinstance(b.get("size"), int)
            for b in artifacts["blobs"].values()
        )
    )
    if not ok:
        raise ArtifactError(
            "Checked the training result's artifacts: expected {container, prefix, blobs: {file: {name, etag, "
            "content_md5, size}}}, found "
            f"a {type(artifacts).__name__} with keys "
            f"{sorted(artifacts) if isinstance(artifacts, Mapping) else '-'}. Pass the training task's output as "
            "training= (both training operators return it)."
        )
    missing = [f for f in REQUIRED_FILES if f not in artifacts["blobs"]]
    if missing:
        raise ArtifactError(
            f"Checked the training result's artifacts in {artifacts['container']}: {', '.join(missing)} not named. "
            "Clear the training task so it uploads its outputs again."
        )
    return dict(artifacts)


def verify_blob(container: str, file: str, expected: Mapping[str, Any], size: int, content_md5: str | None) -> None:
    """Compare one downloaded blob with what the training result recorded for it.

    :param container: Training output container, for the message.
    :param file: Output file name.
    :param expected: The result's entry for it (:func:`blob_entry`).
    :param size: Bytes downloaded.
    :param content_md5: MD5 of the bytes downloaded (base64).
    :raises ArtifactError: size or MD5 differ.
    """
    where = f"{container}/{expected['name']}"
    if size != expected["size"]:
        raise ArtifactError(
            f"Checked {file} ({where}) against the training result: expected {expected['size']} bytes, downloaded "
            f"{size}. The blob was changed or cut short after training; clear the training task to train again."
        )
    if expected.get("content_md5") and not _same_md5(expected["content_md5"], content_md5):
        raise ArtifactError(
            f"Checked {file} ({where}) against the training result: expected Content-MD5 {expected['content_md5']}, "
            f"downloaded bytes hash to {content_md5}. The blob was overwritten after training; clear the training "
            "task to train again."
        )


def _same_md5(a: str, b: str | None) -> bool:
    try:
        return b is not None and base64.b64decode(a) == base64.b64decode(b)
    except (binascii.Error, ValueError):
        return False
