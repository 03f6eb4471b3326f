"""Pure logic of the scoring image: names, build context, content key, labels, wheel platforms, smoke verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_training.image_context import (
    CONTENT_KEY_LABEL,
    ImageContextError,
    assemble_context,
    compare_predictions,
    content_key,
    image_labels,
    image_reference,
    model_version_tags,
    registry_host,
    smoke_rows,
    split_reference,
    wheel_platforms,
    wheels_cache_name,
)

SERVING = Path(__file__).resolve().parents[2] / "include" / "serving"
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("host", "model", "version", "expected"),
    [
        ("myacr.azurecr.io", "predictive-maintenance", "7", "myacr.azurecr.io/predictive-maintenance:7"),
        ("https://myacr.azurecr.io/", "Predictive Maintenance", "12", "myacr.azurecr.io/predictive-maintenance:12"),
        ("127.0.0.1:5000", "edge__model..v2", "1", "127.0.0.1:5000/edge-model-v2:1"),
    ],
)
def test_image_reference(host, model, version, expected):
    assert image_reference(host, model, version) == expected
    assert split_reference(expected) == (expected.split("/")[0], expected.split("/")[1].split(":")[0], version)


@pytest.mark.parametrize(("host", "model", "version"), [("", "m", "1"), ("a/b", "m", "1"), ("h", "!!!", "1"), ("h", "m", "-1"), ("h", "m", "v" * 129)])
def test_image_reference_refuses_unusable_names(host, model, version):
    with pytest.raises(ImageContextError, match="Checked"):
        image_reference(host, model, version)


def test_registry_host_strips_scheme_and_slash():
    assert registry_host(" https://x.azurecr.io/ ") == "x.azurecr.io"


def test_wheel_platforms_cover_older_manylinux_tags():
    tags = wheel_platforms("2.36", "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_28_x86_64" in tags and "manylinux_2_17_x86_64" in tags
    assert tags[-1] == "manylinux2014_x86_64"
    with pytest.raises(ImageContextError, match="EDGE_IMAGE_GLIBC"):
        wheel_platforms("bookworm", "x86_64")
    with pytest.raises(ImageContextError, match="older than 2.17"):
        wheel_platforms("2.12", "x86_64")


def test_wheels_cache_name_changes_with_pins_and_python():
    tags = wheel_platforms("2.36", "x86_64")
    one = wheels_cache_name("3.11", tags, b"numpy==2.4.6\n")
    assert one == wheels_cache_name("3.11", tags, b"numpy==2.4.6\n")
    assert one != wheels_cache_name("3.11", tags, b"numpy==2.4.5\n")
    assert one != wheels_cache_name("3.12", tags, b"numpy==2.4.6\n")


@pytest.fixture
def inputs(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pip-26.3-py3-none-any.whl").write_bytes(b"pip")
    (wheels / "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"numpy")
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model-v1")
    return wheels, model


def test_assemble_context_holds_serving_files_wheels_and_model(tmp_path, inputs):
    wheels, model = inputs
    built = assemble_context(tmp_path / "ctx", SERVING, wheels, model, "base:1")
    files = sorted(p.relative_to(built.path).as_posix() for p in built.path.rglob("*") if p.is_file())
    assert files == [
        "Dockerfile", "app.py", "model/model.onnx", "requirements.txt",
        "wheels/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", "wheels/pip-26.3-py3-none-any.whl",
    ]  # fmt: skip
    assert built.model_path.read_bytes() == b"model-v1"
    assert built.content_key == content_key(built.path, "base:1")


def test_content_key_follows_content_not_location(tmp_path, inputs):
    wheels, model = inputs
    first = assemble_context(tmp_path / "a", SERVING, wheels, model, "base:1").content_key
    assert assemble_context(tmp_path / "b", SERVING, wheels, model, "base:1").content_key == first
    assert assemble_context(tmp_path / "c", SERVING, wheels, model, "base:2").content_key != first
    model.write_bytes(b"model-v2")
    assert assemble_context(tmp_path / "d", SERVING, wheels, model, "base:1").content_key != first


def test_assemble_context_names_what_is_missing(tmp_path, inputs):
    wheels, model = inputs
    (wheels / "pip-26.3-py3-none-any.whl").unlink()
    with pytest.raises(ImageContextError) as caught:
        assemble_context(tmp_path / "ctx", SERVING, wheels, tmp_path / "missing-model.onnx", "base:1")
    assert "pip-*.whl" in str(caught.value) and "missing-model.onnx" in str(caught.value)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ImageContextError, match="not empty"):
        assemble_context(tmp_path / "full", SERVING, wheels, model, "base:1")


def test_image_labels():
    labels = image_labels(
        model_name="pm", version="3", dag_run_id="scheduled__2026-06-10", code_version="abc123",
        created="2026-06-10T02:00:00+00:00", content=DIGEST,
    )  # fmt: skip
    assert labels["org.opencontainers.image.version"] == "3"
    assert labels["org.opencontainers.image.revision"] == "abc123"
    assert labels["org.opencontainers.image.created"] == "2026-06-10T02:00:00+00:00"
    assert labels["io.edge-training.model.name"] == "pm"
    assert labels["io.edge-training.model.version"] == "3"
    assert labels["io.edge-training.dag-run-id"] == "scheduled__2026-06-10"
    assert labels["io.edge-training.code-version"] == "abc123"
    assert labels[CONTENT_KEY_LABEL] == DIGEST
    assert "org.opencontainers.image.source" not in labels


def test_model_version_tags_refuse_a_digest_that_is_not_one():
    assert model_version_tags("r/m:1", DIGEST) == {"image.reference": f"r/m:1@{DIGEST}", "image.digest": DIGEST}
    with pytest.raises(ImageContextError, match="left untagged"):
        model_version_tags("r/m:1", "")


def test_smoke_rows_are_deterministic_and_complete():
    features = ["a", "b", "c"]
    rows = smoke_rows(features)
    assert rows == smoke_rows(features) and len(rows) == 16
    assert all(sorted(row) == features and all(isinstance(v, float) for v in row.values()) for row in rows)
    assert len({row["a"] for row in rows}) > 8


@pytest.mark.parametrize(
    ("served", "served_labels", "passed"),
    [([0.1, 0.9], [0, 1], True), ([0.1, 0.8], [0, 1], False), ([0.1, 0.9], [0, 0], False), ([0.1], [0], False)],
)
def test_compare_predictions(served, served_labels, passed):
    verdict = compare_predictions([0.1, 0.9], served, [0, 1], served_labels, tolerance=1e-5)
    assert verdict["passed"] is passed
