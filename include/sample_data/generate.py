"""Synthetic predictive-maintenance sensor readings for the edge training demo and tests.

Writes daily partitions ``dt=YYYY-MM-DD/part-NNNN.csv`` into a blob container (Azurite locally, Azure Stack Hub
blob storage for real). Same arguments give byte-identical blobs. Each machine slowly wears ("degradation" in
[0, 1], new each day); wear raises temperature, vibration and power and lowers pressure and rpm, and the chance
of a failure within 24 h rises steeply with it, so a model can learn the label from the sensors (a few % positives).

Parts are built in memory one block at a time (at most ``BLOCK_ROWS`` rows) and uploaded as staged blocks, so
several GB can be written with bounded memory.

    python include/sample_data/generate.py --connection-string-env AZURE_STORAGE_CONNECTION_STRING \\
        --start 2026-11-01 --days 14 --total-mb 1024

``--corrupt KIND --corrupt-date D`` replaces part-0000 of day D with a deliberately bad file (see ``CORRUPT_KINDS``)
to show how validation fails; ``--corrupt markers`` instead adds the files that are not data which Spark, ADF and
AzCopy write next to the parts (validation ignores them and passes).

``--shift FEATURE:DELTA`` (repeatable) adds DELTA to every reading of FEATURE on the days written, e.g.
``--shift temperature_c:15`` for a cooling fault: data that still passes validation but has drifted from what a
model was trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import sys
from datetime import date, datetime, timedelta

COLUMNS = [
    "machine_id",
    "timestamp",
    "temperature_c",
    "vibration_mm_s",
    "pressure_bar",
    "rpm",
    "humidity_pct",
    "power_kw",
    "failure_within_24h",
]
SENSOR_COLUMNS = COLUMNS[2:8]
DEFAULT_CONTAINER = "sensor-readings"
# Rows per in-memory block: ~7 MB of CSV, small enough to keep memory flat, large enough to upload efficiently.
BLOCK_ROWS = 100_000
# Parts above this size are split when --parts-per-day is not given.
AUTO_PART_BYTES = 64 * 1024 * 1024
# Share of sensor readings that are missing (sensor dropouts), well under the suite's 1 % threshold.
DROPOUT_RATE = 0.002

CORRUPT_KINDS = {
    "truncated": "file cut off in the middle of a row (upload interrupted)",
    "corrupt-csv": "a line with extra fields in the middle of the file",
    "missing-column": "column vibration_mm_s is absent",
    "renamed-column": "column temperature_c is named temp_c",
    "wrong-dtype": "text 'abc' in the numeric column rpm",
    "out-of-range": "temperature_c readings of 912.0 (a sensor fault)",
    "duplicate-keys": "readings repeated with the same (machine_id, timestamp)",
    "nan-burst": "5 % of pressure_bar readings missing",
    "non-utf8": "bytes that are not valid UTF-8 in a machine_id",
    "empty": "a 0-byte file",
    "header-only": "the header line and no rows",
    "no-header": "the header line is missing: the first line is a data row",
    "markers": "a _SUCCESS marker and a .part-0000.csv.crc checksum beside part-0000 (not data: ignored, passes)",
}
# Files that are not data, as Spark (_SUCCESS, .<part>.crc) writes them next to the parts of a committed partition.
MARKER_BLOBS = ("_SUCCESS", ".part-0000.csv.crc")
# A _SUCCESS marker is empty; a Hadoop checksum file starts with "crc\0" and holds binary CRCs (not text, not CSV).
CRC_FILE_BYTES = b"crc\x00\x00\x00\x02\x00\x9a\x1f\x3c\x07"


def partition_name(day: date, part: int) -> str:
    """Blob name of one part of a daily partition."""
    return f"dt={day.isoformat()}/part-{part:04d}.csv"


def _machine_profiles(seed: int, machines: int):
    import numpy as np

    rng = np.random.default_rng([seed, 0])
    return {
        "temperature_c": rng.uniform(55.0, 70.0, machines),
        "vibration_mm_s": rng.uniform(1.5, 3.5, machines),
        "pressure_bar": rng.uniform(5.0, 7.0, machines),
        "rpm": rng.uniform(1400.0, 1800.0, machines),
        "power_kw": rng.uniform(10.0, 30.0, machines),
    }


def _day_wear(seed: int, day: date, machines: int):
    import numpy as np

    # Most machines are healthy on most days; a few are badly worn (long right tail).
    return np.random.default_rng([seed, 1, day.toordinal()]).beta(0.5, 4.0, machines)


def _block_table(seed, day, first_row, n_rows, rows_per_day, machines, profiles, wear, shift=None):
    """Rows ``first_row .. first_row + n_rows`` of one day as a pyarrow table (deterministic).

    ``shift`` maps sensor columns to a constant added to their readings (the label is drawn from the wear as before:
    the relation a model learned no longer fits the readings).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng([seed, 2, day.toordinal(), first_row])
    row = np.arange(first_row, first_row + n_rows, dtype=np.int64)
    machine = row % machines
    slots_per_day = math.ceil(rows_per_day / machines)
    step_s = 86400 // slots_per_day
    seconds = (row // machines) * step_s
    day_start = np.datetime64(day.isoformat(), "s")
    timestamps = pc.strftime(
        pa.array(day_start + seconds.astype("timedelta64[s]"), type=pa.timestamp("s", tz="UTC")),
        format="%Y-%m-%dT%H:%M:%SZ",
    )
    ids = pa.array([f"M-{m + 1:04d}" for m in range(machines)]).take(pa.array(machine))
    frac_day = seconds / 86400.0
    d = np.clip(wear[machine] + rng.normal(0.0, 0.03, n_rows), 0.0, 1.0)
    values = {
        "temperature_c": profiles["temperature_c"][machine] + 30.0 * d + rng.normal(0.0, 1.5, n_rows),
        "vibration_mm_s": np.maximum(profiles["vibration_mm_s"][machine] + 8.0 * d + rng.normal(0, 0.3, n_rows), 0.0),
        "pressure_bar": np.maximum(profiles["pressure_bar"][machine] - 1.5 * d + rng.normal(0, 0.2, n_rows), 0.0),
        "rpm": np.maximum(profiles["rpm"][machine] - 150.0 * d + rng.normal(0, 20.0, n_rows), 0.0),
        "humidity_pct": np.clip(45.0 + 10.0 * np.sin(2 * np.pi * frac_day) + rng.normal(0, 3.0, n_rows), 0, 100),
        "power_kw": np.maximum(profiles["power_kw"][machine] * (1.0 + 0.3 * d) + rng.normal(0, 0.8, n_rows), 0.0),
    }
    for name, delta in (shift or {}).items():
        values[name] = values[name] + delta
    p_fail = 1.0 / (1.0 + np.exp(-(-6.0 + 10.0 * d)))
    label = (rng.random(n_rows) < p_fail).astype(np.int64)
    arrays = {"machine_id": ids, "timestamp": timestamps}
    for name in SENSOR_COLUMNS:
        decimals = 1 if name == "rpm" else 2
        arrays[name] = pa.array(np.round(values[name], decimals), mask=rng.random(n_rows) < DROPOUT_RATE)
    arrays["failure_within_24h"] = pa.array(label)
    return pa.table(arrays)


def _csv_bytes(table, header: bool) -> bytes:
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    if header:
        buf.write((",".join(table.column_names) + "\n").encode("utf-8"))
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return buf.getvalue()


def _corrupt(table, kind: str, rng) -> bytes:
    """The CSV bytes of ``table`` damaged in the way ``kind`` names."""
    import numpy as np
    import pyarrow as pa

    if kind == "empty":
        return b""
    if kind == "header-only":
        return (",".join(COLUMNS) + "\n").encode("utf-8")
    if kind == "no-header":
        return _csv_bytes(table, header=False)
    if kind == "missing-column":
        return _csv_bytes(table.drop_columns(["vibration_mm_s"]), header=True)
    if kind == "renamed-column":
        return _csv_bytes(table.rename_columns(["temp_c" if c == "temperature_c" else c for c in COLUMNS]), True)
    if kind == "out-of-range":
        temps = table.column("temperature_c").to_numpy(zero_copy_only=False).copy()
        temps[rng.choice(len(temps), size=max(1, len(temps) // 1000), replace=False)] = 912.0
        return _csv_bytes(table.set_column(2, "temperature_c", pa.array(temps, mask=np.isnan(temps))), True)
    if kind == "nan-burst":
        press = table.column("pressure_bar").to_numpy(zero_copy_only=False).copy()
        press[rng.random(len(press)) < 0.05] = np.nan
        return _csv_bytes(table.set_column(4, "pressure_bar", pa.array(press, mask=np.isnan(press))), True)
    if kind == "duplicate-keys":
        return _csv_bytes(pa.concat_tables([table, table.slice(0, min(10, table.num_rows))]), True)
    data = _csv_bytes(table, header=True)
    lines = data.split(b"\n")
    middle = len(lines) // 2
    if kind == "truncated":
        # Cut inside the last complete line, as an interrupted upload would.
        cut = len(data) - 1 - len(lines[-2]) // 2
        return data[:cut]
    if kind == "corrupt-csv":
        lines.insert(middle, b"M-0001,2026-11-01T00:00:00Z,1,2,3,4,5,6,0,extra,fields,here")
        return b"\n".join(lines)
    if kind == "wrong-dtype":
        fields = lines[middle].split(b",")
        fields[COLUMNS.index("rpm")] = b"abc"
        lines[middle] = b",".join(fields)
        return b"\n".join(lines)
    if kind == "non-utf8":
        lines[middle] = lines[middle].replace(b"M-", b"M\xff\xfe", 1)
        return b"\n".join(lines)
    raise ValueError(f"Unknown corruption kind {kind!r}; choose one of: {', '.join(CORRUPT_KINDS)}.")


def _ensure_container(container_client) -> None:
    from azure.core.exceptions import ResourceExistsError

    try:
        container_client.create_container()
    except ResourceExistsError:
        pass


def _upload(container_client, name: str, blocks) -> int:
    """Upload ``blocks`` (an iterable of bytes) as one block blob; return its size in bytes.

    The whole blob's MD5 is stored as its Content-MD5, so readers can fingerprint the content itself (staged block
    uploads get none from the service).
    """
    from azure.storage.blob import BlobBlock, ContentSettings

    blob = container_client.get_blob_client(name)
    block_ids, size, md5 = [], 0, hashlib.md5(usedforsecurity=False)
    for index, data in enumerate(blocks):
        if not data:
            continue
        block_id = f"{index:08d}"
        blob.stage_block(block_id, data, length=len(data))
        block_ids.append(BlobBlock(block_id=block_id))
        size += len(data)
        md5.update(data)
    settings = ContentSettings(content_type="text/csv; charset=utf-8", content_md5=bytearray(md5.digest()))
    if not block_ids:
        blob.upload_blob(b"", overwrite=True, content_settings=settings)
    else:
        blob.commit_block_list(block_ids, content_settings=settings)
    return size


def estimate_bytes_per_row(seed: int = 0, machines: int = 50) -> float:
    """Average CSV size of one row, measured on a sample block."""
    sample_rows = 20_000
    day = date(2026, 1, 1)
    table = _block_table(
        seed, day, 0, sample_rows, sample_rows, machines, _machine_profiles(seed, machines),
        _day_wear(seed, day, machines),
    )
    return len(_csv_bytes(table, header=False)) / sample_rows


def generate(
    container_client,
    start: date,
    days: int,
    rows_per_day: int,
    parts_per_day: int = 1,
    seed: int = 42,
    machines: int = 50,
    corrupt: str | None = None,
    corrupt_date: date | None = None,
    shift: dict[str, float] | None = None,
) -> list[str]:
    """Write ``days`` daily partitions starting at ``start``; return the blob names written.

    :param container_client: ``azure.storage.blob.ContainerClient``; the container is created if absent.
    :param start: first day written.
    :param days: number of consecutive days.
    :param rows_per_day: rows per day (spread evenly over the machines and the day).
    :param parts_per_day: files per day (``part-0000.csv`` ...).
    :param seed: random seed; same arguments give byte-identical blobs.
    :param machines: number of machines (``M-0001`` ...).
    :param corrupt: a key of ``CORRUPT_KINDS``: replace part-0000 of ``corrupt_date`` with a bad file (``markers``:
        add ``MARKER_BLOBS`` beside it instead).
    :param corrupt_date: the day to corrupt (defaults to ``start``).
    :param shift: ``{sensor column: delta}`` added to every reading of that column on the days written.
    """
    import numpy as np

    if days < 1 or rows_per_day < 1 or parts_per_day < 1 or machines < 1:
        raise ValueError(
            f"days, rows_per_day, parts_per_day and machines must all be >= 1, got {days}, {rows_per_day}, "
            f"{parts_per_day}, {machines}."
        )
    if math.ceil(rows_per_day / machines) > 86400:
        raise ValueError(
            f"{rows_per_day} rows per day over {machines} machines is more than one reading per machine per "
            f"second (timestamps have whole seconds); pass --machines {math.ceil(rows_per_day / 86400)} or more."
        )
    unknown = sorted(set(shift or {}) - set(SENSOR_COLUMNS))
    if unknown:
        raise ValueError(f"Cannot shift {unknown}: only the sensor columns {SENSOR_COLUMNS} can be shifted.")
    if corrupt is not None and corrupt not in CORRUPT_KINDS:
        raise ValueError(f"Unknown corruption kind {corrupt!r}; choose one of: {', '.join(CORRUPT_KINDS)}.")
    corrupt_date = corrupt_date or start
    _ensure_container(container_client)
    profiles = _machine_profiles(seed, machines)
    names = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        wear = _day_wear(seed, day, machines)
        bounds = np.linspace(0, rows_per_day, parts_per_day + 1).astype(np.int64)
        for part in range(parts_per_day):
            first, last = int(bounds[part]), int(bounds[part + 1])
            name = partition_name(day, part)
            if corrupt is not None and corrupt != "markers" and day == corrupt_date and part == 0:
                table = _block_table(seed, day, first, last - first, rows_per_day, machines, profiles, wear, shift)
                data = _corrupt(table, corrupt, np.random.default_rng([seed, 3, day.toordinal()]))
                _upload(container_client, name, [data])
            else:
                blocks = (
                    _csv_bytes(
                        _block_table(
                            seed, day, row, min(BLOCK_ROWS, last - row), rows_per_day, machines, profiles, wear,
                            shift,
                        ),
                        header=(row == first),
                    )
                    for row in range(first, last, BLOCK_ROWS)
                )
                _upload(container_client, name, blocks)
            names.append(name)
        if corrupt == "markers" and day == corrupt_date:
            for marker in MARKER_BLOBS:
                name = f"dt={day.isoformat()}/{marker}"
                _upload(container_client, name, [b"" if marker == "_SUCCESS" else CRC_FILE_BYTES])
                names.append(name)
    return names


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--connection-string-env", default="AZURE_STORAGE_CONNECTION_STRING",
        help="name of the environment variable holding the storage connection string",
    )
    parser.add_argument("--container", default=DEFAULT_CONTAINER)
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="first day, YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=14)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--rows-per-day", type=int)
    size.add_argument("--total-mb", type=float, help="approximate total size of all partitions, in MB")
    parser.add_argument("--parts-per-day", type=int, help="files per day (default: enough to keep each <= 64 MB)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--corrupt", choices=sorted(CORRUPT_KINDS))
    parser.add_argument("--corrupt-date", type=date.fromisoformat, help="day to corrupt (default: --start)")
    parser.add_argument(
        "--shift", action="append", type=_shift_arg, default=[], metavar="FEATURE:DELTA",
        help="add DELTA to every reading of the sensor column FEATURE (repeatable), e.g. temperature_c:15",
    )
    return parser.parse_args(argv)


def _shift_arg(text: str) -> tuple[str, float]:
    feature, sep, delta = text.partition(":")
    try:
        if not sep or feature not in SENSOR_COLUMNS:
            raise ValueError
        return feature, float(delta)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected FEATURE:DELTA with FEATURE one of {', '.join(SENSOR_COLUMNS)} and DELTA a number, e.g. "
            f"temperature_c:15; got {text!r}"
        ) from None


def main(argv=None) -> int:
    args = _parse_args(argv)
    from azure.storage.blob import ContainerClient

    connection_string = os.getenv(args.connection_string_env)
    if not connection_string:
        print(
            f"Environment variable {args.connection_string_env} is empty; export the storage account's "
            "connection string into it (for the local stack: see scripts/edge_stack.py).",
            file=sys.stderr,
        )
        return 2
    bytes_per_row = estimate_bytes_per_row(args.seed, args.machines)
    if args.total_mb is not None:
        rows_per_day = max(1, int(args.total_mb * 1024 * 1024 / bytes_per_row / args.days))
    else:
        rows_per_day = args.rows_per_day or 10_000
    parts = args.parts_per_day or max(1, math.ceil(rows_per_day * bytes_per_row / AUTO_PART_BYTES))
    container = ContainerClient.from_connection_string(connection_string, args.container)
    started = datetime.now()
    names = generate(
        container, args.start, args.days, rows_per_day, parts, args.seed, args.machines, args.corrupt,
        args.corrupt_date,
        dict(args.shift),
    )
    seconds = (datetime.now() - started).total_seconds()
    print(
        f"Wrote {len(names)} blobs ({args.days} days x {parts} parts, {rows_per_day} rows per day, "
        f"~{rows_per_day * args.days * bytes_per_row / 1e6:.0f} MB) to container {args.container} "
        f"in {seconds:.1f} s."
    )
    for feature, delta in args.shift:
        print(f"Shifted every {feature} reading by {delta:+g}.")
    if args.corrupt == "markers":
        print(f"Added to dt={(args.corrupt_date or args.start).isoformat()}/: {CORRUPT_KINDS[args.corrupt]}.")
    elif args.corrupt:
        print(f"Corrupted {partition_name(args.corrupt_date or args.start, 0)}: {CORRUPT_KINDS[args.corrupt]}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
