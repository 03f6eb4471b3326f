"""Choose where a run trains: the training task of its ``training_backend`` Param runs, the other is skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseBranchOperator

from edge_training.exceptions import EdgeTrainingError

if TYPE_CHECKING:
    from airflow.sdk import Context

# The values of the DAG's training_backend Param: each names a training task ``train_on_<backend>``.
TRAINING_BACKENDS = ("edge_vm", "azureml")


class ChooseTrainingBackendOperator(BaseBranchOperator):
    """Follow ``train_on_<training_backend>`` (the run's Param); the other training task is skipped.

    A plain branch operator rather than ``@task.branch``: the decorator pulls the standard provider's Python
    operators into every parse of the DAG file.

    :param task_prefix: prefix of the training tasks' ids (``train_on_``).
    """

    def __init__(self, *, task_prefix: str = "train_on_", **kwargs) -> None:
        super().__init__(**kwargs)
        self.task_prefix = task_prefix

    def choose_branch(self, context: Context) -> str:
        backend = context["params"].get("training_backend")
        if backend not in TRAINING_BACKENDS:
            raise EdgeTrainingError(
                f"Checked the run's training_backend Param: expected one of {', '.join(TRAINING_BACKENDS)}, found "
                f"{backend!r}. Trigger the run again with training_backend set to one of them."
            )
        return f"{self.task_prefix}{backend}"
