"""Two edge sites from one central Airflow, each site a host of its own (Linux network namespaces), proven on the wire.

``central``: airflow standalone and the MLflow server (basic auth); no image build (the sites' runs skip it, the
two-host test covers it). ``north`` and ``south``: each its own Azurite, sshd "VM" and ``airflow edge worker``
serving its own queue with only its own connections, on a link of its own to central (the firewall of
``tests/_hosts.py``: the site dials the api-server and MLflow, nothing dials the site, and the sites have no route to
each other). The sites file gives each site its pipeline (``edge_training_<site>``), queue, pool, connections and
model.

One module run: both sites' runs started together, south's data invalid (a corrupt partition in its window) so its
run fails at ``validate_data`` while north's trains and registers; then south's partition repaired and its run
again, green with a model of its own. Every byte on both links is captured: no training row of either site crosses
either link, and none reaches central's state or the registry; north's rows are not in anything south's link
carried, and south's not in north's.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from scripts.airflow_local import AirflowLocal
from scripts.run_summary import trigger_latest_interval
from tests._hosts import SiteHosts
from tests._pipeline import FAST_TRAINING, ROOT
from tests._residency import RowSignatures, audit, files_under
from tests._wire import reassemble
from tests.e2e.conftest import SHARED_ENVS
from tests.e2e.test_two_hosts import (
    AIRFLOW,
    API_PORT,
    MLFLOW_PORT,
    RUN_TIMEOUT_S,
    _mlflow_server,
    _prebuild_training_env,
    _start_stack,
    _stop_group,
    _worker_alive,
    _stop_stack,
    _tail,
    edge_topology_env,
)

pytestmark = pytest.mark.e2e

SITES = ("north", "south")
WINDOW_DAYS = 3
SEEDED_DAYS = 6
ROWS_PER_DAY = 600
CONF = {"window_days": WINDOW_DAYS, "training_params": FAST_TRAINING, "skip_image_build": True}
MODEL = f"edge-sites-{uuid.uuid4().hex[:6]}"


def _seed(hosts: SiteHosts, name: str, site_env: dict[str, str], today, seed: int, *extra: str) -> None:
    conn = json.loads(site_env["AIRFLOW_CONN_EDGE_BLOB"])["extra"]["connection_string"]
    subprocess.run(
        [*hosts.prefix(hosts.sites[name].ns), sys.executable, str(ROOT / "include/sample_data/generate.py"),
         "--connection-string-env", "EDGE_BLOB_CONNECTION_STRING", "--start",
         (today - timedelta(days=SEEDED_DAYS)).isoformat(), "--days", str(SEEDED_DAYS + 1), "--rows-per-day",
         str(ROWS_PER_DAY), "--seed", str(seed), *extra],
        env={**os.environ, "EDGE_BLOB_CONNECTION_STRING": conn}, check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def _partitions(hosts: SiteHosts, name: str, site_env: dict[str, str]) -> list[str]:
    conn = json.loads(site_env["AIRFLOW_CONN_EDGE_BLOB"])["extra"]["connection_string"]
    return json.loads(hosts.python_in(hosts.sites[name].ns, (
        "import json, os\nfrom azure.storage.blob import ContainerClient\n"
        "c = ContainerClient.from_connection_string(os.environ['EDGE_BLOB_CONNECTION_STRING'], 'sensor-readings')\n"
        "print(json.dumps([c.download_blob(b.name).readall().decode(errors='replace') for b in c.list_blobs()]))\n"
    ), env={"EDGE_BLOB_CONNECTION_STRING": conn}))  # fmt: skip


def _wait_for_workers(db_path: Path, names: list[str], logs: dict[str, Path], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        with sqlite3.connect(db_path) as db:
            states = dict(db.execute("SELECT worker_name, state FROM edge_worker").fetchall())
        if all(states.get(n) == "idle" for n in names):
            return
        time.sleep(1)
    pytest.fail(f"edge workers not idle after {timeout:.0f}s ({states}):\n" + "\n".join(_tail(p) for p in logs.values()))


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    work = tmp_path_factory.mktemp("two-sites")
    central_state = work / "central"
    central_state.mkdir()
    (central_state / "airflow.env").write_text("")  # central holds no site connection
    hosts = SiteHosts(SITES).create(site_egress_ports=[API_PORT, MLFLOW_PORT])
    vm_base = Path.home() / f"edge-training-two-sites-{uuid.uuid4().hex[:8]}"
    vm_base.mkdir(mode=0o700)
    SHARED_ENVS.mkdir(parents=True, exist_ok=True)
    (vm_base / "envs").symlink_to(SHARED_ENVS)
    workers: dict[str, subprocess.Popen] = {}
    captures = {}
    central = None
    mlflow_state = central_state / "mlflow-server"
    sites_file = work / "sites.yaml"
    sites_file.write_text(json.dumps({"sites": [{"name": n, "model_name": f"{MODEL}-{n}"} for n in SITES]}))
    try:
        _prebuild_training_env(vm_base)
        today = datetime.now(timezone.utc).date()
        site_envs = {n: _start_stack(hosts, hosts.sites[n].ns, work / n, "blob,ssh") for n in SITES}
        _seed(hosts, "north", site_envs["north"], today, 51)
        _seed(hosts, "south", site_envs["south"], today, 52)
        # South's data is invalid: a corrupt part inside its training window.
        _seed(hosts, "south", site_envs["south"], today, 52, "--corrupt", "out-of-range", "--corrupt-date",
              (today - timedelta(days=2)).isoformat())  # fmt: skip
        subprocess.run(
            [*hosts.prefix(hosts.central), sys.executable, str(ROOT / "scripts/mlflow_server.py"), "start",
             "--state-dir", str(mlflow_state), "--host", "0.0.0.0", "--port", str(MLFLOW_PORT), "--advertise-host",
             hosts.central_ip, "--allowed-host", hosts.sites["south"].central_ip,
             *(a for n in SITES for a in ("--model", f"{MODEL}-{n}"))],
            capture_output=True, text=True, timeout=180, check=True,
        )  # fmt: skip
        from scripts.airflow_local import read_env_file

        mlflow = {side: read_env_file(mlflow_state / f"{side}.env") for side in ("site", "central")}
        both = {"EDGE_SITES_FILE": str(sites_file), **edge_topology_env(WINDOW_DAYS)}
        central = AirflowLocal(central_state, port=API_PORT, netns=hosts.central, bind_host="0.0.0.0",
                               url_host=hosts.admin_ip, env={
            **both, "AIRFLOW__EDGE__API_ENABLED": "True", "AIRFLOW__EDGE__JOB_SUCCESS_PURGE": "600",
            **mlflow["central"], "EDGE_REPORTS_DIR": str(central_state / "reports"),
        })  # fmt: skip
        central.start(timeout=480)
        client = central.client()
        from airflow_client.client import PoolBody

        for n in SITES:
            client.pool_api.post_pool(PoolBody(name=f"edge_vm_{n}", slots=1, include_deferred=True,
                                               description=f"edge VM of site {n}"))  # fmt: skip
            captures[n] = hosts.capture(n, work / f"{n}-link.pcap")
        logs = {}
        for n in SITES:
            site, home = hosts.sites[n], work / n / "airflow"
            home.mkdir(parents=True)
            own = site_envs[n]
            # The site's worker holds its own connections only, under the ids the sites file gives it.
            conns = {f"AIRFLOW_CONN_EDGE_BLOB_{n.upper()}": own["AIRFLOW_CONN_EDGE_BLOB"],
                     f"AIRFLOW_CONN_EDGE_VM_{n.upper()}": own["AIRFLOW_CONN_EDGE_VM"]}  # fmt: skip
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")},
                **{k: v for k, v in own.items() if not k.startswith("AIRFLOW_CONN_")},
                **conns, **both, **mlflow["site"],
                "MLFLOW_TRACKING_URI": mlflow["site"]["MLFLOW_TRACKING_URI"].replace(
                    hosts.central_ip, site.central_ip),
                "AIRFLOW__EDGE__API_URL": f"http://{site.central_ip}:{API_PORT}/edge_worker/v1/rpcapi",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{site.central_ip}:{API_PORT}/execution/",
                "EDGE_VM_WORK_DIR": str(vm_base), "EDGE_VM_MAX_LOAD_PER_CPU": "1000",
                "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{work / 'no-metadata-db-at-the-site' / 'a.db'}",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            }  # fmt: skip
            logs[n] = work / f"edge-worker-{n}.log"
            with open(logs[n], "wb") as log:
                workers[n] = subprocess.Popen(
                    [*hosts.prefix(site.ns), AIRFLOW, "edge", "worker", "--queues", f"edge-{n}", "--edge-hostname",
                     f"edge-{n}", "--concurrency", "2"],
                    env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
        _wait_for_workers(central.home / "airflow.db", [f"edge-{n}" for n in SITES], logs)
        dags = {n: f"edge_training_{n}" for n in SITES}
        for dag_id in dags.values():
            client.wait_for_dag(dag_id, timeout=240)
        started = {n: trigger_latest_interval(client, CONF, dags[n])["dag_run_id"] for n in SITES}
        for dag_id in dags.values():
            client.unpause(dag_id)
        def alive(_line: str) -> None:
            for name, worker in workers.items():
                _worker_alive(worker, logs[name])

        first = {n: client.follow(dags[n], started[n], timeout=RUN_TIMEOUT_S, on_change=alive) for n in SITES}
        # South's partition repaired at its source: its run again (no logical date: a run of its own).
        _seed(hosts, "south", site_envs["south"], today, 52)
        partitions = {n: _partitions(hosts, n, site_envs[n]) for n in SITES}
        again = client.trigger(dags["south"], conf=CONF)
        south_again = client.follow(dags["south"], again["dag_run_id"], timeout=RUN_TIMEOUT_S, on_change=alive)
        for n in SITES:
            hosts.stop_capture(captures[n])
        runs = {("north", 1): first["north"], ("south", 1): first["south"], ("south", 2): south_again}
        tis = {key: {ti["task_id"]: ti for ti in client.task_instances(dags[key[0]], run["dag_run_id"])}
               for key, run in runs.items()}  # fmt: skip
        registered = {key: client.xcom(dags[key[0]], run["dag_run_id"], "register_model") for key, run in runs.items()}
        with sqlite3.connect(central.home / "airflow.db") as db:
            jobs = {(r[0], r[1], r[2]): r[3] for r in db.execute("SELECT dag_id, run_id, task_id, edge_worker FROM edge_job")}
            xcoms = db.execute("SELECT dag_id, run_id, task_id, key, value FROM xcom").fetchall()
        yield {
            "hosts": hosts, "runs": runs, "tis": tis, "jobs": jobs, "xcoms": xcoms, "registered": registered,
            "partitions": partitions, "pcaps": {n: work / f"{n}-link.pcap" for n in SITES}, "work": work,
            "central_state": central_state, "worker_logs": logs, "airflow_log": central.log_file, "dags": dags,
        }  # fmt: skip
    finally:
        for worker in workers.values():
            _stop_group(worker)
        if central is not None:
            central.stop()
        _mlflow_server(hosts, mlflow_state, "stop")
        for n in SITES:
            _stop_stack(hosts, hosts.sites[n].ns, work / n, "blob,ssh")
        hosts.destroy()
        shutil.rmtree(vm_base, ignore_errors=True)


def _states(two_sites, key) -> dict[str, str]:
    return {task: ti["state"] for task, ti in two_sites["tis"][key].items()}


def test_invalid_data_at_one_site_fails_that_site_only_and_both_sites_register_their_own_model(two_sites):
    runs, logs = two_sites["runs"], two_sites["worker_logs"]
    where = f"see {logs['north']}, {logs['south']} and {two_sites['airflow_log']}"
    assert runs[("north", 1)]["state"] == "success", f"{_states(two_sites, ('north', 1))}; {where}"
    assert runs[("south", 1)]["state"] == "failed", _states(two_sites, ("south", 1))
    south_first = _states(two_sites, ("south", 1))
    assert south_first["validate_data"] == "failed" and south_first["train_on_edge_vm"] == "upstream_failed"
    assert runs[("south", 2)]["state"] == "success", f"{_states(two_sites, ('south', 2))}; {where}"
    north, south = two_sites["registered"][("north", 1)], two_sites["registered"][("south", 2)]
    assert (north["model_name"], south["model_name"]) == (f"{MODEL}-north", f"{MODEL}-south")
    assert north["promoted"] and south["promoted"]


def test_each_sites_tasks_ran_on_that_sites_worker(two_sites):
    from edge_training.topology import EDGE_SITE_TASKS

    for (name, _), run in two_sites["runs"].items():
        for task_id, ti in two_sites["tis"][(name, _)].items():
            if task_id in EDGE_SITE_TASKS and ti["state"] in ("success", "failed"):
                assert (ti["queue"], ti["hostname"]) == (f"edge-{name}", f"edge-{name}"), ti
                job = two_sites["jobs"].get((two_sites["dags"][name], run["dag_run_id"], task_id))
                assert job == f"edge-{name}", (name, task_id, job)


def test_the_sites_cannot_reach_each_other(two_sites):
    hosts = two_sites["hosts"]
    north, south = hosts.sites["north"], hosts.sites["south"]
    reach = hosts.connect(north.ns, south.ip, [API_PORT, MLFLOW_PORT, 22], timeout=2)
    assert all(result != "open" for result in reach.values()), reach


def test_no_row_of_either_site_crossed_either_link_or_reached_central(two_sites, capsys):
    signatures = {n: RowSignatures.from_csv_texts(two_sites["partitions"][n]) for n in SITES}
    # The captures saw what they should: both sites' models reached the registry over their links.
    models = sorted((two_sites["central_state"] / "mlflow-server" / "artifacts").rglob("model.onnx"))
    assert len(models) == 2, models
    lines = []
    for link, pcap in two_sites["pcaps"].items():
        streams = reassemble(pcap)
        assert streams, f"nothing captured on {link}'s link"
        for rows_of, sig in signatures.items():
            findings, sources, chars = audit(((str(s), s.data.decode("latin-1")) for s in streams), sig)
            lines.append(f"{link} link: {sources} streams, {chars} bytes, {len(findings)} rows of {rows_of}")
            assert not findings, f"rows of site {rows_of} on {link}'s link:\n" + "\n".join(map(str, findings[:5]))
    material = [(f"xcom {d}/{r}/{t}.{k}", str(v)) for d, r, t, k, v in two_sites["xcoms"]]
    material += list(files_under(two_sites["central_state"]))
    for rows_of, sig in signatures.items():
        findings, sources, chars = audit(material, sig)
        lines.append(f"central state and registry: {sources} sources, {len(findings)} rows of {rows_of}")
        assert not findings, f"rows of site {rows_of} reached central:\n" + "\n".join(map(str, findings[:5]))
    # Nor did one site's rows reach the other site's own state.
    for here, other in (("north", "south"), ("south", "north")):
        findings, _, _ = audit(files_under(two_sites["work"] / here / "airflow"), signatures[other])
        assert not findings, f"rows of site {other} in site {here}'s worker state"
    with capsys.disabled():
        print("\n[two sites] " + "\n[two sites] ".join(lines))
