"""tests/_wire.py: TCP streams rebuilt from a pcap, so a row split across segments is still found on the wire."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests._residency import RowSignatures, scan_text
from tests._wire import bytes_by_destination, reassemble

ROW = "M-0002,2026-11-20T00:00:00Z,66.8,3.02,5.74,1488.0,44.9,27.33,1"
HEADER = "machine_id,timestamp,temperature_c,vibration_mm_s,pressure_bar,rpm,humidity_pct,ambient_temp_c,failure_within_24h"
SITE, CENTRAL = "10.1.0.2", "10.1.0.1"


def _frame(src: str, dst: str, sport: int, dport: int, seq: int, payload: bytes = b"", syn: bool = False) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02 if syn else 0x18, 65535, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
        bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))),
    )  # fmt: skip
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp


def _pcap(path: Path, frames: list[bytes]) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for frame in frames:
        out += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    path.write_bytes(out)
    return path


def test_a_row_split_across_out_of_order_and_retransmitted_segments_is_found(tmp_path):
    body = f"POST /api HTTP/1.1\r\n\r\n{{\"log\": \"bad row {ROW}\"}}".encode()
    cut1, cut2 = 30, 60
    isn = 1000
    frames = [
        _frame(SITE, CENTRAL, 40000, 8080, isn, syn=True),
        _frame(SITE, CENTRAL, 40000, 8080, isn + 1 + cut2, body[cut2:]),  # last part first
        _frame(SITE, CENTRAL, 40000, 8080, isn + 1, body[:cut1]),
        _frame(SITE, CENTRAL, 40000, 8080, isn + 1, body[:cut1]),  # retransmitted
        _frame(SITE, CENTRAL, 40000, 8080, isn + 1 + cut1, body[cut1:cut2]),
        _frame(CENTRAL, SITE, 8080, 40000, 5000, b"HTTP/1.1 200 OK\r\n\r\n"),
    ]
    streams = reassemble(_pcap(tmp_path / "link.pcap", frames))

    sent = {str(s): s for s in streams}
    up = sent[f"{SITE}:40000 -> {CENTRAL}:8080"]
    assert up.data == body and up.gaps == 0
    signatures = RowSignatures.from_csv_texts([f"{HEADER}\n{ROW}\n"])
    assert scan_text(str(up), up.data.decode("latin-1"), signatures), "the split row was not found"
    assert bytes_by_destination(streams, SITE, {8080: "api-server", 5000: "MLflow"}) == {
        "api-server": len(body), "MLflow": 0, "other": 0,
    }  # fmt: skip


def test_a_missing_segment_is_counted_as_a_gap(tmp_path):
    frames = [
        _frame(SITE, CENTRAL, 40001, 5000, 1, syn=True),
        _frame(SITE, CENTRAL, 40001, 5000, 2, b"abc"),
        _frame(SITE, CENTRAL, 40001, 5000, 10, b"xyz"),
    ]
    (stream,) = reassemble(_pcap(tmp_path / "gap.pcap", frames))
    assert stream.gaps == 5 and stream.data.endswith(b"xyz")


def test_a_file_that_is_not_a_pcap_is_refused(tmp_path):
    (tmp_path / "x.pcap").write_bytes(b"not a capture")
    with pytest.raises(ValueError, match="not a pcap"):
        reassemble(tmp_path / "x.pcap")
