"""The ``edge_model_rollback`` DAG on a real scheduler: one triggered run puts the champion back to a named version.

Only the rollback DAG is unpaused: the registry is seeded from the test (two small real ONNX models), so no training
runs here.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests._models import write_model

pytestmark = pytest.mark.e2e

DAG_ID = "edge_model_rollback"
MODEL = "predictive-maintenance"


def test_a_rollback_run_puts_the_named_version_back_as_champion(e2e_airflow, tmp_path):
    from edge_training.registry.mlflow_registry import MLflowModelRegistry
    from scripts.airflow_local import AirflowApiError

    db = Path(urlparse(e2e_airflow.tracking_uri).path)
    registry = MLflowModelRegistry(e2e_airflow.tracking_uri, db.parent / "artifacts")
    for n in (1, 2):
        registry.register(MODEL, write_model(tmp_path / f"m{n}", seed=n, trees=5), f"job-rollback-{n}",
                          {"champion.decision": "promoted"})
    registry.promote(MODEL, "2", expected=None)

    client = e2e_airflow.airflow.client()
    client.wait_for_dag(DAG_ID)
    client.unpause(DAG_ID)
    # The trigger form is typed: a version that is not a number is refused before anything runs.
    with pytest.raises(AirflowApiError) as refused:
        client.trigger(DAG_ID, conf={"version": "latest", "reason": "bad model"})
    assert refused.value.status == 400 and "version" in str(refused.value.detail)

    run = client.trigger(DAG_ID, conf={"version": 1, "reason": "false alarms on line 3"})
    lines: list[str] = []
    final = client.follow(DAG_ID, run["dag_run_id"], on_change=lines.append, timeout=300)
    if final["state"] != "success":
        logs = sorted((e2e_airflow.airflow.home / "logs").glob(f"dag_id={DAG_ID}/**/*.log"))
        lines += [log.read_text()[-3000:] for log in logs[-1:]]
    assert final["state"] == "success", "\n".join(lines)

    assert registry.get_champion(MODEL).version == "1"
    back, replaced = registry.get_version(MODEL, "1").tags, registry.get_version(MODEL, "2").tags
    assert back["champion.decision"] == "promoted_rollback" and replaced["champion.decision"] == "demoted_rollback"
    for tags in (back, replaced):
        assert "false alarms on line 3" in tags["champion.reason"]
        assert tags["champion.decided_by"] == run["dag_run_id"]
    result = client.xcom(DAG_ID, run["dag_run_id"], "rollback_champion")
    assert result == {"model_name": MODEL, "version": "1", "previous_champion": "2", "reason": "false alarms on line 3"}
