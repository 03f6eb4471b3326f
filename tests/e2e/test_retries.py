"""Airflow's own retries on a real scheduler, with edge_training's ``retries: 3`` and its retry policy.

What a user would notice: an error that cannot fix itself (bad data, a host key other than the pinned one) fails the
task at its first try; an image registry that goes down during the push makes ``build_image`` go ``up_for_retry``
and, once the registry is back, the run ends green with exactly one image pushed and its digest on the model version;
and a webhook (a real HTTP server here, named by ``EDGE_ALERT_CONN_ID``) gets one alert per failed try, carrying no
data row and no secret.

The module's Airflow reaches the stack's registry through :class:`RegistryCutter`, a TCP forwarder that stops the real
registry at the moment the first push starts uploading, so the outage hits the push itself whatever the machine's
speed. Runs are only triggered manually (``EDGE_TRAINING_TRIGGER=asset``: no scheduled run), retries wait 2-4 s
(``EDGE_RETRY_DELAY_S=2``), the edge VM connection lives in Airflow's metadata DB (so a test can change its pinned
host key as a user would in the UI), and the model has a name of its own (so the registry repository is new).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from airflow_client.client.api import ConnectionApi
from airflow_client.client.models import ConnectionBody, DAGPatchBody

from tests._pipeline import FAST_TRAINING
from tests._registry import MANIFEST_ACCEPT, registry_get
from tests.e2e.conftest import DAG_ID, ROWS_PER_DAY, WINDOW_DAYS, model_versions

pytestmark = pytest.mark.e2e

ALERT_CONN = "edge_alerts"
VM_CONN = "edge_vm_pinned"
# A repository of its own in the session's registry. A fixed name: the value of the image build's MODEL_NAME argument
# is part of buildah's layer cache key, so a new name each time would rebuild the package layer (minutes on vfs).
MODEL = "retries-e2e"
RUN_TIMEOUT_S = 600
BAD_DAY_AGO = 10  # the corrupted day, in days before today: outside the window the other runs train on
FAST = {"training_params": FAST_TRAINING, "window_days": WINDOW_DAYS}


class RegistryCutter:
    """A loopback TCP forwarder in front of the image registry that can take the registry away mid-push.

    Every connection is forwarded to ``upstream`` (``host:port``) byte for byte, and every HTTP request line seen is
    kept in :attr:`requests`. Once armed with :meth:`cut_at_first_upload`, the first request that starts a blob
    upload (``POST /v2/<repository>/blobs/uploads/``) is not forwarded: ``on_cut`` runs first (the test stops the real
    registry there), then every open connection is dropped and the port stops listening, so later connections are
    refused, exactly as by a registry that went down. :meth:`reopen` listens on the same port again.
    """

    _REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE) (/v2/[^ \r\n]*) HTTP/1\.[01]\r\n")

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.requests: list[tuple[str, str]] = []
        self.cut_done = threading.Event()
        self._on_cut: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.reopen()

    def cut_at_first_upload(self, on_cut: Callable[[], None]) -> None:
        self._on_cut = on_cut

    def reopen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for sock in self._open:
                _drop(sock)
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the cut, or the end of the module
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _drop(client)
            return
        server.settimeout(None)
        with self._lock:
            self._open |= {client, server}
        threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()
        self._pump(client, server, True)

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                if from_client:
                    window, seen = tail + data, len(tail)
                    tail = window[-1024:]
                    lines = [(m.group(1).decode(), m.group(2).decode())
                             for m in self._REQUEST_LINE.finditer(window) if m.end() > seen]  # fmt: skip
                    self.requests += lines
                    if self._on_cut and any(m == "POST" and "/blobs/uploads/" in p for m, p in lines):
                        self._cut()
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _drop(source)
            _drop(sink)

    def _cut(self) -> None:
        on_cut, self._on_cut = self._on_cut, None
        on_cut()
        self.close()
        self.cut_done.set()


def _drop(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture(scope="module")
def alerts():
    from tests._webhook import AlertSink

    with AlertSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def registry_cutter(edge_stack):
    from scripts.edge_stack import EdgeStack

    cutter = RegistryCutter(edge_stack.registry_host)
    yield cutter
    cutter.close()
    # Whatever happened here, the session's registry runs again for the modules after this one (a no-op if it runs).
    EdgeStack(edge_stack.state_dir, free_ports=True).start()


@pytest.fixture(scope="module")
def e2e_airflow_env(edge_stack, alerts, registry_cutter) -> dict[str, str]:
    registry = json.loads(edge_stack.airflow_env["AIRFLOW_CONN_IMAGE_REGISTRY"])
    return {
        "EDGE_ALERT_CONN_ID": ALERT_CONN,
        f"AIRFLOW_CONN_{ALERT_CONN.upper()}": json.dumps({"conn_type": "http", "host": alerts.url}),
        "AIRFLOW_CONN_IMAGE_REGISTRY": json.dumps({**registry, "host": registry_cutter.host}),
        "EDGE_VM_CONN_ID": VM_CONN,
        "EDGE_RETRY_DELAY_S": "2",
        "EDGE_TRAINING_TRIGGER": "asset",
        "EDGE_MODEL_NAME": MODEL,
    }


@pytest.fixture(scope="module")
def vm_connection(api, edge_stack) -> dict:
    """The stack's edge VM connection, created in the module's Airflow (metadata DB) as ``VM_CONN``."""
    conn = json.loads(edge_stack.airflow_env["AIRFLOW_CONN_EDGE_VM"])
    body = {"connection_id": VM_CONN, "conn_type": conn["conn_type"], "host": conn["host"], "port": conn["port"],
            "login": conn["login"], "extra": json.dumps(conn["extra"])}  # fmt: skip
    _connections(api).post_connection(ConnectionBody(**body))
    return body


def _connections(api) -> ConnectionApi:
    return ConnectionApi(api.api_client)


def _tis(api, run_id: str) -> dict[str, dict]:
    return {t["task_id"]: t for t in api.task_instances(DAG_ID, run_id)}


def _tries(api, run_id: str, task_id: str) -> list[tuple[int, str]]:
    tries = api.task_instance_api.get_task_instance_tries(DAG_ID, run_id, task_id).model_dump(mode="json")
    return [(t["try_number"], t["state"]) for t in tries["task_instances"]]


def _follow(api, run_id: str) -> tuple[dict, str]:
    lines: list[str] = []
    final = api.follow(DAG_ID, run_id, on_change=lines.append, timeout=RUN_TIMEOUT_S)
    return final, "\n".join(lines)


def _task_log(e2e_airflow, run_id: str, task_id: str, try_number: int) -> str:
    folder = e2e_airflow.airflow.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    return (folder / f"attempt={try_number}.log").read_text(errors="replace")


def _assert_failed_at_first_try(api, run_id: str, task_id: str, lines: str) -> None:
    ti = _tis(api, run_id)[task_id]
    assert (ti["state"], ti["try_number"]) == ("failed", 1), lines
    assert ti["max_tries"] == 3, "the DAG's retries: Airflow would have retried a transient error"
    assert _tries(api, run_id, task_id) == [(1, "failed")]


def _assert_alerts_clean(alerts: list, edge_stack, container: str) -> None:
    """No alert body carries a row of the module's data (bad day included) or a secret of the stack."""
    from azure.storage.blob import ContainerClient

    from scripts.edge_stack import AZURITE_KEY
    from tests._residency import RowSignatures, audit, scan_secrets

    client = ContainerClient.from_connection_string(edge_stack.blob_connection_string, container)
    rows = RowSignatures.from_csv_texts(client.download_blob(b.name).readall() for b in client.list_blobs())
    material = [(f"alert {i}", json.dumps(a.body)) for i, a in enumerate(alerts)]
    findings, _, _ = audit(material, rows)
    assert findings == [], [str(f) for f in findings]
    secrets = {
        "registry password": edge_stack.registry_password,
        "SSH private key": edge_stack.ssh_private_key_path.read_text(),
        "storage account key": AZURITE_KEY,
    }
    leaked, _ = scan_secrets(material, secrets)
    assert leaked == [], [str(f) for f in leaked]


