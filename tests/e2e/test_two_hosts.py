"""Central Airflow and the edge site as two hosts (Linux network namespaces), proven on the wire.

``central``: airflow standalone (api-server, scheduler, dag-processor, triggerer; its LocalExecutor is the worker
that runs ``build_image`` and the other central tasks), the MLflow server (basic auth) and the image registry.
``site``: Azurite (the Stack Hub blob storage), sshd (the training VM) and one ``airflow edge worker`` holding the
site's connections, with no metadata database. The site's firewall lets it dial central's api-server and MLflow
server only; central can open no connection to the site. Each side has its own state folder.

One module run: a manual run of ``edge_training`` (validation, health check, training on the VM, registration,
image built and pushed) and a backfill of two windows, while tcpdump captures every byte on the link. The tests
read that one run: states, where each task ran, the refused connections, what central holds, and the capture
scanned with the residency scanner. All traffic is plain HTTP inside the test so the bytes can be read; a real
deployment puts TLS on the same routes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
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
from tests._hosts import TwoHosts
from tests._pipeline import FAST_TRAINING, ROOT, schedule_away_from_now
from tests._residency import RowSignatures, audit, files_under
from tests._wire import bytes_by_destination, reassemble
from tests.e2e.conftest import SHARED_ENVS

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "edge_training"
EDGE_WORKER_NAME = "edge-site-1"
# Fixed ports: each namespace is a host of its own, nothing else listens there.
API_PORT, MLFLOW_PORT = 8080, 5000
WINDOW_DAYS = 3
SEEDED_DAYS = 8
ROWS_PER_DAY = 1000
CONF = {"window_days": WINDOW_DAYS, "training_params": FAST_TRAINING}
# The backfilled windows train and register across the link as the manual run does; their scoring images would
# only repeat the manual run's central build (minutes each on this machine).
BACKFILL_CONF = {**CONF, "skip_image_build": True}
BACKFILL_FROM_DAYS_AGO = 4  # the backfill covers the two daily ticks of the 48 hours from then
EXECUTORS = "LocalExecutor,airflow.providers.edge3.executors.EdgeExecutor"
RUN_TIMEOUT_S = 900


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _start_stack(hosts: TwoHosts, ns: str, state: Path, services: str) -> dict[str, str]:
    """Start the edge stack's ``services`` inside ``ns``; return the settings it wrote (its airflow.env)."""
    from scripts.airflow_local import read_env_file

    proc = subprocess.run(
        [*hosts.prefix(ns), sys.executable, str(ROOT / "scripts/edge_stack.py"), "start", "--state-dir", str(state),
         "--free-ports", "--services", services],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, f"edge stack ({services}) in {ns} did not start: {proc.stderr[-2000:]}"
    return read_env_file(state / "airflow.env")


def _stop_stack(hosts: TwoHosts, ns: str, state: Path, services: str) -> None:
    subprocess.run(
        [*hosts.prefix(ns), sys.executable, str(ROOT / "scripts/edge_stack.py"), "stop", "--state-dir", str(state),
         "--services", services],
        capture_output=True, timeout=120,
    )  # fmt: skip


def _prebuild_training_env(vm_base: Path) -> None:
    """Build the VM's training env now, on this host's network: the site has no route to a package index."""
    from edge_training import remote_job

    requirements = ROOT / "include" / "training" / "requirements.txt"
    command = remote_job.prepare_env_command(
        str(vm_base), remote_job.requirements_hash(requirements.read_text()), str(requirements)
    )
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=1800,
                   env={**os.environ, "PATH": path})  # fmt: skip


def _prefetch_image_wheels() -> None:
    """Download the scoring image's wheels now, on this host's network: ``build_image`` in central finds them in the
    cache (a deployment's central worker reaches its package index; the test's central namespace has no route to one)."""
    from edge_training.hooks.image import download_wheels

    download_wheels(ROOT / "include" / "serving" / "requirements.txt")


