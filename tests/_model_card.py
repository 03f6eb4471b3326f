"""Inputs for model-card tests: a real training job's metrics.json (train.py on local partitions) and a history.

``trained_document`` runs include/training/train.py as the edge VM runs it (a subprocess over the ``--source-dir``
layout), so the card is built from what the VM really computes; the partitions' CSV texts come back too, for the
residency scanner.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from edge_training.model_card import VersionSnapshot
from tests.unit._sensor_data import partition_csvs, write_local

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = "sensor-readings"
START = dt.date(2026, 11, 1)
DAYS = 5


def trained_document(tmp: Path, rows_per_day: int = 1500, params: str = '{"n_estimators": 30, "max_depth": 6, '
                     '"n_jobs": 1}') -> tuple[dict, list[str]]:
    """Run train.py on generated partitions; return (its metrics.json, the partitions' CSV texts)."""
    files = partition_csvs(START, DAYS, rows_per_day=rows_per_day, seed=11)
    write_local(tmp / "blob", CONTAINER, files)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "include" / "training" / "train.py"), "--container", CONTAINER,
         "--start", START.isoformat(), "--end", (START + dt.timedelta(days=DAYS)).isoformat(),
         "--out", str(tmp / "out"), "--scratch", str(tmp / "scratch"), "--source-dir", str(tmp / "blob"),
         "--params", params],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out" / "metrics.json").read_text()), [b.decode() for b in files.values()]


def version_tags(version: int, roc_auc: float, decision: str, window: str, **extra: str) -> dict[str, str]:
    """Tags as register_model writes them (the fields the card reads)."""
    return {
        "edge.dag_id": "edge_training",
        "edge.dag_run_id": f"manual__2026-11-{version:02d}T02:00:00+00:00",
        "edge.training_window": window,
        "edge.partition_count": "5",
        "edge.row_count": "7500",
        "edge.data_fingerprint": f"sha256:{version:064x}",
        "edge.validation_id": f"edge_training-2026-11-{version:02d}",
        "edge.code_version": f"c0de{version:012x}",
        "edge.vm_host_fingerprint": "SHA256:hostkeyfingerprintofthevm",
        "metric.roc_auc": repr(roc_auc),
        "champion.decision": decision,
        "champion.promoted": "true" if decision.startswith("promoted") else "false",
        "champion.metric": "roc_auc",
        "champion.candidate_score": repr(roc_auc),
        "champion.previous_score": "none" if decision == "promoted_no_champion" else "0.8",
        "champion.reason": f"decision {decision}",
        "champion.rule": "compete only on a holdout neither model trained on, not older than the champion's",
        **extra,
    }


def history(current_tags: dict[str, str]) -> list[VersionSnapshot]:
    """Four versions: v1 promoted (first), v2 kept, v3 promoted, v4 = ``current_tags`` (kept); v3 is champion."""
    return [
        VersionSnapshot("1", tags=version_tags(1, 0.81, "promoted_no_champion", "2026-10-01/2026-10-06")),
        VersionSnapshot("2", tags=version_tags(2, 0.79, "kept_champion", "2026-10-08/2026-10-13")),
        VersionSnapshot("3", tags=version_tags(3, 0.86, "promoted", "2026-10-15/2026-10-20"), aliases=("champion",)),
        VersionSnapshot("4", tags=current_tags),
    ]
