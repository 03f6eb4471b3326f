"""
### Global model across the edge sites (opt-in)

One model for every site, built without moving a single row: the sites' champions (each trained next to its own
data by its `edge_training_<site>` pipeline) are pooled into one random forest, each site's trees voting with its
share of the training rows, and the pooled forest is registered as a version of `EDGE_GLOBAL_MODEL_NAME`.

| step | task | runs | what it does |
|---|---|---|---|
| 1 | `pool_site_models` | central | Reads each site's champion from the model registry, pools the forests (ONNX), registers the result with the shares and the pooled versions as tags. |
| 2 | `evaluate_at_<site>` | at the site (its queue, its blob connection) | Scores the pooled model and the site's champion on the champion's own holdout days, read from the site's storage in the task's memory; returns two scores and a row count, nothing else. |
| 3 | `promote_global_model` | central | The score matrix decides: the pooled model becomes the global champion only when it beats the site's champion at `EDGE_SITES_QUORUM` sites (a number, `majority`, `all`). A site whose evaluation failed is not compared and never counts as a win. |

Generated only with a sites file of two or more sites and `EDGE_GLOBAL_MODEL=true`. Schedule:
`EDGE_GLOBAL_MODEL_SCHEDULE` (cron, UTC; empty: manual runs only).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag

from edge_training import config
from edge_training.notify import on_task_failure, on_task_retry
from edge_training.operators.global_model import (
    EvaluateAtSiteOperator,
    PoolSiteModelsOperator,
    PromoteGlobalModelOperator,
)
from edge_training.retry import EDGE_RETRY_POLICY
from edge_training.sites import Site, SitesFileError, load_sites
from edge_training.topology import edge_site_task_args


def edge_training_global(sites: list[Site]):
    """The global-model pipeline over ``sites``: pool centrally, evaluate at each site, promote by quorum."""
    clash = [site.name for site in sites if site.model_name == config.GLOBAL_MODEL_NAME]
    if clash:
        raise SitesFileError(
            f"Checked EDGE_GLOBAL_MODEL_NAME {config.GLOBAL_MODEL_NAME!r} against the sites' models: it is the model "
            f"of site {clash[0]!r}. Give the global model a name of its own (EDGE_GLOBAL_MODEL_NAME)."
        )

    @dag(
        dag_id="edge_training_global",
        schedule=config.GLOBAL_MODEL_SCHEDULE,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        render_template_as_native_obj=True,
        doc_md=__doc__,
        tags=["edge", "training", "global-model"],
        default_args={
            "retries": 2,
            "retry_delay": timedelta(seconds=30),
            "retry_policy": EDGE_RETRY_POLICY,
            "on_failure_callback": on_task_failure,
            "on_retry_callback": on_task_retry,
        },
    )
    def global_model():
        pooled = PoolSiteModelsOperator(
            task_id="pool_site_models",
            sites=[{"site": site.name, "model_name": site.model_name} for site in sites],
            model_name=config.GLOBAL_MODEL_NAME,
            execution_timeout=timedelta(minutes=30),
        )
        evaluations = [
            EvaluateAtSiteOperator(
                task_id=f"evaluate_at_{site.name}",
                site=site.name,
                model_name=site.model_name,
                wasb_conn_id=site.blob_conn_id,
                container=site.container,
                pooled=pooled.output,
                execution_timeout=timedelta(minutes=30),
                **edge_site_task_args(queue=site.queue),
            )
            for site in sites
        ]
        promote = PromoteGlobalModelOperator(
            task_id="promote_global_model",
            pooled=pooled.output,
            evaluation_task_ids=[task.task_id for task in evaluations],
            quorum=config.SITES_QUORUM,
            margin=config.PROMOTION_MARGIN,
            # A site that could not evaluate is "not compared"; the other sites still decide.
            trigger_rule="all_done_min_one_success",
            execution_timeout=timedelta(minutes=10),
        )
        pooled >> evaluations >> promote

    return global_model()


_sites = load_sites()
if config.GLOBAL_MODEL and len(_sites) >= 2:
    edge_training_global(_sites)
