"""
### Edge drift check (drift-aware retraining, off by default)

Only defined when `EDGE_RETRAIN_POLICY` is `drift` or `both`. Each day (on `EDGE_DRIFT_CHECK_SCHEDULE`, default
`EDGE_TRAINING_SCHEDULE`) it compares the previous day's partition with the training data of the champion model,
using privacy-safe aggregates only, and starts `edge_training` when the data has drifted.

| step | task | what it does |
|---|---|---|
| 1 | `wait_for_partition` | Waits (reschedule mode, every `EDGE_PARTITION_WATCH_POKE_S` s, up to `EDGE_PARTITION_WATCH_TIMEOUT_S`) until the day before the interval end holds a data blob under `dt=YYYY-MM-DD/`. A day that never lands fails here with "Partition dt=… is missing": no drift verdict either way. |
| 2 | `validate_new_partition` | Streams the day's partition through the Great Expectations suite (as `validate_data` does) and, in the same pass, builds its data profile: per feature a histogram on the suite's fixed grid, null rate, count, mean, deviation; bins of fewer than `EDGE_DRIFT_PROFILE_K` rows suppressed. |
| 3 | `check_drift` | Compares it with the champion's reference profile (written on the edge VM at training time): population stability index, Jensen-Shannon distance, normalized Wasserstein distance per feature, against thresholds calibrated on the training window's day-to-day variation (`EDGE_DRIFT_CALIBRATE=false`: fixed defaults). Writes the drift report (self-contained HTML) under `EDGE_REPORTS_DIR`. |
| 4 | `drift_found` | Stops here when nothing drifted. |
| 5 | `announce_drift` | Updates the asset `edge_data_drift`; its extra holds the reason (features, metrics, thresholds), the partition and its `window_end`, the report and its URL: `edge_training` runs on it, trains on the days up to that `window_end` and puts the reason and the report's URL on the version it registers and its model card. |

Turn it on: set `EDGE_RETRAIN_POLICY=drift` (or `both`) for every Airflow component, unpause `edge_drift_check`
and `edge_training`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from edge_training import config
from edge_training.notify import on_task_failure, on_task_retry
from edge_training.operators.drift import DriftCheckOperator
from edge_training.operators.partition import DailyPartitionSensor
from edge_training.operators.validate import ValidateTrainingDataOperator
from edge_training.retry import EDGE_RETRY_POLICY
from edge_training.schedule import DATA_DRIFT, check_retrain_policy
from edge_training.topology import edge_site_task_args

AT_EDGE = edge_site_task_args()


@dag(
    dag_id="edge_drift_check",
    schedule=CronDataIntervalTimetable(config.DRIFT_CHECK_SCHEDULE, timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["edge", "training", "azure-stack-hub", "drift"],
    default_args={
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_policy": EDGE_RETRY_POLICY,
        "on_failure_callback": on_task_failure,
        "on_retry_callback": on_task_retry,
    },
)
def edge_drift_check():
    # The day validate_new_partition checks (window_days=1): only once it has landed, else the run says it is missing.
    wait_for_partition = DailyPartitionSensor(task_id="wait_for_partition", what="the drift check", **AT_EDGE)

    validate_new_partition = ValidateTrainingDataOperator(
        task_id="validate_new_partition",
        window_days=1,
        execution_timeout=timedelta(hours=1),
        **AT_EDGE,
    )

    check_drift = DriftCheckOperator(
        task_id="check_drift",
        current=validate_new_partition.output,
        execution_timeout=timedelta(minutes=10),
    )

    @task.short_circuit
    def drift_found(summary: dict) -> bool:
        """Continue to the announcement only when a feature drifted."""
        return bool(summary.get("drifted"))

    @task(outlets=[DATA_DRIFT])
    def announce_drift(summary: dict, *, outlet_events=None) -> dict:
        """Update the asset; its extra carries the reason (feature names, metrics, thresholds), never data."""
        extra = {
            "reason": summary["reason"],
            "drifted_features": summary["drifted_features"],
            "partitions": summary["partitions"],
            # The training run trains on the days up to here (edge_training.window.run_window).
            "window_end": summary["window_end"],
            "champion_version": summary.get("champion_version"),
            "report": summary["report"],
            # Where the api-server serves the report: the training run puts it on the model version and its card.
            "report_url": summary["report_url"],
        }
        outlet_events[DATA_DRIFT].extra = extra
        return extra

    summary = check_drift.output
    wait_for_partition >> validate_new_partition
    drift_found(summary) >> announce_drift(summary)


if check_retrain_policy() in ("drift", "both"):
    edge_drift_check()
