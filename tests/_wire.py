"""What crossed a link, from a tcpdump capture: TCP streams reassembled per direction, and bytes per destination.

Reads the classic pcap format tcpdump writes (``-w``, Ethernet link type, micro- or nanosecond timestamps). Each
direction of each TCP connection becomes one byte string, segments placed by sequence number (retransmissions and
overlaps counted once), so a row split across segments is still found by the residency scanner.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
_LINKTYPE_ETHERNET = 1
_SYN = 0x02


@dataclass(frozen=True)
class Segment:
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    syn: bool
    payload: bytes


@dataclass(frozen=True)
class Stream:
    """One direction of one TCP connection: ``src:sport -> dst:dport`` and the bytes sent that way."""

    src: str
    sport: int
    dst: str
    dport: int
    data: bytes
    gaps: int  # bytes missing from the capture inside the stream (0 when every segment was seen)

    def __str__(self) -> str:
        return f"{self.src}:{self.sport} -> {self.dst}:{self.dport}"


def read_segments(pcap: Path) -> Iterator[Segment]:
    """Every IPv4 TCP segment in ``pcap``; other frames are skipped."""
    raw = Path(pcap).read_bytes()
    order = _PCAP_MAGIC.get(raw[:4])
    if order is None:
        raise ValueError(f"{pcap} is not a pcap file (magic {raw[:4].hex()})")
    linktype = struct.unpack(order + "I", raw[20:24])[0]
    if linktype != _LINKTYPE_ETHERNET:
        raise ValueError(f"{pcap}: link type {linktype}, only Ethernet (1) is read")
    offset = 24
    while offset + 16 <= len(raw):
        captured = struct.unpack(order + "I", raw[offset + 8 : offset + 12])[0]
        frame = raw[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        header_len = (ip[0] & 0x0F) * 4
        total_len = struct.unpack("!H", ip[2:4])[0] or len(ip)  # 0 on segmentation-offloaded frames
        if ip[9] != 6:  # TCP only
            continue
        tcp = ip[header_len:total_len]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        data_offset = (tcp[12] >> 4) * 4
        yield Segment(
            src=str(ipaddress.IPv4Address(ip[12:16])), sport=sport, dst=str(ipaddress.IPv4Address(ip[16:20])),
            dport=dport, seq=seq, syn=bool(tcp[13] & _SYN), payload=bytes(tcp[data_offset:]),
        )  # fmt: skip


def reassemble(pcap: Path) -> list[Stream]:
    """The TCP streams in ``pcap``, one per connection and direction, in order of first appearance."""
    starts: dict[tuple, int] = {}
    pieces: dict[tuple, list[tuple[int, bytes]]] = defaultdict(list)
    for seg in read_segments(pcap):
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        if seg.syn:
            starts[key] = (seg.seq + 1) & 0xFFFFFFFF
        elif key not in starts:
            starts[key] = seg.seq  # capture began mid-connection
        if seg.payload:
            pieces[key].append(((seg.seq - starts[key]) & 0xFFFFFFFF, seg.payload))
        else:
            pieces.setdefault(key, [])
    streams = []
    for key, parts in pieces.items():
        data, gaps = bytearray(), 0
        for rel, payload in sorted(parts):
            if rel > len(data):
                gaps += rel - len(data)
                data.extend(b"\0" * (rel - len(data)))
            data.extend(payload[len(data) - rel :] if rel < len(data) else payload)
        streams.append(Stream(*key, data=bytes(data), gaps=gaps))
    return streams


def bytes_by_destination(streams: list[Stream], src: str, names: dict[int, str]) -> dict[str, int]:
    """Bytes ``src`` sent, summed per destination port named in ``names`` (other ports under "other")."""
    totals: dict[str, int] = dict.fromkeys([*names.values(), "other"], 0)
    for stream in streams:
        if stream.src == src:
            totals[names.get(stream.dport, "other")] += len(stream.data)
    return totals