def test_bad_data_fails_validation_at_the_first_try(api, e2e_airflow, vm_connection, alerts, edge_stack):
    from azure.storage.blob import ContainerClient

    from include.sample_data.generate import generate

    bad_day = e2e_airflow.today - timedelta(days=BAD_DAY_AGO)
    client = ContainerClient.from_connection_string(edge_stack.blob_connection_string, e2e_airflow.container)
    generate(client, bad_day, 1, rows_per_day=ROWS_PER_DAY, seed=7, corrupt="out-of-range")

    run = api.trigger(DAG_ID, conf={**FAST, "window_end": (bad_day + timedelta(days=1)).isoformat()})
    final, lines = _follow(api, run["dag_run_id"])

    assert final["state"] == "failed", lines
    _assert_failed_at_first_try(api, run["dag_run_id"], "validate_data", lines)
    assert _tis(api, run["dag_run_id"])["check_edge_vm"]["state"] == "upstream_failed", "nothing ran after it"
    [alert] = alerts.wait_for(1, 60, run_id=run["dag_run_id"])
    assert alert.body["text"].startswith(
        f"{DAG_ID} FAILED run={run['dag_run_id']} task=validate_data try=1 error=DataValidationError: "
    )
    assert (alert.body["try_number"], alert.body["will_retry"]) == (1, False)
    _assert_alerts_clean([alert], edge_stack, e2e_airflow.container)


