"""P1: import cost of the DAG file in a fresh interpreter, relative to `import airflow.sdk` alone.

Each side runs in REPEATS fresh interpreters (interleaved, so machine noise hits both alike) and the medians are
compared. The cost is the interpreter's CPU time (user + system, as the OS accounts it to the child process): the work
the dag-processor pays on every parse, and, unlike wall time, not inflated by other processes competing for the CPU.
Wall-time medians are printed beside it. The DAG side also imports airflow.sdk, so the ratio isolates what the DAG file
adds. Both sides read byte-code from one cache of their own (``PYTHONPYCACHEPREFIX``, filled by a first run of each),
as a dag-processor does after its first parse, even when the calling shell sets ``PYTHONDONTWRITEBYTECODE``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _target import Figure, report

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 9
TARGET = 1.05

BASELINE = "import airflow.sdk"
DAG_IMPORT = (
    "import importlib.util, sys\n"
    f"sys.path.insert(0, {str(ROOT / 'plugins')!r})\n"
    f"spec = importlib.util.spec_from_file_location('edge_training_dag', {str(ROOT / 'dags' / 'edge_training.py')!r})\n"
    "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
)


def cost(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of a fresh interpreter running ``code``."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        raise SystemExit(f"P1: `python -c` of {code.splitlines()[0]!r}... exited {process.returncode}:\n{stderr[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="p1-pycache-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for code in (BASELINE, DAG_IMPORT):
            cost(code, env)  # compile into the cache and warm the OS page cache for both sides
        baseline, dag = [], []
        for _ in range(REPEATS):
            baseline.append(cost(BASELINE, env))
            dag.append(cost(DAG_IMPORT, env))
    b_cpu, d_cpu = (statistics.median(c for c, _ in side) for side in (baseline, dag))
    b_wall, d_wall = (statistics.median(w for _, w in side) for side in (baseline, dag))
    print(f"P1 import_airflow_sdk_cpu_s: {b_cpu:.3f} (wall {b_wall:.3f})")
    print(f"P1 import_dag_file_cpu_s: {d_cpu:.3f} (wall {d_wall:.3f})")
    return report(Figure("P1 dag_import_ratio", d_cpu / b_cpu, TARGET))


if __name__ == "__main__":
    raise SystemExit(main())
