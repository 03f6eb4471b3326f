"""
### Edge training

Train the predictive-maintenance model **next to its data** on Azure Stack Hub, then register it.
Only the model, its metrics and validation summaries leave the edge; training data rows never do.

| step | task | what it does |
|---|---|---|
| 1 | `validate_data` | Streams the run's training window of daily partitions (`dt=YYYY-MM-DD/part-NNNN.csv`) from Stack Hub blob storage through the Great Expectations suite in `include/expectations/`. Any failed expectation fails the run here, before training, and names the partition, the expectation and the observed value. An HTML Data Docs report is kept under `EDGE_REPORTS_DIR`. |
| 2 | `check_edge_vm` | Over SSH with the pinned host key: reachability, free disk and memory, load, Python, Docker (warning only), optional GPU, clock skew, and that the VM itself reaches the blob endpoint. |
| 3 | `train_on_edge_vm` | Ships `include/training/` to the VM and starts the training job there under a job id derived from the DAG run, so a retry re-attaches instead of training twice. Waits deferrably (no worker slot held). Runs in the `edge_vm` pool. |
| 4 | `register_model` | Registers one model version per run with lineage tags; moves the `champion` alias only if the new model beats the champion on the same holdout (or `force_promote`). |

**Training window**: each run trains on the `window_days` whole days that end at its data interval end
(scheduled runs and backfills use their own interval; manual runs use the trigger time).

**Manual runs** (Trigger DAG w/ config): `window_days`, `force_promote`, `training_params`.

Connections: `edge_blob` (wasb), `edge_vm` (ssh, with `host_key` pinned), `image_registry`.
Settings (env): `EDGE_TRAINING_SCHEDULE` (cron, default `0 2 * * *`), `EDGE_TRAINING_WINDOW_DAYS` (default 7),
`EDGE_MODEL_NAME`, `EDGE_VM_POOL`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag
from airflow.timetables.interval import CronDataIntervalTimetable

from edge_training import config
from edge_training.operators.health import EdgeVMHealthCheckOperator
from edge_training.operators.register import RegisterModelOperator
from edge_training.operators.train import EdgeVMTrainingOperator
from edge_training.operators.validate import ValidateTrainingDataOperator
from edge_training.retry import EDGE_RETRY_POLICY


@dag(
    dag_id="edge_training",
    schedule=CronDataIntervalTimetable(config.SCHEDULE, timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=3,
    render_template_as_native_obj=True,
    doc_md=__doc__,
    tags=["edge", "training", "azure-stack-hub"],
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "retry_policy": EDGE_RETRY_POLICY,
    },
    params={
        "window_days": Param(
            config.TRAINING_WINDOW_DAYS,
            type="integer",
            minimum=2,
            maximum=366,
            description="Whole days of data to train on, ending at the run's data interval end.",
        ),
        "force_promote": Param(
            False,
            type="boolean",
            description="Make the new model the champion even if it does not beat the current one.",
        ),
        "training_params": Param(
            {},
            type="object",
            description='RandomForest hyperparameters for the training script, e.g. {"n_estimators": 200, "max_depth": 6}.',
        ),
    },
)
def edge_training():
    validate_data = ValidateTrainingDataOperator(
        task_id="validate_data",
        window_days="{{ params.window_days }}",
        execution_timeout=timedelta(hours=2),
    )

    check_edge_vm = EdgeVMHealthCheckOperator(
        task_id="check_edge_vm",
        execution_timeout=timedelta(minutes=5),
    )

    train_on_edge_vm = EdgeVMTrainingOperator(
        task_id="train_on_edge_vm",
        window_days="{{ params.window_days }}",
        training_params="{{ params.training_params }}",
        pool=config.VM_POOL,
        execution_timeout=timedelta(hours=12),
    )

    register_model = RegisterModelOperator(
        task_id="register_model",
        model_name=config.MODEL_NAME,
        training=train_on_edge_vm.output,
        validation=validate_data.output,
        force_promote="{{ params.force_promote }}",
        execution_timeout=timedelta(minutes=30),
    )

    validate_data >> check_edge_vm >> train_on_edge_vm >> register_model


edge_training()
