"""Residency audit: run the pipeline, succeeding and failing, and search everything it moves off the edge.

What leaves the edge: XCom values (the metadata DB), task logs (the run's output and log files), registry uploads
(MLflow artifacts and the registry store with its model version tags), report files (Data Docs), and what the
training job sent back from the VM (the output blobs the training result names). Only models, metrics and summaries may be there; any row of the
training data (full CSV line, machine_id + timestamp, or its sensor readings) fails the audit, naming where it was.

The run is the real one: ``airflow dags test edge_training`` in its own Airflow home, on data generated into its own
container of the stack's Azurite (with the marker files Spark and ADF write beside the parts), trained by the real
training job on the stack's sshd "VM", its scoring image pushed to the stack's registry (whose layers are scanned).

Failing runs: every bad-input kind of the sample generator gets a day of its own in one container, and one run whose
two-day window holds it (``dag.test`` in one process, each task's retries set to 0: the data cannot fix itself).
They read blob storage through a container SAS and post their failure alerts to a real local webhook; their task
logs (exception texts included), XCom, alert bodies and Data Docs are scanned for rows. Finally one scan of all logs,
XCom, reports, alerts and image layers looks for the storage account key, any SAS signature, the registry password
and the SSH private key, and a self-test proves the scan finds a row and each secret planted in that material.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests._pipeline import FAST_TRAINING, ROOT, delete_container, isolated_settings, seed_sensor_data
from tests._residency import (
    RowSignatures,
    audit,
    audit_by_kind,
    files_under,
    layer_files,
    scan_secrets,
    scan_text,
)

pytestmark = pytest.mark.integration

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
TASKS = ("validate_data", "check_edge_vm", "train_on_edge_vm", "register_model", "build_image")
# The run trains on the edge VM: the branch skips the Azure ML training task.
EXPECTED_STATES = {**dict.fromkeys(TASKS, "success"), "choose_training_backend": "success", "train_on_azureml": "skipped"}
ROWS_PER_DAY = 1500
CONF = {"window_days": 3, "training_params": FAST_TRAINING}
# Failing runs: few rows (validation fails on the bad part however many there are), a day before each bad one.
BAD_ROWS_PER_DAY = 1000
BAD_FIRST_DAY = dt.date(2026, 3, 1)
ALERT_CONN_ID = "residency_alert"


def _table_dump(db: Path) -> str:
    """Every row of every table of a SQLite store, as text (what a reader of that store sees)."""
    with sqlite3.connect(db) as conn:
        return "\n".join(conn.iterdump())


class AlertSink:
    """A real local webhook: records the body of every POST it receives."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def alerts():
    sink = AlertSink()
    yield sink
    sink.server.shutdown()


