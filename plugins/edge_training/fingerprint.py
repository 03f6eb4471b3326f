"""A stable fingerprint of the exact blobs a model was trained on (recorded as lineage on the model)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def data_fingerprint(blobs: Iterable[tuple[str, str, int]]) -> str:
    """``sha256:<hex>`` over (blob name, etag or MD5, size) of every blob, independent of their order.

    Any rewritten, added or removed blob changes the fingerprint; listing order does not.

    :param blobs: ``(name, etag_or_md5, size)`` per blob.
    """
    lines = sorted(f"{name}\t{etag}\t{int(size)}" for name, etag, size in blobs)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return f"sha256:{digest.hexdigest()}"
