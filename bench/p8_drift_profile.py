"""P8 benchmark: validation that also builds the drift profile while it streams vs. validation alone.

Uses P2's readings in Azurite (generated once, reused when the container already holds them; the running local stack
if ``AIRFLOW_CONN_EDGE_BLOB`` is set, else a throwaway stack on free ports), then alternates, each in a fresh
subprocess, ``validate_partitions`` with ``profile_k=None`` and with the default ``profile_k`` ``--rounds`` times,
and prints the ratio of the median CPU times of the validating process (user + system: on a shared machine its wall
time mostly measures the neighbours) with its target, and the wall times for reference:

    P8 validation_with_profile_vs_without_cpu_ratio: x (target <= 1.1)

"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _target import Figure, report
from p2_validation import readings, run_child

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

# Runs in the child (p2_validation.run_child); argv: profile_k ("none" or a number), env var of the connection
# string, container, chunk rows, docs dir, repo.
CHILD = r"""
import json, os, resource, sys, time
sys.path[:0] = [sys.argv[6], sys.argv[6] + "/plugins"]
started = time.perf_counter()
from datetime import date
from azure.storage.blob import ContainerClient
from edge_training import config
from edge_training.validation import blob_partitions, validate_partitions
from edge_training.window import TrainingWindow
profile_k, env_name, container_name, chunk_rows, docs_dir = sys.argv[1:6]
container = ContainerClient.from_connection_string(os.environ[env_name], container_name)
window = TrainingWindow(start=date(2026, 11, 1), end=date(2026, 11, 15))
summary = validate_partitions(
    blob_partitions(container, window), window.days, suite_path=config.EXPECTATION_SUITE_PATH, docs_dir=docs_dir,
    chunk_rows=int(chunk_rows), window_label=window.label, profile_k=None if profile_k == "none" else int(profile_k),
)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "rows": summary["row_count"],
                  "profiled_rows": (summary["profile"] or {}).get("rows")}))
"""


def main(argv=None) -> int:
    from edge_training import config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mb", type=float, default=1100.0, help="size of the readings (P2's data set)")
    parser.add_argument("--chunk-rows", type=int, default=config.VALIDATION_CHUNK_ROWS)
    parser.add_argument("--rounds", type=int, default=3, help="pairs to run (medians are compared)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="p8-drift-profile-"))
    with readings(args.total_mb, workdir) as connection_string:
        plain, profiled = [], []
        for round_ in range(1, args.rounds + 1):
            plain.append(run_child(CHILD, "none", connection_string, args.chunk_rows, str(workdir / "docs")))
            profiled.append(
                run_child(CHILD, str(config.DRIFT_PROFILE_K), connection_string, args.chunk_rows, str(workdir / "docs"))
            )
            print(f"round {round_}: validation {plain[-1]['cpu_seconds']:.1f} s CPU ({plain[-1]['wall_seconds']:.1f} s "
                  f"wall), with profile {profiled[-1]['cpu_seconds']:.1f} s CPU "
                  f"({profiled[-1]['wall_seconds']:.1f} s wall)", flush=True)
    if profiled[0]["profiled_rows"] != plain[0]["rows"]:
        sys.exit(f"The profile covers {profiled[0]['profiled_rows']} rows, validation read {plain[0]['rows']}.")
    plain_s = statistics.median(r["cpu_seconds"] for r in plain)
    profiled_s = statistics.median(r["cpu_seconds"] for r in profiled)
    plain_wall = statistics.median(r["wall_seconds"] for r in plain)
    profiled_wall = statistics.median(r["wall_seconds"] for r in profiled)
    print(f"Data: {plain[0]['rows']} rows, chunk_rows {args.chunk_rows}, {args.rounds} round(s), medians: "
          f"validation {plain_s:.1f} s CPU / {plain_wall:.1f} s wall, with profile {profiled_s:.1f} s CPU / "
          f"{profiled_wall:.1f} s wall (wall ratio {profiled_wall / plain_wall:.3f})")
    return report(Figure("P8 validation_with_profile_vs_without_cpu_ratio", profiled_s / plain_s, 1.10, fmt=".3f"))


if __name__ == "__main__":
    sys.exit(main())
