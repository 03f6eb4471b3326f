"""
### Edge training

Train the predictive-maintenance model **next to its data** on Azure Stack Hub, then register it.
Only the model, its metrics and validation summaries leave the edge; training data rows never do.

| step | task | what it does |
|---|---|---|
| 1 | `validate_data` | Streams the run's training window of daily partitions (`dt=YYYY-MM-DD/part-NNNN.csv`) from Stack Hub blob storage through the Great Expectations suite in `include/expectations/`. Any failed expectation fails the run here, before training, and names the partition, the expectation and the observed value. An HTML Data Docs report is kept under `EDGE_REPORTS_DIR`. |
| 2 | `check_edge_vm` | Over SSH with the pinned host key: reachability, free disk and memory, load, Python, Docker (warning only), optional GPU, clock skew, and that the VM itself reaches the blob endpoint. |
| 3 | `train_on_edge_vm` | Ships `include/training/` to the VM and starts the training job there under a job id derived from the DAG run, so a retry re-attaches instead of training twice. The job trains exactly the blobs `validate_data` validated (If-Match on their ETags; one changed since fails the task, saying to re-run from `validate_data`) with a read+list SAS of the data container that expires at the training timeout. Waits deferrably (no worker slot held). Runs in the `edge_vm` pool. |
| 3' | `train_on_azureml` | Instead of `train_on_edge_vm` when the run's `training_backend` is `azureml`: the same training code as an Azure ML command job on the workspace's compute, reading the window from the mounted Stack Hub datastore; same re-attach on retry, deferrable wait, cancel on kill. |
| 4 | `register_model` | Registers one model version per run with lineage tags (an identical re-train reuses its version); moves the `champion` only if the new model beats the champion on the same holdout under the promotion rule below (or `force_promote`). |
| 5 | `build_image` | Builds the model version's scoring image with buildah (no Docker daemon), smoke-tests it with `buildah run`, pushes `<registry>/<model>:<version>` through the `image_registry` connection and records the digest on the model version. A retry finding the same image under the tag neither rebuilds nor pushes; after a failed push it reuses the image it built and pushes again. |

**Promotion rule**: a candidate competes only on a holdout neither model trained on and at least as recent as the
champion's (its holdout starts no earlier than the end of the champion's training days and ends no earlier than
the champion's holdout: its window end is not older). Otherwise the decision is `not_compared_older_window` and the
champion stays, so a backfill or a re-train of a past window never replaces a newer champion. `force_promote`
skips the rule (`promoted_forced`). The champion moves by compare-and-set: of two registrations finishing together
exactly one wins, the other is tagged `not_compared_champion_changed`. Roll back with the `edge_model_rollback` DAG.

**Schedule**: cron `EDGE_TRAINING_SCHEDULE` (default `0 2 * * *`, UTC) with real data intervals. Catchup is off
(`EDGE_TRAINING_CATCHUP=true` turns it on); history is trained with a backfill:
`airflow backfill create --dag-id edge_training --from-date 2026-11-01 --to-date 2026-11-07`
(add `--reprocess-behavior failed` to redo only failed windows; completed windows are never trained twice).
With `EDGE_TRAINING_TRIGGER=asset` the DAG instead runs when the `edge_partition_watch` DAG announces a new
daily partition (asset `edge_new_partition`). `EDGE_RETRAIN_POLICY=drift` runs it only when the
`edge_drift_check` DAG finds the newest partition drifted from the champion's training data (asset
`edge_data_drift`); `both` keeps the trigger above and lets drift add runs.

**Training window**: each run trains on the `window_days` whole days that end at its data interval end
(scheduled runs and backfills use their own interval; manual runs without a logical date use their
`run_after` time). `window_end` overrides the end for a manual re-train of a past window.

**Manual runs** (Trigger DAG w/ config), checked against their JSON schema before any task runs
(an invalid value is refused with the field's name):

| param | type | meaning |
|---|---|---|
| `window_days` | integer 2..366 | days of data to train on (default `EDGE_TRAINING_WINDOW_DAYS`, 7) |
| `window_end` | date `YYYY-MM-DD` or empty | end (exclusive) of the training window instead of the data interval end |
| `force_promote` | boolean | make the new model the champion even if it does not beat the current one |
| `training_params` | object | RandomForest hyperparameters for the training script: only known keys, each within its bounds (`edge_training/training_params.py`), e.g. `n_estimators` 1..2000, `max_depth` 1..64, `n_jobs` 1..4 |
| `skip_image_build` | boolean | register the model but build no scoring image (`build_image` is skipped) |

**Concurrency and failures**: at most `EDGE_TRAINING_MAX_ACTIVE_RUNS` (3) runs at once; trainings queue in the
`edge_vm` pool (1 slot, deferred tasks count) so the VM trains one model at a time. Every task has a timeout and
retries transient faults only (3 retries, backoff from `EDGE_RETRY_DELAY_S`, 30 s); bad data, a host key other than
the pinned one or refused credentials fail the task at its first try. Every failed try logs one line (dag, run, task,
try, error, and "(will retry)" when Airflow will run it again) and, when `EDGE_ALERT_CONN_ID` names an `http`
connection, posts it to that webhook: one alert per failed try, without data values or secrets.

**Where tasks run**: all on the same workers by default. With `EDGE_EXECUTOR_TOPOLOGY=edge` the four tasks
run on an `airflow edge worker` at the site (executor `EdgeExecutor`, queue `EDGE_WORKER_QUEUE`, default `edge`),
which dials out to Airflow over HTTPS: nothing inbound is opened at the site.

Connections: `edge_blob` (wasb), `edge_vm` (ssh, with `host_key` pinned), `image_registry`.
**Sites**: with a sites file (`include/sites.yaml` or `EDGE_SITES_FILE`) each site listed gets this pipeline as
DAG `edge_training_<site>`, with the site's own connections, edge worker queue, VM pool, data container, schedule
and registered model (`<EDGE_MODEL_NAME>-<site>`); see the README's "Several sites".
Settings (env): `EDGE_TRAINING_SCHEDULE`, `EDGE_TRAINING_WINDOW_DAYS`, `EDGE_TRAINING_CATCHUP`,
`EDGE_TRAINING_MAX_ACTIVE_RUNS`, `EDGE_TRAINING_TRIGGER`, `EDGE_RETRY_DELAY_S`, `EDGE_ALERT_CONN_ID`, `EDGE_MODEL_NAME`,
`EDGE_VM_POOL`, `EDGE_SITES_FILE`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag

from edge_training import config
from edge_training.hooks.connections import parse_time_lookup
from edge_training.notify import on_task_failure, on_task_retry
from edge_training.operators.azureml_train import AzureMLTrainingOperator
from edge_training.operators.backend import TRAINING_BACKENDS, ChooseTrainingBackendOperator
from edge_training.operators.health import EdgeVMHealthCheckOperator
from edge_training.operators.image import BuildScoringImageOperator
from edge_training.operators.register import RegisterModelOperator
from edge_training.operators.train import EdgeVMTrainingOperator
from edge_training.operators.validate import ValidateTrainingDataOperator
from edge_training.retry import EDGE_RETRY_POLICY
from edge_training.schedule import site_schedule
from edge_training.sites import DAG_ID as SINGLE_SITE_DAG_ID
from edge_training.sites import Site, load_sites, sites_file_path, undefined_connections
from edge_training.topology import edge_site_task_args
from edge_training.training_params import MAX_N_JOBS, TRAINING_PARAMS_SCHEMA


def edge_training_pipeline(site: Site):
    """The pipeline of one edge site: every task that runs at the site, reads its data or reaches its VM uses only
    that site's connections, edge worker queue and VM pool, and the site's model is registered under its own name."""
    # Empty all-in-one; with EDGE_EXECUTOR_TOPOLOGY=edge the executor and the queue of the site's edge worker.
    at_edge = edge_site_task_args(queue=site.queue)
    multi_site = site.dag_id != SINGLE_SITE_DAG_ID
    doc = __doc__
    if multi_site:
        doc = (
            f"**Site `{site.name}`** (sites file): model `{site.model_name}`, data container `{site.container}` "
            f"through `{site.blob_conn_id}`, edge VM `{site.vm_conn_id}`, queue `{site.queue}`, pool `{site.pool}`.\n"
            f"{__doc__}"
        )

    @dag(
        dag_id=site.dag_id,
        schedule=site_schedule(site),
        start_date=datetime(2026, 1, 1),
        catchup=config.CATCHUP,
        max_active_runs=config.MAX_ACTIVE_RUNS,
        render_template_as_native_obj=True,
        doc_md=doc,
        tags=["edge", "training", "azure-stack-hub", *([f"site:{site.name}"] if multi_site else [])],
        default_args={
            "retries": 3,
            "retry_delay": timedelta(seconds=config.RETRY_DELAY_S),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=10),
            "retry_policy": EDGE_RETRY_POLICY,
            "on_failure_callback": on_task_failure,
            "on_retry_callback": on_task_retry,
        },
        params={
            "window_days": Param(
                config.TRAINING_WINDOW_DAYS,
                type="integer",
                minimum=2,
                maximum=366,
                description="Whole days of data to train on, ending at the run's data interval end.",
            ),
            "window_end": Param(
                None,
                type=["null", "string"],
                format="date",
                description="End (exclusive) of the training window, YYYY-MM-DD, to re-train a past window; "
                "empty uses the run's data interval end.",
            ),
            "force_promote": Param(
                False,
                type="boolean",
                description="Make the new model the champion even if it does not beat the current one.",
            ),
            "training_backend": Param(
                config.TRAINING_BACKEND,
                enum=list(TRAINING_BACKENDS),
                description="Where the model trains: on the edge VM over SSH, or as an Azure ML job on the workspace's "
                "compute (EDGE_TRAINING_BACKEND sets the default).",
            ),
            "training_params": Param(
                {},
                **TRAINING_PARAMS_SCHEMA,
                description='RandomForest hyperparameters for the training script, e.g. {"n_estimators": 200, '
                '"max_depth": 6}. Only the keys of the schema, within its bounds (n_jobs at most '
                f"{MAX_N_JOBS}); anything else is refused before any task runs.",
            ),
            "skip_image_build": Param(
                False,
                type="boolean",
                description="Register the model but build and push no scoring image for it.",
            ),
        },
    )
    def edge_training():
        validate_data = ValidateTrainingDataOperator(
            task_id="validate_data",
            wasb_conn_id=site.blob_conn_id,
            container=site.container,
            window_days="{{ params.window_days }}",
            window_end="{{ params.window_end }}",
            execution_timeout=timedelta(hours=2),
            **at_edge,
        )

        check_edge_vm = EdgeVMHealthCheckOperator(
            task_id="check_edge_vm",
            ssh_conn_id=site.vm_conn_id,
            wasb_conn_id=site.blob_conn_id,
            execution_timeout=timedelta(minutes=5),
            **at_edge,
        )

        train_on_edge_vm = EdgeVMTrainingOperator(
            task_id="train_on_edge_vm",
            ssh_conn_id=site.vm_conn_id,
            wasb_conn_id=site.blob_conn_id,
            container=site.container,
            output_conn_id=site.output_conn_id,
            output_container=site.output_container,
            model_name=site.model_name,
            window_days="{{ params.window_days }}",
            window_end="{{ params.window_end }}",
            training_params="{{ params.training_params }}",
            # Exactly the blobs validate_data checked are trained (by ETag); a blob changed since fails the task.
            validation=validate_data.output,
            pool=site.pool,
            execution_timeout=timedelta(hours=12),
            # At the site the edge worker polls the VM itself: the central triggerer has no route to it.
            deferrable=not at_edge,
            **at_edge,
        )

        train_on_azureml = AzureMLTrainingOperator(
            task_id="train_on_azureml",
            wasb_conn_id=site.output_conn_id,
            container=site.container,
            output_container=site.output_container,
            model_name=site.model_name,
            window_days="{{ params.window_days }}",
            window_end="{{ params.window_end }}",
            training_params="{{ params.training_params }}",
            validation=validate_data.output,
            execution_timeout=timedelta(hours=12),
        )

        # Runs the training task of the run's training_backend Param; the other one is skipped.
        choose_training_backend = ChooseTrainingBackendOperator(task_id="choose_training_backend")

        register_model = RegisterModelOperator(
            task_id="register_model",
            model_name=site.model_name,
            wasb_conn_id=site.output_conn_id,
            # The result of whichever training task ran (the other was skipped by the branch).
            training="{{ ti.xcom_pull(task_ids='train_on_azureml') or ti.xcom_pull(task_ids='train_on_edge_vm') }}",
            trigger_rule="none_failed_min_one_success",
            validation=validate_data.output,
            force_promote="{{ params.force_promote }}",
            execution_timeout=timedelta(minutes=30),
            **at_edge,
        )

        build_image = BuildScoringImageOperator(
            task_id="build_image",
            registered=register_model.output,
            skip="{{ params.skip_image_build }}",
            execution_timeout=timedelta(hours=1),
        )

        training = [train_on_edge_vm, train_on_azureml]
        validate_data >> check_edge_vm >> choose_training_backend >> training >> register_model >> build_image

    return edge_training()


# One pipeline per site of the sites file; without one, the single pipeline `edge_training` of the EDGE_* settings.
_sites = load_sites()
# In the dag-processor (all-in-one topology) a site naming a connection Airflow does not have is an import error.
if any(site.dag_id != SINGLE_SITE_DAG_ID for site in _sites):  # a sites file was read
    if (_is_defined := parse_time_lookup()) is not None:
        undefined_connections(_sites, _is_defined, source=f"the sites file {sites_file_path()[0]}")
for _site in _sites:
    edge_training_pipeline(_site)
