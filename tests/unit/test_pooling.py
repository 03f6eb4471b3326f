"""The pooled global model: the sites' forests as one ONNX forest weighted by training size; the quorum decision."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_training.pooling import (
    PoolingError,
    SiteForest,
    global_decision,
    parse_quorum,
    pool_forests,
    site_shares,
)

FEATURES = ["temperature_c", "vibration_mm_s", "pressure_bar"]


def forest_onnx(seed: int, rows: int, trees: int, features=FEATURES) -> bytes:
    """A random forest trained on ``rows`` synthetic rows, exported as include/training/train.py exports it."""
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(features))).astype(np.float32)
    y = ((x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=rows)) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=trees, max_depth=4, random_state=seed).fit(x, y)
    onx = to_onnx(model, initial_types=[("input", FloatTensorType([None, len(features)]))],
                  options={id(model): {"zipmap": False}})  # fmt: skip
    onnx.helper.set_model_props(onx, {"features": json.dumps(features), "label": "failure_within_24h"})
    return onx.SerializeToString()


def predict(onnx_bytes: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {session.get_inputs()[0].name: x})
    return label, proba


def test_the_pooled_forest_votes_with_each_sites_share_of_the_training_rows():
    north, south = forest_onnx(1, rows=3000, trees=7), forest_onnx(2, rows=1000, trees=4)
    pooled = pool_forests([SiteForest("north", north, 3000), SiteForest("south", south, 1000)])
    x = np.random.default_rng(9).normal(size=(500, len(FEATURES))).astype(np.float32)
    _, p_north = predict(north, x)
    _, p_south = predict(south, x)
    label, p_pooled = predict(pooled, x)
    np.testing.assert_allclose(p_pooled, 0.75 * p_north + 0.25 * p_south, atol=1e-5)
    np.testing.assert_array_equal(label, np.argmax(p_pooled, axis=1))
    # The pooled model differs from either site's: both sites' trees vote.
    assert np.abs(p_pooled - p_north).max() > 1e-3 and np.abs(p_pooled - p_south).max() > 1e-3


def test_the_pooled_model_says_what_it_is_made_of():
    import onnx

    pooled = pool_forests([SiteForest("a", forest_onnx(1, 900, 3), 900), SiteForest("b", forest_onnx(2, 100, 3), 100)],
                          properties={"model_versions": '{"a": "3", "b": "5"}'})  # fmt: skip
    meta = {p.key: p.value for p in onnx.load_from_string(pooled).metadata_props}
    assert json.loads(meta["pooled_sites"]) == {"a": 0.9, "b": 0.1}
    assert meta["estimator"] == "PooledRandomForest" and meta["features"] == json.dumps(FEATURES)
    assert meta["model_versions"] == '{"a": "3", "b": "5"}'
    tree_ids = next(a for a in onnx.load_from_string(pooled).graph.node[0].attribute if a.name == "nodes_treeids")
    assert len(set(tree_ids.ints)) == 6


def test_models_trained_on_other_features_are_not_pooled():
    other = forest_onnx(2, 500, 3, features=["rpm", "humidity_pct", "power_kw"])
    with pytest.raises(PoolingError, match=r"feature columns of site 'b'.*Pool models trained on the same features"):
        pool_forests([SiteForest("a", forest_onnx(1, 500, 3), 500), SiteForest("b", other, 500)])


def test_a_model_that_is_not_a_tree_ensemble_is_refused():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])])  # fmt: skip
    model = helper.make_model(graph).SerializeToString()
    with pytest.raises(PoolingError, match=r"site 'b''s model for one ai.onnx.ml.TreeEnsembleClassifier node: found 0"):
        pool_forests([SiteForest("a", forest_onnx(1, 500, 3), 500), SiteForest("b", model, 500)])
    assert onnx  # the model above is valid ONNX: the refusal is about what it holds


@pytest.mark.parametrize("n_train", [0, -5, None, 2.5])
def test_a_site_without_a_training_size_is_refused(n_train):
    with pytest.raises(PoolingError, match=r"not a positive integer for b \("):
        site_shares([SiteForest("a", b"", 10), SiteForest("b", b"", n_train)])


def test_shares_add_up_to_one():
    shares = site_shares([SiteForest("a", b"", 1), SiteForest("b", b"", 2), SiteForest("c", b"", 7)])
    assert shares == pytest.approx({"a": 0.1, "b": 0.2, "c": 0.7})


@pytest.mark.parametrize(("value", "sites", "quorum"), [(None, 3, 2), ("", 4, 3), ("majority", 5, 3), ("all", 3, 3),
                                                         ("2", 3, 2), (1, 1, 1)])  # fmt: skip
def test_quorum(value, sites, quorum):
    assert parse_quorum(value, sites) == quorum


@pytest.mark.parametrize("value", ["0", "4", "most", "-1"])
def test_an_impossible_quorum_is_refused(value):
    with pytest.raises(PoolingError, match=rf"EDGE_SITES_QUORUM: expected a number of sites from 1 to 3, 'majority' or "
                                           rf"'all', found {value!r}"):  # fmt: skip
        parse_quorum(value, 3)


def test_the_global_model_is_promoted_only_when_it_beats_a_quorum_of_champions():
    scores = {"a": {"global": 0.91, "champion": 0.88}, "b": {"global": 0.80, "champion": 0.85},
              "c": {"global": 0.90, "champion": 0.89}}  # fmt: skip
    promoted = global_decision(scores, quorum=2)
    assert promoted.promote and promoted.wins == 2
    assert promoted.verdicts == {"a": "won", "b": "lost", "c": "won"}
    assert promoted.reason.startswith("the global model beat the site's champion at 2 of 3 sites (quorum 2): promoted")
    assert not global_decision(scores, quorum=3).promote
    # A margin: c's 0.01 lead is not enough.
    assert global_decision(scores, quorum=2, margin=0.02).verdicts["c"] == "lost"


def test_a_site_without_a_champion_or_a_score_does_not_count_as_a_win():
    scores = {"a": {"global": 0.9, "champion": None}, "b": {"global": None, "champion": 0.8},
              "c": {"global": float("nan"), "champion": 0.5}, "d": {"global": 0.9, "champion": 0.7}}  # fmt: skip
    decision = global_decision(scores, quorum=2)
    assert decision.verdicts == {"a": "not_compared", "b": "not_compared", "c": "not_compared", "d": "won"}
    assert not decision.promote and decision.wins == 1
