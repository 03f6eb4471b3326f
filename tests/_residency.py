"""Residency audit helpers: find training-data rows in what the pipeline moves off the edge.

A row is recognised by three signatures, so that it is found whatever shape it leaked in:

* the full CSV line (a row copied into a log line or a report);
* its ``machine_id`` next to its ``timestamp`` (a row rendered as a dict, a DataFrame repr, a JSON record), the
  timestamp in any of the usual spellings (``...Z``, ``+00:00``, space or ``T``);
* its six sensor readings in order (a feature vector without the key columns, e.g. a model input example).

Secrets are recognised by value (``find_secrets``: the storage account key, the registry password, the SSH private
key's lines, a SAS signature) and any SAS signature by its shape (``sig=`` followed by a base64 value).

Pure Python, no Airflow import: the unit tests run the scanner on planted rows, the audits on real runs.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import tarfile
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SENSOR_COLUMNS = ("temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct", "power_kw")
# The sample generator's column order, for a blob that lacks its header line.
COLUMNS = ("machine_id", "timestamp", *SENSOR_COLUMNS, "failure_within_24h")
# How far apart (characters) a machine id and a timestamp may be and still count as one rendered row.
PAIR_DISTANCE = 200
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:Z|\+00:00|\+0000)?")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class RowSignatures:
    """Signatures of the training-data rows, built from the CSV partitions as stored at the edge."""

    # Not in the repr: a failing test prints its fixtures, and these are the rows themselves.
    lines: set[str] = field(default_factory=set, repr=False)
    rows_by_timestamp: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list), repr=False)
    sensor_vectors: set[tuple[float, ...]] = field(default_factory=set, repr=False)
    rows: int = 0

    @classmethod
    def from_csv_texts(cls, texts: Iterable[str | bytes]) -> RowSignatures:
        """Signatures of every row in ``texts``, the blobs as stored; bad blobs count too (their rows are data).

        A blob without a header line (its first line is a row) is read with the generator's column order; bytes
        that are not UTF-8 are replaced; a line too short for its header (a truncated upload) has no signature.
        """
        sig = cls()
        for text in texts:
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            lines = text.splitlines()
            if not lines:
                continue
            first = next(csv.reader([lines[0]]))
            header = first if "machine_id" in first else list(COLUMNS)
            rows = lines[1:] if header is first else lines
            mid, ts = header.index("machine_id"), header.index("timestamp")
            sensors = [header.index(c) for c in SENSOR_COLUMNS if c in header]
            for fields, line in zip(csv.reader(rows), rows):
                if len(fields) < len(header):
                    continue
                sig.rows += 1
                sig.lines.add(line)
                sig.rows_by_timestamp[fields[ts]].append((fields[mid], line))
                values = [fields[i] for i in sensors]
                # A sensor dropout leaves no full vector; a line with extra fields is no row whose readings to trust.
                if len(fields) == len(header) and len(values) == len(SENSOR_COLUMNS) and all(values):
                    try:
                        sig.sensor_vectors.add(tuple(round(float(v), 2) for v in values))
                    except ValueError:  # a wrong-dtype cell: the line and the key still identify the row
                        pass
        return sig


@dataclass(frozen=True)
class Finding:
    source: str
    signature: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.source}: {self.signature}: ...{self.excerpt}..."


def scan_text(source: str, text: str, sig: RowSignatures) -> list[Finding]:
    """Every place in ``text`` where a training-data row shows through (empty list: none)."""
    findings = []
    for match in _TIMESTAMP.finditer(text):
        rows = sig.rows_by_timestamp.get(f"{match.group(1)}T{match.group(2)}Z")
        if not rows:
            continue
        around = text[max(0, match.start() - PAIR_DISTANCE) : match.end() + PAIR_DISTANCE]
        for machine_id, line in rows:
            if line in around:
                findings.append(Finding(source, "full CSV line of a training row", line))
                break
            if re.search(rf"\b{re.escape(machine_id)}\b", around):
                findings.append(Finding(source, "machine_id + timestamp of a training row", around.strip()[:160]))
                break
    numbers = [round(float(n), 2) for n in _NUMBER.findall(text)]
    width = len(SENSOR_COLUMNS)
    for i in range(len(numbers) - width + 1):
        window = tuple(numbers[i : i + width])
        if window in sig.sensor_vectors:
            findings.append(Finding(source, "sensor readings of a training row", repr(window)))
    return findings


def files_under(root: Path) -> Iterator[tuple[str, str]]:
    """(path, text) of every file under ``root``; binary files are read byte for byte as Latin-1."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            yield str(path), path.read_bytes().decode("latin-1")


