"""Lineage tags written on every registered model version.

Pure logic, no Airflow. The tags answer "where did this model come from?": which DAG run, which training
window and data (by fingerprint, never by rows), which validation result, which code, which edge VM, how it
scored, and what the champion gate decided. Only selected summary fields are copied, so no data row can leak
in through the validation or training results.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import date, datetime
from typing import Any

from edge_training import reports
from edge_training.champion import PROMOTION_RULE, split_metrics

# Registries bound tag values (MLflow: 5000 chars, Azure ML lower); lineage values are short by nature,
# so anything longer is a symptom and gets truncated visibly.
MAX_TAG_VALUE_LENGTH = 250
NONE_VALUE = "none"

_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _text(value: Any) -> str:
    if value is None:
        return NONE_VALUE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{_text(value[0])}/{_text(value[1])}"
    if isinstance(value, dict) and {"start", "end"} <= value.keys():
        return f"{_text(value['start'])}/{_text(value['end'])}"
    return str(value)


def _bounded(value: Any) -> str:
    text = _text(value)
    if len(text) > MAX_TAG_VALUE_LENGTH:
        return text[: MAX_TAG_VALUE_LENGTH - 3] + "..."
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value)
    )


def decision_tags(decision: Any) -> dict[str, str]:
    """Tags recording the champion gate's decision (empty if no decision yet).

    :param decision: A :class:`edge_training.champion.PromotionDecision` or None.
    """
    if decision is None:
        return {}
    return {
        "champion.decision": _bounded(decision.outcome),
        "champion.promoted": _bounded(decision.promote),
        "champion.metric": _bounded(decision.metric),
        "champion.candidate_score": _bounded(decision.candidate_score),
        "champion.previous_score": _bounded(decision.champion_score),
        "champion.reason": _bounded(decision.reason),
        "champion.rule": _bounded(PROMOTION_RULE),
    }


DRIFT_REPORT_TAG = "edge.drift_report"
DRIFT_REASON_TAG = "edge.drift_reason"
# The only report a drift event may point the card at: a drift check's report on the api-server.
_DRIFT_REPORT_NAME = "drift_report.html"


def drift_tags(drift: Any) -> dict[str, str]:
    """Tags naming the data drift that started the run: the drift check's reason and its report's URL.

    :param drift: The extra of the ``edge_data_drift`` asset event that triggered the run (``reason``,
        ``report_url``), or None when the run was not started by drift: both tags are then ``"none"``.
        A ``report_url`` that is not a drift report served by the api-server (``/edge-training/.../drift_report.html``,
        no query) is left out: a tag never carries a link to elsewhere, nor anything in a query string.
    """
    drift = drift if isinstance(drift, dict) else {}
    url = drift.get("report_url")
    if not (isinstance(url, str) and reports.URL_PREFIX + "/" in url and url.endswith("/" + _DRIFT_REPORT_NAME)
            and "?" not in url and "://" not in url):
        url = None
    return {DRIFT_REASON_TAG: _bounded(drift.get("reason")), DRIFT_REPORT_TAG: _bounded(url)}


def training_identity(training: dict | None) -> str | None:
    """A digest of what determines the trained model: data read, code, hyperparameters, seed and windows.

    Two trainings with the same identity produce the same model (the forest is seeded), so the second one reuses
    the first one's version instead of registering a copy. None when the training result lacks the data
    fingerprint or the code version: then nothing can be proven identical.

    :param training: The training task's result (``code_version`` and ``metrics`` = the metrics.json document).
    """
    training = training or {}
    document = training.get("metrics") if isinstance(training.get("metrics"), dict) else {}
    model = document.get("model") if isinstance(document.get("model"), dict) else {}
    parts = {
        "data_fingerprint": document.get("data_fingerprint"),
        "code_version": training.get("code_version"),
        "params": model.get("params"),
        "seed": model.get("seed"),
        "window": document.get("window"),
        "holdout_window": document.get("holdout_window"),
    }
    if not parts["data_fingerprint"] or not parts["code_version"]:
        return None
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def lineage_tags(
    dag_id: str,
    run_id: str,
    data_interval_start: Any,
    data_interval_end: Any,
    validation: dict | None,
    training: dict | None,
    decision: Any = None,
    *,
    drift: dict | None = None,
) -> dict[str, str]:
    """Build the lineage tags for one registered model version.

    Every value is a string of at most :data:`MAX_TAG_VALUE_LENGTH` characters; a missing input becomes
    ``"none"`` so the same keys are always present and searchable.

    :param dag_id: The DAG that produced the model.
    :param run_id: The Airflow DAG run id.
    :param data_interval_start: The run's data interval start (datetime or ISO string; None for manual runs).
    :param data_interval_end: The run's data interval end.
    :param validation: The validation task's result (window, partitions, row_count, data_fingerprint, ...).
    :param training: The training task's result (job_id, metrics, code_version, vm_host_fingerprint, ...).
    :param decision: The champion gate's :class:`~edge_training.champion.PromotionDecision`, or None.
    :param drift: The extra of the data-drift asset event that started the run, if any (see :func:`drift_tags`).
    """
    validation = validation or {}
    training = training or {}
    partitions = validation.get("partitions")
    tags: dict[str, Any] = {
        "edge.dag_id": dag_id,
        "edge.dag_run_id": run_id,
        "edge.data_interval_start": data_interval_start,
        "edge.data_interval_end": data_interval_end,
        "edge.training_window": training.get("window") or validation.get("window"),
        # The partition count, not the names: a window has one partition per day and names add nothing.
        "edge.partition_count": len(partitions) if isinstance(partitions, (list, tuple)) else partitions,
        "edge.row_count": validation.get("row_count"),
        "edge.data_fingerprint": validation.get("data_fingerprint"),
        "edge.validation_id": validation.get("validation_id"),
        "edge.validation_success": validation.get("success"),
        "edge.data_docs": validation.get("data_docs"),
        "edge.training_job_id": training.get("job_id"),
        "edge.code_version": training.get("code_version"),
        "edge.vm_host_fingerprint": training.get("vm_host_fingerprint"),
        "edge.training_seconds": training.get("training_seconds"),
    }
    metrics, _ = split_metrics(training.get("metrics"))
    document = training.get("metrics") if isinstance(training.get("metrics"), dict) else {}
    # What the edge VM actually read, next to what validation checked: equal when nothing changed in between.
    tags["edge.training_data_fingerprint"] = document.get("data_fingerprint")
    # What the promotion rule compares: the days each model trained on and was scored on.
    tags["edge.train_window"] = document.get("train_window")
    tags["edge.holdout_window"] = document.get("holdout_window")
    tags["edge.training_identity"] = training_identity(training)
    for name in sorted(metrics):
        # Only scalar numbers: nested dicts (champion_metrics, confusion matrices) are not lineage.
        if _is_number(metrics[name]):
            tags[f"metric.{_METRIC_NAME_UNSAFE.sub('_', str(name))[:100]}"] = metrics[name]
    result = {key: _bounded(value) for key, value in tags.items()}
    result.update(drift_tags(drift))
    result.update(decision_tags(decision))
    return result