def test_a_host_key_other_than_the_pinned_one_fails_the_health_check_at_the_first_try(
    api, e2e_airflow, vm_connection, alerts, edge_stack, tmp_path
):
    # As after the VM was rebuilt, or someone sits in between: the VM presents a key the connection did not pin.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other_key = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    mismatched = {**json.loads(vm_connection["extra"]), "host_key": other_key}
    _connections(api).patch_connection(VM_CONN, ConnectionBody(**{**vm_connection, "extra": json.dumps(mismatched)}))
    try:
        run = api.trigger(DAG_ID, conf={**FAST, "skip_image_build": True})
        final, lines = _follow(api, run["dag_run_id"])
    finally:
        _connections(api).patch_connection(VM_CONN, ConnectionBody(**vm_connection))

    assert final["state"] == "failed", lines
    tis = _tis(api, run["dag_run_id"])
    assert tis["validate_data"]["state"] == "success"
    _assert_failed_at_first_try(api, run["dag_run_id"], "check_edge_vm", lines)
    assert tis["train_on_edge_vm"]["state"] == "upstream_failed", "no training on a VM that failed the key check"
    [alert] = alerts.wait_for(1, 60, run_id=run["dag_run_id"])
    assert alert.body["text"].startswith(
        f"{DAG_ID} FAILED run={run['dag_run_id']} task=check_edge_vm try=1 error=EdgeVMHostKeyMismatchError: "
        "Host key check failed"
    )
    assert alert.body["will_retry"] is False
    _assert_alerts_clean([alert], edge_stack, e2e_airflow.container)


def _registry_answers(edge_stack) -> bool:
    host, port = edge_stack.registry_host.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def test_a_registry_down_during_the_push_is_retried_and_the_run_ends_green_with_one_image(
    api, e2e_airflow, vm_connection, alerts, edge_stack, registry_cutter
):
    from scripts.edge_stack import EdgeStack

    stack = EdgeStack(edge_stack.state_dir, free_ports=True)

    def registry_goes_down() -> None:
        # Paused, the scheduler leaves the failed try up_for_retry until the registry runs again (unpaused below):
        # the retry cannot start against a registry that is still down, however slow this machine is.
        api.dag_api.patch_dag(DAG_ID, DAGPatchBody(is_paused=True))
        stack.stop_service("registry")

    registry_cutter.cut_at_first_upload(registry_goes_down)
    run = api.trigger(DAG_ID, conf=FAST)
    run_id = run["dag_run_id"]

    seen: list[str | None] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (state := _tis(api, run_id).get("build_image", {}).get("state")) != "up_for_retry":
        if not seen or seen[-1] != state:
            seen.append(state)
        assert state not in ("failed", "success", "upstream_failed"), f"build_image {state}; states seen {seen}"
        assert time.monotonic() < deadline, f"build_image not up_for_retry after {RUN_TIMEOUT_S} s; seen {seen}"
        time.sleep(0.5)
    seen.append(state)
    assert registry_cutter.cut_done.is_set(), "the try failed before its push started uploading"
    assert not _registry_answers(edge_stack), "the registry must still be down while the try waits for its retry"
    [retry_alert] = alerts.wait_for(1, 60, run_id=run_id)
    assert retry_alert.body["text"].startswith(
        f"{DAG_ID} FAILED run={run_id} task=build_image try=1 (will retry) error=ImageRegistryUnavailableError: "
    )
    assert (retry_alert.body["try_number"], retry_alert.body["will_retry"]) == (1, True)

    stack.start()
    registry_cutter.reopen()
    api.unpause(DAG_ID)
    final, lines = _follow(api, run_id)
    assert final["state"] == "success", lines
    ti = _tis(api, run_id)["build_image"]
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    # The try history, as the UI lists it: the first try failed, the retry succeeded.
    assert _tries(api, run_id, "build_image") == [(1, "failed"), (2, "success")]
    print(f"\nbuild_image states seen: {seen} then {[t for t in lines.splitlines() if 'build_image' in t]}")

    [version] = model_versions(e2e_airflow.tracking_uri, MODEL)
    # The retry pushed the image the first try had built (or found built) and smoke-tested: not built again.
    retry_log = _task_log(e2e_airflow, run_id, "build_image", 2)
    local = f"localhost/{MODEL}:{version.version}"
    assert f"{local} is already built on this worker from this content: not rebuilt" in retry_log
    assert "Built localhost/" not in retry_log

    # Exactly one image: one manifest pushed (by the retry), under the version's tag, its digest on the version.
    result = api.xcom(DAG_ID, run_id, "build_image")
    assert version.tags["image.digest"] == result["digest"]
    assert version.tags["image.reference"] == f"{registry_cutter.host}/{MODEL}:{version.version}@{result['digest']}"
    pushed = [path for method, path in registry_cutter.requests if method == "PUT" and "/manifests/" in path]
    assert pushed == [f"/v2/{MODEL}/manifests/{version.version}"], registry_cutter.requests
    status, _, body = registry_get(edge_stack, f"/v2/{MODEL}/tags/list")
    assert (status, json.loads(body)["tags"]) == (200, [str(version.version)])
    status, headers, _ = registry_get(edge_stack, f"/v2/{MODEL}/manifests/{version.version}", MANIFEST_ACCEPT)
    assert {k.lower(): v for k, v in headers.items()}["docker-content-digest"] == result["digest"]

    # One alert for the one failed try; the try that succeeded sent none.
    assert alerts.alerts(run_id=run_id) == [retry_alert]
    _assert_alerts_clean([retry_alert], edge_stack, e2e_airflow.container)