def audit(material: Iterable[tuple[str, str]], sig: RowSignatures) -> tuple[list[Finding], int, int]:
    """Scan every (source, text); return the findings, the number of sources and of characters scanned."""
    findings, sources, chars = [], 0, 0
    for source, text in material:
        sources += 1
        chars += len(text)
        findings.extend(scan_text(source, text, sig))
    return findings, sources, chars


def audit_by_kind(material: dict[str, Iterable[tuple[str, str]]], sig: RowSignatures) -> tuple[str, list[str]]:
    """Audit each kind of material; return a report (sources, characters, rows found per kind) and the first few
    findings of each kind, labelled with it."""
    report, failures = [], []
    for kind, items in material.items():
        findings, sources, chars = audit(items, sig)
        report.append(f"{kind}: {sources} sources, {chars} chars, {len(findings)} rows found")
        failures.extend(f"[{kind}] {f}" for f in findings[:5])
    return "\n".join(report), failures


# A SAS signature in a URL or connection string: "sig=" then 43+ characters of base64, maybe percent-encoded.
SAS_SIGNATURE = re.compile(r"\bsig=(?:[A-Za-z0-9+/=]|%2[bBfF]|%3[dD]){20,}")
# Long enough not to occur by chance in a log, short enough to catch a key broken over lines.
MIN_SECRET_PART = 20


def secret_parts(secret: str) -> list[str]:
    """The pieces of ``secret`` to look for: itself, its URL-encoded form and, for a PEM key, each base64 line."""
    parts = {secret.strip(), urllib.parse.quote(secret.strip(), safe=""), urllib.parse.quote_plus(secret.strip())}
    for line in secret.splitlines():
        line = line.strip()
        if len(line) >= MIN_SECRET_PART and not line.startswith("-----"):
            parts.add(line)
    return sorted(p for p in parts if len(p) >= MIN_SECRET_PART or p == secret.strip())


def find_secrets(source: str, text: str, secrets: dict[str, str]) -> list[Finding]:
    """Every secret of ``secrets`` (name -> value) and every SAS signature in ``text``; excerpts never show them."""
    findings = []
    for name, secret in secrets.items():
        for part in secret_parts(secret):
            at = text.find(part)
            if at >= 0:
                context = text[max(0, at - 60) : at].replace("\n", " ")
                findings.append(Finding(source, f"{name} ({len(part)} chars)", f"{context}<{name}>"))
                break
    for match in SAS_SIGNATURE.finditer(text):
        context = text[max(0, match.start() - 60) : match.start()].replace("\n", " ")
        findings.append(Finding(source, "a SAS signature (sig=...)", f"{context}sig=<redacted>"))
    return findings


def scan_secrets(material: Iterable[tuple[str, str]], secrets: dict[str, str]) -> tuple[list[Finding], int]:
    """Scan every (source, text) for secrets; return the findings and the number of sources scanned."""
    findings, sources = [], 0
    for source, text in material:
        sources += 1
        findings.extend(find_secrets(source, text, secrets))
    return findings, sources


def layer_files(layer: bytes, source: str, under: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) of every regular file in an image layer (a tar, gzip-compressed or not) whose path starts
    with ``under``; binary content is read byte for byte as Latin-1."""
    data = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile() and member.name.lstrip("./").startswith(under):
                handle = tar.extractfile(member)
                if handle is not None:
                    yield f"{source}:{member.name}", handle.read().decode("latin-1")
