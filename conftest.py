"""Test-session isolation, applied before anything imports Airflow.

Tests get an Airflow home of their own, so they never read or write the demo's metadata DB or its connections.
"""

import os
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="edge-training-airflow-home-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
for name in list(os.environ):
    if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")):
        del os.environ[name]
