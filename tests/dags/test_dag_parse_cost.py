"""The dag-processor re-imports the DAG file constantly: it must not pull in heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["great_expectations", "azure.ai.ml", "sklearn", "mlflow", "pandas", "paramiko", "onnxruntime", "azure.storage"]


def test_dag_file_import_loads_no_heavy_library():
    probe = (
        "import importlib.util, json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'plugins')!r})\n"
        f"spec = importlib.util.spec_from_file_location('edge_training_dag', {str(ROOT / 'dags' / 'edge_training.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing dags/edge_training.py loaded {loaded}; import them inside the task instead"
