"""The data-blob rule and the fingerprint of the exact blobs a model was trained on (recorded as lineage).

Both live in ``include/training/blob_manifest.py``, which ships to the edge VM with the training code: loading it
from there keeps one rule and one fingerprint scheme for validation (here) and training (on the VM).
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_training.shipped import training_module

blob_manifest = training_module("blob_manifest")

is_data_blob = blob_manifest.is_data_blob


def data_fingerprint(blobs: Iterable[tuple[str, str, int]]) -> str:
    """``sha256:<hex>`` over (blob name, etag or MD5, size) of every blob, independent of their order.

    :param blobs: ``(name, etag_or_md5, size)`` per blob.
    """
    return blob_manifest.data_fingerprint({"name": n, "etag": v, "size": s} for n, v, s in blobs)
