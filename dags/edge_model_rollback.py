"""
### Edge model rollback

Put the `champion` of the model back to a named version, in one step, from the trigger form.

| param | type | meaning |
|---|---|---|
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
from edge_training.notify import on_task_failure
from edge_training.operators.rollback import RollbackChampionOperator
from edge_training.retry import EDGE_RETRY_POLICY


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
    },
    params={
        "version": Param(
            None,
            type="integer",
            minimum=1,
            description=f"The version of model {config.MODEL_NAME} to make the champion again.",
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
        model_name=config.MODEL_NAME,
        version="{{ params.version }}",
        reason="{{ params.reason }}",
        execution_timeout=timedelta(minutes=10),
    )


edge_model_rollback()
