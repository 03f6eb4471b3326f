"""What starts a training run: the cron schedule with real data intervals, or a newly landed daily partition.

``EDGE_TRAINING_TRIGGER=schedule`` (default): ``CronDataIntervalTimetable`` on ``EDGE_TRAINING_SCHEDULE``; every run,
scheduled or backfilled, trains on the days before its own data interval end.
``EDGE_TRAINING_TRIGGER=asset``: the DAG runs when the ``edge_partition_watch`` DAG announces a new daily partition
(an update of :data:`NEW_PARTITION`); the run trains on the days before the day it starts.
"""

from __future__ import annotations

from airflow.sdk import Asset
from airflow.timetables.interval import CronDataIntervalTimetable

from edge_training import config

TRIGGERS = ("schedule", "asset")

# "x-" scheme: a project-defined URI that Airflow keeps as written.
NEW_PARTITION = Asset(
    uri=f"x-edge-blob://{config.BLOB_CONTAINER}/daily-partitions",
    name="edge_new_partition",
)


def training_schedule(trigger: str = config.TRAINING_TRIGGER, cron: str = config.SCHEDULE):
    """The ``schedule=`` of the edge_training DAG for ``trigger`` (``schedule`` or ``asset``)."""
    if trigger == "schedule":
        return CronDataIntervalTimetable(cron, timezone="UTC")
    if trigger == "asset":
        return NEW_PARTITION
    raise ValueError(
        f"Checked EDGE_TRAINING_TRIGGER: expected one of {', '.join(TRIGGERS)}, found {trigger!r}. "
        "Use 'schedule' for the cron schedule or 'asset' to train when a new daily partition lands."
    )
