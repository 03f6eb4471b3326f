"""Which blobs of a partition are data, and the fingerprint of an exact set of them.

Shared by both sides of the trust boundary: ``validate_data`` (Airflow, at the site) builds the manifest of the blobs it
validated, and ``train.py`` (on the edge VM or in Azure ML) reads exactly those blobs and nothing else. Standard
library only: this file ships to the VM with the training code, and the Airflow side loads it from
``include/training/`` (``edge_training.fingerprint``), so there is one rule and one fingerprint scheme.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

# Daily partitions hold CSV parts; Spark, ADF and AzCopy also drop markers and checksums next to them (_SUCCESS,
# _committed_*, .part-0000.csv.crc). Hadoop's convention: names starting with "_" or "." are not data.
DATA_SUFFIXES = (".csv",)


def is_data_blob(name: str) -> bool:
    """True when the blob ``name`` (``dt=YYYY-MM-DD/part-0000.csv``) is a data part, False for markers and others.

    :param name: full blob name inside the container.
    """
    if not name or name.endswith("/"):
        return False
    # A folder named so is hidden too: Spark stages parts under _temporary/ before it commits them.
    if any(part.startswith(("_", ".")) for part in name.split("/")):
        return False
    return name.lower().endswith(DATA_SUFFIXES)


def blob_version(entry: Mapping[str, Any]) -> str:
    """The content version a manifest entry is fingerprinted by: its Content-MD5 (hex) when set, else its ETag."""
    md5 = entry.get("content_md5")
    return str(md5) if md5 else str(entry.get("etag") or "").strip('"')


def data_fingerprint(entries: Iterable[Mapping[str, Any]]) -> str:
    """``sha256:<hex>`` over (name, content version, size) of every manifest entry, independent of their order.

    Any rewritten, added or removed blob changes the fingerprint; listing order does not.

    :param entries: manifest entries ``{"name", "etag", "content_md5", "size"}``.
    """
    lines = sorted(f"{e['name']}\t{blob_version(e)}\t{int(e['size'])}" for e in entries)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return f"sha256:{digest.hexdigest()}"
