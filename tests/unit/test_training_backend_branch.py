"""The branch that picks the training task from the run's training_backend Param."""

from __future__ import annotations

import pytest

from edge_training.exceptions import EdgeTrainingError
from edge_training.operators.backend import TRAINING_BACKENDS, ChooseTrainingBackendOperator


@pytest.mark.parametrize("backend", TRAINING_BACKENDS)
def test_each_backend_follows_its_training_task(backend):
    op = ChooseTrainingBackendOperator(task_id="choose_training_backend")
    assert op.choose_branch({"params": {"training_backend": backend}}) == f"train_on_{backend}"


def test_an_unknown_backend_is_refused_naming_the_param_and_the_choices():
    op = ChooseTrainingBackendOperator(task_id="choose_training_backend")
    with pytest.raises(EdgeTrainingError, match=r"training_backend Param: expected one of edge_vm, azureml, found 'gpu'"):
        op.choose_branch({"params": {"training_backend": "gpu"}})
