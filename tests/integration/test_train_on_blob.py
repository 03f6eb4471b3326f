"""include/training/train.py reading its training window from real blob storage (Azurite of the local edge stack)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.unit._sensor_data import partition_csvs, upload, write_local

pytestmark = pytest.mark.integration

TRAIN = Path(__file__).resolve().parents[2] / "include" / "training" / "train.py"
START = dt.date(2026, 11, 1)
FAST = '{"n_estimators": 30, "max_depth": 6, "n_jobs": 1}'


def run_train(tmp: Path, container: str, *extra: str, env: dict | None = None,
              end: str = "2026-11-05") -> subprocess.CompletedProcess:
    argv = [sys.executable, str(TRAIN), "--container", container, "--start", "2026-11-01", "--end", end,
            "--out", str(tmp / "out"), "--scratch", str(tmp / "scratch"), "--params", FAST, *extra]
    run_env = {k: v for k, v in os.environ.items() if k != "EDGE_BLOB_CONNECTION_STRING"} | (env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=run_env)


def account_key(connection_string: str) -> str:
    return re.search(r"AccountKey=([^;]+)", connection_string).group(1)


@pytest.fixture(scope="module")
def dataset():
    return partition_csvs(START, 4, rows_per_day=300, parts_per_day=3, seed=3)


@pytest.fixture(scope="module")
def container(edge_stack, dataset):
    """A container of its own in the stack's Azurite, so other tests' sample data cannot change these results."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(edge_stack.blob_connection_string)
    client = service.create_container(f"train-test-{uuid.uuid4().hex[:10]}")
    upload(client, dataset)
    yield client.container_name
    client.delete_container()


def test_trains_from_blob_storage_with_the_connection_string_in_env(edge_stack, container, tmp_path):
    cs = edge_stack.blob_connection_string
    proc = run_train(tmp_path, container, env={"EDGE_BLOB_CONNECTION_STRING": cs})
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "model.onnx"]
    assert not (tmp_path / "scratch").exists()
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["metrics"]["roc_auc"] > 0.7
    assert (doc["metrics"]["n_train"], doc["metrics"]["n_holdout"]) == (900, 300)
    assert [(p["partition"], p["parts"], p["rows"]) for p in doc["partitions"]] == [
        (f"dt=2026-11-0{d}", 3, 300) for d in range(1, 5)]
    assert f"from container {container} at {edge_stack.blob_endpoint}" in proc.stderr
    assert account_key(cs) not in proc.stdout + proc.stderr + (tmp_path / "out" / "metrics.json").read_text()


def test_blob_and_local_copy_give_the_same_data_fingerprint_and_model(edge_stack, container, dataset, tmp_path):
    """The chunked blob download is byte-exact: same fingerprint, same model, same score as the local files."""
    cs_file = tmp_path / "blob.cs"
    fd = os.open(cs_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, edge_stack.blob_connection_string.encode())
    os.close(fd)
    from_blob = run_train(tmp_path / "blob", container, "--connection-string-file", str(cs_file))
    assert from_blob.returncode == 0, from_blob.stderr[-3000:]
    local = write_local(tmp_path / "local-src", container, dataset)
    from_local = run_train(tmp_path / "local", container, "--source-dir", str(local))
    assert from_local.returncode == 0, from_local.stderr[-3000:]

    blob_doc = json.loads((tmp_path / "blob" / "out" / "metrics.json").read_text())
    local_doc = json.loads((tmp_path / "local" / "out" / "metrics.json").read_text())
    assert blob_doc["data_fingerprint"] == local_doc["data_fingerprint"]
    assert blob_doc["metrics"] == local_doc["metrics"]
    assert (tmp_path / "blob" / "out" / "model.onnx").read_bytes() == (tmp_path / "local" / "out" / "model.onnx").read_bytes()
    assert account_key(edge_stack.blob_connection_string) not in from_blob.stdout + from_blob.stderr


def test_window_beyond_the_uploaded_days_exits_2_naming_the_missing_partitions(edge_stack, container, tmp_path):
    proc = run_train(tmp_path, container, env={"EDGE_BLOB_CONNECTION_STRING": edge_stack.blob_connection_string},
                     end="2026-11-07")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no data for 2 of its 6 day(s): ['dt=2026-11-05', 'dt=2026-11-06']" in proc.stderr
    assert f"container {container}" in proc.stderr
    assert not (tmp_path / "scratch").exists()


def test_missing_container_exits_2(edge_stack, tmp_path):
    proc = run_train(tmp_path, "no-such-container",
                     env={"EDGE_BLOB_CONNECTION_STRING": edge_stack.blob_connection_string})
    assert proc.returncode == 2
    assert "Blob container 'no-such-container' does not exist" in proc.stderr


