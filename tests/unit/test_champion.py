"""Champion gate: every branch of decide_promotion, and the promotion rule checked against train.py's split."""

from __future__ import annotations

import math
from datetime import date, timedelta

import pytest

from edge_training import champion as gate
from edge_training.champion import decide_promotion
from edge_training.exceptions import PromotionMetricError
from include.training.train import split_window, window_days


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


# -- the promotion rule on training windows ---------------------------------------------------------------------


def _windows_as_trained(end: date, days: int = 7, holdout: int = 1) -> gate.TrainingWindows:
    """The windows include/training/train.py uses for a window of ``days`` days ending (exclusive) at ``end``."""
    train, held = split_window(window_days(end - timedelta(days=days), end), holdout)
    return gate.TrainingWindows((train[0], train[-1] + timedelta(days=1)), (held[0], held[-1] + timedelta(days=1)))


@pytest.mark.parametrize("later_by", [0, 1, 5, 30])
def test_a_window_end_not_older_than_the_champions_gives_a_holdout_the_champion_never_trained_on(later_by):
    champion_end = date(2026, 12, 1)
    champion = _windows_as_trained(champion_end)
    candidate = _windows_as_trained(champion_end + timedelta(days=later_by))
    trained_by_champion = set(window_days(*champion.train))
    held_out = set(window_days(*candidate.holdout))
    assert not trained_by_champion & held_out  # what the champion is scored on, it did not train on
    assert gate.window_rule(candidate, champion)[0] is None


@pytest.mark.parametrize("earlier_by", [1, 2, 6, 58])
def test_an_older_window_end_is_not_compared(earlier_by):
    champion = _windows_as_trained(date(2026, 12, 1))
    candidate = _windows_as_trained(date(2026, 12, 1) - timedelta(days=earlier_by))
    outcome, why = gate.window_rule(candidate, champion)
    assert outcome == gate.NOT_COMPARED_OLDER_WINDOW
    assert "the champion trained on it" in why  # with a 1-day holdout every older end is a champion training day


def test_a_longer_candidate_holdout_reaching_into_the_champions_training_days_is_not_compared():
    champion = _windows_as_trained(date(2026, 12, 1))
    candidate = _windows_as_trained(date(2026, 12, 2), holdout=3)  # holdout 11-29..12-02, champion trained to 11-30
    assert gate.window_rule(candidate, champion)[0] == gate.NOT_COMPARED_OLDER_WINDOW


def test_a_holdout_after_the_champions_training_but_ending_before_its_holdout_is_not_compared():
    champion = _windows_as_trained(date(2026, 12, 3), holdout=3)  # trained to 11-30, holdout 11-30..12-03
    candidate = _windows_as_trained(date(2026, 12, 2))  # holdout 12-01..12-02: unseen by the champion, but older
    outcome, why = gate.window_rule(candidate, champion)
    assert outcome == gate.NOT_COMPARED_OLDER_WINDOW and "older than the champion's" in why


def test_the_gate_applies_the_rule_and_force_skips_it():
    older, newer = _windows_as_trained(date(2026, 10, 4)), _windows_as_trained(date(2026, 12, 1))
    args = dict(champion_version="3", candidate_version="4", candidate_windows=older, champion_windows=newer)
    kept = decide_promotion({"roc_auc": 0.99}, {"roc_auc": 0.5}, **args)
    assert not kept.promote and kept.outcome == gate.NOT_COMPARED_OLDER_WINDOW and kept.champion_score == 0.5
    assert "force_promote overrides" in kept.reason
    forced = decide_promotion({"roc_auc": 0.1}, {"roc_auc": 0.5}, force=True, **args)
    assert forced.promote and forced.outcome == gate.PROMOTED_FORCED and "window rule" in forced.reason
    fair = decide_promotion({"roc_auc": 0.9}, {"roc_auc": 0.5}, **{**args, "candidate_windows": newer,
                                                                 "champion_windows": older})
    assert fair.promote and fair.outcome == gate.PROMOTED


def test_unknown_windows_are_not_compared():
    d = decide_promotion({"roc_auc": 0.9}, {"roc_auc": 0.5}, champion_version="1", candidate_version="2",
                         candidate_windows=_windows_as_trained(date(2026, 12, 1)), champion_windows=None)
    assert not d.promote and d.outcome == gate.NOT_COMPARED_UNKNOWN_WINDOW and "champion's training" in d.reason


def test_a_champion_that_moved_since_training_is_not_compared():
    d = decide_promotion({"roc_auc": 0.9}, {"roc_auc": 0.5}, champion_version="5", candidate_version="6",
                         scored_version="4")
    assert not d.promote and d.outcome == gate.NOT_COMPARED_CHAMPION_CHANGED
    assert "champion is now version 5" in d.reason and "scored version 4" in d.reason
    appeared = decide_promotion({"roc_auc": 0.9}, None, champion_version="5", candidate_version="6",
                                scored_version=None)
    assert appeared.outcome == gate.NOT_COMPARED_CHAMPION_CHANGED and "no champion" in appeared.reason


def test_windows_are_read_from_metrics_json_and_from_tags():
    doc = {"train_window": {"start": "2026-11-24", "end": "2026-11-30"},
           "holdout_window": {"start": "2026-11-30", "end": "2026-12-01"}}
    expected = _windows_as_trained(date(2026, 12, 1), days=7)
    assert gate.windows_from_document(doc) == expected
    assert gate.windows_from_tags({"edge.train_window": "2026-11-24/2026-11-30",
                                   "edge.holdout_window": "2026-11-30/2026-12-01"}) == expected
    # A version tagged before the split was recorded: the job has always held out the newest day.
    assert gate.windows_from_tags({"edge.training_window": "2026-11-24/2026-12-01"}) == expected
    assert gate.windows_from_tags({"edge.training_window": "none"}) is None
    assert gate.windows_from_document({}) is None
