"""Operator extra links: one click from a run's task to what it produced, served by the api-server.

Airflow 3 serialises an operator's extra links as ``{name: xcom_key}``. When the task finishes (in any state) the
worker calls each link's :meth:`get_link` with the task it ran and pushes the URL to XCom under that key; the
api-server reads it from there (``XComOperatorLink``), so these classes need no plugin registration and work
wherever the task ran. The URLs are paths on the api-server (see :mod:`edge_training.reports`), prefixed with the
path of ``[api] base_url`` when Airflow is served under a sub-path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from airflow.sdk import BaseOperatorLink

from edge_training import reports

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def ui_base_path() -> str:
    """Path part of ``[api] base_url`` ("" when Airflow is served at the root)."""
    from airflow.configuration import conf

    return urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


class _ProducedLink(BaseOperatorLink):
    """A link to what the task produced, recorded by the operator in ``produced_links`` while it ran."""

    name = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return (getattr(operator, "produced_links", None) or {}).get(self.name, "")


class DataDocsLink(BaseOperatorLink):
    """The run's Data Docs report (kept on success and on failure)."""

    name = "Data Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return reports.data_docs_url(ti_key.dag_id, ti_key.run_id, ui_base_path())


class DriftReportLink(_ProducedLink):
    """The drift check's report (when a reference was there to compare with)."""

    name = "Drift report"


def record_drift_report_link(operator: Any, dag_id: str, run_id: str, name: str) -> str:
    """Remember the URL of the drift report ``name`` in the run's report folder on ``operator``; return it."""
    links = dict(getattr(operator, "produced_links", None) or {})
    links[DriftReportLink.name] = url = reports.run_report_url(dag_id, run_id, name, ui_base_path())
    operator.produced_links = links
    return url


class ModelCardLink(_ProducedLink):
    """The registered version's model card."""

    name = "Model card"


class ModelVersionLink(_ProducedLink):
    """The registered version's page (tags, aliases)."""

    name = "Model version"


class ImageLink(_ProducedLink):
    """The pushed scoring image's page (reference, digest)."""

    name = "Image"


def record_version_links(operator: Any, model_name: str, version: str, *, image: bool = False) -> None:
    """Remember the URLs of a model version's pages on ``operator`` for its extra links."""
    base = ui_base_path()
    links = dict(getattr(operator, "produced_links", None) or {})
    links[ModelCardLink.name] = reports.model_card_url(model_name, version, base)
    links[ModelVersionLink.name] = reports.model_version_url(model_name, version, base)
    if image:
        links[ImageLink.name] = reports.image_url(model_name, version, base)
    operator.produced_links = links
