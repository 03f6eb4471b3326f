"""The training window: which daily partitions a run trains on.

Pure logic (no Airflow import): the operators pass in the values they read from the task context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any


@dataclass(frozen=True)
class TrainingWindow:
    """A run's training window: the whole UTC days ``start`` (inclusive) to ``end`` (exclusive)."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(
                f"Training window end {self.end.isoformat()} is not after its start {self.start.isoformat()}; "
                "pass an end date at least one day after the start."
            )

    @property
    def days(self) -> list[date]:
        """Every day in the window, oldest first."""
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]

    @property
    def partition_prefixes(self) -> list[str]:
        """Blob name prefixes of the window's daily partitions (``dt=YYYY-MM-DD/``)."""
        return [partition_prefix(day) for day in self.days]

    @property
    def label(self) -> str:
        """Human and tag friendly form, e.g. ``2026-11-01..2026-11-08`` (end exclusive)."""
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


def partition_prefix(day: date) -> str:
    """Blob name prefix of one daily partition."""
    return f"dt={day.isoformat()}/"


def _utc_date(moment: datetime) -> date:
    # Naive datetimes are taken as UTC, the convention Airflow uses for stored dates.
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.date()


def training_window(
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    run_after: datetime | None,
    days: int,
    window_end: date | str | None = None,
) -> TrainingWindow:
    """The ``days`` whole UTC days that end at the date of ``data_interval_end``.

    A run whose interval ends at 2026-11-08T00:00Z with ``days=7`` trains on 2026-11-01 .. 2026-11-07.
    Manual runs can come without a data interval; ``run_after`` then marks the end of the window.
    ``window_end`` (a manual re-train of a past window) overrides both.

    :param data_interval_start: start of the run's data interval (only used to tell whether one exists).
    :param data_interval_end: end of the run's data interval; the window ends (exclusive) at its UTC date.
    :param run_after: when the run was due; used when the run has no data interval.
    :param days: number of whole days in the window, at least 1.
    :param window_end: end date (exclusive, ``YYYY-MM-DD`` or a date) that replaces the interval end; empty or
        None keeps the interval end.
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(
            f"Training window length must be a whole number of days >= 1, got {days!r}; "
            "set EDGE_TRAINING_WINDOW_DAYS (or the operator's window_days) to 1 or more."
        )
    override = parse_window_end(window_end)
    if override is not None:
        return TrainingWindow(start=override - timedelta(days=days), end=override)
    end_moment = data_interval_end if data_interval_end is not None else run_after
    if end_moment is None:
        raise ValueError(
            "Cannot place the training window: the run has neither a data interval end nor a run_after time; "
            "trigger the DAG with a logical date or from a schedule."
        )
    del data_interval_start  # the window is anchored on the interval end only
    end = _utc_date(end_moment)
    return TrainingWindow(start=end - timedelta(days=days), end=end)


def run_window(context: Mapping[str, Any], days: int | str, window_end: date | str | None = None) -> TrainingWindow:
    """The training window of the DAG run a task is running in, from the task's context.

    A run started by asset events whose extra names a ``window_end`` (the data-drift event: the end of the partitions
    that drifted) trains on the days up to that end, the newest such event's, so the drifted day is in its window even
    when the run starts later; a ``window_end`` given to the run wins over it.

    :param context: the task context (``data_interval_start``/``data_interval_end``, ``dag_run.run_after``,
        ``triggering_asset_events``).
    :param days: window length; a rendered template may give it as text.
    :param window_end: the run's ``window_end`` override, if any.
    """
    if parse_window_end(window_end) is None:
        window_end = event_window_end(context.get("triggering_asset_events")) or window_end
    return training_window(
        context.get("data_interval_start"),
        context.get("data_interval_end"),
        getattr(context.get("dag_run"), "run_after", None),
        int(days),
        window_end,
    )


def event_window_end(events: Mapping[Any, Any] | None) -> str | None:
    """The ``window_end`` named by the newest of the triggering asset events that name one, else None.

    :param events: the context's ``triggering_asset_events`` (asset -> events with ``extra`` and ``timestamp``).
    """
    named = [event for asset in (events or {}) for event in events[asset]
             if isinstance(getattr(event, "extra", None), Mapping) and event.extra.get("window_end")]
    if not named:
        return None
    return str(max(named, key=lambda event: event.timestamp).extra["window_end"])


def window_from_label(label: str) -> TrainingWindow:
    """The window a :attr:`TrainingWindow.label` (``YYYY-MM-DD..YYYY-MM-DD``, end exclusive) describes.

    :raises ValueError: the text is not such a label.
    """
    start, sep, end = str(label).partition("..")
    try:
        if not sep:
            raise ValueError
        return TrainingWindow(date.fromisoformat(start), date.fromisoformat(end))
    except ValueError:
        raise ValueError(
            f"Checked {label!r} for a window label: expected YYYY-MM-DD..YYYY-MM-DD (end exclusive), as validation "
            "writes it under 'window'. Pass the validation task's result unchanged."
        ) from None


def parse_window_end(value: date | str | None) -> date | None:
    """Read the ``window_end`` override: a date, ``YYYY-MM-DD`` text, or empty/None for "no override"."""
    if isinstance(value, datetime):
        return _utc_date(value)
    if value is None or isinstance(value, date):
        return value
    text = str(value).strip()
    if text.lower() in ("", "none", "null"):
        # Templates render an unset Param as "None".
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"Checked window_end: expected a date YYYY-MM-DD (end of the training window, exclusive), found "
            f"{value!r}. Leave it empty to train on the run's own data interval."
        ) from None
