"""Where the pipeline's reports live on disk and at which URL the Airflow api-server serves them.

No Airflow import, no I/O. Reports (a validation run's Data Docs, a model version's card) are written under
``EDGE_REPORTS_DIR`` and served by the ``edge_training_reports`` plugin at :data:`URL_PREFIX` on the api-server,
behind Airflow's own login; the operators' extra links point at those URLs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from edge_training import config

# Mount point of the reports app on the api-server (plugins/edge_training_reports.py).
URL_PREFIX = "/edge-training"
MODEL_CARDS_DIR = "model-cards"
DATA_DOCS_INDEX = "index.html"


def reports_root() -> Path:
    """``EDGE_REPORTS_DIR``, read when called: the api-server and the tasks each use their own environment."""
    return Path(os.getenv("EDGE_REPORTS_DIR") or config.REPORTS_DIR)


def safe_part(part: str) -> str:
    """One path segment from an id: characters unsafe in paths replaced by ``_`` (never empty, never ``..``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(part)).strip(".") or "_"


def docs_dir_for_run(reports_dir: str | Path, dag_id: str, run_id: str) -> Path:
    """Per-run Data Docs folder: ``reports_dir/<dag_id>/<run_id>`` with characters unsafe in paths replaced."""
    return Path(reports_dir) / safe_part(dag_id) / safe_part(run_id)


def model_card_dir(reports_dir: str | Path, model_name: str, version: str) -> Path:
    """Folder of a version's card: ``reports_dir/model-cards/<model>/<version>``."""
    return Path(reports_dir) / MODEL_CARDS_DIR / safe_part(model_name) / safe_part(version)


def _url(*segments: str, base: str = "") -> str:
    return base.rstrip("/") + URL_PREFIX + "/" + "/".join(quote(s, safe="") for s in segments)


def data_docs_url(dag_id: str, run_id: str, base: str = "") -> str:
    """URL of a run's Data Docs on the api-server (``base``: the UI's base URL, empty for a same-site link)."""
    return _url("data-docs", safe_part(dag_id), safe_part(run_id), DATA_DOCS_INDEX, base=base)


def run_report_url(dag_id: str, run_id: str, name: str, base: str = "") -> str:
    """URL of another report file kept in a run's folder (e.g. ``drift_report.html`` beside the Data Docs)."""
    return _url("data-docs", safe_part(dag_id), safe_part(run_id), name, base=base)


def model_card_url(model_name: str, version: str, base: str = "") -> str:
    """URL of a version's ``model_card.html`` on the api-server."""
    return _url("model-cards", safe_part(model_name), safe_part(version), "model_card.html", base=base)


def model_version_url(model_name: str, version: str, base: str = "") -> str:
    """URL of the api-server's page for a model version (its tags, aliases, card and image)."""
    return _url("model-versions", safe_part(model_name), safe_part(version), base=base)


def image_url(model_name: str, version: str, base: str = "") -> str:
    """URL of the api-server's page for a version's scoring image (reference, digest, how to pull it)."""
    return _url("images", safe_part(model_name), safe_part(version), base=base)


def resolve_under(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it is a file inside ``root`` (no ``..`` escape, no symlink out), else None."""
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate
