"""The model registry interface every backend implements, and what all backends share.

No backend imports another, and none imports the package ``__init__``: each imports only this module (the import
graph is checked by ``tests/unit/test_registry_imports.py``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from edge_training.champion import split_metrics
from edge_training.exceptions import ChampionChangedError, ModelRegistryError

CHAMPION_ALIAS = "champion"
REGISTRATION_KEY_TAG = "edge.registration_key"
REGISTRATION_COMPLETE_TAG = "edge.registration_complete"
# Same data fingerprint, code version, hyperparameters, seed and windows: see lineage.training_identity.
TRAINING_IDENTITY_TAG = "edge.training_identity"
ONNX_FILE = "model.onnx"
METRICS_FILE = "metrics.json"

# Keys and names end up inside registry search filters; refusing quotes keeps those filters unambiguous.
_SAFE_VALUE = re.compile(r"^[^'\"`\\\n\r]{1,250}$")


@dataclass(frozen=True)
class RegisteredModelVersion:
    """One version of a registered model.

    :param name: Registered model name.
    :param version: Version as a string ("1", "2", ...).
    :param run_id: The registration key the version was registered with (see :meth:`ModelRegistry.register`).
    :param tags: The version's tags (lineage, champion decision, image digest...).
    :param source: Where the backend stores the model files.
    :param uri: A URI naming this version in the backend (e.g. ``models:/name/3``).
    """

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""
    uri: str = ""

    @property
    def complete(self) -> bool:
        """True once registration finished (lineage tags written)."""
        return self.tags.get(REGISTRATION_COMPLETE_TAG) == "true"


@runtime_checkable
class ModelRegistry(Protocol):
    """What the pipeline needs from a model registry."""

    def find_version_by_run(self, model_name: str, run_id: str) -> RegisteredModelVersion | None:
        """The version registered with this key, complete or not, or None."""

    def find_versions_by_tag(self, model_name: str, key: str, value: str) -> list[RegisteredModelVersion]:
        """Every version whose tag ``key`` equals ``value``, oldest first."""

    def get_version(self, model_name: str, version: str) -> RegisteredModelVersion | None:
        """One version (with its tags), or None if the model has no such version."""

    def list_versions(self, model_name: str) -> list[RegisteredModelVersion]:
        """Every version of the model, oldest first (empty if the model does not exist)."""

    def register(self, model_name: str, artifacts_dir: Path, run_id: str, tags: dict) -> RegisteredModelVersion:
        """Register ``artifacts_dir/model.onnx`` (+ ``metrics.json``) as a new version tagged with ``tags``.

        Idempotent per ``run_id``: if a complete version with this key exists it is returned unchanged; an
        incomplete one is completed. Never overwrites another registration's version.
        """

    def get_champion(self, model_name: str) -> RegisteredModelVersion | None:
        """The version holding the ``champion`` alias, or None."""

    def promote(self, model_name: str, version: str, *, expected: str | None) -> None:
        """Make ``version`` the champion, only if the champion is still ``expected`` (None: no champion yet).

        A compare-and-set: of two promotions that both read the same champion, exactly one succeeds.

        :raises ChampionChangedError: the champion is no longer ``expected``; nothing was changed.
        """

    def set_tags(self, model_name: str, version: str, tags: dict) -> None:
        """Set (add or overwrite) tags on a version."""

    def set_description(self, model_name: str, version: str, description: str) -> None:
        """Replace the version's description (the text the registry's UI shows first for it)."""

    def attach_file(self, model_name: str, version: str, path: Path) -> str:
        """Store a file (a report such as a model card) with a version; return where it is stored (a URI).

        Attaching a file of the same name again replaces it.
        """

    def download_attachment(self, version: RegisteredModelVersion, name: str, dest_dir: Path) -> Path | None:
        """Copy the file ``name`` attached to the version (:meth:`attach_file`) into ``dest_dir``; None if it has none."""

    def download_onnx(self, version: RegisteredModelVersion, dest_dir: Path) -> Path:
        """Download the version's ONNX file into ``dest_dir`` and return its path.

        :raises ModelRegistryError: the version holds no ONNX model.
        """


def check_safe(what: str, value: str) -> str:
    """Refuse a name or key that could change the meaning of a registry search filter.

    :param what: What the value is, for the error message.
    :param value: The value to check.
    :raises ValueError: the value is empty, too long or holds quotes, backslashes or newlines.
    """
    if not isinstance(value, str) or not _SAFE_VALUE.match(value):
        raise ValueError(
            f"Model registry: the {what} must be 1-250 characters without quotes, backslashes or newlines; "
            f"found {value!r}. Pass a plain identifier (e.g. the training job id)."
        )
    return value


def champion_must_move(model_name: str, version: str, current: str | None, expected: str | None) -> bool:
    """The compare of a compare-and-set promotion: False if ``version`` is already the champion, True to move it.

    :param model_name: Registered model name.
    :param version: The version being promoted.
    :param current: The champion version read now (under the backend's lock or record).
    :param expected: The champion version the caller decided against.
    :raises ChampionChangedError: the champion is neither ``version`` nor ``expected``.
    """
    if current == str(version):
        return False
    if current != (None if expected is None else str(expected)):
        raise ChampionChangedError(
            f"Model {model_name}: the champion is version {current or 'none'}, not {expected or 'none'} as read "
            f"before promoting version {version}; another promotion moved it first. Nothing was changed.",
            current,
        )
    return True


def version_number(version) -> int:
    """Numeric order of a version string (non-numeric versions sort first)."""
    text = str(version)
    return int(text) if text.isdigit() else 0


def read_artifacts(artifacts_dir: Path) -> tuple[Path, dict]:
    """Check a training artifacts folder and return (ONNX path, numeric metrics from metrics.json).

    :raises ModelRegistryError: the folder or ``model.onnx`` is missing, or ``metrics.json`` is not JSON.
    """
    artifacts_dir = Path(artifacts_dir)
    onnx_path = artifacts_dir / ONNX_FILE
    if not onnx_path.is_file():
        found = sorted(p.name for p in artifacts_dir.iterdir()) if artifacts_dir.is_dir() else "folder missing"
        raise ModelRegistryError(
            f"Model registry: expected the trained model at {onnx_path}, found {found}. "
            "Check that the training job finished and its artifacts were copied back to this worker."
        )
    metrics: dict = {}
    metrics_path = artifacts_dir / METRICS_FILE
    if metrics_path.is_file():
        try:
            raw = json.loads(metrics_path.read_text())
        except ValueError as exc:
            raise ModelRegistryError(
                f"Model registry: {metrics_path} is not valid JSON ({exc.msg} at line {exc.lineno}). "
                "Re-run the training job; it writes this file."
            ) from None
        candidate, _ = split_metrics(raw)
        metrics = {
            str(k): float(v)
            for k, v in candidate.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
    return onnx_path, metrics
