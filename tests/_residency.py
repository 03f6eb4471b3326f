"""Residency audit helpers: find training-data rows in what the pipeline moves off the edge.

A row is recognised by three signatures, so that it is found whatever shape it leaked in:

* the full CSV line (a row copied into a log line or a report);
* its ``machine_id`` next to its ``timestamp`` (a row rendered as a dict, a DataFrame repr, a JSON record), the
  timestamp in any of the usual spellings (``...Z``, ``+00:00``, space or ``T``);
* its six sensor readings in order (a feature vector without the key columns, e.g. a model input example).

Pure Python, no Airflow import: the unit tests run the scanner on planted rows, the audits on real runs.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SENSOR_COLUMNS = ("temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct", "power_kw")
# How far apart (characters) a machine id and a timestamp may be and still count as one rendered row.
PAIR_DISTANCE = 200
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:Z|\+00:00|\+0000)?")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class RowSignatures:
    """Signatures of the training-data rows, built from the CSV partitions as stored at the edge."""

    lines: set[str] = field(default_factory=set)
    rows_by_timestamp: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    sensor_vectors: set[tuple[float, ...]] = field(default_factory=set)
    rows: int = 0

    @classmethod
    def from_csv_texts(cls, texts: Iterable[str]) -> RowSignatures:
        sig = cls()
        for text in texts:
            reader = csv.reader(io.StringIO(text))
            header = next(reader)
            mid, ts = header.index("machine_id"), header.index("timestamp")
            sensors = [header.index(c) for c in SENSOR_COLUMNS]
            for fields, line in zip(reader, text.splitlines()[1:]):
                sig.rows += 1
                sig.lines.add(line)
                sig.rows_by_timestamp[fields[ts]].append((fields[mid], line))
                values = [fields[i] for i in sensors]
                if all(values):  # a row with a sensor dropout has no full vector to look for
                    sig.sensor_vectors.add(tuple(round(float(v), 2) for v in values))
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
