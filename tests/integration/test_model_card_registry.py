"""Model cards written at registration and stored with the version, against a real MLflow registry.

Two registrations through RegisterModelOperator with metrics.json from real training jobs (train.py on local
partitions): each version gets model_card.html/json under EDGE_REPORTS_DIR and attached to its MLflow run, the
version's tag names the card's URL, the second card compares with the first, the card is rebuilt with the image
once build_image tags it, and the extra links of the operator point at those pages.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_training.model_card_store import CARD_URL_TAG, publish_model_card
from edge_training.operators.links import ModelCardLink, ModelVersionLink
from edge_training.operators.register import RegisterModelOperator
from edge_training.registry import get_model_registry
from tests._model_card import trained_document
from tests._models import write_model
from tests._pipeline import stage_outputs
from tests._residency import RowSignatures, scan_text

pytestmark = pytest.mark.integration

MODEL = "card-test-model"


@pytest.fixture(scope="module")
def trainings(tmp_path_factory):
    first = trained_document(tmp_path_factory.mktemp("t1"), params='{"n_estimators": 20, "max_depth": 4, "n_jobs": 1}')
    second = trained_document(tmp_path_factory.mktemp("t2"), params='{"n_estimators": 30, "max_depth": 6, "n_jobs": 1}')
    return first, second


def _artifacts(folder: Path, document: dict) -> Path:
    write_model(folder, seed=3)  # a real ONNX classifier, exported as the training job does
    (folder / "metrics.json").write_text(json.dumps(document))
    return folder


def _drift_events(extra: dict):
    """The ``triggering_asset_events`` Airflow's task runner builds for a run the data-drift event started."""
    from airflow.sdk.api.datamodels._generated import AssetEventDagRunReference
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from edge_training.schedule import DATA_DRIFT

    event = AssetEventDagRunReference(
        asset={"name": DATA_DRIFT.name, "uri": DATA_DRIFT.uri, "extra": {}}, extra=extra,
        source_task_id="announce_drift", source_dag_id="edge_drift_check", source_run_id="scheduled__check",
        source_map_index=-1, source_aliases=[], timestamp=datetime(2026, 11, 7, 2, 5, tzinfo=timezone.utc),
    )  # fmt: skip
    return TriggeringAssetEventsAccessor.build([AssetEventDagRunReferenceResult.from_asset_event_dag_run_reference(event)])


def _register(folder: Path, document: dict, job: str, run_id: str,
              **extra_context: object) -> tuple[RegisterModelOperator, dict]:  # fmt: skip
    op = RegisterModelOperator(
        task_id="register_model", model_name=MODEL,
        training={"job_id": job, "artifacts": stage_outputs(folder, job), "metrics": document, "code_version": "c0de",
                  "vm_host_fingerprint": "SHA256:vmkey", "window": "2026-11-01/2026-11-06"},
        validation={"window": "2026-11-01/2026-11-06", "partitions": ["dt=2026-11-01"], "row_count": 7500,
                    "data_fingerprint": document["data_fingerprint"], "validation_id": f"val-{job}", "success": True},
        force_promote=False,
    )  # fmt: skip
    context = {"ti": SimpleNamespace(dag_id="edge_training", run_id=run_id),
               "data_interval_start": datetime(2026, 11, 1, tzinfo=timezone.utc),
               "data_interval_end": datetime(2026, 11, 6, tzinfo=timezone.utc), **extra_context}
    return op, op.execute(context)


@pytest.fixture
def tracking(monkeypatch, tmp_path, edge_env) -> str:
    """A fresh MLflow registry (SQLite) and reports folder under ``tmp_path``, as the registry and cards read them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("EDGE_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EDGE_REPORTS_DIR", str(tmp_path / "reports"))
    return uri


def test_each_version_gets_a_stored_card_linked_from_its_tags_and_task(tracking, tmp_path, trainings):
    from mlflow import MlflowClient

    (doc1, csvs), (doc2, _) = trainings

    _, first = _register(_artifacts(tmp_path / "a1", doc1), doc1, "job-1", "manual__2026-11-06T02:00:00+00:00")
    op, second = _register(_artifacts(tmp_path / "a2", doc2), doc2, "job-2", "manual__2026-11-07T02:00:00+00:00")
    assert (first["version"], second["version"]) == ("1", "2")

    card_dir = tmp_path / "reports" / "model-cards" / MODEL / "2"
    assert second["model_card"] == str(card_dir / "model_card.html")
    assert second["model_card_url"] == f"/edge-training/model-cards/{MODEL}/2/model_card.html"
    html = (card_dir / "model_card.html").read_text()
    card = json.loads((card_dir / "model_card.json").read_text())

    # Stored with the version: attached to its MLflow run, and the version's tag names the card.
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    mv = client.get_model_version(MODEL, "2")
    assert mv.tags[CARD_URL_TAG] == second["model_card_url"] == second["tags"][CARD_URL_TAG]
    assert f"Model card: {second['model_card_url']}" in mv.description and "job-2" in mv.description
    attached = {a.path for a in client.list_artifacts(mv.run_id, "attachments")}
    assert attached == {"attachments/model_card.html", "attachments/model_card.json"}
    stored = Path(client.download_artifacts(mv.run_id, "attachments/model_card.html", str(tmp_path / "dl")))
    assert stored.read_text() == html

    # The second card compares with the first: decision with both scores, the changed params, both in history.
    assert card["model_details"]["version"]["name"] == "2"
    diff = card["model_details"]["version"]["diff"]
    assert "param n_estimators: 20 -> 30" in diff and "param max_depth: 4 -> 6" in diff
    assert second["decision"]["outcome"] in html and f"{doc2['metrics']['roc_auc']:.4f}" in html
    assert html.count("<tr><td>v1</td>") == 1 and html.count("<tr><td>v2</td>") == 1
    assert "not built yet" in html

    # The extra links the worker pushes when register_model finishes.
    ti_key = SimpleNamespace(dag_id="edge_training", run_id="manual__2026-11-07T02:00:00+00:00")
    assert ModelCardLink().get_link(op, ti_key=ti_key) == second["model_card_url"]
    assert ModelVersionLink().get_link(op, ti_key=ti_key) == f"/edge-training/model-versions/{MODEL}/2"

    # build_image records the image, then the card is rebuilt from the copy kept beside it.
    registry = get_model_registry()
    reference = f"127.0.0.1:5000/{MODEL}:2@sha256:{'cd' * 32}"
    registry.set_tags(MODEL, "2", {"image.reference": reference, "image.digest": f"sha256:{'cd' * 32}"})
    rebuilt = publish_model_card(registry, MODEL, "2", reports_dir=tmp_path / "reports")
    assert rebuilt.path == card_dir / "model_card.html"
    html = rebuilt.path.read_text()
    assert reference in html and "not built yet" not in html
    assert f'href="/edge-training/images/{MODEL}/2"' in html

    # Nothing of a training row on the cards.
    signatures = RowSignatures.from_csv_texts(csvs)
    for path in (tmp_path / "reports").rglob("model_card.*"):
        assert scan_text(str(path), path.read_text(), signatures) == [], path


def test_rebuild_without_the_training_figures_keeps_the_card(monkeypatch, tmp_path, trainings, edge_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("EDGE_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EDGE_REPORTS_DIR", str(tmp_path / "reports"))
    (doc1, _), _ = trainings
    _register(_artifacts(tmp_path / "a1", doc1), doc1, "job-1", "manual__1")
    # Another machine's reports folder (build_image on a central worker, register_model at the edge): no copy.
    elsewhere = tmp_path / "central-reports"
    assert publish_model_card(get_model_registry(), MODEL, "1", reports_dir=elsewhere) is None
    assert not elsewhere.exists()
    shutil.rmtree(tmp_path / "reports")


def test_a_version_the_data_drift_retrained_links_the_drift_report(tracking, tmp_path, trainings):
    from mlflow import MlflowClient

    (doc1, csvs), (doc2, _) = trainings
    _, scheduled = _register(_artifacts(tmp_path / "a1", doc1), doc1, "job-1", "scheduled__2026-11-06T02:00:00+00:00")
    report_url = "/edge-training/data-docs/edge_drift_check/scheduled__check/drift_report.html"
    reason = "data drift in 2026-11-06..2026-11-07 in 1 feature(s): temperature_c (population_stability_index 4.2 > 0.2)"
    _, drifted = _register(
        _artifacts(tmp_path / "a2", doc2), doc2, "job-2", "asset_triggered__2026-11-07T02:05:00+00:00",
        triggering_asset_events=_drift_events({"reason": reason, "report_url": report_url, "window_end": "2026-11-07",
                                               "drifted_features": ["temperature_c"]}),
    )  # fmt: skip

    # The version carries the reason and the report's URL; the scheduled one says none.
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    tags = client.get_model_version(MODEL, drifted["version"]).tags
    assert (tags["edge.drift_report"], tags["edge.drift_reason"]) == (report_url, reason)
    assert drifted["tags"]["edge.drift_report"] == report_url
    assert client.get_model_version(MODEL, scheduled["version"]).tags["edge.drift_report"] == "none"

    # Its model card links the drift report and says why it was trained; the scheduled version's card does not.
    html = Path(drifted["model_card"]).read_text()
    assert f'<a href="{report_url}">Drift report</a>' in html and "Retrained because the data drifted" in html
    card = json.loads((Path(drifted["model_card"]).parent / "model_card.json").read_text())
    assert {"reference": report_url} in card["model_details"]["references"]
    assert "drift_report.html" not in Path(scheduled["model_card"]).read_text()
    # A rebuild (after build_image) keeps the link: it comes from the version's tag.
    rebuilt = publish_model_card(get_model_registry(), MODEL, drifted["version"], reports_dir=tmp_path / "reports")
    assert f'<a href="{report_url}">Drift report</a>' in rebuilt.path.read_text()
    signatures = RowSignatures.from_csv_texts(csvs)
    assert scan_text("model_card.html", rebuilt.path.read_text(), signatures) == []

    # An event pointing anywhere but a drift report on the api-server puts no link on a version.
    doc3 = {**doc1, "data_fingerprint": "sha256:" + "3" * 64}  # other data: a new version, not a reuse of v1
    _, other = _register(
        _artifacts(tmp_path / "a3", doc3), doc3, "job-3", "asset_triggered__2026-11-08T02:05:00+00:00",
        triggering_asset_events=_drift_events({"reason": reason, "report_url": "https://elsewhere.example/x?sig=1"}),
    )  # fmt: skip
    assert other["version"] == "3" and not other["reused"]
    assert client.get_model_version(MODEL, other["version"]).tags["edge.drift_report"] == "none"
    assert "elsewhere.example" not in Path(other["model_card"]).read_text()
