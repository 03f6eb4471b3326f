"""Airflow plugin: the pipeline's reports (Data Docs, model cards, model-version and image pages) served by the
api-server at ``/edge-training/``, behind Airflow's own login.

The operators' extra links ("Data Docs", "Model card", "Model version", "Image") point here; see
``edge_training.reports_app``. Only this file is loaded as a plugin (``plugins/.airflowignore`` keeps Airflow's
plugin loader out of the ``edge_training`` package, which components import as a normal package).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from edge_training.reports import URL_PREFIX
from edge_training.reports_app import create_app


class EdgeTrainingReportsPlugin(AirflowPlugin):
    name = "edge_training_reports"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Edge training reports"}]
