"""include/training/evaluation.py: the holdout aggregates the edge VM computes for the model card."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

_spec = importlib.util.spec_from_file_location(
    "edge_evaluation", Path(__file__).resolve().parents[2] / "include" / "training" / "evaluation.py"
)
evaluation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluation)


def holdout(n: int, seed: int = 1, signal: float = 0.35, rate: float = 0.06):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    proba = np.clip(signal * y + rng.random(n) * (1 - signal), 0, 1).round(3)  # rounded: ties, as forests give
    return y, proba


SKLEARN = {
    "roc_auc": lambda y, p, w: roc_auc_score(y, p, sample_weight=w),
    "pr_auc": lambda y, p, w: average_precision_score(y, p, sample_weight=w),
    "f1": lambda y, p, w: f1_score(y, p >= 0.5, sample_weight=w),
    "accuracy": lambda y, p, w: accuracy_score(y, p >= 0.5, sample_weight=w),
    "precision": lambda y, p, w: precision_score(y, p >= 0.5, sample_weight=w, zero_division=0),
    "recall": lambda y, p, w: recall_score(y, p >= 0.5, sample_weight=w),
}


@pytest.mark.parametrize("weighted", [False, True])
def test_metrics_match_scikit_learn_with_and_without_resampling_weights(weighted):
    y, proba = holdout(3000)
    sorted_holdout = evaluation._SortedHoldout(y, proba, 0.5)
    rng = np.random.default_rng(5)
    weights = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)) if weighted else np.ones(len(y))
    # The sorted holdout takes weights in its own row order; scikit-learn in the original one.
    ours = sorted_holdout.scores(weights[sorted_holdout.order].astype(float))
    for name, reference in SKLEARN.items():
        assert ours[name] == pytest.approx(reference(y, proba, weights), abs=1e-12), name


def test_intervals_bracket_the_holdout_value_shrink_with_more_rows_and_are_reproducible():
    small = evaluation.bootstrap_intervals(*holdout(800), resamples=400, seed=3)
    large = evaluation.bootstrap_intervals(*holdout(20000), resamples=400, seed=3)
    for name in evaluation.METRICS:
        assert small[name]["lower"] <= small[name]["value"] <= small[name]["upper"], name
        assert large[name]["upper"] - large[name]["lower"] < small[name]["upper"] - small[name]["lower"], name
    assert small["roc_auc"]["value"] == pytest.approx(roc_auc_score(*holdout(800)))
    again = evaluation.bootstrap_intervals(*holdout(800), resamples=400, seed=3)
    assert again == small
    other_seed = evaluation.bootstrap_intervals(*holdout(800), resamples=400, seed=4)
    assert other_seed["roc_auc"]["lower"] != small["roc_auc"]["lower"]
    assert small["_method"] == {"method": "percentile bootstrap", "confidence": 0.95, "resamples": 400,
                                "resamples_without_both_classes": 0, "seed": 3, "threshold": 0.5}


def test_a_95_percent_interval_covers_the_population_auc_about_95_percent_of_the_time():
    # The population ROC AUC of this generator, from one very large sample.
    truth = roc_auc_score(*holdout(400000, seed=99))
    covered = sum(
        (r := evaluation.bootstrap_intervals(*holdout(600, seed=s), resamples=300, seed=s)["roc_auc"])["lower"]
        <= truth <= r["upper"]
        for s in range(40)
    )
    assert 33 <= covered <= 40, f"{covered}/40 intervals cover the population AUC {truth:.4f}"


def test_confusion_counts_match_scikit_learn():
    y, proba = holdout(2000)
    counts = evaluation.confusion_counts(y, proba)
    tn, fp, fn, tp = confusion_matrix(y, proba >= 0.5).ravel()
    assert counts == {"true_positives": tp, "false_positives": fp, "true_negatives": tn, "false_negatives": fn,
                      "threshold": 0.5}


def test_curves_are_at_fixed_thresholds_and_run_from_everything_flagged_to_nothing_flagged():
    y, proba = holdout(2000)
    roc, pr = evaluation.binned_curves(y, proba, points=11)
    assert roc["thresholds"] == [round(0.1 * i, 6) for i in range(11)] == pr["thresholds"]
    assert (roc["fpr"][0], roc["tpr"][0]) == (1.0, 1.0)  # threshold 0 flags every row
    assert all(a >= b for a, b in zip(roc["tpr"], roc["tpr"][1:])) and all(a >= b for a, b in zip(roc["fpr"], roc["fpr"][1:]))
    # At 0.5 the curve point is the confusion counts' rates.
    counts = evaluation.confusion_counts(y, proba)
    assert roc["tpr"][5] == counts["true_positives"] / (counts["true_positives"] + counts["false_negatives"])
    assert pr["precision"][5] == counts["true_positives"] / (counts["true_positives"] + counts["false_positives"])
    assert pr["precision"][10] is None or proba.max() >= 1.0  # nothing reaches 1.0: no precision there


def test_calibration_reports_rates_only_for_bins_with_enough_rows():
    y, proba = holdout(3000)
    table = evaluation.calibration_table(y, proba, bins=10, min_bin_rows=25)
    assert sum(b["rows"] for b in table) == len(y)
    for b in table:
        members = (proba >= b["lower"]) & ((proba < b["upper"]) | (b["upper"] == 1.0))
        assert b["rows"] == int(members.sum())
        if b["rows"] >= 25:
            assert b["mean_predicted"] == pytest.approx(proba[members].mean())
            assert b["observed_rate"] == pytest.approx(y[members].mean())
        else:
            assert b["mean_predicted"] is None and b["observed_rate"] is None
    assert any(b["observed_rate"] is None for b in table) and any(b["observed_rate"] is not None for b in table)


def test_result_holds_aggregates_only_and_its_size_does_not_grow_with_the_holdout():
    y, proba = holdout(5000)
    planted = 0.123456789  # one row's probability, findable if any per-row value were copied
    proba[17] = planted
    result = evaluation.holdout_evaluation(y, proba, resamples=200)
    text = json.dumps(result)
    assert "0.123456789" not in text and "0.12345" not in text
    bigger = json.dumps(evaluation.holdout_evaluation(*holdout(50000), resamples=200))
    assert abs(len(bigger) - len(text)) < 0.2 * len(text)
    assert set(result) == {"schema_version", "rows", "positives", "intervals", "bootstrap", "confusion", "roc", "pr",
                           "calibration"}
    assert result["rows"] == 5000 and result["positives"] == int(y.sum())


@pytest.mark.parametrize(
    ("y", "proba", "found"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "3 rows and 0 positive(s)"),
        ([0, 1, 1], [0.1, 0.2], "shapes (3,) and (2,)"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0 or 1; 1 of 3"),
        ([0, 1, 1], [0.1, 1.7, 0.3], "probabilities must lie in [0, 1]; 1 of 3"),
    ],
)
def test_bad_input_is_refused_saying_what_was_found(y, proba, found):
    with pytest.raises(evaluation.EvaluationError) as err:
        evaluation.holdout_evaluation(np.array(y), np.array(proba))
    assert found in str(err.value)
