"""scripts/run_summary.py on a run the data drift started: the reason and where the drift report is."""

from __future__ import annotations

from types import SimpleNamespace

from edge_training.schedule import DATA_DRIFT
from scripts import run_summary

REPORT_URL = "/edge-training/data-docs/edge_drift_check/scheduled__2026-11-30T02_00_00_00_00/drift_report.html"
REASON = "drift on temperature_c: psi 0.61 > 0.2 (partition 2026-11-30)"


class DriftRunClient:
    """The REST answers for an asset-triggered edge_training run whose asset event came from edge_drift_check."""

    url = "http://127.0.0.1:8080"

    def __init__(self, extra: dict) -> None:
        event = SimpleNamespace(uri=DATA_DRIFT.uri, extra=extra, source_run_id="scheduled__2026-11-30")
        self.dag_run_api = SimpleNamespace(
            get_upstream_asset_events=lambda dag_id, run_id: SimpleNamespace(asset_events=[event]))

    def task_instances(self, dag_id, run_id):
        return [{"task_id": "validate_data", "state": "success", "start_date": "1"}]

    def xcom(self, dag_id, run_id, task_id, key="return_value"):
        return None


def _summary(capsys, extra: dict, run_type: str = "asset_triggered") -> str:
    run = {"dag_run_id": "asset_triggered__1", "state": "success", "run_type": run_type}
    assert run_summary.print_summary(DriftRunClient(extra), run) == (None, None)
    return capsys.readouterr().out


def test_a_drift_started_run_names_the_reason_and_links_the_drift_report(capsys):
    out = _summary(capsys, {"reason": REASON, "report_url": REPORT_URL})
    assert f"started by {DATA_DRIFT.uri}: {REASON}" in out
    assert (f"Drift report: http://127.0.0.1:8080{REPORT_URL} "
            "(the drift check run scheduled__2026-11-30)") in out  # fmt: skip


def test_without_a_served_url_the_report_file_is_named_and_other_runs_say_nothing_of_drift(capsys):
    out = _summary(capsys, {"reason": REASON, "report": "/srv/reports/drift.html"})
    assert "Drift report: /srv/reports/drift.html" in out
    assert "Drift report" not in _summary(capsys, {"reason": REASON}, run_type="manual")
