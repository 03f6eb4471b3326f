"""The bounds of training_params, as the training operators enforce them (the DAG's Param uses the same schema)."""

from __future__ import annotations

import json

import pytest

from edge_training.exceptions import TrainingParamsError
from edge_training.remote_job import parse_training_params
from edge_training.retry import EDGE_RETRY_POLICY


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"n_estimators": 10**6}, "training_params.n_estimators: 1000000 is greater than the maximum of 2000"),
        ({"n_jobs": -1}, "training_params.n_jobs: -1 is less than the minimum of 1"),
        ({"max_depth": 0}, "training_params.max_depth: 0 is less than the minimum of 1"),
        ({"max_depth": True}, "training_params.max_depth: True is not of type 'integer'"),
        ({"max_samples": 1}, "training_params.max_samples: 1 is greater than or equal to the maximum of 1"),
        ({"max_features": "all"}, "training_params.max_features: 'all' does not match '^(sqrt|log2)$'"),
        ({"warm_start": True, "verbose": 2}, "unknown key(s) ['verbose', 'warm_start']; allowed keys: ["),
        ('{"n_jobs": 64}', "training_params.n_jobs: 64 is greater than the maximum of 4"),
    ],
)
def test_unknown_keys_and_out_of_bounds_values_are_refused_naming_the_field(value, named):
    with pytest.raises(TrainingParamsError) as err:
        parse_training_params(value)

    assert named in str(err.value)


def test_every_offending_field_is_named_at_once():
    with pytest.raises(TrainingParamsError) as err:
        parse_training_params({"n_estimators": 0, "max_depth": 65, "n_jobs": 1})

    assert "training_params.max_depth" in str(err.value) and "training_params.n_estimators" in str(err.value)
    assert "training_params.n_jobs" not in str(err.value), "a valid field is not reported"


@pytest.mark.parametrize(("value", "problem"), [("{n_estimators: 5}", "not valid JSON"), ("[3]", "got a list")])
def test_text_that_is_not_a_json_object_is_refused(value, problem):
    with pytest.raises(TrainingParamsError, match=problem):
        parse_training_params(value)


def test_bad_training_params_fail_the_task_at_once():
    from airflow.sdk import RetryAction

    with pytest.raises(TrainingParamsError) as err:
        parse_training_params({"n_jobs": -1})

    assert EDGE_RETRY_POLICY.evaluate(err.value, 1, 4, {}).action == RetryAction.FAIL


def test_every_allowed_key_is_a_hyperparameter_train_py_accepts():
    """The schema may only narrow what include/training/train.py takes, never add a key it would refuse."""
    import importlib.util

    from edge_training import config
    from edge_training.training_params import TRAINING_PARAMS_PROPERTIES

    spec = importlib.util.spec_from_file_location("edge_train_script", config.INCLUDE_DIR / "training" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    given = {"n_estimators": 5, "max_depth": 3, "n_jobs": 2, "max_features": 0.5, "max_samples": 0.5,
             "criterion": "entropy", "class_weight": None, "bootstrap": True, "min_samples_split": 4,
             "min_samples_leaf": 2, "max_leaf_nodes": 50, "min_impurity_decrease": 0.0, "ccp_alpha": 0.0}  # fmt: skip
    assert set(given) == set(TRAINING_PARAMS_PROPERTIES)

    assert train.model_params(json.dumps(parse_training_params(given))).items() >= given.items()
