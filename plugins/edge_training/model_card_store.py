"""Write a model version's card and store it with the version.

Reads what the registry knows (the version's tags, the champion, every version of the model), builds the card
with :func:`edge_training.model_card.build_model_card`, writes ``model_card.html`` / ``model_card.json`` (plus the
training job's ``metrics.json``, so a later rebuild has the same inputs) to
``EDGE_REPORTS_DIR/model-cards/<model>/<version>/`` — where the api-server serves them — and attaches both card
files to the version in the registry. The version's ``edge.model_card`` tag holds the card's URL, and its description
links to it.

Called by ``register_model`` (the card of a new version) and by ``build_image`` (again, with the image's
reference and digest, which only exist then).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from edge_training import reports
from edge_training.lineage import DRIFT_REPORT_TAG, NONE_VALUE
from edge_training.model_card import CARD_HTML, CARD_JSON, CardLinks, VersionSnapshot, build_model_card

if TYPE_CHECKING:
    from edge_training.registry import ModelRegistry, RegisteredModelVersion

log = logging.getLogger(__name__)

METRICS_COPY = "metrics.json"
CARD_URL_TAG = "edge.model_card"


@dataclass(frozen=True)
class PublishedCard:
    """A written and attached card: ``path`` of its local ``model_card.html``, ``url`` on the api-server, and the
    HTML's size in bytes."""

    path: Path
    url: str
    size: int


def _snapshot(version: RegisteredModelVersion, champion: str | None) -> VersionSnapshot:
    return VersionSnapshot(version=str(version.version), tags=dict(version.tags),
                           aliases=("champion",) if champion == str(version.version) else ())


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def publish_model_card(
    registry: ModelRegistry,
    model_name: str,
    version: str,
    *,
    document: dict | None = None,
    reports_dir: str | Path,
    base_url: str = "",
) -> PublishedCard | None:
    """Build the card of ``model_name`` version ``version``, write it under ``reports_dir`` and attach it.

    :param registry: The model registry holding the version.
    :param model_name: Registered model name.
    :param version: The version.
    :param document: The training job's ``metrics.json`` content; None re-reads the copy kept beside the card
        (a rebuild after the image was pushed).
    :param reports_dir: ``EDGE_REPORTS_DIR``.
    :param base_url: Base URL of the Airflow UI for the card's links; empty: links relative to the api-server.
    :returns: The written card; None when ``document`` is None and no copy is kept here
        (nothing is written then).
    """
    folder = reports.model_card_dir(reports_dir, model_name, version)
    if document is None:
        document = _read_json(folder / METRICS_COPY)
        if document is None:
            # Rebuilding without the training figures would replace a full card with an empty one.
            log.warning(
                "Model card of %s version %s not rebuilt: %s is missing (register_model ran on another machine, "
                "e.g. an edge worker). The version's tags and its page still show the image.",
                model_name, version, folder / METRICS_COPY,
            )
            return None
    folder.mkdir(parents=True, exist_ok=True)
    current = registry.get_version(model_name, version)
    if current is None:
        raise LookupError(f"Model {model_name} has no version {version} to write a model card for.")
    champion = registry.get_champion(model_name)
    champion_version = str(champion.version) if champion is not None else None
    history = [_snapshot(v, champion_version) for v in registry.list_versions(model_name)]
    snapshot = _snapshot(current, champion_version)
    earlier = [s for s in history if s.version.isdigit() and int(s.version) < int(version)] if version.isdigit() else []
    previous_document = None
    if earlier:
        previous_document = _read_json(reports.model_card_dir(reports_dir, model_name, earlier[-1].version) / METRICS_COPY)
    tags = snapshot.tags
    links = CardLinks(
        data_docs=(reports.data_docs_url(tags["edge.dag_id"], tags["edge.dag_run_id"], base_url)
                   if tags.get("edge.dag_id") and tags.get("edge.dag_run_id") else None),
        model_version=reports.model_version_url(model_name, version, base_url),
        image=reports.image_url(model_name, version, base_url) if tags.get("image.reference") else None,
        # Already a URL on the api-server (the drift check's report), checked when it became a tag.
        drift_report=tags[DRIFT_REPORT_TAG] if tags.get(DRIFT_REPORT_TAG, NONE_VALUE) != NONE_VALUE else None,
    )
    card = build_model_card(
        model_name, snapshot, document, history, previous_document=previous_document, links=links,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    _write(folder / METRICS_COPY, (json.dumps(document, indent=2) + "\n").encode())
    for name, content in card.files().items():
        _write(folder / name, content)
    for name in (CARD_JSON, CARD_HTML):
        registry.attach_file(model_name, version, folder / name)
    url = reports.model_card_url(model_name, version, base_url)
    if tags.get(CARD_URL_TAG) != url:
        registry.set_tags(model_name, version, {CARD_URL_TAG: url})
    registry.set_description(model_name, version, card_description(tags, url))
    log.info("Model card of %s version %s: %s (%d bytes), served at %s", model_name, version, folder / CARD_HTML,
             len(card.html.encode()), url)
    return PublishedCard(folder / CARD_HTML, url, len(card.html.encode()))


def card_description(tags: dict, url: str) -> str:
    """The version's description in the registry: what it is, and where its model card is."""
    job = tags.get("edge.training_job_id")
    trained = f" trained by job {job}" if job and job != "none" else ""
    return (f"Failure-prediction model (ONNX){trained} on the training window {tags.get('edge.training_window', 'n/a')}. "
            f"Model card: {url} on the Airflow UI (model_card.html and model_card.json are attached to this version).")


def _write(path: Path, content: bytes) -> None:
    # Whole or not at all: the api-server may be serving the previous card while this one is written.
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(content)
    os.replace(tmp, path)
