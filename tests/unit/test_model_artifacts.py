"""How a training result names its output blobs, and the checks register_model makes on them (no services)."""

from __future__ import annotations

import base64
import hashlib
import importlib

import pytest

from edge_training import model_artifacts as ma

MD5 = base64.b64encode(hashlib.md5(b"model").digest()).decode()


def _artifacts(**blobs):
    return ma.describe("models", "edge-training/job-1/", {
        "model.onnx": ma.blob_entry("edge-training/job-1/model.onnx", '"0x1"', MD5, 5),
        "metrics.json": ma.blob_entry("edge-training/job-1/metrics.json", '"0x2"', None, 2),
        **blobs,
    })  # fmt: skip


def test_outputs_of_a_job_live_under_its_own_prefix():
    assert ma.output_prefix("edge-training", "job-1") == "edge-training/job-1/"
    assert ma.output_prefix("/a/b/", "job-1") == "a/b/job-1/"
    assert ma.output_prefix("", "job-1") == "job-1/"


def test_a_description_needs_model_and_metrics_and_keeps_only_output_files():
    described = _artifacts(**{"notes.txt": ma.blob_entry("x", '"0x3"', None, 1)})
    assert set(described["blobs"]) == {"model.onnx", "metrics.json"}
    assert ma.check_described(described) == described
    with pytest.raises(ma.ArtifactError, match=r"metrics.json missing \(found model.onnx\)"):
        ma.describe("models", "p/", {"model.onnx": ma.blob_entry("p/model.onnx", '"0x1"', None, 1)})


@pytest.mark.parametrize("bad", [None, "/tmp/artifacts/job-1", {"container": "models"},
                                 {"container": "models", "blobs": {"model.onnx": {"name": "n", "size": 1}}}])
def test_a_result_without_named_blobs_is_refused_before_any_download(bad):
    with pytest.raises(ma.ArtifactError, match="Checked the training result's artifacts"):
        ma.check_described(bad)


def test_a_result_naming_no_model_is_refused():
    described = _artifacts()
    del described["blobs"]["model.onnx"]
    with pytest.raises(ma.ArtifactError, match="model.onnx not named"):
        ma.check_described(described)


def test_a_download_of_another_size_or_md5_is_refused_saying_what_was_expected():
    entry = _artifacts()["blobs"]["model.onnx"]
    ma.verify_blob("models", "model.onnx", entry, 5, MD5)
    with pytest.raises(ma.ArtifactError, match="expected 5 bytes, downloaded 4"):
        ma.verify_blob("models", "model.onnx", entry, 4, MD5)
    other = base64.b64encode(hashlib.md5(b"mode!").digest()).decode()
    with pytest.raises(ma.ArtifactError, match=f"expected Content-MD5 {MD5}, downloaded bytes hash to {other}"):
        ma.verify_blob("models", "model.onnx", entry, 5, other)
    # A blob the service kept no MD5 for is checked by ETag (at download) and size only.
    ma.verify_blob("models", "metrics.json", _artifacts()["blobs"]["metrics.json"], 2, other)


def test_output_settings_fall_back_to_the_azureml_names(monkeypatch):
    from edge_training import config

    for name in ("EDGE_OUTPUT_CONTAINER", "EDGE_OUTPUT_PREFIX", "EDGE_AZUREML_OUTPUT_CONTAINER",
                 "EDGE_AZUREML_OUTPUT_PREFIX", "EDGE_OUTPUT_CONN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert (config.output_container(), config.output_prefix()) == ("models", "edge-training")
    monkeypatch.setenv("EDGE_AZUREML_OUTPUT_CONTAINER", "aml-out")
    monkeypatch.setenv("EDGE_AZUREML_OUTPUT_PREFIX", "aml")
    assert (config.output_container(), config.output_prefix()) == ("aml-out", "aml")
    monkeypatch.setenv("EDGE_OUTPUT_CONTAINER", "site-out")
    monkeypatch.setenv("EDGE_OUTPUT_PREFIX", "runs")
    assert (config.output_container(), config.output_prefix()) == ("site-out", "runs")
    monkeypatch.setenv("EDGE_BLOB_CONN_ID", "site_blob")
    try:
        assert importlib.reload(config).OUTPUT_CONN_ID == "site_blob"
    finally:
        monkeypatch.undo()
        importlib.reload(config)
