"""
### Edge model rollback

Put the `champion` of the model back to a named version, in one step, from the trigger form.

| param | type | meaning |
|---|---|---|
| `model_name` | one of the sites' models | only with a sites file: the site's model (or the global model) to roll back |
| `version` | integer >= 1 | the registered model version to make the champion again |
| `reason` | text, 3..200 characters | why; recorded on both versions |

The task `rollback_champion` checks first and changes nothing if the version does not exist, never finished its
registration, holds no ONNX model, or is already the champion; each refusal says what was found. Then it moves the
champion (a compare-and-set: a registration promoting at the same moment makes the rollback fail rather than be
overwritten silently) and records the decision on both versions: `champion.decision=promoted_rollback` on the
version put back, `demoted_rollback` on the one it replaces, each with `champion.reason` (the reason and the run),
`champion.decided_at`, `champion.decided_by`, and the earlier decision in `champion.previous_decision`.

The next training run compares its candidate with the rolled-back champion under the usual promotion rule (see the
`edge_training` DAG): a candidate competes only on a holdout neither model trained on and not older than the
champion's. Build the scoring image of the version (if it has none) by re-running that version's `build_image`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag

from edge_training import config
from edge_training.notify import on_task_failure, on_task_retry
from edge_training.operators.rollback import RollbackChampionOperator
from edge_training.retry import EDGE_RETRY_POLICY
from edge_training.sites import DAG_ID as SINGLE_SITE_DAG_ID
from edge_training.sites import load_sites

# With a sites file every site has a model of its own (and the global model one more): the form names which one.
MODELS = [site.model_name for site in load_sites() if site.dag_id != SINGLE_SITE_DAG_ID]
if MODELS and config.GLOBAL_MODEL:
    MODELS.append(config.GLOBAL_MODEL_NAME)
MODEL_PARAM = (
    {"model_name": Param(MODELS[0], enum=MODELS, description="The registered model whose champion is rolled back.")}
    if MODELS
    else {}
)


@dag(
    dag_id="edge_model_rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["edge", "model-registry", "rollback"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=10),
        "retry_policy": EDGE_RETRY_POLICY,
        "on_failure_callback": on_task_failure,
        "on_retry_callback": on_task_retry,
    },
    params={
        **MODEL_PARAM,
        "version": Param(
            None,
            type="integer",
            minimum=1,
            description="The version of the model to make the champion again."
            if MODELS
            else f"The version of model {config.MODEL_NAME} to make the champion again.",
        ),
        "reason": Param(
            "",
            type="string",
            minLength=3,
            maxLength=200,
            description="Why the champion is rolled back (recorded on both versions).",
        ),
    },
)
def edge_model_rollback():
    RollbackChampionOperator(
        task_id="rollback_champion",
        model_name="{{ params.model_name }}" if MODELS else config.MODEL_NAME,
        version="{{ params.version }}",
        reason="{{ params.reason }}",
        execution_timeout=timedelta(minutes=10),
    )


edge_model_rollback()
