"""Validate a training window's blobs against the Great Expectations suite, streaming, in bounded memory.

Each blob ("partition") is read in chunks of ``chunk_rows`` rows (its next byte range downloading while the current
one is parsed); the row-level expectations run on every chunk and the chunk results are merged into one result per
partition. Those that ``fast_expectations`` covers (not null, between, in set, match regex, with their usual
keywords) are computed directly with the same pandas operations Great Expectations uses, giving its counts and
results; Great Expectations itself runs the others, and the expectations about a partition's shape once per
partition. Checks that only make sense over a whole partition are decided on the merged counts: the row count, the
share of missing values (``mostly`` of the not-null expectations) and duplicate ``(machine_id, timestamp)`` keys,
which are tracked as 64-bit hashes across chunks and across the blobs of a day.

No Airflow import here; Great Expectations and pandas are imported inside the functions (they are slow to import
and the DAG file imports the operators that import this module).

What leaves this module (the summary, exception messages, log lines, Data Docs) carries counts, aggregates (e.g. a
column's maximum), blob names and the suite's own column names, never a cell of the data: no data row, no sample of
unexpected values, no header field that is not an expected column name (a file without its header line has a data
row there).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

from edge_training import drift, fast_expectations
from edge_training.exceptions import DataValidationError, EdgeTrainingError
from edge_training.fingerprint import blob_manifest, is_data_blob
from edge_training.window import TrainingWindow, partition_prefix

log = logging.getLogger(__name__)

KEY_COLUMNS = ("machine_id", "timestamp")
# Parsed types per column; anything that does not parse as its type is reported as a wrong-dtype failure.
COLUMN_DTYPES = {
    "machine_id": "str",
    "timestamp": "str",
    "temperature_c": "float64",
    "vibration_mm_s": "float64",
    "pressure_bar": "float64",
    "rpm": "float64",
    "humidity_pct": "float64",
    "power_kw": "float64",
    # Nullable, so a missing label is reported by the not-null expectation rather than as a parse error.
    "failure_within_24h": "Int64",
}
# 250k rows of this schema are ~40 MB in pandas: large enough that the per-chunk costs (a Great Expectations run
# for any expectation fast_expectations leaves to it) stay small next to parsing, small enough to keep the task
# under 512 MB with Great Expectations loaded.
DEFAULT_CHUNK_ROWS = 250_000
DEFAULT_PROFILE_K = drift.DEFAULT_K
DATA_DOCS_SITE = "edge_training"
PARTITION_SAMPLE_ROWS = 1000
# Expectations about a partition's shape rather than its rows. The header and the parsed dtypes are the same for every
# chunk of a blob (the reader forces the dtypes), and row count and key uniqueness are decided over the whole partition
# below; so these run once per partition, on the first rows of its first chunk. Everything else runs on every chunk
# (see _Validator.validate_chunk).
PARTITION_LEVEL_TYPES = frozenset(
    {
        "expect_table_columns_to_match_ordered_list",
        "expect_table_columns_to_match_set",
        "expect_table_column_count_to_equal",
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_be_in_type_list",
        "expect_compound_columns_to_be_unique",
    }
)
MAX_LINES_PER_PARTITION = 20
# Ignored blobs named in the summary and the log (all are counted): Spark writes a checksum next to every part.
MAX_IGNORED_NAMES = 100
# Great Expectations logs hundreds of internal INFO/DEBUG records per validation; a task log shows its warnings only.
LIBRARY_LOG_LEVEL = logging.WARNING
# What Great Expectations computes per expectation: counts only. No sample of unexpected values is produced, so none
# can reach a message or the Data Docs (and the chunks are validated a little faster).
RESULT_FORMAT = {
    "result_format": "BASIC",
    "partial_unexpected_count": 0,
    "exclude_unexpected_values": True,
    "include_unexpected_rows": False,
}
# Observed values that are reports of the data's type, not of its values, and may be shown as they are.
TYPE_EXPECTATIONS = frozenset({"expect_column_values_to_be_of_type", "expect_column_values_to_be_in_type_list"})


@dataclass(frozen=True)
class PartitionSource:
    """One blob to validate.

    :param name: blob name, e.g. ``dt=2026-11-01/part-0000.csv``.
    :param etag: the ETag as the storage SDK returns it (quotes included), the if-match condition of every read.
    :param size: size in bytes.
    :param opener: returns a fresh binary stream of the blob's bytes each time it is called.
    :param content_md5: the blob's Content-MD5 as hex, or None when the store has none.
    """

    name: str
    etag: str
    size: int
    opener: Callable[[], IO[bytes]] = field(repr=False, compare=False)
    content_md5: str | None = None

    def open(self) -> IO[bytes]:
        """A new binary stream over the blob's bytes."""
        return self.opener()

    @property
    def manifest_entry(self) -> dict[str, Any]:
        """The blob as training reads it back: ``{"name", "etag", "content_md5", "size"}``."""
        return {"name": self.name, "etag": self.etag, "content_md5": self.content_md5, "size": self.size}

    @property
    def day(self) -> str | None:
        """The partition day (``YYYY-MM-DD``) from the ``dt=`` folder of the name, if any."""
        match = re.search(r"dt=(\d{4}-\d{2}-\d{2})/", self.name)
        return match.group(1) if match else None


