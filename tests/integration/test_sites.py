"""Two sites from one deployment on the local edge stack: each site trains on its own data and registers its own model;
a site whose edge VM is down fails its own run only; the global model pools both champions and is decided by the
score each site computes on its own holdout.

The sites file gives each site its own blob connection (to a data container of its own, seeded with different rows),
its own VM connection and pool, and its own model. Site ``south``'s VM connection first points at a closed port (its
VM is down): its run fails at ``check_edge_vm`` naming its pipeline, the VM and the refusal, and site ``north`` trains
and registers regardless. Once its connection points at the VM again, ``south`` registers a model of its own, which
becomes its own champion and leaves ``north``'s champion where it was.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import uuid

import pytest

from tests.integration.conftest import ROOT, ROWS_PER_DAY, SEED_DAYS, SEED_START
from tests.integration.test_pipeline_run import registry

pytestmark = pytest.mark.integration

SITE_TASKS = ("validate_data", "check_edge_vm", "train_on_edge_vm", "register_model")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TwoSites:
    """A sites file with sites north and south on the session's stack, their connections and pools."""

    def __init__(self, pipeline, folder) -> None:
        self.pipeline = pipeline
        tag = uuid.uuid4().hex[:8]
        self.containers = {name: f"it-site-{name}-{tag}" for name in ("north", "south")}
        self.models = {name: f"it-site-{name}-{tag}" for name in ("north", "south")}
        self.file = folder / "sites.yaml"
        self.file.write_text(json.dumps({"sites": [
            {"name": name, "blob_conn_id": f"site_{name}_blob", "vm_conn_id": f"site_{name}_vm",
             "container": self.containers[name], "model_name": self.models[name]}
            for name in ("north", "south")
        ]}))  # fmt: skip
        stack_env = pipeline.stack.airflow_env
        vm_down = {**json.loads(stack_env["AIRFLOW_CONN_EDGE_VM"]), "port": _closed_port(), "extra": {
            **json.loads(stack_env["AIRFLOW_CONN_EDGE_VM"])["extra"], "conn_timeout": 3}}  # fmt: skip
        self.env = {
            "EDGE_SITES_FILE": str(self.file),
            "AIRFLOW_CONN_SITE_NORTH_BLOB": stack_env["AIRFLOW_CONN_EDGE_BLOB"],
            "AIRFLOW_CONN_SITE_NORTH_VM": stack_env["AIRFLOW_CONN_EDGE_VM"],
            "AIRFLOW_CONN_SITE_SOUTH_BLOB": stack_env["AIRFLOW_CONN_EDGE_BLOB"],
            "AIRFLOW_CONN_SITE_SOUTH_VM": json.dumps(vm_down),
        }
        self.vm_down_port = vm_down["port"]

    def prepare(self) -> None:
        for name in ("north", "south"):
            done = self.pipeline.airflow("pools", "set", f"edge_vm_{name}", "1", f"edge VM of site {name}",
                                         "--include-deferred")  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
        for seed, name in enumerate(("north", "south"), start=21):
            seeded = subprocess.run(
                [sys.executable, str(ROOT / "include" / "sample_data" / "generate.py"),
                 "--connection-string-env", "EDGE_BLOB_CONNECTION_STRING", "--container", self.containers[name],
                 "--start", SEED_START.isoformat(), "--days", str(SEED_DAYS), "--rows-per-day",
                 str(ROWS_PER_DAY // 2), "--seed", str(seed)],
                env=self.pipeline.env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert seeded.returncode == 0, seeded.stderr[-3000:]

    def blobs(self, name: str) -> set[tuple[str, str]]:
        """(name, ETag) of each blob in site ``name``'s data container."""
        from azure.storage.blob import ContainerClient

        client = ContainerClient.from_connection_string(self.pipeline.stack.blob_connection_string,
                                                        self.containers[name])  # fmt: skip
        return {(b.name, b.etag) for b in client.list_blobs()}

    def vm_up(self, name: str) -> None:
        self.env[f"AIRFLOW_CONN_SITE_{name.upper()}_VM"] = self.pipeline.stack.airflow_env["AIRFLOW_CONN_EDGE_VM"]

    def run(self, name: str, interval_end: dt.date, **kwargs):
        return self.pipeline.run(interval_end, env=self.env, dag_id=f"edge_training_{name}", **kwargs)


@pytest.fixture(scope="module")
def sites(pipeline, tmp_path_factory) -> TwoSites:
    two = TwoSites(pipeline, tmp_path_factory.mktemp("two-sites"))
    two.prepare()
    return two


@pytest.fixture(scope="module")
def site_runs(sites) -> dict:
    """South with its VM down, then north, then south with its VM back: the three runs of one training window."""
    interval_end = dt.date(2026, 6, 10)
    south_down = sites.run("south", interval_end, no_retries=True)
    north = sites.run("north", interval_end)
    sites.vm_up("south")
    return {"south_down": south_down, "north": north, "south": sites.run("south", interval_end)}


def test_a_site_whose_vm_is_down_fails_alone_and_each_site_registers_its_own_model(sites, site_runs):
    # South's VM is down: its run fails at the health check, before any training, and says which site and why.
    south_down = site_runs["south_down"]
    # (dag.test() exits 0 whatever the run's state: the task states say it.)
    assert south_down.states.get("check_edge_vm") == "failed", south_down.states
    assert south_down.states.get("train_on_edge_vm") in ("upstream_failed", None), south_down.states
    assert f"edge_training_south FAILED run={south_down.run_id} task=check_edge_vm" in south_down.log
    assert f"127.0.0.1:{sites.vm_down_port}" in south_down.log

    # North is not held up by it: its own pipeline validates, trains and registers its own model.
    north = site_runs["north"]
    assert north.returncode == 0 and all(north.states.get(t) == "success" for t in SITE_TASKS), (
        f"{north.states}\n{north.log[-6000:]}"
    )
    north_registered = north.value("register_model")
    assert north_registered["model_name"] == sites.models["north"] and north_registered["promoted"]
    validated = {(b["name"], b["etag"]) for b in north.value("validate_data")["manifest"]}
    assert validated and validated <= sites.blobs("north") and not validated & sites.blobs("south")
    assert north_registered["tags"]["edge.dag_id"] == "edge_training_north"

    # South's VM is back: south trains on its own data and gets a champion of its own.
    south = site_runs["south"]
    assert south.returncode == 0 and all(south.states.get(t) == "success" for t in SITE_TASKS), (
        f"{south.states}\n{south.log[-6000:]}"
    )
    south_registered = south.value("register_model")
    assert south_registered["model_name"] == sites.models["south"] and south_registered["promoted"]
    assert south_registered["tags"]["edge.data_fingerprint"] != north_registered["tags"]["edge.data_fingerprint"]

    found = registry(sites.pipeline)
    assert found.get_champion(sites.models["north"]).version == north_registered["version"]
    assert found.get_champion(sites.models["south"]).version == south_registered["version"]
    # Neither site's pipeline registered anything under the other site's model.
    assert found.find_version_by_run(sites.models["north"], south.value("train_on_edge_vm")["job_id"]) is None


def test_the_global_model_pools_both_champions_and_is_decided_by_the_sites_scores(sites, site_runs):
    champions = {name: site_runs[name].value("register_model") for name in ("north", "south")}
    assert all(c and c["promoted"] for c in champions.values()), "both sites need a champion first"
    global_model = f"{sites.models['north']}-global"
    run = sites.pipeline.run(dt.date(2026, 6, 10), env={**sites.env, "EDGE_GLOBAL_MODEL": "true",
                             "EDGE_GLOBAL_MODEL_NAME": global_model, "EDGE_SITES_QUORUM": "1"},
                             dag_id="edge_training_global")  # fmt: skip
    tasks = ("pool_site_models", "evaluate_at_north", "evaluate_at_south", "promote_global_model")
    assert run.returncode == 0 and all(run.states.get(t) == "success" for t in tasks), f"{run.states}\n{run.log[-6000:]}"

    pooled = run.value("pool_site_models")
    n_train = {name: int(float(champions[name]["tags"]["metric.n_train"])) for name in champions}
    assert {s: (p["version"], p["n_train"]) for s, p in pooled["sites"].items()} == {
        name: (champions[name]["version"], n_train[name]) for name in champions
    }
    assert pooled["sites"]["north"]["share"] == pytest.approx(n_train["north"] / sum(n_train.values()))

    # What each site sent back: two scores, the row count and the days; no row.
    for name in ("north", "south"):
        evaluation = run.value(f"evaluate_at_{name}")
        assert set(evaluation) == {"site", "metric", "global", "champion", "champion_version", "holdout_days", "rows"}
        assert evaluation["champion_version"] == champions[name]["version"] and evaluation["rows"] > 0
        assert 0.5 < evaluation["champion"] <= 1 and 0.5 < evaluation["global"] <= 1
        # The site's champion scores on its own holdout as training scored it.
        assert evaluation["champion"] == pytest.approx(float(champions[name]["tags"]["metric.roc_auc"]), abs=1e-6)

    decision = run.value("promote_global_model")
    print(f"\nglobal model version {pooled['version']}: {decision['reason']}; scores {json.dumps(decision['scores'])}")
    wins = [n for n in ("north", "south") if run.value(f"evaluate_at_{n}")["global"] > run.value(f"evaluate_at_{n}")["champion"]]
    assert decision["wins"] == len(wins) and decision["promoted"] == (len(wins) >= 1)
    version = registry(sites.pipeline).get_version(global_model, pooled["version"])
    assert version.tags["global.decision"] == decision["outcome"]
    assert json.loads(version.tags["global.pooled_versions"]) == {n: champions[n]["version"] for n in champions}
    champion = registry(sites.pipeline).get_champion(global_model)
    assert (champion is not None and champion.version == pooled["version"]) == decision["promoted"]
