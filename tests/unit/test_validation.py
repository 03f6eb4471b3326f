"""Streaming validation of partitions against the real Great Expectations suite, on bytes built here."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from datetime import date, datetime, timedelta
from types import SimpleNamespace

import pytest

from edge_training import config
from edge_training.exceptions import DataValidationError
from edge_training.fingerprint import blob_manifest, data_fingerprint, is_data_blob
from edge_training.validation import PartitionSource, _ChunkStream, validate_partitions
from tests._data_docs import docs_text, docs_tokens

HEADER = [
    "machine_id", "timestamp", "temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct",
    "power_kw", "failure_within_24h",
]
DAY = date(2026, 11, 1)
# A reading no generated row uses, so the summary can be searched for it.
MARKER_TEMPERATURE = "61.37"


def rows(n: int, day: date = DAY, machines: int = 5) -> list[list[str]]:
    start = datetime(day.year, day.month, day.day)
    out = []
    for i in range(n):
        ts = (start + timedelta(minutes=i // machines)).strftime("%Y-%m-%dT%H:%M:%SZ")
        temperature = MARKER_TEMPERATURE if i == 0 else f"{60 + (i % 7) * 0.5:.2f}"
        out.append(
            [
                f"M-{i % machines + 1:04d}", ts, temperature, "2.5", "6.1", "1500.0", "45.0", "15.2",
                str(int(i % 25 == 0)),
            ]
        )
    return out


def csv(data_rows: list[list[str]], header: list[str] = HEADER) -> bytes:
    return ("\n".join([",".join(header)] + [",".join(r) for r in data_rows]) + "\n").encode("utf-8")


def source(name: str, data: bytes, etag: str = '"etag-1"', content_md5: str | None = None) -> PartitionSource:
    return PartitionSource(
        name=name, etag=etag, size=len(data), opener=lambda: io.BytesIO(data), content_md5=content_md5
    )


def run(tmp_path, sources, days=(DAY,), chunk_rows=1000):
    return validate_partitions(
        sources, list(days), suite_path=config.EXPECTATION_SUITE_PATH, docs_dir=tmp_path / "docs",
        chunk_rows=chunk_rows, window_label="2026-11-01..2026-11-02",
    )


def failure(tmp_path, sources, **kwargs) -> str:
    with pytest.raises(DataValidationError) as caught:
        run(tmp_path, sources, **kwargs)
    message = str(caught.value)
    # Every failure message says where the report is and what to do.
    assert f"Data Docs report: {tmp_path / 'docs' / 'index.html'}" in message
    assert message.rstrip().endswith("nothing was trained on this data.")
    assert (tmp_path / "docs" / "index.html").is_file()
    return message


NAME = "dt=2026-11-01/part-0000.csv"


def test_clean_partitions_pass_with_a_summary_free_of_data(tmp_path):
    day = rows(400)
    summary = run(
        tmp_path, [source(NAME, csv(day[:300])), source("dt=2026-11-01/part-0001.csv", csv(day[300:]))],
        chunk_rows=64,
    )
    assert summary["success"] is True
    assert summary["window"] == "2026-11-01..2026-11-02"
    assert summary["partitions"] == [NAME, "dt=2026-11-01/part-0001.csv"]
    assert summary["rows_per_partition"] == {NAME: 300, "dt=2026-11-01/part-0001.csv": 100}
    assert summary["row_count"] == 400
    suite = json.loads(config.EXPECTATION_SUITE_PATH.read_text())
    assert summary["expectations_evaluated"] == len(suite["expectations"])
    assert summary["data_fingerprint"].startswith("sha256:")
    assert summary["validation_id"]
    assert summary["data_docs"] == str(tmp_path / "docs" / "index.html")
    index = (tmp_path / "docs" / "index.html").read_text()
    assert "sensor_readings" in index
    text = json.dumps(summary)
    for cell in ("M-0001", "T00:00:00Z", MARKER_TEMPERATURE, "1500.0"):
        assert cell not in text


def test_unparsable_csv(tmp_path):
    data = csv(rows(20)).replace(b"\nM-0003", b"\nM-0003,x,y,z", 1)
    message = failure(tmp_path, [source(NAME, data)])
    assert f"{NAME}: the CSV cannot be parsed" in message
    assert "Expected 9 fields" in message


def test_missing_column(tmp_path):
    header = [c for c in HEADER if c != "vibration_mm_s"]
    data = csv([r[:3] + r[4:] for r in rows(20)], header=header)
    message = failure(tmp_path, [source(NAME, data)])
    assert f"{NAME}: expect_table_columns_to_match_ordered_list" in message
    assert "missing ['vibration_mm_s']" in message
    # The missing column is reported once, not again by each of its own expectations.
    assert "(vibration_mm_s)" not in message


def test_renamed_column(tmp_path):
    data = csv(rows(20), header=["temp_c" if c == "temperature_c" else c for c in HEADER])
    message = failure(tmp_path, [source(NAME, data)])
    assert (
        "missing ['temperature_c']; 1 field(s) that are not expected column names, at position(s) 3; expected "
        in message
    )
    # Only the suite's own names are echoed: a field that is not one could be anything, even a data cell.
    assert "temp_c" not in message and "temp_c" not in docs_text(tmp_path / "docs")


def test_header_line_missing_fails_without_echoing_the_first_row(tmp_path):
    data_rows = rows(20)
    first_row = data_rows[0]
    message = failure(tmp_path, [source(NAME, csv(data_rows[1:], header=first_row))])
    assert (
        f"{NAME}: expect_table_columns_to_match_ordered_list: the first line has 9 field(s) and none is an expected "
        "column name: it looks like a data row, not a header; write the header line " + ",".join(HEADER)
    ) in message
    docs = docs_text(tmp_path / "docs")
    assert "it looks like a data row" in docs
    tokens = docs_tokens(tmp_path / "docs")
    for cell in first_row:
        if cell not in ("0", "1"):  # digits that any page holds
            assert cell not in message, cell
            assert cell not in tokens, cell
    assert "M-0001" not in docs and "T00:00:00Z" not in docs


def test_columns_out_of_order_name_only_expected_columns(tmp_path):
    order = [HEADER[1], HEADER[0], *HEADER[2:]]
    data = csv([[r[1], r[0], *r[2:]] for r in rows(10)], header=order)
    message = failure(tmp_path, [source(NAME, data)])
    assert "same columns in a different order (['timestamp', 'machine_id'] out of place)" in message


def test_wrong_dtype_names_column_and_row(tmp_path):
    data_rows = rows(30)
    data_rows[11][HEADER.index("rpm")] = "abc"
    message = failure(tmp_path, [source(NAME, csv(data_rows))], chunk_rows=8)
    expected = f"{NAME}: expect_column_values_to_be_of_type(rpm): 1 value(s) are not float64 (first at data row 12)"
    assert expected in message
    assert "abc" not in message and "abc" not in docs_text(tmp_path / "docs")


def test_empty_file(tmp_path):
    message = failure(tmp_path, [source(NAME, b"")])
    assert f"{NAME}: the file is empty (0 bytes" in message


def test_header_only(tmp_path):
    message = failure(tmp_path, [source(NAME, csv([]))])
    assert f"{NAME}: expect_table_row_count_to_be_between: observed 0 rows, allowed ≥ 1" in message


def test_missing_partition(tmp_path):
    message = failure(tmp_path, [source(NAME, csv(rows(20)))], days=(DAY, DAY + timedelta(days=1)))
    assert "dt=2026-11-02/: expect_table_row_count_to_be_between: no blobs in this partition" in message
    assert "1 failure(s) in 1 of 2 partition(s)" in message


def test_missing_values_above_threshold(tmp_path):
    data_rows = rows(400)
    for r in data_rows[::25]:  # 4 %
        r[HEADER.index("pressure_bar")] = ""
    message = failure(tmp_path, [source(NAME, csv(data_rows))])
    assert (
        f"{NAME}: expect_column_values_to_not_be_null(pressure_bar): 16 of 400 values missing (4.00%), "
        "allowed ≤ 1.00%"
    ) in message


def test_missing_value_share_is_judged_over_the_whole_partition(tmp_path):
    data_rows = rows(400)
    for r in data_rows[:3]:  # 0.75 % of the partition, but 3 % of the first chunk
        r[HEADER.index("pressure_bar")] = ""
    assert run(tmp_path, [source(NAME, csv(data_rows))], chunk_rows=100)["success"] is True


def test_missing_label_is_not_tolerated(tmp_path):
    data = csv(rows(20))[:-3]  # cut inside the last row, as an interrupted upload would
    message = failure(tmp_path, [source(NAME, data)])
    assert f"{NAME}: expect_column_values_to_not_be_null(failure_within_24h): 1 of 20 values missing" in message


def test_out_of_range_values_report_the_observed_extreme(tmp_path):
    data_rows = rows(50)
    data_rows[7][HEADER.index("temperature_c")] = "912.0"
    data_rows[9][HEADER.index("rpm")] = "-5"
    message = failure(tmp_path, [source(NAME, csv(data_rows))], chunk_rows=16)
    assert (
        f"{NAME}: expect_column_values_to_be_between(temperature_c): 1 of 50 values out of range, "
        "observed max 912.0, allowed ≤ 150.0"
    ) in message
    assert (
        "expect_column_values_to_be_between(rpm): 1 of 50 values out of range, observed min -5.0, allowed ≥ 0.0"
    ) in message
    # Only the offending extreme is quoted, never the rows around it.
    assert MARKER_TEMPERATURE not in message and "M-0001" not in message


def test_label_outside_0_1(tmp_path):
    data_rows = rows(20)
    data_rows[4][-1] = "2"
    message = failure(tmp_path, [source(NAME, csv(data_rows))])
    assert "expect_column_values_to_be_in_set(failure_within_24h): 1 of 20 values outside {0, 1}" in message
    assert "observed" not in message  # the offending cell is not quoted


def test_data_docs_hold_counts_not_cells(tmp_path):
    data_rows = rows(50)
    data_rows[3][HEADER.index("timestamp")] = "2026/11/01 07:13"  # fails the timestamp pattern
    data_rows[5][HEADER.index("machine_id")] = "PUMP-SOUTH-7"  # fails the machine id pattern
    data_rows[8][HEADER.index("humidity_pct")] = "131.5"  # out of range: the maximum is an aggregate, shown
    message = failure(tmp_path, [source(NAME, csv(data_rows))], chunk_rows=16)
    docs = docs_text(tmp_path / "docs")
    assert "1 of 50 values do not match ^M-[0-9]{4}$" in message
    for cell in ("2026/11/01 07:13", "PUMP-SOUTH-7", MARKER_TEMPERATURE):
        assert cell not in message and cell not in docs, cell
    assert "131.5" in message and "131.5" in docs


def test_duplicate_keys_across_chunks(tmp_path):
    data_rows = rows(40)
    data_rows.append(list(data_rows[2]))  # same machine and timestamp, read in a later chunk
    message = failure(tmp_path, [source(NAME, csv(data_rows))], chunk_rows=10)
    assert (
        f"{NAME}: expect_compound_columns_to_be_unique(machine_id, timestamp): 1 repeated keys within the file"
    ) in message


def test_duplicate_keys_across_blobs_of_a_day(tmp_path):
    data_rows = rows(40)
    second = "dt=2026-11-01/part-0001.csv"
    message = failure(tmp_path, [source(NAME, csv(data_rows[:30])), source(second, csv(data_rows[25:]))])
    assert f"{second}: expect_compound_columns_to_be_unique(machine_id, timestamp): 5 keys also in {NAME}" in message


def test_non_utf8_bytes(tmp_path):
    data = csv(rows(20)).replace(b"M-0004", b"M\xff0004", 1)
    message = failure(tmp_path, [source(NAME, data)])
    assert f"{NAME}: bytes that are not valid UTF-8 (byte 0xff" in message


def test_every_failure_is_listed(tmp_path):
    bad_range = rows(20)
    bad_range[3][HEADER.index("humidity_pct")] = "140"
    other = "dt=2026-11-01/part-0001.csv"
    message = failure(
        tmp_path,
        [source(NAME, csv(bad_range)), source(other, b"")],
        days=(DAY, DAY + timedelta(days=1)),
    )
    assert f"{NAME}: expect_column_values_to_be_between(humidity_pct)" in message
    assert f"{other}: the file is empty" in message
    assert "dt=2026-11-02/: " in message
    assert "3 failure(s) in 3 of 3 partition(s)" in message


def test_data_docs_are_built_on_success(tmp_path):
    summary = run(tmp_path, [source(NAME, csv(rows(10)))])
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert summary["data_docs"].endswith("index.html") and len(pages) == 1
    assert "dt=2026-11-01__part-0000.csv" in pages[0].name
    assert [p.name for p in (tmp_path / "docs" / "expectations").glob("*.html")] == ["sensor_readings.html"]


def test_fingerprint_changes_when_a_blob_changes(tmp_path):
    data = csv(rows(10))
    first = run(tmp_path, [source(NAME, data, etag="0x1")])["data_fingerprint"]
    again = run(tmp_path, [source(NAME, data, etag="0x1")])["data_fingerprint"]
    changed = run(tmp_path, [source(NAME, data, etag="0x2")])["data_fingerprint"]
    assert first == again != changed


def test_fingerprint_is_order_independent_and_sensitive_to_each_field():
    blobs = [("dt=2026-11-01/part-0000.csv", "0xA", 10), ("dt=2026-11-01/part-0001.csv", "0xB", 20)]
    assert data_fingerprint(blobs) == data_fingerprint(reversed(blobs))
    assert data_fingerprint(blobs) != data_fingerprint(blobs[:1])
    assert data_fingerprint(blobs) != data_fingerprint([blobs[0], (blobs[1][0], "0xC", 20)])
    assert data_fingerprint(blobs) != data_fingerprint([blobs[0], (blobs[1][0], "0xB", 21)])


def test_chunk_rows_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        run(tmp_path, [source(NAME, csv(rows(3)))], chunk_rows=0)


def test_chunk_stream_reassembles_download_chunks():
    data = bytes(range(256)) * 50
    pieces = [data[i : i + 777] for i in range(0, len(data), 777)]
    with io.BufferedReader(_ChunkStream(iter(pieces)), buffer_size=1000) as stream:
        assert stream.read(5) == data[:5]
        assert stream.read() == data[5:]


class _RangeClient:
    """Stands in for ContainerClient.download_blob: serves byte ranges of one blob, or refuses a stale ETag."""

    def __init__(self, data: bytes, current_etag: str = "0x1") -> None:
        self.data, self.current_etag, self.requests = data, current_etag, []

    def download_blob(self, name, offset, length, etag=None, match_condition=None):
        from azure.core.exceptions import ResourceModifiedError

        self.requests.append((offset, length))
        if etag != self.current_etag:
            raise ResourceModifiedError("The condition specified using HTTP conditional header(s) is not met.")
        part = self.data[offset : offset + length]
        return SimpleNamespace(chunks=lambda: iter([part[:1000], part[1000:]]))


def test_blobs_are_read_in_bounded_ranges_of_the_listed_version(monkeypatch):
    from edge_training import validation

    monkeypatch.setattr(validation, "DOWNLOAD_RANGE_BYTES", 4096)
    data = bytes(range(256)) * 70  # 17920 bytes: 5 ranges
    client = _RangeClient(data)
    with validation._blob_opener(client, NAME, "0x1", len(data))() as stream:
        assert stream.read() == data
    # Requested at once, a few ahead of the reader: in any order, each range once.
    assert sorted(client.requests) == [(0, 4096), (4096, 4096), (8192, 4096), (12288, 4096), (16384, 1536)]


def test_ranges_are_requested_only_a_few_ahead_of_the_reader(monkeypatch):
    from edge_training import validation

    monkeypatch.setattr(validation, "DOWNLOAD_RANGE_BYTES", 1000)
    data = bytes(range(256)) * 100  # 26 ranges
    client = _RangeClient(data)
    stream = io.BufferedReader(validation._blob_opener(client, NAME, "0x1", len(data))(), buffer_size=1000)
    assert stream.read(10) == data[:10]
    # One range read, the next ones in flight or waiting: the blob is not pulled into memory ahead of its parsing.
    assert len(client.requests) <= validation.DOWNLOAD_RANGES_AHEAD + 1
    stream.close()
    assert len(client.requests) <= validation.DOWNLOAD_RANGES_AHEAD + 1 < 26


def test_blob_rewritten_during_validation_is_reported(tmp_path):
    from edge_training import validation
    from edge_training.exceptions import EdgeTrainingError

    data = csv(rows(10))
    opener = validation._blob_opener(_RangeClient(data, current_etag="0x2"), NAME, "0x1", len(data))
    stale = PartitionSource(NAME, "0x1", len(data), opener)
    with pytest.raises(EdgeTrainingError, match=r"was rewritten while the training window was being validated") as err:
        run(tmp_path, [stale])
    assert "listed with ETag 0x1" in str(err.value) and "Re-run validate_data" in str(err.value)
    assert not isinstance(err.value, DataValidationError)  # retried, not a data failure
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize(
    "name, is_data",
    [
        ("dt=2026-11-01/part-0000.csv", True),
        ("dt=2026-11-01/PART-0001.CSV", True),
        ("dt=2026-11-01/_SUCCESS", False),
        ("dt=2026-11-01/.part-0000.csv.crc", False),
        ("dt=2026-11-01/_committed_4711", False),
        ("dt=2026-11-01/_temporary/0/part-0000.csv", False),
        ("dt=2026-11-01/notes.txt", False),
        ("dt=2026-11-01/", False),
    ],
)
def test_data_blob_rule(name, is_data):
    assert is_data_blob(name) is is_data


def test_markers_are_ignored_and_listed(tmp_path):
    names = [NAME, "dt=2026-11-01/_SUCCESS", "dt=2026-11-01/.part-0000.csv.crc"]
    sources = [source(NAME, csv(rows(10)))] + [source(n, b"not csv \x00\xff") for n in names[1:]]
    summary = run(tmp_path, sources)
    assert summary["partitions"] == [NAME]
    assert summary["rows_per_partition"] == {NAME: 10}
    assert summary["ignored_blobs"] == ["dt=2026-11-01/.part-0000.csv.crc", "dt=2026-11-01/_SUCCESS"]
    assert summary["ignored_blob_count"] == 2
    # Not validated: no Data Docs page for them.
    pages = [p.name for p in (tmp_path / "docs" / "validations").rglob("*.html")]
    assert len(pages) == 1 and "part-0000.csv" in pages[0]


def test_a_day_with_markers_only_has_no_data(tmp_path):
    second = DAY + timedelta(days=1)
    sources = [source(NAME, csv(rows(10))), source("dt=2026-11-02/_SUCCESS", b"")]
    message = failure(tmp_path, sources, days=(DAY, second))
    assert (
        "dt=2026-11-02/: expect_table_row_count_to_be_between: no data blobs in this partition, only 1 that are "
        "not data (dt=2026-11-02/_SUCCESS)"
    ) in message
    assert "1 failure(s) in 1 of 2 partition(s)" in message


def test_manifest_lists_exactly_the_validated_blobs(tmp_path):
    second = "dt=2026-11-01/part-0001.csv"
    day = rows(20)
    sources = [
        source(second, csv(day[10:]), etag='"0x8DD2"'),
        source(NAME, csv(day[:10]), etag='"0x8DD1"', content_md5="9e107d9d372bb6826bd81d3542a419d6"),
        source("dt=2026-11-01/_SUCCESS", b""),
    ]
    summary = run(tmp_path, sources)
    assert summary["manifest"] == [
        {"name": NAME, "etag": '"0x8DD1"', "content_md5": "9e107d9d372bb6826bd81d3542a419d6", "size": sources[1].size},
        {"name": second, "etag": '"0x8DD2"', "content_md5": None, "size": sources[0].size},
    ]
    assert summary["data_fingerprint"] == blob_manifest.data_fingerprint(summary["manifest"])
    # Same scheme as before: the MD5 when there is one, else the ETag without its quotes.
    assert summary["data_fingerprint"] == data_fingerprint(
        [(NAME, "9e107d9d372bb6826bd81d3542a419d6", sources[1].size), (second, "0x8DD2", sources[0].size)]
    )
    json.dumps(summary)


def test_great_expectations_chatter_is_kept_out_of_the_log(tmp_path, caplog):
    gx_logger = logging.getLogger("great_expectations")
    before = gx_logger.level
    caplog.set_level(logging.DEBUG)
    run(tmp_path, [source(NAME, csv(rows(10)))])
    library = [r for r in caplog.records if r.name.startswith("great_expectations") and r.levelno < logging.WARNING]
    assert library == []
    assert f"Validated {NAME}: 10 rows, passed" in caplog.text
    assert gx_logger.level == before  # only for the validation, not for the rest of the process


def test_great_expectations_warnings_still_reach_the_log(caplog):
    from edge_training.validation import quiet_library_logs

    caplog.set_level(logging.DEBUG)
    with quiet_library_logs():
        logging.getLogger("great_expectations.core").info("internal chatter")
        logging.getLogger("great_expectations.core").warning("a real warning")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("great_expectations")]
    assert messages == ["a real warning"]


def test_without_the_quiet_levels_great_expectations_logs_internal_records(tmp_path, caplog, monkeypatch):
    # The check above can fail: with the levels left alone the same run logs Great Expectations' own records.
    from edge_training import validation

    monkeypatch.setattr(validation, "quiet_library_logs", contextlib.nullcontext)
    caplog.set_level(logging.DEBUG)
    run(tmp_path, [source(NAME, csv(rows(10)))])
    assert any(r.name.startswith("great_expectations") and r.levelno < logging.WARNING for r in caplog.records)
