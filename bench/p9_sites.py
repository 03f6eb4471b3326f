"""P9: import cost of the DAG file with 50 sites in the sites file, relative to the same file without a sites file.

One pipeline per site is generated at parse time (``dags/edge_training.py``), so every site adds its DAG to each
parse the dag-processor does. As in P1, each side runs in REPEATS fresh interpreters (interleaved), byte-code cached,
and the cost is the interpreter's CPU time; the 50-site file also runs the sites file's parse-time checks.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

from _target import Figure, report
from p1_dag_import import DAG_IMPORT, cost

REPEATS = 7
SITES = 50
TARGET = 1.5


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="p9-") as tmp:
        sites_file = Path(tmp) / "sites.yaml"
        sites_file.write_text(json.dumps({"sites": [{"name": f"site{i:02d}"} for i in range(SITES)]}))
        one = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "EDGE_SITES_FILE")}
        one["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        many = {**one, "EDGE_SITES_FILE": str(sites_file)}
        for env in (one, many):
            cost(DAG_IMPORT, env)  # compile into the cache and warm the OS page cache for both sides
        single, fifty = [], []
        for _ in range(REPEATS):
            single.append(cost(DAG_IMPORT, one))
            fifty.append(cost(DAG_IMPORT, many))
    s_cpu, f_cpu = (statistics.median(c for c, _ in side) for side in (single, fifty))
    print(f"P9 import_dag_file_1_site_cpu_s: {s_cpu:.3f}")
    print(f"P9 import_dag_file_{SITES}_sites_cpu_s: {f_cpu:.3f} ({(f_cpu - s_cpu) / (SITES - 1) * 1000:.1f} ms per site)")
    return report(Figure(f"P9 dag_import_{SITES}_sites_ratio", f_cpu / s_cpu, TARGET))


if __name__ == "__main__":
    raise SystemExit(main())