def test_wrong_account_key_exits_2_without_echoing_either_key(edge_stack, container, tmp_path):
    real = account_key(edge_stack.blob_connection_string)
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    proc = run_train(tmp_path, container,
                     env={"EDGE_BLOB_CONNECTION_STRING": edge_stack.blob_connection_string.replace(real, wrong)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "refused the credentials" in proc.stderr
    assert real not in proc.stderr and wrong not in proc.stderr


# -- exactly what was validated, on real ETags -------------------------------------------------------------------


def write_manifest(path: Path, validation: dict) -> Path:
    from tests._manifest import manifest_document

    path.write_text(json.dumps(manifest_document(validation)))
    return path


@pytest.fixture
def own_container(edge_stack, dataset):
    """A container this test may rewrite."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(edge_stack.blob_connection_string)
    client = service.create_container(f"train-manifest-{uuid.uuid4().hex[:10]}")
    upload(client, dataset)
    yield client
    client.delete_container()


def test_trains_the_manifest_by_etag_and_its_fingerprint_is_validations(edge_stack, own_container, dataset,
                                                                          tmp_path):  # fmt: skip
    from tests._manifest import validation_result

    validation = validation_result(own_container)
    assert all(b["content_md5"] for b in validation["manifest"])  # Azurite stores the MD5 of a Put Blob
    own_container.upload_blob("dt=2026-11-02/part-0009.csv", dataset["dt=2026-11-02/part-0000.csv"])  # lands late

    proc = run_train(tmp_path, own_container.container_name, "--manifest",
                     str(write_manifest(tmp_path / "m.json", validation)),
                     env={"EDGE_BLOB_CONNECTION_STRING": edge_stack.blob_connection_string})

    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["data_fingerprint"] == validation["data_fingerprint"]
    assert doc["rows"]["read"] == 1200 and [p["parts"] for p in doc["partitions"]] == [3, 3, 3, 3]


def test_a_blob_rewritten_after_validation_exits_2_naming_it(edge_stack, own_container, dataset, tmp_path):
    from tests._manifest import validation_result

    validation = validation_result(own_container)
    name = "dt=2026-11-03/part-0001.csv"
    # Same bytes again: the content did not change, but nobody can tell without validating it again.
    own_container.upload_blob(name, dataset[name], overwrite=True)
    own_container.delete_blob("dt=2026-11-04/part-0002.csv")

    proc = run_train(tmp_path, own_container.container_name, "--manifest",
                     str(write_manifest(tmp_path / "m.json", validation)),
                     env={"EDGE_BLOB_CONNECTION_STRING": edge_stack.blob_connection_string})

    assert proc.returncode == 2, proc.stderr[-3000:]
    old_etag = next(b["etag"] for b in validation["manifest"] if b["name"] == name)
    assert (f"2 blob(s) of the training window changed since validation {validation['validation_id']}: "
            f"{name} was rewritten (ETag no longer {old_etag}); dt=2026-11-04/part-0002.csv is gone"
            ) in proc.stderr, proc.stderr[-3000:]
    assert "Re-run this DAG run from validate_data" in proc.stderr
    assert "reading the" not in proc.stderr  # stopped before any download
    assert not (tmp_path / "out" / "model.onnx").exists() and not (tmp_path / "scratch").exists()


def test_a_rewrite_between_the_check_and_the_download_is_refused_by_if_match(edge_stack, own_container, dataset,
                                                                              tmp_path):  # fmt: skip
    """The download itself carries If-Match: a blob rewritten after the up-front check is not read either."""
    from tests._manifest import manifest_document, validation_result
    from tests.integration.test_pipeline_run import train_script

    script = train_script()
    validation = validation_result(own_container)
    source = script.BlobSource(edge_stack.blob_connection_string, own_container.container_name)
    name = "dt=2026-11-02/part-0000.csv"
    checked = source.check

    def check_then_rewrite(entries):
        problems = checked(entries)
        own_container.upload_blob(name, dataset[name], overwrite=True)  # lands right after the check
        return problems

    source.check = check_then_rewrite
    (tmp_path / "scratch").mkdir()
    days = script.window_days(START, START + dt.timedelta(days=4))
    with pytest.raises(script.BlobChanged, match=f"{name} was rewritten") as failure:
        script.load_window(source, days, tmp_path / "scratch", manifest_document(validation))
    assert failure.value.problems == [f"{name} was rewritten (ETag no longer "
                                      f"{next(b['etag'] for b in validation['manifest'] if b['name'] == name)})"]


# -- a SAS connection: the signature shows up nowhere, the credential file is gone once read ----------------------


def container_sas_connection(edge_stack, container: str, permission: str = "rl") -> str:
    from azure.storage.blob import generate_container_sas

    from scripts.edge_stack import AZURITE_ACCOUNT, AZURITE_KEY

    sas = generate_container_sas(AZURITE_ACCOUNT, container, account_key=AZURITE_KEY, permission=permission,
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))  # fmt: skip
    return f"BlobEndpoint={edge_stack.blob_endpoint};SharedAccessSignature={sas}"


def test_a_sas_connection_trains_and_logs_the_endpoint_without_its_query(edge_stack, container, tmp_path):
    cs = container_sas_connection(edge_stack, container)
    signature = re.search(r"sig=([^&;]+)", cs).group(1)
    cs_file = tmp_path / "blob.cs"
    fd = os.open(cs_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, cs.encode())
    os.close(fd)

    proc = run_train(tmp_path, container, "--connection-string-file", str(cs_file))

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not cs_file.exists()  # deleted as soon as it was read
    assert f"read the blob credentials and removed {cs_file}" in proc.stderr
    assert f"from container {container} at {edge_stack.blob_endpoint};" in proc.stderr
    output = proc.stdout + proc.stderr + (tmp_path / "out" / "metrics.json").read_text()
    assert "sig=" not in output and signature not in output


def test_errors_with_a_sas_connection_name_the_endpoint_not_the_signature(edge_stack, container, tmp_path):
    for cs, expected in [
        (container_sas_connection(edge_stack, "no-such-container"), "does not exist at "),
        (container_sas_connection(edge_stack, container, permission="r"), "refused the credentials"),
    ]:
        target = container if "refused" in expected else "no-such-container"
        proc = run_train(tmp_path, target, env={"EDGE_BLOB_CONNECTION_STRING": cs})
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert expected in proc.stderr and edge_stack.blob_endpoint in proc.stderr
        assert "sig=" not in proc.stderr and re.search(r"sig=([^&;]+)", cs).group(1) not in proc.stderr
