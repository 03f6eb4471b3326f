"""The residency scanner finds a training row in every shape it could leak in, and nothing in summaries."""

from __future__ import annotations

import json

import pytest

from tests._residency import RowSignatures, audit, files_under, scan_text

CSV = (
    "machine_id,timestamp,temperature_c,vibration_mm_s,pressure_bar,rpm,humidity_pct,power_kw,failure_within_24h\n"
    "M-0001,2026-11-20T00:00:00Z,61.23,2.45,6.1,1523.4,45.2,20.1,0\n"
    "M-0002,2026-11-20T00:00:00Z,66.8,3.02,5.74,1488.0,44.9,27.33,1\n"
    "M-0001,2026-11-20T00:28:48Z,61.5,,6.08,1519.9,46.01,20.4,0\n"
)


@pytest.fixture
def sig() -> RowSignatures:
    return RowSignatures.from_csv_texts([CSV])


def test_signatures_cover_every_row(sig):
    assert sig.rows == 3
    assert len(sig.lines) == 3
    # The third row has a sensor dropout: no full vector to look for, its line and key still are.
    assert sig.sensor_vectors == {(61.23, 2.45, 6.1, 1523.4, 45.2, 20.1), (66.8, 3.02, 5.74, 1488.0, 44.9, 27.33)}


@pytest.mark.parametrize(
    ("leak", "signature"),
    [
        ("INFO - bad row: M-0002,2026-11-20T00:00:00Z,66.8,3.02,5.74,1488.0,44.9,27.33,1", "full CSV line"),
        (json.dumps({"machine_id": "M-0001", "timestamp": "2026-11-20T00:28:48Z", "rpm": 1519.9}), "machine_id + timestamp"),
        ("  machine_id            timestamp\n0     M-0002  2026-11-20 00:00:00+00:00", "machine_id + timestamp"),
        (json.dumps({"input_example": [[61.23, 2.45, 6.1, 1523.4, 45.2, 20.1]]}), "sensor readings"),
    ],
    ids=["csv-line-in-log", "json-record", "dataframe-repr", "feature-vector"],
)
def test_a_planted_row_is_found(sig, leak, signature):
    findings = scan_text("planted", f"some text before\n{leak}\nand after", sig)
    assert findings, f"scanner missed a planted row: {leak!r}"
    assert findings[0].signature.startswith(signature)
    assert findings[0].source == "planted"


def test_summaries_metrics_and_window_bounds_are_not_rows(sig):
    summary = {
        "window": "2026-11-14..2026-11-20",
        "window_start": "2026-11-20T00:00:00+00:00",  # same instant as a row's timestamp, but no machine id near
        "rows": 3,
        "partitions": ["dt=2026-11-20/part-0000.csv"],
        "metrics": {"roc_auc": 0.91, "f1": 0.42, "positives": 12, "rows_train": 2000, "rows_holdout": 300},
        "columns": {"temperature_c": {"min": 55.1, "max": 99.0, "mean": 66.8}},
    }
    assert scan_text("summary", json.dumps(summary), sig) == []


def test_audit_reads_binary_files_and_counts_what_it_scanned(sig, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x00M-0002,2026-11-20T00:00:00Z,66.8,3.02,5.74,1488.0,44.9,27.33,1\xff")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "metrics.json").write_text('{"roc_auc": 0.9}')
    findings, sources, chars = audit(files_under(tmp_path), sig)
    assert sources == 2 and chars > 0
    assert [f.source for f in findings] == [str(tmp_path / "model.onnx")] * len(findings)
    assert findings


def test_rows_of_bad_blobs_have_signatures_too():
    header, *rows = CSV.splitlines()
    headerless = "\n".join(rows) + "\n"
    non_utf8 = (header + "\n" + rows[0].replace("M-", "M\xff", 1) + "\n").encode("latin-1")
    truncated = CSV[:-20]

    sig = RowSignatures.from_csv_texts([headerless, non_utf8, truncated, "", header + "\n"])

    # Header-less: its first line is a row, read with the generator's column order.
    assert scan_text("log", f"observed columns {rows[0].split(',')}", sig)
    assert sig.rows == 3 + 1 + 2  # the truncated blob's cut-off last line has no signature


SECRETS = {
    "storage account key": "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    "SSH private key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBq2Rf0oQ7aH2bZ3wA1bq8qkWcQ2ZJm6N0dQF1RZk9ZtwAAAJg1Q2pHNUNq\n-----END OPENSSH PRIVATE KEY-----\n",
}


@pytest.mark.parametrize(
    ("leak", "signature"),
    [
        ("AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;",
         "storage account key"),
        ("key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq%2FK1SZFPTOtr%2FKBHBeksoGMGw%3D%3D",
         "storage account key"),
        ("'private_key': 'QyNTUxOQAAACBq2Rf0oQ7aH2bZ3wA1bq8qkWcQ2ZJm6N0dQF1RZk9ZtwAAAJg1Q2pHNUNq'", "SSH private key"),
        ("GET http://h/c?sv=2024-08-04&se=2026&sp=rl&sig=k3bRm%2FQw1xZ0aP9vYt5uLq2sE8dHcN7jG4fW6oI%3D", "a SAS signature"),
    ],
    ids=["account-key", "url-encoded-key", "pem-line", "sas-in-url"],
)
def test_a_planted_secret_is_found_and_not_echoed(leak, signature):
    from tests._residency import find_secrets

    findings = find_secrets("log", f"before\n{leak}\nafter", SECRETS)

    assert [f.signature.split(" (")[0] for f in findings] == [signature]
    assert "Eby8vdM02x" not in str(findings[0]) and "k3bRm" not in str(findings[0])


def test_words_near_sig_and_short_values_are_not_secrets():
    from tests._residency import find_secrets

    text = "design=1 signature verified; sig=abc; the key is AccountKey=<set in the connection>"
    assert find_secrets("log", text, SECRETS) == []


def test_image_layer_files_are_read_from_the_tar(tmp_path):
    import gzip
    import io
    import tarfile

    from tests._residency import layer_files

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("opt/serving/model/model.onnx", b"\x08M-0001,2026-11-20T00:00:00Z"), ("etc/os", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    files = dict(layer_files(gzip.compress(buf.getvalue()), "layer sha256:1", under="opt/serving"))

    assert list(files) == ["layer sha256:1:opt/serving/model/model.onnx"]
    assert "M-0001,2026-11-20T00:00:00Z" in files["layer sha256:1:opt/serving/model/model.onnx"]
