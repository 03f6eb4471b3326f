"""Lineage tags: stable keys, string values, bounded length, no data rows."""

from __future__ import annotations

from datetime import datetime, timezone

from edge_training.champion import decide_promotion
from edge_training.lineage import MAX_TAG_VALUE_LENGTH, lineage_tags

VALIDATION = {
    "window": {"start": "2026-11-13", "end": "2026-11-20"},
    "partitions": ["dt=2026-11-13", "dt=2026-11-14", "dt=2026-11-15"],
    "row_count": 12345,
    "data_fingerprint": "sha256:0f1e",
    "validation_id": "val-42",
    "data_docs": "/reports/data_docs/index.html",
    "success": True,
    # A validation result may carry sample rows (e.g. unexpected values); they must never become tags.
    "unexpected_rows": [{"machine_id": "M-0001", "temperature_c": 999.0}],
}
TRAINING = {
    "job_id": "edge-train-scheduled-2026-11-20",
    "artifacts": {"container": "models", "prefix": "edge-training/job/", "blobs": {"model.onnx": {
        "name": "edge-training/job/model.onnx", "etag": '"0x8D1"', "content_md5": "q83vEjRWeJA=", "size": 10}}},
    "metrics": {
        "roc_auc": 0.91,
        "pr_auc": 0.5,
        "n_train": 1000,
        "weird name/with:chars": 0.1,
        "champion_metrics": {"roc_auc": 0.88},
        "confusion": [[1, 2], [3, 4]],
        "passed": True,
    },
    "code_version": "git:abc123",
    "vm_host_fingerprint": "SHA256:hostkey",
    "window": ["2026-11-13", "2026-11-20"],
    "training_seconds": 12.5,
}
START = datetime(2026, 11, 13, tzinfo=timezone.utc)
END = datetime(2026, 11, 20, tzinfo=timezone.utc)


def _tags(**overrides):
    args = dict(
        dag_id="edge_training",
        run_id="scheduled__2026-11-20T02:00:00+00:00",
        data_interval_start=START,
        data_interval_end=END,
        validation=VALIDATION,
        training=TRAINING,
        decision=None,
    )
    args.update(overrides)
    return lineage_tags(**args)


def test_lineage_keys_and_values():
    tags = _tags()
    assert tags["edge.dag_id"] == "edge_training"
    assert tags["edge.dag_run_id"] == "scheduled__2026-11-20T02:00:00+00:00"
    assert tags["edge.data_interval_start"] == "2026-11-13T00:00:00+00:00"
    assert tags["edge.data_interval_end"] == "2026-11-20T00:00:00+00:00"
    assert tags["edge.training_window"] == "2026-11-13/2026-11-20"
    assert tags["edge.partition_count"] == "3"
    assert tags["edge.row_count"] == "12345"
    assert tags["edge.data_fingerprint"] == "sha256:0f1e"
    assert tags["edge.validation_id"] == "val-42"
    assert tags["edge.validation_success"] == "true"
    assert tags["edge.data_docs"] == "/reports/data_docs/index.html"
    assert tags["edge.training_job_id"] == "edge-train-scheduled-2026-11-20"
    assert tags["edge.code_version"] == "git:abc123"
    assert tags["edge.vm_host_fingerprint"] == "SHA256:hostkey"
    assert tags["edge.training_seconds"] == "12.5"
    assert tags["metric.roc_auc"] == "0.91"
    assert tags["metric.n_train"] == "1000"
    assert tags["metric.weird_name_with_chars"] == "0.1"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    assert not any(k.startswith("champion.") for k in tags)


def test_only_scalar_metrics_and_no_rows_are_copied():
    tags = _tags()
    assert "metric.champion_metrics" not in tags and "metric.confusion" not in tags and "metric.passed" not in tags
    blob = repr(tags)
    assert "M-0001" not in blob and "999" not in blob and "edge-training/job/" not in blob


def test_window_falls_back_to_validation_and_accepts_a_plain_string():
    tags = _tags(training={**TRAINING, "window": None})
    assert tags["edge.training_window"] == "2026-11-13/2026-11-20"
    tags = _tags(training={**TRAINING, "window": "2026-11-13..2026-11-20"})
    assert tags["edge.training_window"] == "2026-11-13..2026-11-20"


