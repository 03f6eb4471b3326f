"""A model card as a reader's browser draws it: headless Chromium (Debian's chromium + npm playwright-core)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_training.model_card import CardLinks, build_model_card
from tests._model_card import history, trained_document, version_tags

ROOT = Path(__file__).resolve().parents[2]
BROWSER = ROOT / "tests" / "browser" / "browser.js"


def run_browser(*args: str) -> dict:
    assert Path("/usr/bin/chromium").exists(), (
        "Debian's chromium is missing: run scripts/install_system_deps.sh (as root), or apt-get install chromium"
    )
    assert (ROOT / "node_modules" / "playwright-core").is_dir(), "playwright-core is missing: run npm ci"
    proc = subprocess.run([shutil.which("node") or "node", str(BROWSER), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_card_plots_are_drawn_and_nothing_is_fetched(tmp_path):
    document, _ = trained_document(tmp_path / "train")
    tags = version_tags(4, document["metrics"]["roc_auc"], "kept_champion", "2026-11-01/2026-11-06",
                        **{"image.reference": "127.0.0.1:5000/predictive-maintenance:4@sha256:" + "ab" * 32,
                           "image.digest": "sha256:" + "ab" * 32})
    versions = history(tags)
    card = build_model_card(
        "predictive-maintenance", versions[-1], document, versions,
        links=CardLinks(data_docs="/edge-training/data-docs/x/index.html", model_version="/mv", image="/img"),
    )
    page = tmp_path / "model_card.html"
    page.write_text(card.html)
    screenshot = tmp_path / "model_card.png"

    seen = run_browser("plots", page.as_uri(), str(screenshot))

    assert seen["title"] == "Model card predictive-maintenance v4"
    assert seen["requests"] == [], "the card must load nothing from anywhere"
    plots = {p["name"]: p for p in seen["plots"]}
    assert set(plots) == {"roc", "pr", "calibration", "history"}
    for name, plot in plots.items():
        assert plot["width"] >= 300 and plot["height"] >= 200, name
        curves = [p for p in plot["paths"] if p["cls"] == "curve"]
        assert curves, f"{name}: no curve drawn"
        # A drawn curve spans the plot; a path of all-equal points (a flat or empty series) would have no area.
        assert all(c["w"] > 50 and c["h"] > 20 for c in curves), (name, curves)
    assert sum(1 for p in plots["history"]["paths"] if p["cls"] == "promo") == 2
    assert screenshot.stat().st_size > 20_000
    print(f"model card {len(card.html.encode())} bytes; screenshot {screenshot} ({screenshot.stat().st_size} bytes)")
