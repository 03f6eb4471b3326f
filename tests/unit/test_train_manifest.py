"""train.py --manifest: exactly the blobs validation checked are trained, and a changed one stops the job.

Run as the VM runs it (a subprocess) on a local copy of the blob layout (``--source-dir``, the way an Azure ML job
sees its mounted data): names, sizes and MD5s are checked there; the ETag side is tested on Azurite in
tests/integration/test_train_on_blob.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from tests.unit._sensor_data import partition_csvs, write_local
from tests.unit.test_train_script import CONTAINER, FAST, START, TRAIN, run_train

DAYS = 3
# The window the runs train on: START .. START + DAYS (end exclusive).
END = (START + dt.timedelta(days=DAYS)).isoformat()


def load_train():
    spec = importlib.util.spec_from_file_location("edge_train_script_test", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def manifest_of(files: dict[str, bytes], validation_id: str = "val-test") -> dict:
    """The manifest validation would hand over for ``files`` (MD5 as hex, a made-up ETag per blob)."""
    train = load_train()
    blobs = [{"name": name, "etag": f'"0x{hashlib.sha1(data).hexdigest()[:15].upper()}"',
              "content_md5": hashlib.md5(data).hexdigest(), "size": len(data)} for name, data in files.items()]
    return {"validation_id": validation_id, "data_fingerprint": train.blob_manifest.data_fingerprint(blobs),
            "blobs": blobs}


@pytest.fixture
def dataset(tmp_path):
    files = partition_csvs(START, DAYS, rows_per_day=300, parts_per_day=2, seed=4)
    return files, write_local(tmp_path / "blob", CONTAINER, files)


def write_manifest(path: Path, manifest: dict) -> Path:
    path.write_text(json.dumps(manifest))
    return path


def test_trains_exactly_the_manifest_and_reports_its_fingerprint(tmp_path, dataset):
    files, root = dataset
    manifest = manifest_of(files)
    # A part that landed after validation and a marker: neither is in the manifest, neither may be read.
    late = root / CONTAINER / f"dt={START.isoformat()}" / "part-0009.csv"
    late.write_bytes(files[f"dt={START.isoformat()}/part-0000.csv"])
    (root / CONTAINER / f"dt={START.isoformat()}" / "_SUCCESS").write_bytes(b"")

    done = run_train(tmp_path, "--params", FAST, "--manifest", str(write_manifest(tmp_path / "m.json", manifest)),
                     source=root, end=END)

    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["data_fingerprint"] == manifest["data_fingerprint"]
    assert doc["data_manifest"] == {"validation_id": "val-test", "blobs": 6}
    assert doc["rows"]["read"] == DAYS * 300  # the late part's 150 rows were not read
    assert [p["parts"] for p in doc["partitions"]] == [2, 2, 2]
    assert "reading the 6 blob(s) validation val-test checked" in done.stderr


def test_without_a_manifest_markers_are_ignored_by_the_shared_data_blob_rule(tmp_path, dataset):
    files, root = dataset
    (root / CONTAINER / f"dt={START.isoformat()}" / "_SUCCESS").write_bytes(b"")
    (root / CONTAINER / f"dt={START.isoformat()}" / ".part-0000.csv.crc").write_bytes(b"crc")

    done = run_train(tmp_path, "--params", FAST, source=root, end=END)

    assert done.returncode == 0, done.stderr[-3000:]
    assert f"dt={START.isoformat()}: ignoring 2 object(s) that are not data" in done.stderr
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # Same scheme as validation's fingerprint: name, MD5, size of every data blob read.
    assert doc["data_fingerprint"] == manifest_of(files)["data_fingerprint"]
    assert doc["data_manifest"] is None


@pytest.mark.parametrize(
    "change, found",
    [
        ("append", "is now {size} bytes, validated at {old}"),
        ("same_size", "has another MD5 than validated"),
        ("delete", "is gone"),
    ],
)
def test_a_blob_changed_since_validation_exits_2_naming_it(tmp_path, dataset, change, found):
    files, root = dataset
    manifest = manifest_of(files, validation_id="val-42")
    name = f"dt={(START + dt.timedelta(days=1)).isoformat()}/part-0001.csv"
    path = root / CONTAINER / name
    old = path.read_bytes()
    if change == "append":
        path.write_bytes(old + old.splitlines(keepends=True)[-1])
    elif change == "same_size":
        path.write_bytes(old[:-2] + (b"1\n" if old[-2:] == b"0\n" else b"0\n"))  # one label flipped
    else:
        path.unlink()

    done = run_train(tmp_path, "--params", FAST, "--manifest", str(write_manifest(tmp_path / "m.json", manifest)),
                     source=root, end=END)

    assert done.returncode == 2, done.stderr[-3000:]
    expected = found.format(size=len(path.read_bytes()) if path.exists() else 0, old=len(old))
    assert f"changed since validation val-42: {name} {expected}" in done.stderr, done.stderr[-2000:]
    assert "Re-run this DAG run from validate_data" in done.stderr
    assert not (tmp_path / "out" / "model.onnx").exists() and not (tmp_path / "scratch").exists()


def test_a_manifest_that_does_not_add_up_to_its_fingerprint_is_refused(tmp_path, dataset):
    files, root = dataset
    manifest = manifest_of(files)
    manifest["blobs"] = manifest["blobs"][1:]  # truncated on the way

    done = run_train(tmp_path, "--params", FAST, "--manifest", str(write_manifest(tmp_path / "m.json", manifest)),
                     source=root, end=END)

    assert done.returncode == 2
    assert "do not add up to its data_fingerprint" in done.stderr and "validate_data" in done.stderr


def test_a_manifest_for_another_window_is_refused(tmp_path, dataset):
    files, root = dataset
    manifest = manifest_of(files)

    done = run_train(tmp_path, "--params", FAST, "--manifest", str(write_manifest(tmp_path / "m.json", manifest)),
                     source=root, start=(START + dt.timedelta(days=1)).isoformat(), end=END)

    assert done.returncode == 2
    assert "lists 2 blob(s) that are not data blobs of the training window" in done.stderr
