"""Scoring image: what goes into it and what it is called (pure logic, no Airflow, no I/O beyond the context folder).

* :func:`image_reference` - ``<registry>/<model>:<version>``, checked against the OCI distribution naming rules;
* :func:`assemble_context` - the build context: ``Dockerfile``, ``app.py``, ``requirements.txt`` from
  ``include/serving/``, the offline ``wheels/`` and ``model/model.onnx``;
* :func:`content_key` - one digest of everything that decides the image's content (context files + base image), so
  a retry can tell "this tag already holds exactly this image" without rebuilding;
* :func:`image_labels` - OCI labels plus the model's name, version, DAG run id and code version;
* :func:`wheel_platforms` / :func:`wheels_cache_name` - which wheels ``pip download`` fetches for the image's Python;
* :func:`smoke_rows` / :func:`compare_predictions` - the smoke test's synthetic rows and its verdict;
* :func:`model_version_tags` - what the model version records about its image.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

# Labels of our own (beside org.opencontainers.image.*); one prefix, the same names in the registry and in docs.
LABEL_PREFIX = "io.edge-training"
CONTENT_KEY_LABEL = f"{LABEL_PREFIX}.content-key"
IMAGE_REFERENCE_TAG = "image.reference"
IMAGE_DIGEST_TAG = "image.digest"

SERVING_FILES = ("Dockerfile", "app.py", "requirements.txt")
MODEL_FILE = "model.onnx"

# OCI distribution spec: repository path components and tags.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ImageContextError(ValueError):
    """An input to the image build is unusable (a name the registry refuses, a missing file...)."""


def registry_host(value: str) -> str:
    """``host[:port]`` of a registry given as a host, a URL (``https://x.azurecr.io/``) or with a trailing slash."""
    host = re.sub(r"^[a-z]+://", "", (value or "").strip()).strip("/")
    if not host or "/" in host or " " in host:
        raise ImageContextError(
            f"Checked the image registry host: found {value!r}. Set the image_registry connection's host to the "
            "registry's login server, e.g. myregistry.azurecr.io or 127.0.0.1:5000."
        )
    return host


def repository_name(model_name: str) -> str:
    """The model name as an OCI repository name: lower case; characters outside ``[a-z0-9._-]`` become ``-``."""
    name = re.sub(r"[^a-z0-9._-]+", "-", model_name.lower()).strip("._-")
    name = re.sub(r"[._-]{2,}", "-", name)
    if not _COMPONENT.match(name):
        raise ImageContextError(
            f"Checked the model name {model_name!r} as an image repository name: nothing usable is left "
            f"({name!r}). Use a model name with letters or digits."
        )
    return name


def image_reference(host: str, model_name: str, version: str) -> str:
    """``<registry>/<model>:<version>``, e.g. ``myregistry.azurecr.io/predictive-maintenance:7``."""
    tag = str(version)
    if not _TAG.match(tag):
        raise ImageContextError(
            f"Checked the model version {version!r} as an image tag: tags are 1-128 characters of letters, digits, "
            "'_', '.', '-' and do not start with '.' or '-'. Register versions with plain numbers."
        )
    return f"{registry_host(host)}/{repository_name(model_name)}:{tag}"


def split_reference(reference: str) -> tuple[str, str, str]:
    """``host/repo:tag`` -> ``(host, repo, tag)``."""
    host, _, rest = reference.partition("/")
    repository, _, tag = rest.rpartition(":")
    return host, repository, tag


def wheel_platforms(glibc: str, arch: str) -> list[str]:
    """Every manylinux platform tag a Python on ``glibc`` (e.g. ``"2.36"``) for ``arch`` can install.

    ``pip download --platform`` matches tags literally, so the older tags (``manylinux2014``, ``manylinux_2_17``...)
    that wheels such as protobuf still use must be listed too.
    """
    try:
        major, minor = (int(part) for part in glibc.split("."))
    except ValueError:
        raise ImageContextError(
            f"Checked the image's glibc version (EDGE_IMAGE_GLIBC): found {glibc!r}. Use major.minor, e.g. 2.36 "
            "for Debian bookworm."
        ) from None
    if major != 2 or minor < 17:
        raise ImageContextError(
            f"Checked the image's glibc version (EDGE_IMAGE_GLIBC): {glibc} is older than 2.17, which no current "
            "onnxruntime wheel supports. Use a newer base image."
        )
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{arch}"]


def wheels_cache_name(python_version: str, platforms: list[str], requirements: bytes) -> str:
    """Folder name for one wheel set: changes whenever the Python, the platform or the pinned requirements do."""
    key = hashlib.sha256(requirements + "\n".join(platforms).encode()).hexdigest()[:12]
    return f"py{python_version}-{platforms[0]}-{key}"


@dataclass(frozen=True)
class BuildContext:
    """An assembled build context.

    :param path: the context folder (pass it to the image build).
    :param model_path: the model file inside it.
    :param content_key: see :func:`content_key`.
    """

    path: Path
    model_path: Path
    content_key: str


def _place(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Hard links: the wheels are ~50 MB and the context is assembled for every build.
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def assemble_context(dest: Path, serving_dir: Path, wheels_dir: Path, onnx_path: Path, base_image: str) -> BuildContext:
    """Fill the empty folder ``dest`` with the build context for one model version.

    :param dest: an empty (or missing) folder.
    :param serving_dir: ``include/serving`` (Dockerfile, app.py, requirements.txt).
    :param wheels_dir: the wheels ``requirements.txt`` needs, plus pip's own wheel.
    :param onnx_path: the registered model version's ONNX file.
    :param base_image: the ``BASE_IMAGE`` build argument (part of the content key).
    :raises ImageContextError: a file is missing or ``dest`` is not empty.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ImageContextError(f"Checked the build context folder {dest}: it is not empty. Pass a fresh folder.")
    missing = [str(serving_dir / name) for name in SERVING_FILES if not (serving_dir / name).is_file()]
    wheels = sorted(p for p in Path(wheels_dir).glob("*.whl")) if Path(wheels_dir).is_dir() else []
    if not any(p.name.startswith("pip-") for p in wheels):
        missing.append(f"{wheels_dir}/pip-*.whl")
    if not Path(onnx_path).is_file():
        missing.append(str(onnx_path))
    if missing:
        raise ImageContextError(
            f"Checked the files the scoring image is built from: missing {missing}. The serving files ship in "
            "include/serving/; the wheels are downloaded by the build step; the model comes from the registry."
        )
    for name in SERVING_FILES:
        _place(serving_dir / name, dest / name)
    for wheel in wheels:
        _place(wheel, dest / "wheels" / wheel.name)
    model_path = dest / "model" / MODEL_FILE
    _place(Path(onnx_path), model_path)
    return BuildContext(dest, model_path, content_key(dest, base_image))


def content_key(context_dir: Path, base_image: str) -> str:
    """``sha256:<hex>`` over the base image name and every file of the context (relative path + bytes)."""
    digest = hashlib.sha256(f"base={base_image}\n".encode())
    for path in sorted(p for p in Path(context_dir).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(context_dir).as_posix()}\n".encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def image_labels(
    *,
    model_name: str,
    version: str,
    dag_run_id: str,
    code_version: str,
    created: str,
    content: str,
    source: str = "",
) -> dict[str, str]:
    """The image's OCI labels.

    :param created: RFC 3339 build time.
    :param content: the context's :func:`content_key`.
    :param source: where the project's source lives (URL), if known.
    """
    labels = {
        "org.opencontainers.image.title": f"{model_name} scoring server",
        "org.opencontainers.image.description": f"Scores rows with model {model_name} version {version} (ONNX).",
        "org.opencontainers.image.version": str(version),
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.revision": code_version,
        f"{LABEL_PREFIX}.model.name": model_name,
        f"{LABEL_PREFIX}.model.version": str(version),
        f"{LABEL_PREFIX}.dag-run-id": dag_run_id,
        f"{LABEL_PREFIX}.code-version": code_version,
        CONTENT_KEY_LABEL: content,
    }
    if source:
        labels["org.opencontainers.image.source"] = source
    return labels


def model_version_tags(reference: str, digest: str) -> dict[str, str]:
    """Tags recorded on the model version once its image is in the registry."""
    if not _DIGEST.match(digest):
        raise ImageContextError(
            f"Checked the pushed image's digest: found {digest!r}, not sha256:<64 hex>. The push did not report a "
            "digest; the model version is left untagged. Retry the task."
        )
    return {IMAGE_REFERENCE_TAG: f"{reference}@{digest}", IMAGE_DIGEST_TAG: digest}


def smoke_rows(features: list[str], count: int = 16, seed: int = 0) -> list[dict[str, float]]:
    """Synthetic rows for the smoke test, the same on every call (no real data row ever goes into a test request).

    Values spread over several orders of magnitude so that the model's trees take different branches.
    """
    rng = random.Random(seed)
    return [{name: round(rng.uniform(0, 10 ** rng.randint(0, 4)), 3) for name in features} for _ in range(count)]


def compare_predictions(
    expected: list[float], served: list[float], expected_labels: list[int], served_labels: list[int], tolerance: float
) -> dict:
    """Verdict of the smoke test: ``{"rows", "max_abs_diff", "labels_match", "passed"}``."""
    if len(expected) != len(served) or len(expected_labels) != len(served_labels):
        return {"rows": len(expected), "served_rows": len(served), "max_abs_diff": None, "labels_match": False,
                "passed": False}  # fmt: skip
    max_diff = max((abs(a - b) for a, b in zip(expected, served)), default=0.0)
    labels_match = [int(v) for v in expected_labels] == [int(v) for v in served_labels]
    return {
        "rows": len(expected),
        "max_abs_diff": max_diff,
        "labels_match": labels_match,
        "passed": labels_match and max_diff <= tolerance,
    }
