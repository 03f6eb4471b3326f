"""scripts/run_summary.py with a sites file: one run per site, each summarised, and which site failed and why."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scripts import run_summary

SITES = "sites:\n  - name: north\n  - name: south\n"
UNREACHABLE = "EdgeVMUnreachableError: Checked SSH to the edge VM 127.0.0.1:1: connection refused."
# The rest of a multi-line message stays in the site's own summary, not in its overview line.
DETAIL = "\n  - tried 3 times over 30 s"


class FakeClient:
    """The REST answers of two site runs: north registered version 4, south failed at its health check."""

    url = "http://127.0.0.1:8080"

    def __init__(self) -> None:
        self.triggered: list[str] = []
        self.unpaused: list[str] = []

    def wait_for_dag(self, dag_id):
        return {"dag_id": dag_id}

    # The generated DAG API: no next interval, so each run is triggered without a logical date.
    dag_api = SimpleNamespace(get_dag=lambda dag_id: SimpleNamespace(
        next_dagrun_data_interval_start=None, next_dagrun_data_interval_end=None, next_dagrun_logical_date=None))

    def trigger(self, dag_id, conf=None, **kwargs):
        self.triggered.append(dag_id)
        return {"dag_run_id": f"manual__{dag_id}"}

    def unpause(self, dag_id):
        self.unpaused.append(dag_id)

    def follow(self, dag_id, run_id, on_change=None, timeout=None):
        state = "failed" if dag_id.endswith("south") else "success"
        return {"dag_run_id": run_id, "state": state, "run_type": "manual"}

    def task_instances(self, dag_id, run_id):
        if dag_id.endswith("south"):
            return [{"task_id": "validate_data", "state": "success", "start_date": "1"},
                    {"task_id": "check_edge_vm", "state": "failed", "start_date": "2", "try_number": 1},
                    {"task_id": "train_on_edge_vm", "state": "upstream_failed"}]  # fmt: skip
        return [{"task_id": "register_model", "state": "success", "start_date": "1"}]

    def xcom(self, dag_id, run_id, task_id, key="return_value"):
        if task_id == "register_model" and dag_id.endswith("north"):
            return {"model_name": "predictive-maintenance-north", "version": "4", "promoted": True,
                    "decision": {"reason": "no champion yet"}, "tags": {}}  # fmt: skip
        return None

    def task_log(self, dag_id, run_id, task_id, try_number):
        assert (dag_id, task_id, try_number) == ("edge_training_south", "check_edge_vm", 1)
        exc_type, exc_value = UNREACHABLE.split(": ", 1)
        return [{"event": "Task failed"}, {"error_detail": [{"exc_type": exc_type, "exc_value": exc_value + DETAIL}]}]


@pytest.fixture
def fake_airflow(monkeypatch, tmp_path):
    client = FakeClient()
    info = SimpleNamespace(url=client.url, username="admin", password_file=tmp_path / "passwords.json")
    monkeypatch.setattr(run_summary, "AirflowLocal", lambda state_dir: SimpleNamespace(info=lambda: info,
                                                                                      client=lambda: client))
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES)
    monkeypatch.setenv("EDGE_SITES_FILE", str(sites))
    return client


def test_every_sites_run_is_started_and_the_overview_names_the_failed_site_and_why(fake_airflow, capsys):
    assert run_summary.main(["--state-dir", "/nonexistent"]) == 1
    out = capsys.readouterr().out
    assert fake_airflow.triggered == ["edge_training_north", "edge_training_south"]
    overview = out[out.index("== Sites: 1 of 2 succeeded"):].splitlines()
    assert overview[1].split() == ["north", "manual__edge_training_north:", "success,", "model",
                                   "predictive-maintenance-north", "version", "4", "(promoted", "to", "champion)"]
    assert overview[2].split()[:4] == ["south", "manual__edge_training_south:", "failed", "at"]
    assert overview[2].endswith(f"check_edge_vm: {UNREACHABLE}")
    assert "tried 3 times" in out[:out.index("== Sites")] and "tried 3 times" not in "\n".join(overview)


def test_site_picks_one_sites_pipeline_and_an_unknown_site_is_refused(fake_airflow, capsys):
    assert run_summary.main(["--site", "north"]) == 0
    assert fake_airflow.triggered == ["edge_training_north"]
    assert "== Sites" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"Checked --site west against the sites file: no such site \(sites: north, "
                                         r"south\)"):  # fmt: skip
        run_summary.main(["--site", "west"])
