"""Small real models for tests that need a trained ONNX model without running the training job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FEATURES = ["temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct", "power_kw"]


def write_model(folder: Path, seed: int, trees: int = 20) -> Path:
    """A real RandomForest exported like include/training/train.py does (probabilities tensor, features metadata)."""
    import onnx
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, len(FEATURES))).astype(np.float32) * [10, 2, 1, 300, 15, 5] + [70, 3, 5, 1500, 40, 10]
    y = ((x[:, 0] > 75) & (x[:, 1] > 3) | (rng.random(2000) < 0.05)).astype(int)
    clf = RandomForestClassifier(n_estimators=trees, max_depth=8, random_state=seed).fit(x.astype(np.float32), y)
    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}})
    onnx.helper.set_model_props(onx, {"features": json.dumps(FEATURES), "label": "failure_within_24h"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    (folder / "metrics.json").write_text(json.dumps({"metrics": {"roc_auc": 0.9}, "features": FEATURES}))
    return folder


def assert_lease_is_free(client, model_name: str) -> None:
    """The champion lease of ``model_name`` is back under its free name, and not held (see ``registry.locks``)."""
    from edge_training.registry.locks import lease_names

    free, held = lease_names(model_name)
    names = {m.name for m in client.search_registered_models(f"name LIKE '{free}%'")}
    assert names == {free}, f"champion lease not given back: registered models {sorted(names)}"
