"""Modules of ``include/training/`` that ship to the edge VM with the training code, loaded here as well.

Some rules must be the same on both sides of the trust boundary: which blobs are data and their fingerprint
(``blob_manifest``), how URLs are redacted (``redact``), how a data profile is computed (``data_profile``). They live
once, stdlib (+ numpy) only, beside ``train.py``; the Airflow side loads them from there instead of copying them.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from edge_training import config


def training_module(name: str) -> ModuleType:
    """Load (once per process) ``include/training/<name>.py`` as the module ``edge_training_shipped.<name>``.

    :param name: file name without ``.py``, e.g. ``"blob_manifest"``.
    """
    qualified = f"edge_training_shipped.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    path = config.INCLUDE_DIR / "training" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(qualified, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Checked {path} for the shipped training module {name!r}; it cannot be loaded.")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as the import system does: dataclasses and pickling look modules up by name.
    sys.modules[qualified] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[qualified]
        raise
    return module