class _ChunkStream(io.RawIOBase):
    """A read-only raw stream over an iterator of byte chunks (the blob download's ``chunks()``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        # Stops the download behind the chunks (pending range requests) as soon as the reader is done with it.
        if not self.closed and hasattr(self._chunks, "close"):
            self._chunks.close()
        super().close()

    def readinto(self, buffer) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


# Bytes fetched per request. The SDK's first request of a download is up to 32 MB (max_single_get_size); asking
# for bounded ranges keeps the bytes in memory bounded however the client is configured.
DOWNLOAD_RANGE_BYTES = 4 * 1024 * 1024
# Ranges requested ahead of the reader, one after the other by a background thread: the next range downloads while
# the current one is parsed and its chunks validated. Measured here on Azurite (1.1 GB): one range ahead downloads
# as fast as the SDK's concurrent download with max_concurrency=4 (the emulator is the bottleneck), two or four
# add 10-40 MB of peak memory and no speed.
DOWNLOAD_RANGES_AHEAD = 1


def _blob_opener(container_client, name: str, etag: str | None, size: int) -> Callable[[], IO[bytes]]:
    def fetch(offset: int, length: int, kwargs: dict[str, Any]) -> bytes:
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            downloader = container_client.download_blob(name, offset=offset, length=length, **kwargs)
            return b"".join(downloader.chunks())
        except (ResourceModifiedError, ResourceNotFoundError) as err:
            what = "rewritten" if isinstance(err, ResourceModifiedError) else "deleted"
            raise EdgeTrainingError(
                f"Blob {name} was {what} while the training window was being validated (listed with ETag "
                f"{etag}, {size} bytes; the read of bytes {offset}..{offset + length - 1} was refused), so what "
                "was read is not one version of the blob and nothing was validated. Re-run validate_data once "
                "the writer has finished (the task retries on its own)."
            ) from None

    def ranges() -> Iterator[bytes]:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        from azure.core import MatchConditions

        kwargs: dict[str, Any] = {}
        if etag:
            # Every range must come from the version that was listed (and goes into the manifest), not one rewritten
            # since: what was validated is then exactly what training is told to read.
            kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        offsets = iter(range(0, size, DOWNLOAD_RANGE_BYTES))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-range") as pool:
            pending: deque = deque()

            def request_next() -> None:
                offset = next(offsets, None)
                if offset is not None:
                    pending.append(pool.submit(fetch, offset, min(DOWNLOAD_RANGE_BYTES, size - offset), kwargs))

            for _ in range(DOWNLOAD_RANGES_AHEAD):
                request_next()
            try:
                while pending:
                    data = pending.popleft().result()
                    request_next()
                    yield data
            finally:
                # The reader stopped early (an error, a blob pyarrow refused): no more ranges are fetched.
                for future in pending:
                    future.cancel()

    def open_blob() -> IO[bytes]:
        return _ChunkStream(ranges())

    return open_blob


def blob_partitions(container_client, window: TrainingWindow) -> list[PartitionSource]:
    """Every blob under the ``dt=`` folders of ``window``, listed from the container (nothing is downloaded yet).

    Markers and other files that are not data are listed too; :func:`validate_partitions` sets them aside by the
    shared rule (``is_data_blob``) and names them in its summary.

    :param container_client: ``azure.storage.blob.ContainerClient`` of the readings container.
    :param window: the training window; one ``dt=YYYY-MM-DD/`` prefix is listed per day.
    """
    sources = []
    for prefix in window.partition_prefixes:
        for blob in container_client.list_blobs(name_starts_with=prefix):
            if blob.name.endswith("/"):
                continue
            md5 = blob.content_settings.content_md5 if blob.content_settings else None
            sources.append(
                PartitionSource(
                    name=blob.name,
                    etag=blob.etag,
                    size=int(blob.size),
                    opener=_blob_opener(container_client, blob.name, blob.etag, int(blob.size)),
                    content_md5=bytes(md5).hex() if md5 else None,
                )
            )
    return sources


def load_suite_json(suite_path: str | Path) -> dict:
    """The expectation suite as a dict (as saved by ``ExpectationSuite.to_json_dict()``)."""
    path = Path(suite_path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise EdgeTrainingError(
            f"Expectation suite {path} does not exist; set EDGE_EXPECTATION_SUITE_PATH or the operator's "
            "suite_path to the JSON suite (include/expectations/sensor_readings.json in the project)."
        ) from err


# --------------------------------------------------------------------------------------------------------------
# Merging chunk results into one result per partition
# --------------------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 6)) if abs(value) < 1e15 else f"{value:.6g}"
    return str(value)


_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


def _without_quoted(text: str, limit: int = 300) -> str:
    """A library's error message with every quoted part blanked and cut to ``limit`` characters.

    pandas and Great Expectations quote the offending value in some messages ("could not convert string to float:
    'abc'"); the structure of the message (line numbers, field counts, the type involved) is what helps.
    """
    text = _QUOTED.sub("'…'", str(text).strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def column_list_findings(found: Sequence[str], expected: Sequence[str]) -> str:
    """What differs between a header line and the expected columns, naming only expected columns.

    A field that is not an expected column name is given by its position, never by its text: it may be a data cell
    (a file without its header line) or anything else that is not the suite's.

    :param found: the fields of the file's first line.
    :param expected: the suite's column names, in order.
    """
    expected_set = set(expected)
    missing = [c for c in expected if c not in found]
    foreign = [i + 1 for i, c in enumerate(found) if c not in expected_set]
    parts = []
    if not expected_set.intersection(found):
        return (
            f"the first line has {len(found)} field(s) and none is an expected column name: it looks like a data row, "
            f"not a header; write the header line {','.join(expected)} as the first line of the file"
        )
    if len(found) != len(expected):
        parts.append(f"the header has {len(found)} field(s), expected {len(expected)}")
    if missing:
        parts.append(f"missing {missing}")
    if foreign:
        shown = ", ".join(str(p) for p in foreign[:10]) + (", …" if len(foreign) > 10 else "")
        parts.append(f"{len(foreign)} field(s) that are not expected column names, at position(s) {shown}")
    if not missing and not foreign:
        misplaced = [c for i, c in enumerate(found) if i >= len(expected) or expected[i] != c]
        parts.append(f"same columns in a different order ({misplaced} out of place)")
    return "; ".join(parts) + f"; expected {list(expected)}"


def _raised(result) -> bool:
    """Whether Great Expectations could not evaluate the expectation (its exception info, flat or per metric)."""
    info = result.exception_info or {}
    return bool(info.get("raised_exception")) or any(
        isinstance(v, dict) and v.get("raised_exception") for v in info.values()
    )


@dataclass
class _Merged:
    """Merged results of one expectation over the chunks of a partition."""

    config: Any  # ExpectationConfiguration
    chunk_success: bool = True
    element_count: int = 0
    unexpected_count: int = 0
    missing_count: int = 0
    observed_value: Any = None
    exception_message: str | None = None
    observed_min: float | None = None
    observed_max: float | None = None
    is_map: bool = False

    @property
    def type(self) -> str:
        return self.config.type

    @property
    def column(self) -> str | None:
        return self.config.kwargs.get("column")

    @property
    def title(self) -> str:
        column = self.column or ", ".join(self.config.kwargs.get("column_list", []) or [])
        if self.type == "expect_table_columns_to_match_ordered_list":
            column = ""
        return f"{self.type}({column})" if column else self.type

    @property
    def mostly(self) -> float:
        return float(self.config.kwargs.get("mostly", 1.0) or 1.0)

    def add(self, result, chunk) -> None:
        info = result.exception_info or {}
        if _raised(result):
            messages = [info.get("exception_message")] + [
                v.get("exception_message") for v in info.values() if isinstance(v, dict)
            ]
            first = next((m for m in messages if m), "error")
            self.exception_message = self.exception_message or _without_quoted(first)
            self.chunk_success = False
            return
        res = result.result or {}
        if "unexpected_count" in res and "element_count" in res:
            self.is_map = True
            self.element_count += int(res.get("element_count") or 0)
            self.unexpected_count += int(res.get("unexpected_count") or 0)
            self.missing_count += int(res.get("missing_count") or 0)
        else:
            if not result.success or self.observed_value is None:
                if self.chunk_success:
                    self.observed_value = res.get("observed_value")
        self.chunk_success = self.chunk_success and bool(result.success)
        column = self.column
        # The out-of-range extreme always lies in a chunk with unexpected values: only those are scanned.
        if (
            self.type == "expect_column_values_to_be_between"
            and res.get("unexpected_count")
            and column in chunk.columns
        ):
            values = chunk[column]
            lo, hi = values.min(), values.max()
            if lo == lo:  # not NaN: the column has at least one value
                self.observed_min = float(lo) if self.observed_min is None else min(self.observed_min, float(lo))
                self.observed_max = float(hi) if self.observed_max is None else max(self.observed_max, float(hi))

    def partition_success(self) -> bool:
        if self.exception_message:
            return False
        if self.is_map:
            evaluated = self.element_count - self.missing_count
            if evaluated <= 0:
                return True
            return (evaluated - self.unexpected_count) / evaluated >= self.mostly
        return self.chunk_success

    def describe(self) -> str:
        """What was found, for the failure message (aggregates and single observed values only)."""
        kwargs = self.config.kwargs
        if self.exception_message:
            return f"could not be evaluated: {self.exception_message}"
        if self.type == "expect_column_values_to_not_be_null":
            share = self.unexpected_count / self.element_count if self.element_count else 0.0
            allowed = 1.0 - self.mostly
            return (
                f"{self.unexpected_count} of {self.element_count} values missing ({share:.2%}), "
                f"allowed {'none' if allowed <= 0 else f'≤ {allowed:.2%}'}"
            )
        if self.type == "expect_column_values_to_be_between":
            lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
            parts = [f"{self.unexpected_count} of {self.element_count - self.missing_count} values out of range"]
            if hi is not None and self.observed_max is not None and self.observed_max > hi:
                parts.append(f"observed max {_fmt(self.observed_max)}, allowed ≤ {_fmt(hi)}")
            if lo is not None and self.observed_min is not None and self.observed_min < lo:
                parts.append(f"observed min {_fmt(self.observed_min)}, allowed ≥ {_fmt(lo)}")
            return ", ".join(parts)
        if self.type == "expect_column_values_to_be_in_set":
            allowed = "{" + ", ".join(_fmt(v) for v in kwargs.get("value_set", [])) + "}"
            return f"{self.unexpected_count} of {self.element_count - self.missing_count} values outside {allowed}"
        if self.type == "expect_column_values_to_match_regex":
            return (
                f"{self.unexpected_count} of {self.element_count - self.missing_count} values do not match "
                f"{kwargs.get('regex')}"
            )
        if self.type == "expect_column_values_to_be_of_type":
            return f"observed type {self.observed_value}, expected {kwargs.get('type_')}"
        if self.type == "expect_table_columns_to_match_ordered_list":
            return column_list_findings(list(self.observed_value or []), list(kwargs.get("column_list") or []))
        if self.type == "expect_table_row_count_to_be_between":
            lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
            bounds = " and ".join(b for b in [f"≥ {lo}" if lo is not None else "", f"≤ {hi}" if hi else ""] if b)
            return f"observed {self.observed_value} rows, allowed {bounds}"
        if self.is_map:
            return f"{self.unexpected_count} of {self.element_count} values unexpected"
        return f"observed {self.reported_observed_value()}"

    def reported_observed_value(self) -> Any:
        """The observed value as it may leave validation: a number or a type name as is, anything else described.

        A list, a set or a text observed by a future expectation (distinct values, the most common value, a
        header line) could hold data cells.
        """
        value = self.observed_value
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str) and self.type in TYPE_EXPECTATIONS:
            return value
        if self.type == "expect_table_columns_to_match_ordered_list":
            return column_list_findings(list(value or []), list(self.config.kwargs.get("column_list") or []))
        if isinstance(value, (list, tuple, set, dict)):
            return f"{len(value)} value(s), not shown (only counts leave validation)"
        return "a value, not shown (only counts leave validation)"

    def to_gx_result(self):
        """The merged result in Great Expectations' form, for Data Docs (no sample values)."""
        from great_expectations.core.expectation_validation_result import ExpectationValidationResult

        if self.exception_message:
            result: dict = {}
            # Data Docs renders the traceback as text; the message is all that is useful here.
            exception_info = {
                "raised_exception": True,
                "exception_message": self.exception_message,
                "exception_traceback": self.exception_message,
            }
        else:
            exception_info = {"raised_exception": False, "exception_message": "", "exception_traceback": ""}
            if self.is_map:
                evaluated = max(self.element_count - self.missing_count, 0)
                result = {
                    "element_count": self.element_count,
                    "unexpected_count": self.unexpected_count,
                    "unexpected_percent": 100.0 * self.unexpected_count / evaluated if evaluated else 0.0,
                    "missing_count": self.missing_count,
                    "missing_percent": 100.0 * self.missing_count / self.element_count if self.element_count else 0.0,
                    # Counts only: the renderer shows a sample table when there is one, and there never is.
                    "partial_unexpected_list": [],
                }
                if self.observed_max is not None:
                    result["observed_value"] = f"min {_fmt(self.observed_min)}, max {_fmt(self.observed_max)}"
            else:
                result = {"observed_value": self.reported_observed_value()}
        return ExpectationValidationResult(
            success=self.partition_success(),
            expectation_config=self.config,
            result=result,
            exception_info=exception_info,
        )


@dataclass
class _PartitionReport:
    """Everything found about one partition (or one missing day)."""

    name: str
    rows: int = 0
    merged: list[_Merged] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "expectation: what was found"
    read_error: str | None = None
    missing_day: bool = False


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def _header_columns(stream: io.BufferedReader) -> list[str] | None:
    """Column names from the first line, without consuming it; None for a 0-byte file."""
    head = stream.peek(1 << 16)
    if not head:
        return None
    first_line = head.split(b"\n", 1)[0].rstrip(b"\r")
    # pandas skips a UTF-8 byte order mark at the start of a file; so does the header check.
    text = first_line.decode("utf-8", errors="replace").lstrip("\ufeff")
    return [name.strip().strip('"') for name in text.split(",")]


def _diagnose_dtypes(source: PartitionSource, columns: list[str], chunk_rows: int) -> list[tuple[str, str]]:
    """Which columns hold values that do not parse as their type: ``(expectation title, what was found)``."""
    import pandas as pd

    typed = [c for c in columns if COLUMN_DTYPES.get(c) not in (None, "str")]
    bad_counts: dict[str, int] = dict.fromkeys(typed, 0)
    first_bad: dict[str, int] = {}
    row_offset = 0
    with io.BufferedReader(source.open(), buffer_size=1 << 20) as stream:
        for chunk in pd.read_csv(
            stream, chunksize=chunk_rows, dtype=str, keep_default_na=True, encoding="utf-8",
            encoding_errors="replace",
        ):
            for column in typed:
                text = chunk[column]
                numbers = pd.to_numeric(text, errors="coerce")
                bad = text.notna() & numbers.isna()
                if COLUMN_DTYPES[column].lower().startswith("int"):
                    bad |= numbers.notna() & (numbers % 1 != 0)
                count = int(bad.sum())
                if count:
                    bad_counts[column] += count
                    if column not in first_bad:
                        # The row number, not the value: the value is a cell of the data.
                        first_bad[column] = row_offset + int(bad.to_numpy().nonzero()[0][0]) + 1
            row_offset += len(chunk)
    found = []
    for column in typed:
        if bad_counts[column]:
            found.append(
                (
                    f"expect_column_values_to_be_of_type({column})",
                    f"{bad_counts[column]} value(s) are not {COLUMN_DTYPES[column]} "
                    f"(first at data row {first_bad[column]})",
                )
            )
    return found


@contextmanager
def quiet_library_logs(level: int = LIBRARY_LOG_LEVEL) -> Iterator[None]:
    """Raise Great Expectations' loggers to ``level`` while the block runs, then put them back.

    Its internal INFO/DEBUG records (hundreds per validation: "Skipping registering function ... because it is a
    closure", "_get_default_value called with key ...") would bury the pipeline's own lines in the task log. Some are
    logged while it is imported and one of its modules sets its own logger to INFO, so the levels are set before the
    import and again after it. Done for the task's duration only, not at import of this module.
    """
    import sys

    saved: dict[str, int] = {}

    def quiet() -> None:
        logging.getLogger("great_expectations")
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if name.split(".", 1)[0] == "great_expectations" and isinstance(logger, logging.Logger):
                saved.setdefault(name, logger.level)
                if logger.level < level:
                    logger.setLevel(level)

    quiet()
    try:
        if "great_expectations" not in sys.modules:
            import great_expectations  # noqa: F401  (its import logs; and creates loggers with levels of their own)

            quiet()
        yield
    finally:
        for name, previous in saved.items():
            logging.getLogger(name).setLevel(previous)


@contextmanager
def no_batch_fingerprints() -> Iterator[None]:
    """Keep Great Expectations from hashing every chunk while the block runs, then put its threshold back.

    Its pandas engine fingerprints each batch below ``HASH_THRESHOLD`` bytes (``hash_pandas_object`` over every cell,
    then MD5) for a batch marker that nothing here reads; on a chunk of a million rows that costs about as much as
    evaluating the whole suite on it.
    """
    from great_expectations.execution_engine import pandas_execution_engine as engine

    saved = engine.HASH_THRESHOLD
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = saved


class _Validator:
    """Runs the suite over chunks and keeps what is needed to judge whole partitions."""

    def __init__(self, suite_dict: dict, docs_dir: Path) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.context.add_data_docs_site(
            DATA_DOCS_SITE,
            {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        self.suite = self.context.suites.add(gx.ExpectationSuite(**suite_dict))
        expectations = suite_dict["expectations"]
        self.expected_columns = next(
            (
                list(e["kwargs"]["column_list"])
                for e in expectations
                if e["type"] in ("expect_table_columns_to_match_ordered_list", "expect_table_columns_to_match_set")
            ),
            list(COLUMN_DTYPES),
        )
        self.partition_suite = self.context.suites.add(
            gx.ExpectationSuite(
                name=f"{self.suite.name}__partition",
                expectations=[e for e in expectations if e["type"] in PARTITION_LEVEL_TYPES],
            )
        )
        self.row_suite = self.context.suites.add(
            gx.ExpectationSuite(
                name=f"{self.suite.name}__rows",
                expectations=[e for e in expectations if e["type"] not in PARTITION_LEVEL_TYPES],
            )
        )
        self.batch_definition = (
            self.context.data_sources.add_pandas("training_window")
            .add_dataframe_asset("sensor_readings")
            .add_batch_definition_whole_dataframe("chunk")
        )
        # The configurations of the row-level expectations (the library builds one anew on every access), in the
        # order Great Expectations reports a suite's results: by column.
        self.row_order = fast_expectations.column_grouped(
            [e.configuration for e in self.row_suite.expectations], lambda c: c.kwargs
        )
        self._fallback_suites: dict[tuple, Any] = {}
        self._result_configs: dict[int, Any] = {}
        self._batch_id: str | None = None

    def validate_chunk(self, chunk, first: bool) -> list:
        """Results of the row-level expectations on ``chunk``, plus the partition-level ones if ``first``."""
        results = []
        if first:
            # A copy: the first rows alone, not a view that keeps the whole chunk alive while the library holds the
            # batch (~20 MB of peak memory).
            results += self._validate(chunk.head(PARTITION_SAMPLE_ROWS).copy(), self.partition_suite)
        if self.row_suite.expectations:
            results += self._validate_rows(chunk)
        return results

    def _validate_rows(self, chunk) -> list:
        """The row-level results on ``chunk`` as Great Expectations gives them, in its order.

        The expectations ``fast_expectations`` decides are computed directly (the same counts, in milliseconds
        instead of seconds); Great Expectations evaluates the others. When it cannot evaluate one of them, it runs
        the whole row-level suite instead: it reports such results first, and only it knows that order.
        """
        from great_expectations.core.expectation_validation_result import ExpectationValidationResult

        decided = [fast_expectations.evaluate(c.type, c.kwargs, chunk) for c in self.row_order]
        left = [c for c, found in zip(self.row_order, decided) if found is None]
        by_key: dict[str, Any] = {}
        if left:
            library_results = self._validate(chunk, self._fallback_suite(left))
            by_key = {_expectation_key(r.expectation_config): r for r in library_results}
            if any(_raised(r) for r in library_results) or set(by_key) != {_expectation_key(c) for c in left}:
                return self._validate(chunk, self.row_suite)
        results = []
        for configuration, found in zip(self.row_order, decided):
            if found is None:
                results.append(by_key[_expectation_key(configuration)])
                continue
            results.append(
                ExpectationValidationResult(
                    success=found["success"],
                    expectation_config=self._result_config(configuration, chunk),
                    result=found["result"],
                    exception_info={"raised_exception": False, "exception_traceback": None, "exception_message": None},
                )
            )
        return results

    def _fallback_suite(self, configurations: list):
        """A suite (not saved in the context) of the row-level expectations Great Expectations evaluates itself."""
        import great_expectations as gx

        key = tuple(id(c) for c in configurations)
        if key not in self._fallback_suites:
            self._fallback_suites[key] = gx.ExpectationSuite(
                name=f"{self.suite.name}__rows_left", expectations=[c.to_json_dict() for c in configurations]
            )
        return self._fallback_suites[key]

    def _result_config(self, configuration, chunk):
        """The expectation's configuration as Great Expectations puts it in a result: with the batch's id."""
        key = id(configuration)
        if key not in self._result_configs:
            if self._batch_id is None:
                self._batch_id = self.batch_definition.get_batch(batch_parameters={"dataframe": chunk.head(0)}).id
            config = copy.deepcopy(configuration)
            if self._batch_id:
                config.kwargs.update({"batch_id": self._batch_id})
            self._result_configs[key] = config
        return self._result_configs[key]

    def _validate(self, frame, suite) -> list:
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        return list(batch.validate(suite, result_format=dict(RESULT_FORMAT)).results)


def _expectation_key(config) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return config.type + json.dumps(kwargs, sort_keys=True, default=str)


def _sorted_unique(values):
    """Sorted distinct values of a uint64 array, sorting in place.

    ``numpy.unique`` hashes integer arrays in numpy 2.x, which is ~10x slower than a sort on millions of keys.
    """
    import numpy as np

    values.sort()
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


# The values pandas' CSV reader takes for missing by default (``read_csv``'s documented ``na_values``): the Arrow
# reader is given the same, so a value counts as missing (or not) whichever reader read it.
PANDAS_NA_VALUES = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
)
# Bytes the Arrow reader parses per block (its threads parse blocks in parallel and read the next ones meanwhile;
# larger blocks read further ahead: 4 MB took a day of 1.3 M rows to 521 MB peak RSS, 1 MB to 488 MB).
ARROW_BLOCK_BYTES = 1024 * 1024


def _read_with_arrow(stream, columns: list[str], chunk_rows: int, profile, take) -> bool:
    """Parse ``stream`` with pyarrow's streaming CSV reader (multithreaded, reading ahead while chunks are validated)
    and hand ``take`` pandas chunks of at least ``chunk_rows`` rows (strings Arrow-backed, as pandas reads them).

    The drift profile is staged and added to ``profile`` only once the whole blob has been read. Returns False,
    having profiled nothing, when pyarrow refuses the data (a value that is not its column's type, a row with
    another number of fields, bytes that are not UTF-8, ...): the caller then reads the blob again with pandas,
    whose errors the diagnostics explain. For data both read, the chunks are the same frames pandas would give.

    :param stream: the blob's bytes, positioned at the header line.
    :param columns: the header's column names (the suite's, in order).
    :param chunk_rows: rows per chunk handed to ``take`` (the last may be smaller).
    :param profile: the day's drift-profile accumulator, or None.
    :param take: called with each chunk and the profile accumulator to feed.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    arrow_types = {"str": pa.string(), "float64": pa.float64(), "Int64": pa.int64()}
    staged = drift.ProfileAccumulator(profile.grid) if profile is not None else None
    convert = pacsv.ConvertOptions(
        column_types={c: arrow_types[COLUMN_DTYPES[c]] for c in columns},
        null_values=list(PANDAS_NA_VALUES),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    to_pandas = {"types_mapper": {pa.int64(): pd.Int64Dtype()}.get}

    def chunk_of(batches: list):
        table = pa.Table.from_batches(batches)
        # The batches go as the frame is made: the Arrow copies of the numeric columns are freed while the chunk
        # is validated (strings stay shared with the frame).
        batches.clear()
        return table.to_pandas(**to_pandas)

    try:
        with pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=ARROW_BLOCK_BYTES),
                            convert_options=convert) as reader:  # fmt: skip
            if reader.schema.names != columns:  # e.g. a byte order mark kept in the first name
                return False
            pending, rows = [], 0
            for batch in reader:
                pending.append(batch)
                rows += batch.num_rows
                if rows >= chunk_rows:
                    take(chunk_of(pending), staged)
                    pending, rows = [], 0
            if pending:
                take(chunk_of(pending), staged)
    except pa.ArrowException:
        return False
    if profile is not None:
        profile.merge(staged)
    return True


def _read_with_pandas(stream, source: PartitionSource, columns: list[str], chunk_rows: int,
                      report: _PartitionReport, take) -> bool:  # fmt: skip
    """Read the blob with pandas' CSV reader in chunks, handing each to ``take``; a read error is recorded on
    ``report`` (what was found, as counts and row numbers) instead of raised. Returns True when ``report`` is final
    (values of the wrong type, found by a second read: nothing else is to be judged)."""
    import pandas as pd

    dtype = {c: COLUMN_DTYPES[c] for c in columns if c in COLUMN_DTYPES}
    try:
        reader = pd.read_csv(
            stream, chunksize=chunk_rows, dtype=dtype, encoding="utf-8", encoding_errors="strict",
        )
        for chunk in reader:
            take(chunk)
    except UnicodeDecodeError as err:
        report.read_error = (
            f"bytes that are not valid UTF-8 (byte 0x{err.object[err.start]:02x}: {err.reason}) in data rows "
            f"{report.rows + 1}..{report.rows + chunk_rows}; the readings must be UTF-8 encoded"
        )
    except pd.errors.EmptyDataError:
        report.read_error = "the file has no CSV header (no columns to parse)"
    except pd.errors.ParserError as err:
        report.read_error = f"the CSV cannot be parsed: {_without_quoted(err)}"
    except (ValueError, TypeError) as err:
        problems = _diagnose_dtypes(source, columns, chunk_rows)
        if not problems:
            # pandas quotes the offending value in these messages: name the error, not the value.
            report.read_error = (
                f"values that cannot be read as the suite's column types ({type(err).__name__} from the CSV "
                f"reader in data rows {report.rows + 1}..{report.rows + chunk_rows}); check the file's types "
                f"against {', '.join(f'{c}: {t}' for c, t in COLUMN_DTYPES.items())}"
            )
            return True
        report.failures.extend(f"{title}: {found}" for title, found in problems)
        return True
    return False


def _read_partition(
    validator: _Validator,
    source: PartitionSource,
    chunk_rows: int,
    day_keys: dict[str, dict[str, Any]],
    profile=None,
) -> _PartitionReport:
    import numpy as np
    import pandas as pd

    report = _PartitionReport(name=source.name)
    merged: dict[str, _Merged] = {}
    hashes: list = []

    def take(chunk, into_profile) -> None:
        report.rows += len(chunk)
        for item in validator.validate_chunk(chunk, first=not merged):
            key = _expectation_key(item.expectation_config)
            if key not in merged:
                merged[key] = _Merged(config=item.expectation_config)
            merged[key].add(item, chunk)
        if into_profile is not None:
            # The drift profile is built from the chunks already in memory: drift costs no second read.
            into_profile.add_rows(chunk, len(chunk))
        if all(c in chunk.columns for c in KEY_COLUMNS) and len(chunk):
            hashes.append(pd.util.hash_pandas_object(chunk[list(KEY_COLUMNS)], index=False).to_numpy())

    with io.BufferedReader(source.open(), buffer_size=1 << 20) as stream:
        columns = _header_columns(stream)
        if columns is None:
            report.read_error = (
                f"the file is empty (0 bytes, size listed {source.size}); expected a CSV header and rows"
            )
            return report
        if not set(columns) & set(validator.expected_columns):
            # No header line: pandas would take the first data row for one, and every expectation would then report
            # (and Data Docs show) its cells as column names. Decided here, on counts only.
            report.failures.append(
                "expect_table_columns_to_match_ordered_list: "
                + column_list_findings(columns, validator.expected_columns)
            )
            return report
        arrow_tried = columns == validator.expected_columns and set(columns) <= set(COLUMN_DTYPES)
        if arrow_tried and _read_with_arrow(stream, columns, chunk_rows, profile, take):
            arrow_read = True
        else:
            arrow_read = False
            # Something pyarrow refused (or a header it is not given): pandas reads the blob, from its start, and
            # its errors are what the diagnostics explain.
            report.rows = 0
            merged.clear()
            hashes.clear()
        if not arrow_read:
            with ExitStack() as fresh:
                if arrow_tried:
                    stream = fresh.enter_context(io.BufferedReader(source.open(), buffer_size=1 << 20))
                if _read_with_pandas(stream, source, columns, chunk_rows, report, lambda c: take(c, profile)):
                    return report
    if report.read_error:
        return report
    if not merged:
        # Header but no rows: still evaluate the suite, so the report shows every expectation.
        empty = pd.DataFrame({c: pd.Series(dtype=COLUMN_DTYPES.get(c, "str")) for c in columns})
        take(empty, None)
    key_hashes = _sorted_unique(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)
    duplicates = (sum(len(h) for h in hashes) - len(key_hashes)) if hashes else 0
    seen_today = day_keys.setdefault(source.day or source.name, {})
    overlaps = {}
    for other, other_hashes in seen_today.items():
        shared = len(np.intersect1d(key_hashes, other_hashes, assume_unique=True))
        if shared:
            overlaps[other] = shared
    seen_today[source.name] = key_hashes

    columns_ok = True
    for item in merged.values():
        if item.type == "expect_table_row_count_to_be_between":
            item.observed_value = report.rows
            lo, hi = item.config.kwargs.get("min_value"), item.config.kwargs.get("max_value")
            item.chunk_success = (lo is None or report.rows >= lo) and (hi is None or report.rows <= hi)
        if item.type == "expect_compound_columns_to_be_unique" and not item.exception_message:
            item.is_map = True
            item.element_count = report.rows
            item.unexpected_count = duplicates + sum(overlaps.values())
            item.missing_count = 0
        if item.type == "expect_table_columns_to_match_ordered_list" and not item.partition_success():
            columns_ok = False
    report.merged = list(merged.values())
    for item in report.merged:
        if item.partition_success():
            continue
        # A missing column makes each of its expectations fail too; the column check already says it.
        if not columns_ok and item.column and item.column not in columns:
            continue
        if item.type == "expect_compound_columns_to_be_unique":
            found = []
            if duplicates:
                found.append(f"{duplicates} repeated keys within the file")
            found += [f"{n} keys also in {other}" for other, n in sorted(overlaps.items())]
            report.failures.append(f"{item.title}: {'; '.join(found)} ({report.rows} rows)")
            continue
        report.failures.append(f"{item.title}: {item.describe()}")
    return report


# --------------------------------------------------------------------------------------------------------------
# Data Docs
# --------------------------------------------------------------------------------------------------------------


def _store_for_docs(validator: _Validator, report: _PartitionReport, validation_id: str) -> None:
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    results = [item.to_gx_result() for item in report.merged]
    configs = {e.configuration.type: e.configuration for e in validator.suite.expectations}
    if report.missing_day and "expect_table_row_count_to_be_between" in configs:
        # A day without blobs: record it as a partition with no rows.
        results = [
            ExpectationValidationResult(
                success=False,
                expectation_config=configs["expect_table_row_count_to_be_between"],
                result={"observed_value": 0},
            )
        ]
    elif report.read_error or not report.merged:
        # The suite could not run on this blob: show why on the column check, the first thing it would test.
        first = validator.suite.expectations[0].configuration
        config = configs.get("expect_table_columns_to_match_ordered_list", first)
        reason = report.read_error or "; ".join(report.failures)
        results = [
            ExpectationValidationResult(
                success=False,
                expectation_config=config,
                result={"observed_value": []},
                exception_info={"raised_exception": True, "exception_message": reason, "exception_traceback": reason},
            )
        ]
    success = not report.failures and not report.read_error
    run_id = RunIdentifier(run_name=validation_id)
    # The store keys files by these parts, which may not contain "/".
    batch_identifier = report.name.replace("/", "__")
    suite_result = ExpectationSuiteValidationResult(
        success=success,
        results=results,
        suite_name=validator.suite.name,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": sum(1 for r in results if r.success),
            "unsuccessful_expectations": sum(1 for r in results if not r.success),
            "success_percent": 100.0 * sum(1 for r in results if r.success) / len(results) if results else 0.0,
        },
        meta={
            "run_id": run_id.to_json_dict(),
            "active_batch_definition": {
                "datasource_name": "training_window",
                "data_connector_name": "blob",
                "data_asset_name": "sensor_readings",
                "batch_identifiers": {"partition": report.name},
            },
            "row_count": report.rows,
        },
    )
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=validator.suite.name),
        run_id=run_id,
        batch_identifier=batch_identifier,
    )
    validator.context.validation_results_store.set(key, suite_result)


def _build_docs(validator: _Validator, docs_dir: Path) -> str:
    # The per-chunk and per-partition halves of the suite are an implementation detail: the report shows the suite.
    for helper in (validator.partition_suite, validator.row_suite):
        validator.context.suites.delete(helper.name)
    validator.context.build_data_docs(site_names=[DATA_DOCS_SITE])
    return str(docs_dir / "index.html")


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def validate_partitions(
    partitions: Iterable[PartitionSource],
    expected_days: list[date],
    *,
    suite_path: str | Path,
    docs_dir: str | Path,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    window_label: str | None = None,
    profile_k: int | None = DEFAULT_PROFILE_K,
) -> dict:
    """Validate every data blob against the suite; return a summary or raise ``DataValidationError``.

    Blobs that are not data by the shared rule (``is_data_blob``: markers such as ``_SUCCESS``, checksums, names
    starting with ``_`` or ``.``, anything not ``.csv``) are not read; they are named in the log and the summary. A day
    whose only blobs are such files has no data. Every failure found is listed (all partitions are read even after
    the first failure). HTML Data Docs are built under ``docs_dir`` either way.

    :param partitions: the blobs to validate (e.g. from :func:`blob_partitions`).
    :param expected_days: days that must have at least one data blob (the training window's days).
    :param suite_path: the expectation suite JSON.
    :param docs_dir: folder for the HTML Data Docs (created if needed; ``index.html`` is the entry page).
    :param chunk_rows: rows per chunk read and validated at a time (bounds memory).
    :param window_label: label of the training window for messages and the summary.
    :param profile_k: profile the data while it streams (per feature with a range in the suite: a histogram on the
        suite's grid, bins of fewer than ``profile_k`` rows suppressed; ``edge_training.drift``) and return it under
        ``profile``; None profiles nothing.
    :return: summary with counts, blob names, the ``manifest`` of the data blobs validated (name, ETag, Content-MD5,
        size: what training reads, with if-match on each ETag), its ``data_fingerprint`` and the published data
        ``profile`` (aggregates only: safe for XCom).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}; pass a positive number of rows per chunk.")
    listed = sorted(partitions, key=lambda p: p.name)
    sources = [s for s in listed if is_data_blob(s.name)]
    ignored = [s.name for s in listed if not is_data_blob(s.name)]
    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    label = window_label or (
        f"{min(expected_days).isoformat()}..{max(expected_days).isoformat()}" if expected_days else "(no days)"
    )
    if ignored:
        log.info(
            "Ignoring %d blob(s) that are not data (markers, checksums, hidden or non-CSV files), not validated: %s",
            len(ignored), _listing(ignored),
        )
    with quiet_library_logs(), no_batch_fingerprints():
        suite = load_suite_json(suite_path)
        # The profile grid is taken from the suite before Great Expectations builds its own suite from it.
        profiles = _DayProfiles(suite) if profile_k is not None else None
        validator = _Validator(suite, docs_dir)
        validation_id = uuid.uuid4().hex[:12]
        reports = _validate_sources(validator, sources, ignored, expected_days, chunk_rows, profiles)
        for report in reports:
            _store_for_docs(validator, report, validation_id)
        docs_index = _build_docs(validator, docs_dir)

    failed = [r for r in reports if r.failures or r.read_error]
    expectations = len(validator.suite.expectations)
    if failed:
        lines = []
        count = 0
        for report in sorted(failed, key=lambda r: r.name):
            found = ([report.read_error] if report.read_error else []) + report.failures
            count += len(found)
            shown = found[:MAX_LINES_PER_PARTITION]
            lines += [f"  - {report.name}: {line}" for line in shown]
            if len(found) > len(shown):
                lines.append(f"  - {report.name}: … and {len(found) - len(shown)} more (see Data Docs)")
        if ignored:
            lines.append(f"  ({len(ignored)} blob(s) that are not data were ignored: {_listing(ignored)})")
        missing_days = sum(1 for r in reports if r.missing_day)
        raise DataValidationError(
            f"Training data for window {label} failed validation against suite {validator.suite.name} "
            f"({expectations} expectations): {count} failure(s) in {len(failed)} of "
            f"{len(sources) + missing_days} partition(s).\n"
            + "\n".join(lines)
            + f"\nData Docs report: {docs_index}\n"
            "Fix or re-export the listed blobs at the source (or remove the bad ones), then clear the task to "
            "re-run it; nothing was trained on this data."
        )
    rows_per_partition = {r.name: r.rows for r in reports}
    manifest = [s.manifest_entry for s in sources]
    return {
        "window": label,
        "partitions": [s.name for s in sources],
        "row_count": sum(rows_per_partition.values()),
        "rows_per_partition": rows_per_partition,
        "manifest": manifest,
        "data_fingerprint": blob_manifest.data_fingerprint(manifest),
        "ignored_blobs": ignored[:MAX_IGNORED_NAMES],
        "ignored_blob_count": len(ignored),
        "validation_id": validation_id,
        "data_docs": docs_index,
        "success": True,
        "expectations_evaluated": expectations,
        "profile": profiles.publish(profile_k) if profiles is not None else None,
    }


class _DayProfiles:
    """One drift-profile accumulator per partition day, on the grid of the suite's ranges."""

    def __init__(self, suite: dict) -> None:
        self.grid = drift.grid_from_suite(suite, drift.range_columns(suite))
        self.days: dict[str, Any] = {}

    def for_source(self, source: PartitionSource):
        day = source.day or source.name
        if day not in self.days:
            self.days[day] = drift.ProfileAccumulator(self.grid)
        return self.days[day]

    def publish(self, k: int) -> dict:
        whole = drift.ProfileAccumulator(self.grid)
        for acc in self.days.values():
            whole.merge(acc)
        return drift.publish(whole, k, days=self.days)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_IGNORED_NAMES])
    return shown + (f", … and {len(names) - MAX_IGNORED_NAMES} more" if len(names) > MAX_IGNORED_NAMES else "")


def _validate_sources(
    validator: _Validator,
    sources: list[PartitionSource],
    ignored: list[str],
    expected_days: list[date],
    chunk_rows: int,
    profiles: _DayProfiles | None = None,
) -> list[_PartitionReport]:
    """One report per data blob, plus one per expected day without any data blob."""
    reports: list[_PartitionReport] = []
    day_keys: dict[str, dict[str, Any]] = {}
    days_with_blobs = {s.day for s in sources}
    for day in expected_days:
        if day.isoformat() in days_with_blobs:
            continue
        prefix = partition_prefix(day)
        missing = _PartitionReport(name=prefix, missing_day=True)
        markers = [name for name in ignored if name.startswith(prefix)]
        found = (
            f"no data blobs in this partition, only {len(markers)} that are not data ({_listing(markers)})"
            if markers
            else "no blobs in this partition"
        )
        missing.failures.append(
            f"expect_table_row_count_to_be_between: {found} (day in the training window without data)"
        )
        reports.append(missing)

    for source in sources:
        profile = profiles.for_source(source) if profiles is not None else None
        report = _read_partition(validator, source, chunk_rows, day_keys, profile)
        if report.rows and source.day:
            # Keys are only compared within a day; drop the previous days' hashes to bound memory.
            for day in [d for d in day_keys if d < source.day]:
                del day_keys[day]
        reports.append(report)
        log.info(
            "Validated %s: %d rows, %s", source.name, report.rows,
            "passed" if not (report.failures or report.read_error) else "FAILED",
        )
    return reports