@pytest.fixture(scope="module")
def audit_env(edge_stack, tmp_path_factory, alerts):
    """A migrated Airflow home of its own and the environment of every run of this module."""
    work = tmp_path_factory.mktemp("residency-audit")
    container = f"residency-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        **edge_stack.airflow_env,
        **isolated_settings(work, container),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "AIRFLOW_HOME": str(work / "airflow"),
        "EDGE_ALERT_CONN_ID": ALERT_CONN_ID,
        f"AIRFLOW_CONN_{ALERT_CONN_ID.upper()}": json.dumps({"conn_type": "http", "host": alerts.url}),
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run(
        [AIRFLOW, "pools", "set", "edge_vm", "1", "edge VM", "--include-deferred"],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return {"work": work, "env": env, "container": container}


@pytest.fixture(scope="module")
def audited_run(edge_stack, audit_env):
    from azure.storage.blob import ContainerClient

    from include.sample_data.generate import CORRUPT_KINDS, generate

    work, env, container = audit_env["work"], audit_env["env"], audit_env["container"]
    seed_sensor_data(edge_stack.blob_connection_string, container, CONF["window_days"], ROWS_PER_DAY, 23)
    today = dt.datetime.now(dt.timezone.utc).date()
    client = ContainerClient.from_connection_string(edge_stack.blob_connection_string, container)
    if "markers" in CORRUPT_KINDS:
        # Marker files beside the parts of a day in the window: not data, so the run must still succeed.
        generate(client, today - dt.timedelta(days=1), 1, ROWS_PER_DAY, seed=23, corrupt="markers")
    partitions = [client.download_blob(b.name).readall() for b in client.list_blobs()]
    run = subprocess.run(
        [AIRFLOW, "dags", "test", "edge_training", f"{today.isoformat()}T02:00:00+00:00", "--conf", json.dumps(CONF)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    yield {"work": work, "run": run, "partitions": partitions}
    delete_container(edge_stack.blob_connection_string, container)


# Every failing run in one interpreter (Airflow and the DAG imported once); each task's retries set to 0.
_FAILING_RUNS = """
import json, sys
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder="dags/edge_training.py").get_dag("edge_training")
for task in dag.tasks:
    task.retries = 0
for logical_date, conf in json.loads(sys.argv[1]):
    print(f"=== run {logical_date}", flush=True)
    dag.test(logical_date=datetime.fromisoformat(logical_date), run_conf=conf)
"""


def _container_sas(edge_stack, container: str) -> tuple[str, str]:
    """A read+list SAS of ``container`` (as a least-privilege connection would hold) and its signature."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from scripts.edge_stack import AZURITE_ACCOUNT, AZURITE_KEY

    sas = generate_container_sas(
        AZURITE_ACCOUNT, container, account_key=AZURITE_KEY, permission=ContainerSasPermissions(read=True, list=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2),
    )  # fmt: skip
    signature = next(v for k, v in (p.split("=", 1) for p in sas.split("&")) if k == "sig")
    return sas, urllib.request.unquote(signature)


@pytest.fixture(scope="module")
def failing_runs(edge_stack, audit_env):
    """One run per bad-input kind of the sample generator, each on a two-day window ending with its bad day."""
    from azure.storage.blob import ContainerClient

    from include.sample_data.generate import CORRUPT_KINDS, generate

    kinds = [kind for kind in CORRUPT_KINDS if kind != "markers"]  # markers are not bad: the audited run has them
    container = f"residency-bad-{uuid.uuid4().hex[:10]}"
    client = ContainerClient.from_connection_string(edge_stack.blob_connection_string, container)
    generate(client, BAD_FIRST_DAY, 2 * len(kinds), BAD_ROWS_PER_DAY, seed=29)
    runs = []
    for i, kind in enumerate(kinds):
        bad_day = BAD_FIRST_DAY + dt.timedelta(days=2 * i + 1)
        generate(client, bad_day, 1, BAD_ROWS_PER_DAY, seed=29, corrupt=kind)
        conf = {"window_days": 2, "window_end": (bad_day + dt.timedelta(days=1)).isoformat(),
                "training_params": FAST_TRAINING, "skip_image_build": True}  # fmt: skip
        runs.append((f"{bad_day.isoformat()}T03:00:00+00:00", conf))
    signatures = RowSignatures.from_csv_texts(client.download_blob(b.name).readall() for b in client.list_blobs())
    sas, signature = _container_sas(edge_stack, container)
    endpoint = edge_stack.blob_endpoint
    env = {
        **audit_env["env"],
        "EDGE_BLOB_CONTAINER": container,
        "AIRFLOW_CONN_EDGE_BLOB": json.dumps(
            {"conn_type": "wasb", "extra": {"connection_string": f"BlobEndpoint={endpoint};SharedAccessSignature={sas}"}}
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", _FAILING_RUNS, json.dumps(runs)], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    with sqlite3.connect(audit_env["work"] / "airflow" / "airflow.db") as conn:
        rows = conn.execute(
            "SELECT r.logical_date, t.task_id, t.state FROM task_instance t JOIN dag_run r "
            "ON r.dag_id = t.dag_id AND r.run_id = t.run_id WHERE t.dag_id = 'edge_training'"
        ).fetchall()
    day_of_kind = {logical_date[:10]: kind for kind, (logical_date, _) in zip(kinds, runs)}
    states = {kind: {} for kind in kinds}
    for logical_date, task, state in rows:
        if str(logical_date)[:10] in day_of_kind:
            states[day_of_kind[str(logical_date)[:10]]][task] = state
    yield {"kinds": kinds, "runs": runs, "done": done, "signatures": signatures, "states": states, "sas_signature": signature}
    client.delete_container()


@pytest.fixture(scope="module")
def signatures(audited_run) -> RowSignatures:
    return RowSignatures.from_csv_texts(audited_run["partitions"])


def test_the_audited_run_succeeded(audited_run):
    run, db = audited_run["run"], audited_run["work"] / "airflow" / "airflow.db"
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT task_id, state FROM task_instance WHERE dag_id = 'edge_training'"))
    assert states == EXPECTED_STATES, f"exit {run.returncode}; states {states}\n{run.stdout[-3000:]}"


def test_signatures_find_the_real_rows(audited_run, signatures):
    # The audit is only as good as its signatures: they must recognise the partitions they were built from.
    assert signatures.rows == ROWS_PER_DAY * (CONF["window_days"] + 3)
    assert scan_text("partition", audited_run["partitions"][0].decode(), signatures)


def _output_blobs(db: Path, blob_connection_string: str) -> list[tuple[str, str]]:
    """(blob, text) of every training output the runs in ``db`` name in their training results."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(blob_connection_string)
    with sqlite3.connect(db) as conn:
        values = conn.execute("SELECT value FROM xcom WHERE dag_id = 'edge_training' AND task_id = 'train_on_edge_vm' "
                              "AND key = 'return_value'").fetchall()  # fmt: skip
    found = []
    for (value,) in values:
        training = json.loads(value)
        training = json.loads(training) if isinstance(training, str) else training
        artifacts = training["artifacts"]
        for blob in artifacts["blobs"].values():
            data = service.get_blob_client(artifacts["container"], blob["name"]).download_blob().readall()
            found.append((f"{artifacts['container']}/{blob['name']}", data.decode("latin-1")))
    return found


def test_nothing_that_left_the_edge_contains_a_training_row(audited_run, signatures, edge_stack):
    work, run = audited_run["work"], audited_run["run"]
    db = work / "airflow" / "airflow.db"
    with sqlite3.connect(db) as conn:
        xcoms = conn.execute("SELECT task_id, key, value FROM xcom WHERE dag_id = 'edge_training'").fetchall()
    material = {
        "xcom": [(f"xcom {task}.{key}", str(value)) for task, key, value in xcoms],
        "task logs": [("dags test output", run.stdout + run.stderr), *files_under(work / "airflow" / "logs")],
        "registry uploads": list(files_under(work / "mlflow" / "artifacts")),
        "registry store and model version tags": [("mlflow.db", _table_dump(work / "mlflow" / "mlflow.db"))],
        "reports": list(files_under(work / "reports")),
        "returned from the VM": _output_blobs(db, edge_stack.blob_connection_string),
    }
    # Each kind of material must really be there, or the audit would pass by looking at nothing.
    assert {task for task, _, _ in xcoms} >= set(TASKS), f"XCom of {sorted({t for t, _, _ in xcoms})}"
    assert any(src.endswith(".html") for src, _ in material["reports"]), "no Data Docs report was written"
    assert any(src.endswith("model.onnx") for src, _ in material["registry uploads"]), "no model was uploaded"
    assert any(src.endswith("model.onnx") for src, _ in material["returned from the VM"]), "no training output named"
    assert "model_version_tags" in material["registry store and model version tags"][0][1]
    assert "data_fingerprint" in material["registry store and model version tags"][0][1]

    report, failures = audit_by_kind(material, signatures)
    print(report)
    assert not failures, "training-data rows left the edge:\n" + "\n".join(failures)


# -- failing runs ------------------------------------------------------------------------------------------------


def _xcom_material(audit_env) -> list[tuple[str, str]]:
    with sqlite3.connect(audit_env["work"] / "airflow" / "airflow.db") as conn:
        rows = conn.execute("SELECT run_id, task_id, key, value FROM xcom WHERE dag_id = 'edge_training'").fetchall()
    return [(f"xcom {run}/{task}.{key}", str(value)) for run, task, key, value in rows]


@pytest.fixture(scope="module")
def failing_material(audit_env, failing_runs, alerts) -> dict[str, list[tuple[str, str]]]:
    """What the failing runs sent off the edge (alerts: everything the webhook received so far)."""
    work, done = audit_env["work"], failing_runs["done"]
    return {
        "task logs and exception texts": [("failing runs output", done.stdout + done.stderr),
                                          *files_under(work / "airflow" / "logs")],  # fmt: skip
        "xcom": _xcom_material(audit_env),
        "alert webhook bodies": [(f"alert {i}", body) for i, body in enumerate(alerts.bodies)],
        "reports (Data Docs)": list(files_under(work / "reports")),
    }


def test_every_bad_input_kind_fails_its_run_at_validate_data(failing_runs):
    done = failing_runs["done"]
    assert done.returncode == 0, f"the runner itself failed:\n{(done.stdout + done.stderr)[-3000:]}"
    not_failed = {kind: s for kind, s in failing_runs["states"].items() if s.get("validate_data") != "failed"}
    assert not not_failed, f"runs whose validate_data did not fail: {not_failed}\n{(done.stdout + done.stderr)[-3000:]}"
    trained = {kind for kind, s in failing_runs["states"].items() if s.get("train_on_edge_vm") == "success"}
    assert not trained, f"bad data was trained on: {sorted(trained)}"


def test_no_failing_run_lets_a_training_row_out(failing_runs, failing_material, alerts):
    signatures = failing_runs["signatures"]
    kinds = failing_runs["kinds"]
    # Each kind of material must really be there, or the audit would pass by looking at nothing.
    output = failing_material["task logs and exception texts"][0][1]
    assert output.count("=== run ") == len(kinds)
    assert "DataValidationError" in output, "no exception text of validate_data in the task logs"
    assert len(alerts.bodies) >= len(kinds), f"{len(alerts.bodies)} alerts for {len(kinds)} failed runs"
    assert all("validate_data" in body for body in alerts.bodies[-len(kinds):])
    assert any(src.endswith(".html") for src, _ in failing_material["reports (Data Docs)"]), "no Data Docs report"

    report, failures = audit_by_kind(failing_material, signatures)
    print(report)
    assert not failures, "training-data rows left the edge in failing runs:\n" + "\n".join(failures)


# -- the pushed image and secrets --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_material(edge_stack, audited_run, audit_env) -> list[tuple[str, str]]:
    """The pushed scoring image of the audited run: its config and every file our build added (under /opt)."""
    from scripts.edge_stack import registry_basic_auth

    pushed = [value for source, value in _xcom_material(audit_env) if source.endswith("/build_image.return_value")]
    assert pushed, "the audited run pushed no image"
    image = json.loads(pushed[0])  # "reference": <registry>/<repository>:<version>, "digest": sha256:...
    repository, digest = image["reference"].split("/", 1)[1].rsplit(":", 1)[0], image["digest"]
    headers = registry_basic_auth(edge_stack.registry_user, edge_stack.registry_password)

    def get(path: str, accept: str = "") -> bytes:
        request = urllib.request.Request(f"http://{edge_stack.registry_host}{path}", headers={
            **headers, **({"Accept": accept} if accept else {})})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    manifest = json.loads(get(f"/v2/{repository}/manifests/{digest}", accept=(
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")))  # fmt: skip
    material = [(f"image config {manifest['config']['digest']}",
                 get(f"/v2/{repository}/blobs/{manifest['config']['digest']}").decode("latin-1"))]  # fmt: skip
    for layer in manifest["layers"]:
        blob = get(f"/v2/{repository}/blobs/{layer['digest']}")
        # The base image's Debian files never see data; everything the scoring image adds lives under /opt.
        material.extend(layer_files(blob, f"layer {layer['digest'][:19]}", under="opt/"))
    return material


def test_the_pushed_image_holds_no_training_row(image_material, signatures):
    assert any(src.endswith("model/model.onnx") for src, _ in image_material), "the model is not in the image"
    assert any(src.endswith("app.py") for src, _ in image_material)

    findings, sources, chars = audit(image_material, signatures)
    print(f"image: {sources} files, {chars} chars, {len(findings)} rows found")
    assert not findings, "training-data rows in the pushed image:\n" + "\n".join(map(str, findings[:5]))


@pytest.fixture(scope="module")
def secrets(edge_stack, failing_runs) -> dict[str, str]:
    from scripts.edge_stack import AZURITE_KEY

    return {
        "storage account key": AZURITE_KEY,
        "SAS signature of the failing runs' connection": failing_runs["sas_signature"],
        "registry password": edge_stack.registry_password,
        "SSH private key of the edge_vm connection": edge_stack.ssh_private_key_path.read_text(),
    }


@pytest.fixture(scope="module")
def everything(audited_run, audit_env, failing_material, image_material, edge_stack) -> list[tuple[str, str]]:
    """All logs, XCom, reports, alert bodies and image files of every run of this module."""
    work, run = audit_env["work"], audited_run["run"]
    material = [("audited run output", run.stdout + run.stderr)]
    for items in failing_material.values():  # logs (of every run), xcom, alerts and reports, read after all runs
        material.extend(items)
    material.extend(_output_blobs(work / "airflow" / "airflow.db", edge_stack.blob_connection_string))
    material.extend(image_material)
    return material


def test_no_secret_in_any_log_xcom_report_alert_or_image(everything, secrets):
    findings, sources = scan_secrets(everything, secrets)
    print(f"secrets scan: {sources} sources, {sum(len(t) for _, t in everything)} chars, {len(findings)} found")
    assert not findings, "secrets left the edge:\n" + "\n".join(map(str, findings[:10]))


def test_the_scan_finds_a_row_and_each_secret_planted_in_that_material(everything, secrets, failing_runs):
    signatures = failing_runs["signatures"]
    row = next(iter(signatures.lines))
    source, text = next((s, t) for s, t in everything if "validate_data" in s or s == "failing runs output")
    middle = len(text) // 2

    planted_row = text[:middle] + f"\nobserved columns {row.split(',')}\n" + text[middle:]
    assert audit([(source, planted_row)], signatures)[0], "the scan missed a row planted in a real task log"
    for name, secret in secrets.items():
        planted = text[:middle] + f" {secret.splitlines()[len(secret.splitlines()) // 2]} " + text[middle:]
        found = scan_secrets([(source, planted)], {name: secret})[0]
        assert [f.signature.split(" (")[0] for f in found] == [name], f"the scan missed the planted {name}"