def _seed(hosts: TwoHosts, site_env: dict[str, str], today) -> list[str]:
    """Write the sample partitions into the site's blob storage (from inside the site); return their CSV texts."""
    conn = json.loads(site_env["AIRFLOW_CONN_EDGE_BLOB"])["extra"]["connection_string"]
    first = today - timedelta(days=SEEDED_DAYS)
    subprocess.run(
        [*hosts.prefix(hosts.site), sys.executable, str(ROOT / "include/sample_data/generate.py"),
         "--connection-string-env", "EDGE_BLOB_CONNECTION_STRING", "--start", first.isoformat(),
         "--days", str(SEEDED_DAYS + 1), "--rows-per-day", str(ROWS_PER_DAY), "--seed", "41"],
        env={**os.environ, "EDGE_BLOB_CONNECTION_STRING": conn}, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    texts = hosts.python_in(hosts.site, (
        "import json, os\nfrom azure.storage.blob import ContainerClient\n"
        "c = ContainerClient.from_connection_string(os.environ['EDGE_BLOB_CONNECTION_STRING'], 'sensor-readings')\n"
        "print(json.dumps([c.download_blob(b.name).readall().decode() for b in c.list_blobs()]))\n"
    ), env={"EDGE_BLOB_CONNECTION_STRING": conn})  # fmt: skip
    return json.loads(texts)


def _mlflow_server(hosts: TwoHosts, state: Path, command: str) -> dict[str, dict[str, str]]:
    """Run ``scripts/mlflow_server.py <command>`` inside central; after start, return each side's settings."""
    from scripts.airflow_local import read_env_file

    proc = subprocess.run(
        [*hosts.prefix(hosts.central), sys.executable, str(ROOT / "scripts/mlflow_server.py"), command,
         "--state-dir", str(state), "--host", "0.0.0.0", "--port", str(MLFLOW_PORT),
         "--advertise-host", hosts.central_ip],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if command != "start":
        return {}
    assert proc.returncode == 0, f"mlflow_server.py start in central: {proc.stderr[-2000:]}"
    return {side: read_env_file(state / f"{side}.env") for side in ("site", "central")}


def _wait_for_worker(db_path: Path, worker: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline and worker.poll() is None:
        with sqlite3.connect(db_path) as db:
            row = db.execute("SELECT state FROM edge_worker WHERE worker_name = ?", (EDGE_WORKER_NAME,)).fetchone()
        state = row and row[0]
        if state == "idle":
            return
        time.sleep(1)
    pytest.fail(f"edge worker not idle after {timeout:.0f}s (state {state}, exit {worker.poll()}):\n{_tail(log)}")


def edge_topology_env(window_days: int) -> dict[str, str]:
    """Settings central Airflow and the sites' edge workers share: the edge executor, one fresh JWT secret, short
    poll intervals and a schedule that opens no interval mid-test."""
    return {
        "EDGE_EXECUTOR_TOPOLOGY": "edge",
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS,
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        # The edge worker signs each call with a token valid for jwt_leeway seconds (default 30), and exits on
        # the 403 of an expired one; on a loaded 2-core machine a call can wait that long in the worker.
        "AIRFLOW__API_AUTH__JWT_LEEWAY": "120",
        "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "5",
        "AIRFLOW__EDGE__JOB_POLL_INTERVAL": "1",
        "EDGE_TRAINING_POLL_INTERVAL_S": "2",
        "EDGE_TRAINING_WINDOW_DAYS": str(window_days),
        # No interval may open mid-test (an extra scheduled run), whatever the time of day.
        "EDGE_TRAINING_SCHEDULE": schedule_away_from_now(),
    }


def _worker_alive(worker: subprocess.Popen, log: Path) -> None:
    """Fail now, with its log, when the site's edge worker has exited (nothing would run the site's tasks)."""
    if worker.poll() is not None:
        pytest.fail(f"the site's edge worker exited ({worker.returncode}) mid-run:\n{_tail(log)}")


def _wait_backfill(client, backfill: dict, worker: subprocess.Popen, log: Path,
                   timeout: float = RUN_TIMEOUT_S) -> list[dict]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        _worker_alive(worker, log)
        try:
            if client.backfill_api.get_backfill(backfill["id"]).completed_at is not None:
                break
        except TimeoutError:
            pass  # a busy api-server answers late: ask again
        assert time.monotonic() < deadline, f"backfill {backfill['id']} not complete after {timeout}s"
        time.sleep(2)
    return sorted((r for r in client.dag_runs(DAG_ID) if r["run_type"] == "backfill"), key=lambda r: r["logical_date"])


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    work = tmp_path_factory.mktemp("two-hosts")
    central_state, site_state = work / "central", work / "site"
    hosts = TwoHosts().create(site_egress_ports=[API_PORT, MLFLOW_PORT])
    vm_base = Path.home() / f"edge-training-two-hosts-{uuid.uuid4().hex[:8]}"
    vm_base.mkdir(mode=0o700)
    SHARED_ENVS.mkdir(parents=True, exist_ok=True)
    (vm_base / "envs").symlink_to(SHARED_ENVS)
    worker = capture = central = None
    mlflow_state = central_state / "mlflow-server"
    try:
        _prebuild_training_env(vm_base)
        _prefetch_image_wheels()
        today = datetime.now(timezone.utc).date()
        site_env = _start_stack(hosts, hosts.site, site_state, "blob,ssh")
        partitions = _seed(hosts, site_env, today)
        _start_stack(hosts, hosts.central, central_state, "registry")
        mlflow = _mlflow_server(hosts, mlflow_state, "start")

        both = {
            **edge_topology_env(WINDOW_DAYS),
            "AIRFLOW__EDGE__API_URL": f"http://{hosts.central_ip}:{API_PORT}/edge_worker/v1/rpcapi",
        }
        central = AirflowLocal(central_state, port=API_PORT, netns=hosts.central, bind_host="0.0.0.0",
                               url_host=hosts.admin_ip, env={
            **both,
            "AIRFLOW__EDGE__API_ENABLED": "True",
            "AIRFLOW__EDGE__JOB_SUCCESS_PURGE": "600",
            **mlflow["central"],
            "EDGE_REPORTS_DIR": str(central_state / "reports"),
        })  # fmt: skip

        edge_home = site_state / "airflow"
        edge_home.mkdir(parents=True)
        edge_env = {
            **os.environ,
            **site_env,
            **both,
            **mlflow["site"],
            "EDGE_VM_WORK_DIR": str(vm_base),
            # The site's VM is this shared test machine: its load says nothing about the topology.
            "EDGE_VM_MAX_LOAD_PER_CPU": "1000",
            "AIRFLOW_HOME": str(edge_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{hosts.central_ip}:{API_PORT}/execution/",
            # No metadata database at the site: any use of one fails (no such folder, and no route to central's).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{work / 'no-metadata-db-at-the-site' / 'airflow.db'}",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }

        central.start(timeout=480)  # a loaded 2-core machine takes minutes to bring up every component
        capture = hosts.capture(work / "site-link.pcap")
        worker_log = work / "edge-worker.log"
        with open(worker_log, "wb") as log:
            worker = subprocess.Popen(
                [*hosts.prefix(hosts.site), AIRFLOW, "edge", "worker", "--queues", "edge", "--edge-hostname",
                 EDGE_WORKER_NAME, "--concurrency", "2"],
                env=edge_env, cwd=edge_home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _wait_for_worker(central.home / "airflow.db", worker, worker_log)
        client = central.client()
        client.wait_for_dag(DAG_ID, timeout=240)

        started = time.monotonic()
        first = trigger_latest_interval(client, CONF)
        client.unpause(DAG_ID)
        run = client.follow(DAG_ID, first["dag_run_id"], timeout=RUN_TIMEOUT_S,
                            on_change=lambda _: _worker_alive(worker, worker_log))  # fmt: skip
        run_seconds = time.monotonic() - started
        first_day = today - timedelta(days=BACKFILL_FROM_DAYS_AGO)
        backfill = client.create_backfill(
            DAG_ID, f"{first_day.isoformat()}T00:00:00Z", f"{(first_day + timedelta(days=1)).isoformat()}T23:59:59Z",
            max_active_runs=2, conf=BACKFILL_CONF,
        )
        backfill_runs = _wait_backfill(client, backfill, worker, worker_log)
        # Probes after the runs, so they cannot disturb them; the capture still runs.
        site_ports = {name: int(port) for name, port in json.loads((site_state / "stack.json").read_text())["ports"].items()}
        refused = {
            "central -> site": hosts.connect(hosts.central, hosts.site_ip, [*site_ports.values(), 22, 80, 443]),
        }
        hosts.stop_capture(capture)
        runs = [run, *backfill_runs]
        tis = {r["dag_run_id"]: {ti["task_id"]: ti for ti in client.task_instances(DAG_ID, r["dag_run_id"])}
               for r in runs}  # fmt: skip
        with sqlite3.connect(central.home / "airflow.db") as db:
            jobs = {
                (row[0], row[1]): {"edge_worker": row[2], "queue": row[3], "state": row[4]}
                for row in db.execute("SELECT run_id, task_id, edge_worker, queue, state FROM edge_job")
            }
            xcoms = db.execute("SELECT run_id, task_id, key, value FROM xcom").fetchall()
        yield {
            "hosts": hosts, "runs": runs, "tis": tis, "jobs": jobs, "xcoms": xcoms, "refused": refused,
            "run_seconds": run_seconds, "partitions": partitions, "pcap": work / "site-link.pcap",
            "central_state": central_state, "site_state": site_state, "site_ports": site_ports,
            "central_environ": Path(f"/proc/{central.info().pid}/environ").read_bytes().decode(errors="replace"),
            "site_env": site_env, "worker_log": worker_log, "airflow_log": central.log_file,
            "firewall": hosts.refused_counts(), "edge_env": edge_env,
        }  # fmt: skip
    finally:
        if worker is not None:
            _stop_group(worker)
        if central is not None:
            central.stop()
        _mlflow_server(hosts, mlflow_state, "stop")
        _stop_stack(hosts, hosts.site, site_state, "blob,ssh")
        _stop_stack(hosts, hosts.central, central_state, "registry")
        hosts.destroy()
        shutil.rmtree(vm_base, ignore_errors=True)


def _report(capsys, line: str) -> None:
    """The proof's figures reach the terminal even when pytest captures output (as `make test` does)."""
    with capsys.disabled():
        print(f"\n[two hosts] {line}")


def test_the_run_and_a_backfill_of_two_windows_succeed_end_to_end(two_hosts, capsys):
    run, *backfill = two_hosts["runs"]
    _report(capsys, f"manual run (validation .. image pushed): {two_hosts['run_seconds']:.0f} s wall time")
    assert len(backfill) == 2, [r["dag_run_id"] for r in backfill]
    for r in two_hosts["runs"]:
        states = {task: ti["state"] for task, ti in two_hosts["tis"][r["dag_run_id"]].items()}
        assert r["state"] == "success", (
            f"{r['dag_run_id']} {r['state']}, tasks {states}; see {two_hosts['worker_log']} and "
            f"{two_hosts['airflow_log']}"
        )
        skipped = {"train_on_azureml"} | ({"build_image"} if r["run_type"] == "backfill" else set())
        assert {task for task, state in states.items() if state != "success"} == skipped, states


def test_site_tasks_ran_on_the_site_worker_and_the_rest_centrally(two_hosts):
    from edge_training.topology import EDGE_SITE_TASKS

    for run_id, tis in two_hosts["tis"].items():
        assert {"validate_data", "check_edge_vm", "train_on_edge_vm", "register_model"} <= set(EDGE_SITE_TASKS) & set(tis)
        for task_id, ti in tis.items():
            job = two_hosts["jobs"].get((run_id, task_id))
            if task_id in EDGE_SITE_TASKS:
                assert (ti["executor"], ti["queue"], ti["hostname"]) == ("EdgeExecutor", "edge", EDGE_WORKER_NAME), ti
                assert job == {"edge_worker": EDGE_WORKER_NAME, "queue": "edge", "state": "success"}, (run_id, task_id, job)
            else:
                assert ti["executor"] in (None, "LocalExecutor") and ti["hostname"] != EDGE_WORKER_NAME, ti
                assert job is None, f"{task_id} ran centrally yet has an edge job: {job}"


def test_central_cannot_open_a_connection_to_the_site(two_hosts, capsys):
    hosts, ports = two_hosts["hosts"], two_hosts["site_ports"]
    refused = two_hosts["refused"]["central -> site"]
    _report(capsys, f"central -> site {hosts.site_ip} ports {refused}; site firewall refusals {two_hosts['firewall']}")
    # The site's blob endpoint and the VM's sshd, plus the usual ports: every attempt refused, none open.
    assert set(refused) >= {ports["blob"], ports["ssh"]}
    assert all(result == "ConnectionRefusedError" for result in refused.values()), refused
    assert two_hosts["firewall"]["inbound"] >= len(refused)


def test_the_site_reaches_central_only_on_the_api_server_and_mlflow(two_hosts):
    hosts = two_hosts["hosts"]
    registry_port = json.loads((two_hosts["central_state"] / "stack.json").read_text())["ports"]["registry"]
    # The site's own view of central: the two allowed ports answer, the image registry and SSH are refused.
    reach = hosts.connect(hosts.site, hosts.central_ip, [API_PORT, MLFLOW_PORT, registry_port, 22])
    assert reach == {API_PORT: "open", MLFLOW_PORT: "open", registry_port: "ConnectionRefusedError",
                     22: "ConnectionRefusedError"}, reach  # fmt: skip
    # Nor is there any route from the site to this host's own namespace (the admin link).
    route = hosts.exec_in(hosts.site, "ip", "route", "get", hosts.admin_ip, check=False)
    assert route.returncode != 0, route.stdout


def test_central_holds_no_site_credentials(two_hosts):
    environ = two_hosts["central_environ"]
    assert "AIRFLOW_CONN_EDGE_VM=" not in environ and "AIRFLOW_CONN_EDGE_BLOB=" not in environ
    site = two_hosts["site_env"]
    secrets_of_the_site = {
        "the VM's private key": json.loads(site["AIRFLOW_CONN_EDGE_VM"])["extra"]["private_key"].split("\n")[1],
        "the blob connection string": json.loads(site["AIRFLOW_CONN_EDGE_BLOB"])["extra"]["connection_string"],
    }
    for path, text in files_under(two_hosts["central_state"]):
        for what, value in secrets_of_the_site.items():
            assert value not in text, f"{what} is in central's {path}"


def test_no_training_row_crossed_the_link(two_hosts, capsys):
    hosts = two_hosts["hosts"]
    streams = reassemble(two_hosts["pcap"])
    names = {API_PORT: "api-server", MLFLOW_PORT: "MLflow"}
    sent = bytes_by_destination(streams, hosts.site_ip, names)
    runs = len(two_hosts["runs"])
    _report(
        capsys,
        f"site -> central over {runs} runs: "
        + ", ".join(f"{dest} {total} B ({total / runs / 1024:.0f} KiB/run)" for dest, total in sent.items())
    )
    # The capture saw the traffic it should: every model MLflow stores came over the link, and the task states
    # and logs went to the api-server.
    models = sorted((two_hosts["central_state"] / "mlflow-server" / "artifacts").rglob("model.onnx"))
    assert len(models) == runs, models
    assert sent["MLflow"] > sum(path.stat().st_size for path in models), sent
    assert sent["api-server"] > 0, sent
    assert sent["other"] == 0, sent
    assert not any(stream.gaps for stream in streams), [str(s) for s in streams if s.gaps]
    # Bodies are read as sent: a compressed request body would hide rows from the scanner.
    for stream in streams:
        if stream.src == hosts.site_ip:
            assert b"content-encoding:" not in stream.data.lower(), f"compressed body on {stream}"
    signatures = RowSignatures.from_csv_texts(two_hosts["partitions"])
    findings, sources, chars = audit(
        ((str(stream), stream.data.decode("latin-1")) for stream in streams), signatures
    )
    _report(capsys, f"wire: {sources} TCP streams, {chars} bytes scanned, {len(findings)} training rows found")
    assert not findings, "training rows crossed the link:\n" + "\n".join(map(str, findings[:10]))


def test_what_central_stored_holds_no_training_row(two_hosts):
    signatures = RowSignatures.from_csv_texts(two_hosts["partitions"])
    logs = list(files_under(two_hosts["central_state"] / "airflow" / "logs"))
    assert any("train_on_edge_vm" in path for path, _ in logs), "no pushed log of train_on_edge_vm centrally"
    material = [(f"xcom {run}/{task}.{key}", str(value)) for run, task, key, value in two_hosts["xcoms"]]
    material += list(files_under(two_hosts["central_state"]))
    findings, sources, chars = audit(material, signatures)
    print(f"central state: {sources} sources, {chars} chars scanned, {len(findings)} training rows found")
    assert not findings, "training rows reached central:\n" + "\n".join(map(str, findings[:10]))


def test_the_site_worker_ran_without_a_metadata_database(two_hosts):
    # The runs succeeded on the worker's settings; with those same settings, inside the site, opening the metadata
    # database fails: the worker and its tasks did their work through central's API only.
    hosts = two_hosts["hosts"]
    check = subprocess.run([*hosts.prefix(hosts.site), AIRFLOW, "db", "check"], env=two_hosts["edge_env"],
                           capture_output=True, text=True, timeout=180)  # fmt: skip
    output = check.stdout + check.stderr
    assert check.returncode != 0, f"the site worker's settings reach a metadata database:\n{output[-2000:]}"
    assert "unable to open database file" in output, output[-2000:]
