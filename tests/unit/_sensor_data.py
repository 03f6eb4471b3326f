"""Small sensor-reading partitions with a learnable failure signal, for tests of the training job.

Failures get likelier with high temperature and vibration, so a sensible model scores roc_auc well above 0.5.
The same bytes can be written to a local folder (``--source-dir`` layout) or uploaded to a blob container.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

HEADER = "machine_id,timestamp,temperature_c,vibration_mm_s,pressure_bar,rpm,humidity_pct,power_kw,failure_within_24h"


def partition_csvs(
    start: dt.date, days: int, rows_per_day: int = 400, parts_per_day: int = 2, seed: int = 0
) -> dict[str, bytes]:
    """Blob name (``dt=YYYY-MM-DD/part-NNNN.csv``) -> CSV bytes, for ``days`` days from ``start``."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        n = rows_per_day
        temperature = rng.normal(65, 8, n)
        vibration = rng.gamma(4.0, 1.4, n)
        risk = (temperature - 72) / 4 + (vibration - 7) / 1.5
        label = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(int)
        minutes = np.sort(rng.integers(0, 24 * 60, n))
        lines = [
            f"M-{rng.integers(1, 40):04d},{day.isoformat()}T{m // 60:02d}:{m % 60:02d}:00Z,{temperature[i]:.2f},"
            f"{vibration[i]:.3f},{rng.normal(5, 0.8):.3f},{rng.normal(1500, 120):.1f},{rng.uniform(20, 80):.1f},"
            f"{rng.normal(22, 4):.2f},{label[i]}"
            for i, m in enumerate(minutes)
        ]
        size = -(-n // parts_per_day)
        for part in range(parts_per_day):
            chunk = lines[part * size:(part + 1) * size]
            files[f"dt={day.isoformat()}/part-{part:04d}.csv"] = ("\n".join([HEADER, *chunk]) + "\n").encode()
    return files


def write_local(root: Path, container: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` under ``root/<container>/`` (the layout ``train.py --source-dir root`` reads)."""
    for name, data in files.items():
        path = root / container / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def upload(container_client, files: dict[str, bytes]) -> None:
    """Upload ``files`` into an azure.storage.blob ``ContainerClient``."""
    for name, data in files.items():
        container_client.upload_blob(name, data, overwrite=True)
