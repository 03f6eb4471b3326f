"""P5: wall time of a backfill of 7 daily windows ÷ (7 × the wall time of one run), on a real scheduler.

One run is triggered over REST for one window and timed from the trigger to its end, ``SINGLE_RUNS`` times (each
on a window of its own; the median is the one-run figure); then a backfill of 7 other windows is timed from its
creation to its completion. Trainings queue in the 1-slot edge VM pool, so only the
other tasks can overlap: the ratio shows what the scheduler adds (or saves) per window. Target ≤ 1.15.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

from _scheduler import DAG_ID, FAST_CONF, backfill_range, scheduler_stack, timed_run, unpause_and_settle, wait_backfill
from _target import Figure, report

WINDOWS = 7
SINGLE_RUNS = 3
TARGET = 1.15


def main() -> int:
    with scheduler_stack(seed_days=WINDOWS + SINGLE_RUNS + 5) as bench:
        unpause_and_settle(bench.client)

        single_runs = [timed_run(bench.client, bench.today - timedelta(days=WINDOWS + 3 + i), FAST_CONF)
                       for i in range(SINGLE_RUNS)]  # fmt: skip
        one_run = statistics.median(single_runs)

        first, last = bench.today - timedelta(days=WINDOWS + 2), bench.today - timedelta(days=3)
        started = time.perf_counter()
        backfill = bench.client.create_backfill(DAG_ID, *backfill_range(first, last), conf=FAST_CONF,
                                                max_active_runs=WINDOWS)  # fmt: skip
        wait_backfill(bench.client, backfill["id"])
        backfill_s = time.perf_counter() - started
        runs = [r for r in bench.client.dag_runs(DAG_ID) if r["run_type"] == "backfill"]
        assert len(runs) == WINDOWS and all(r["state"] == "success" for r in runs), [r["state"] for r in runs]

    ratio = backfill_s / (WINDOWS * one_run)
    print(f"p5_one_run_s: {one_run:.1f} (median of {', '.join(f'{t:.1f}' for t in single_runs)})")
    print(f"p5_backfill_{WINDOWS}_windows_s: {backfill_s:.1f}")
    return report(Figure("p5_backfill_per_window_ratio", ratio, TARGET, fmt=".2f"))


if __name__ == "__main__":
    raise SystemExit(main())
