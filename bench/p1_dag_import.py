"""P1: import time of the DAG file in a fresh interpreter, relative to `import airflow.sdk` alone.

Each side is timed in REPEATS fresh interpreters (interleaved, so machine noise hits both alike) and the medians
are compared. The DAG side also imports airflow.sdk, so the ratio isolates what the DAG file adds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from _target import Figure, report

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 7
TARGET = 1.05

BASELINE = "import airflow.sdk"
DAG_IMPORT = (
    "import importlib.util, sys\n"
    f"sys.path.insert(0, {str(ROOT / 'plugins')!r})\n"
    f"spec = importlib.util.spec_from_file_location('edge_training_dag', {str(ROOT / 'dags' / 'edge_training.py')!r})\n"
    "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
)


def wall_time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    wall_time(DAG_IMPORT)  # warm the OS page cache and .pyc files for both sides
    baseline, dag = [], []
    for _ in range(REPEATS):
        baseline.append(wall_time(BASELINE))
        dag.append(wall_time(DAG_IMPORT))
    b, d = statistics.median(baseline), statistics.median(dag)
    print(f"P1 import_airflow_sdk_s: {b:.3f}")
    print(f"P1 import_dag_file_s: {d:.3f}")
    return report(Figure("P1 dag_import_ratio", d / b, TARGET))


if __name__ == "__main__":
    raise SystemExit(main())
