"""Which training hyperparameters a run may ask for, and their bounds: one definition for the DAG and the operators.

The model is scikit-learn's ``RandomForestClassifier`` (``include/training/train.py``). Only the hyperparameters
listed here may be set, within bounds that keep one training from taking over the shared edge VM (``n_jobs``) or
from running for days and baking a huge model into the scoring image (``n_estimators``, ``max_depth``).

``TRAINING_PARAMS_SCHEMA`` is the JSON schema of the DAG's ``training_params`` Param, which Airflow checks when a
run is triggered (UI form, REST API, CLI) before any task runs. ``parse_training_params`` (in ``remote_job``)
applies the same schema through ``validate_training_params``, so the training operators refuse the same values
when they are used outside this DAG. Pure: no Airflow import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_training.exceptions import TrainingParamsError

# One training must leave the shared VM's other cores to its other users; -1 (all cores) is refused.
MAX_N_JOBS = 4

# Fractions lie in (0, 1): an integer 1 would mean "one feature"/"one sample" to scikit-learn, and 1.0 is what null
# (the default) already means. Written without anyOf, so that a violation is reported under its key's name.
_FRACTION = {"exclusiveMinimum": 0, "exclusiveMaximum": 1}

TRAINING_PARAMS_PROPERTIES: dict[str, dict[str, Any]] = {
    "n_estimators": {"type": "integer", "minimum": 1, "maximum": 2000, "description": "trees in the forest"},
    "max_depth": {"type": "integer", "minimum": 1, "maximum": 64, "description": "depth of each tree"},
    "min_samples_split": {"type": "integer", "minimum": 2, "maximum": 100_000},
    "min_samples_leaf": {"type": "integer", "minimum": 1, "maximum": 100_000},
    "max_leaf_nodes": {"type": ["integer", "null"], "minimum": 2, "maximum": 1_000_000},
    "max_features": {
        "type": ["string", "number", "null"],
        "pattern": "^(sqrt|log2)$",
        **_FRACTION,
        "description": "'sqrt', 'log2', a fraction in (0, 1) of the features, or null for all",
    },
    "max_samples": {
        "type": ["number", "null"],
        **_FRACTION,
        "description": "fraction in (0, 1) of the rows each tree is drawn from (bootstrap), or null for all",
    },
    "bootstrap": {"type": "boolean"},
    "criterion": {"enum": ["gini", "entropy", "log_loss"]},
    "class_weight": {"enum": ["balanced", "balanced_subsample", None]},
    "min_impurity_decrease": {"type": "number", "minimum": 0, "maximum": 1},
    "ccp_alpha": {"type": "number", "minimum": 0, "maximum": 1},
    "n_jobs": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_N_JOBS,
        "description": f"CPU cores the training may use on the VM (1..{MAX_N_JOBS}; -1, all cores, is refused)",
    },
}

TRAINING_PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": TRAINING_PARAMS_PROPERTIES,
    "additionalProperties": False,
}


def _describe(error: Any) -> str:
    """One line per schema violation, naming the field (``training_params.<key>``)."""
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(TRAINING_PARAMS_PROPERTIES))
        return f"unknown key(s) {unknown}; allowed keys: {sorted(TRAINING_PARAMS_PROPERTIES)}"
    field = ".".join(["training_params", *(str(part) for part in error.path)])
    return f"{field}: {error.message}"


def validate_training_params(params: Any) -> dict[str, Any]:
    """
    Check ``params`` against ``TRAINING_PARAMS_SCHEMA`` and return them as a dict.

    :param params: the hyperparameters a run asked for.
    :raises TrainingParamsError: a key is unknown or a value is of the wrong type or out of bounds; the message
        names every offending field and its allowed range.
    """
    from jsonschema import Draft202012Validator

    if not isinstance(params, Mapping):
        raise TrainingParamsError(
            f"training_params must be a JSON object of RandomForest hyperparameters, e.g. "
            f'{{"n_estimators": 200, "max_depth": 6}}; got a {type(params).__name__}.'
        )
    params = dict(params)
    errors = sorted(Draft202012Validator(TRAINING_PARAMS_SCHEMA).iter_errors(params), key=lambda e: list(e.path))
    if errors:
        raise TrainingParamsError(
            "Checked training_params against the allowed hyperparameters and their bounds: "
            + "; ".join(_describe(error) for error in errors)
            + ". Fix the run's training_params (the DAG's Param schema lists every key and bound)."
        )
    return params
