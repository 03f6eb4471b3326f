"""
### Edge partition watch (data-aware retraining, off by default)

Only defined when `EDGE_TRAINING_TRIGGER=asset`. Each day (on `EDGE_TRAINING_SCHEDULE`) it waits for the
previous day's partition `dt=YYYY-MM-DD/` to land in the Stack Hub blob container, then announces it by
updating the asset `edge_new_partition`, which starts an `edge_training` run on the days up to that partition.
The sensor waits in reschedule mode (no worker slot held between looks), every `EDGE_PARTITION_WATCH_POKE_S`
seconds for up to `EDGE_PARTITION_WATCH_TIMEOUT_S`.

Turn it on: set `EDGE_TRAINING_TRIGGER=asset` for every Airflow component, unpause `edge_partition_watch`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from edge_training import config
from edge_training.notify import on_task_failure, on_task_retry
from edge_training.operators.partition import DailyPartitionSensor
from edge_training.schedule import NEW_PARTITION


@dag(
    dag_id="edge_partition_watch",
    schedule=CronDataIntervalTimetable(config.SCHEDULE, timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["edge", "training", "azure-stack-hub"],
    default_args={
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "on_failure_callback": on_task_failure,
        "on_retry_callback": on_task_retry,
    },
)
def edge_partition_watch():
    # The day before the interval end, once it holds a data blob (markers alone do not count).
    wait_for_partition = DailyPartitionSensor(task_id="wait_for_partition", what="the partition watch")

    @task(outlets=[NEW_PARTITION])
    def announce_partition(partition: dict, *, outlet_events=None):
        """Update the asset; its event names the partition that landed (a date, never data)."""
        outlet_events[NEW_PARTITION].extra = partition
        return partition

    announce_partition(wait_for_partition.output)


if config.TRAINING_TRIGGER == "asset":
    edge_partition_watch()