def test_missing_inputs_keep_the_same_keys_with_none():
    full = _tags()
    empty = lineage_tags("d", "manual__1", None, None, None, None, None)
    assert set(empty) == {k for k in full if not k.startswith("metric.")}
    assert empty["edge.data_interval_start"] == "none"
    assert empty["edge.data_fingerprint"] == "none"


def test_partitions_given_as_a_count_are_kept():
    assert _tags(validation={**VALIDATION, "partitions": 7})["edge.partition_count"] == "7"


def test_long_values_are_truncated_visibly():
    tags = _tags(validation={**VALIDATION, "data_docs": "x" * 1000})
    assert len(tags["edge.data_docs"]) == MAX_TAG_VALUE_LENGTH
    assert tags["edge.data_docs"].endswith("...")
    assert all(len(v) <= MAX_TAG_VALUE_LENGTH for v in tags.values())


def test_decision_tags():
    decision = decide_promotion({"roc_auc": 0.91}, {"roc_auc": 0.88}, margin=0.01)
    tags = _tags(decision=decision)
    assert tags["champion.decision"] == "promoted"
    assert tags["champion.promoted"] == "true"
    assert tags["champion.metric"] == "roc_auc"
    assert tags["champion.candidate_score"] == "0.91"
    assert tags["champion.previous_score"] == "0.88"
    assert tags["champion.reason"].startswith("candidate roc_auc 0.91 beats champion 0.88")

    first = _tags(decision=decide_promotion({"roc_auc": 0.8}, None))
    assert first["champion.decision"] == "promoted_no_champion"
    assert first["champion.previous_score"] == "none"


def test_metrics_json_document_shape_from_the_training_job():
    """train.py's metrics.json nests the holdout metrics and carries its own data fingerprint."""
    document = {
        "schema_version": 1,
        "metrics": {"roc_auc": 0.93, "f1": 0.61},
        "champion_metrics": {"roc_auc": 0.9},
        "rows": {"read": 480, "train": 400},
        "data_fingerprint": "sha256:vm-read",
        "training_seconds": 2.5,
    }
    tags = _tags(training={**TRAINING, "metrics": document})
    assert tags["metric.roc_auc"] == "0.93" and tags["metric.f1"] == "0.61"
    assert "metric.schema_version" not in tags and "metric.training_seconds" not in tags
    assert tags["edge.training_data_fingerprint"] == "sha256:vm-read"
    assert tags["edge.data_fingerprint"] == "sha256:0f1e"


def test_windows_identity_and_rule_are_tagged():
    from edge_training.champion import PROMOTION_RULE
    from edge_training.lineage import training_identity

    document = {"metrics": {"roc_auc": 0.9}, "data_fingerprint": "sha256:d",
                "window": {"start": "2026-11-13", "end": "2026-11-20"},
                "train_window": {"start": "2026-11-13", "end": "2026-11-19"},
                "holdout_window": {"start": "2026-11-19", "end": "2026-11-20"},
                "model": {"params": {"n_estimators": 20}, "seed": 0}}
    training = {**TRAINING, "metrics": document}
    tags = _tags(training=training, decision=decide_promotion({"roc_auc": 0.9}, None))
    assert tags["edge.train_window"] == "2026-11-13/2026-11-19"
    assert tags["edge.holdout_window"] == "2026-11-19/2026-11-20"
    assert tags["champion.rule"] == PROMOTION_RULE and len(PROMOTION_RULE) <= MAX_TAG_VALUE_LENGTH
    identity = tags["edge.training_identity"]
    assert identity.startswith("sha256:") and identity == training_identity(training)
    # Any input that changes the model changes the identity; nothing else does.
    assert training_identity({**training, "job_id": "another-job", "training_seconds": 99}) == identity
    for changed in ({"data_fingerprint": "sha256:e"}, {"model": {"params": {"n_estimators": 21}, "seed": 0}},
                    {"model": {"params": {"n_estimators": 20}, "seed": 1}}):
        assert training_identity({**training, "metrics": {**document, **changed}}) != identity
    assert training_identity({**training, "code_version": "git:other"}) != identity
    assert training_identity({**training, "code_version": None}) is None  # unknown code: never "identical"
