"""The training window: which days (and blob prefixes) a run validates and trains on."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from edge_training.window import TrainingWindow, training_window

UTC = timezone.utc


def test_scheduled_run_covers_the_days_before_the_interval_end():
    window = training_window(
        datetime(2026, 11, 7, 2, tzinfo=UTC), datetime(2026, 11, 8, 2, tzinfo=UTC), None, days=7
    )
    assert window == TrainingWindow(start=date(2026, 11, 1), end=date(2026, 11, 8))
    assert window.label == "2026-11-01..2026-11-08"
    assert window.days == [date(2026, 11, d) for d in range(1, 8)]
    assert window.partition_prefixes[0] == "dt=2026-11-01/"
    assert window.partition_prefixes[-1] == "dt=2026-11-07/"
    assert len(window.partition_prefixes) == 7


def test_manual_run_without_interval_uses_run_after():
    window = training_window(None, None, datetime(2026, 11, 20, 13, 5, tzinfo=UTC), days=3)
    assert window.label == "2026-11-17..2026-11-20"


def test_interval_end_wins_over_run_after():
    window = training_window(
        None, datetime(2026, 11, 8, tzinfo=UTC), datetime(2026, 12, 24, tzinfo=UTC), days=1
    )
    assert window.days == [date(2026, 11, 7)]


def test_end_is_taken_as_utc_date():
    # 01:00 at UTC+2 is still the previous day in UTC.
    end = datetime(2026, 11, 8, 1, tzinfo=timezone(timedelta(hours=2)))
    assert training_window(None, end, None, days=1).days == [date(2026, 11, 6)]


def test_backfill_runs_get_their_own_historical_windows():
    labels = {
        training_window(None, datetime(2026, 10, d, 2, tzinfo=UTC), None, days=2).label for d in (10, 11, 12)
    }
    assert labels == {"2026-10-08..2026-10-10", "2026-10-09..2026-10-11", "2026-10-10..2026-10-12"}


@pytest.mark.parametrize("days", [0, -3, 1.5, True])
def test_window_length_must_be_a_positive_whole_number(days):
    with pytest.raises(ValueError, match=r"whole number of days >= 1.*EDGE_TRAINING_WINDOW_DAYS"):
        training_window(None, datetime(2026, 11, 8, tzinfo=UTC), None, days=days)


def test_window_needs_an_end():
    with pytest.raises(ValueError, match="neither a data interval end nor a run_after"):
        training_window(None, None, None, days=7)


def test_window_end_must_follow_start():
    with pytest.raises(ValueError, match="not after its start"):
        TrainingWindow(start=date(2026, 11, 8), end=date(2026, 11, 8))


def test_window_end_overrides_the_data_interval_end():
    # A manual re-train of a past window: the interval (and run_after) say November 20, the operator asks for Nov 8.
    window = training_window(
        datetime(2026, 11, 19, 2, tzinfo=UTC),
        datetime(2026, 11, 20, 2, tzinfo=UTC),
        datetime(2026, 11, 20, 2, tzinfo=UTC),
        days=3,
        window_end="2026-11-08",
    )
    assert window.label == "2026-11-05..2026-11-08"


@pytest.mark.parametrize("unset", [None, "", "None", " null "])
def test_unset_window_end_keeps_the_interval_end(unset):
    window = training_window(None, datetime(2026, 11, 20, 2, tzinfo=UTC), None, days=2, window_end=unset)
    assert window.label == "2026-11-18..2026-11-20"


def test_window_end_accepts_dates_and_datetimes():
    assert training_window(None, None, None, days=1, window_end=date(2026, 3, 2)).days == [date(2026, 3, 1)]
    late_evening_utc_minus_5 = datetime(2026, 3, 1, 22, tzinfo=timezone(timedelta(hours=-5)))
    assert training_window(None, None, None, days=1, window_end=late_evening_utc_minus_5).end == date(2026, 3, 2)


def test_bad_window_end_names_the_field_and_value():
    with pytest.raises(ValueError, match=r"window_end.*'2026-02-30'"):
        training_window(None, datetime(2026, 11, 20, tzinfo=UTC), None, days=2, window_end="2026-02-30")


def test_run_window_reads_the_task_context():
    from types import SimpleNamespace

    from edge_training.window import run_window

    interval_end = datetime(2026, 11, 8, 2, tzinfo=timezone.utc)
    scheduled = {"data_interval_start": interval_end - timedelta(days=1), "data_interval_end": interval_end}
    assert run_window(scheduled, "7").label == "2026-11-01..2026-11-08"
    manual = {"data_interval_start": None, "data_interval_end": None, "dag_run": SimpleNamespace(run_after=interval_end)}
    assert run_window(manual, 2).label == "2026-11-06..2026-11-08"
    assert run_window(manual, 2, "2026-10-01").label == "2026-09-29..2026-10-01"


def test_a_run_the_data_drift_started_trains_up_to_the_drifted_day():
    from types import SimpleNamespace

    from edge_training.window import run_window, window_from_label

    def event(extra, hour):
        return SimpleNamespace(extra=extra, timestamp=datetime(2026, 12, 2, hour, tzinfo=UTC))

    started = datetime(2026, 12, 2, 2, 5, tzinfo=UTC)
    context = {"data_interval_start": started, "data_interval_end": started, "triggering_asset_events": {
        "edge_new_partition": [event({"partition": "2026-12-01"}, 3)],
        "edge_data_drift": [event({"window_end": "2026-06-21"}, 1), event({"window_end": "2026-06-22"}, 2)],
    }}
    # The newest drift event's end, however late the run starts; an explicit window_end still wins.
    assert run_window(context, 3).label == "2026-06-19..2026-06-22"
    assert run_window(context, 3, "2026-07-01").label == "2026-06-28..2026-07-01"
    # Events that name no window end leave the run's own interval.
    context["triggering_asset_events"] = {"edge_new_partition": [event({"partition": "2026-12-01"}, 3)]}
    assert run_window(context, 3).label == "2026-11-29..2026-12-02"
    assert window_from_label("2026-06-20..2026-06-21").end == date(2026, 6, 21)
    with pytest.raises(ValueError, match="expected YYYY-MM-DD..YYYY-MM-DD"):
        window_from_label("dt=2026-06-20")
