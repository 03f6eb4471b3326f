"""Champion gate: every branch of decide_promotion."""

from __future__ import annotations

import math

import pytest

from edge_training import champion as gate
from edge_training.champion import decide_promotion
from edge_training.exceptions import PromotionMetricError


def test_no_champion_promotes():
    d = decide_promotion({"roc_auc": 0.8}, None)
    assert d.promote and d.outcome == gate.PROMOTED_NO_CHAMPION
    assert d.candidate_score == 0.8 and d.champion_score is None
    assert "no champion yet" in d.reason and "0.8" in d.reason


def test_candidate_beating_champion_by_margin_promotes():
    d = decide_promotion({"roc_auc": 0.91}, {"roc_auc": 0.88}, margin=0.01)
    assert d.promote and d.outcome == gate.PROMOTED
    assert d.reason == "candidate roc_auc 0.91 beats champion 0.88 by 0.03 >= margin 0.01"
    assert (d.candidate_score, d.champion_score) == (0.91, 0.88)


def test_improvement_below_margin_keeps_champion():
    d = decide_promotion({"roc_auc": 0.885}, {"roc_auc": 0.88}, margin=0.01)
    assert not d.promote and d.outcome == gate.KEPT_CHAMPION
    assert "by only 0.005 < margin 0.01" in d.reason and "keeping the champion" in d.reason


def test_tie_keeps_champion_even_with_zero_margin():
    d = decide_promotion({"roc_auc": 0.88}, {"roc_auc": 0.88})
    assert not d.promote and "ties champion 0.88" in d.reason


def test_worse_candidate_keeps_champion():
    d = decide_promotion({"roc_auc": 0.70}, {"roc_auc": 0.88})
    assert not d.promote and d.outcome == gate.KEPT_CHAMPION
    assert "below champion 0.88 by 0.18" in d.reason


def test_other_metric_is_compared_when_chosen():
    d = decide_promotion({"roc_auc": 0.5, "f1": 0.9}, {"roc_auc": 0.9, "f1": 0.7}, metric="f1")
    assert d.promote and d.metric == "f1" and d.reason.startswith("candidate f1 0.9 beats champion 0.7")


def test_force_promotes_a_worse_model_and_still_reports_scores():
    d = decide_promotion({"roc_auc": 0.70}, {"roc_auc": 0.88}, force=True)
    assert d.promote and d.outcome == gate.PROMOTED_FORCED
    assert (d.candidate_score, d.champion_score) == (0.70, 0.88)
    assert d.reason.startswith("forced by the run")


def test_force_works_without_metrics():
    d = decide_promotion({}, None, force=True)
    assert d.promote and d.candidate_score is None and "n/a" in d.reason


def test_champion_without_metrics_on_this_holdout_is_kept():
    d = decide_promotion({"roc_auc": 0.95}, None, champion_version="3")
    assert not d.promote and d.outcome == gate.KEPT_NO_CHAMPION_METRICS
    assert "champion version 3" in d.reason and "force" in d.reason


def test_retry_after_promotion_reports_already_champion():
    d = decide_promotion({"roc_auc": 0.9}, {"roc_auc": 0.8}, champion_version="4", candidate_version="4")
    assert d.promote and d.outcome == gate.ALREADY_CHAMPION and "already the champion" in d.reason


def test_missing_candidate_metric_is_a_clear_error():
    with pytest.raises(PromotionMetricError, match=r"'roc_auc' is missing from the candidate metrics \(present: f1"):
        decide_promotion({"f1": 0.9}, None)


def test_missing_champion_metric_is_a_clear_error():
    with pytest.raises(PromotionMetricError, match="missing from the champion metrics"):
        decide_promotion({"roc_auc": 0.9}, {"f1": 0.9})


@pytest.mark.parametrize("bad", ["0.9", None, True, math.nan])
def test_non_numeric_metric_is_a_clear_error(bad):
    with pytest.raises(PromotionMetricError, match="must be a number"):
        decide_promotion({"roc_auc": bad}, None)


def test_metrics_that_are_not_a_dict_are_a_clear_error():
    with pytest.raises(PromotionMetricError, match="expected the candidate metrics as a dict, found list"):
        decide_promotion([0.9], None)


@pytest.mark.parametrize("margin", [-0.01, math.nan, "0.1"])
def test_invalid_margin_is_rejected(margin):
    with pytest.raises(PromotionMetricError, match="margin must be a number >= 0"):
        decide_promotion({"roc_auc": 0.9}, None, margin=margin)


def test_split_metrics_reads_the_metrics_json_document():
    doc = {"schema_version": 1, "metrics": {"roc_auc": 0.9}, "champion_metrics": {"roc_auc": 0.8}}
    assert gate.split_metrics(doc) == ({"roc_auc": 0.9}, {"roc_auc": 0.8})


def test_split_metrics_reads_a_flat_dict():
    assert gate.split_metrics({"roc_auc": 0.9, "champion_metrics": None}) == ({"roc_auc": 0.9}, None)
    assert gate.split_metrics(None) == ({}, None)
