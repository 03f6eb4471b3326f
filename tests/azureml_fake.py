"""A local HTTP fake of the Azure ML REST endpoints that azure-ai-ml 1.35.2 calls, with a request log.

Only what the SDK really calls for our flows (see the wire notes in the design docs): job get / create / cancel,
code upload (hash lookup, pending upload, the SAS blob calls, code version PUT), anonymous environment PUT, model
versions (list, get, PUT), workspace + discovery + run-history details (the error text of a failed job).
Responses carry the fields the SDK reads, shaped like the service's (the SDK's REST models).

The real SDK reaches the fake through :meth:`AzureMLFake.transport` (rewrites every request to this server and
puts the original URL back after sending, so azure-core's retries still see https) and
:meth:`AzureMLFake.credential` (a static bearer token carrying a tenant id). Blob calls of the code upload do not
go through the transport: the fake hands out a SAS URL that points at itself.

Jobs do not run by default: each GET advances the job through ``job_states``. With ``job_runner`` set, the job
runs in a thread (the fake's "compute") and is Running until the runner returns.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"
RESOURCE_GROUP = "rg-edge"
WORKSPACE = "ws-edge"
TENANT = "99999999-8888-7777-6666-555555555555"
ACCOUNT = "devstoreaccount1"


@dataclass
class Request:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float

    @property
    def kind(self) -> str:
        """A short name of the call, e.g. ``job.put``, ``job.get``, ``job.cancel``, ``model.put``."""
        return classify(self.method, self.path)


@dataclass
class Fault:
    method: str
    pattern: str
    status: int
    times: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


_ROUTES = [
    ("job.cancel", "POST", r"/jobs/[^/]+/cancel$"),
    ("job.get", "GET", r"/jobs/[^/]+$"),
    ("job.put", "PUT", r"/jobs/[^/]+$"),
    ("code.by_hash", "GET", r"/codes/[^/]+/versions$"),
    ("code.start_upload", "POST", r"/codes/[^/]+/versions/[^/]+/startPendingUpload$"),
    ("code.get", "GET", r"/codes/[^/]+/versions/[^/]+$"),
    ("code.put", "PUT", r"/codes/[^/]+/versions/[^/]+$"),
    ("environment.put", "PUT", r"/environments/[^/]+/versions/[^/]+$"),
    ("model.list", "GET", r"/models/[^/]+/versions$"),
    ("model.get", "GET", r"/models/[^/]+/versions/[^/]+$"),
    ("model.put", "PUT", r"/models/[^/]+/versions/[^/]+$"),
    ("model.container", "GET", r"/models/[^/]+$"),
    ("run.details", "GET", r"/runs/[^/]+/details$"),
    ("workspace.get", "GET", r"/workspaces/[^/]+$"),
    ("discovery", "GET", r"^/discovery$"),
]


def classify(method: str, path: str) -> str:
    if path.startswith(f"/{ACCOUNT}/"):
        return f"blob.{method.lower()}"
    for kind, verb, pattern in _ROUTES:
        if verb == method and re.search(pattern, path):
            return kind
    return f"unknown {method} {path}"


def _jwt(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def rewriting_transport(base_url: str):
    """An azure-core transport that sends every request to ``base_url`` (scheme and host replaced)."""
    from azure.core.pipeline.transport import RequestsTransport

    netloc = urlsplit(base_url).netloc

    class RewritingTransport(RequestsTransport):
        def send(self, request, **kwargs):
            original = request.url
            parts = urlsplit(original)
            request.url = urlunsplit(("http", netloc, parts.path, parts.query, ""))
            try:
                return super().send(request, **kwargs)
            finally:
                # azure-core's retry re-runs the https-only bearer policy on this same request object.
                request.url = original

    return RewritingTransport()


def point_sdk_at(base_url: str) -> None:
    """Make every AzureMLHook in this process talk to the fake at ``base_url`` (for a DAG run in a subprocess)."""
    from edge_training.hooks.azureml import AzureMLHook

    credential = StaticCredential()
    AzureMLHook.transport = rewriting_transport(base_url)
    AzureMLHook.get_credential = lambda self, conn=None: credential


class StaticCredential:
    """A token credential returning one bearer token (a JWT with ``tid``, which the SDK decodes)."""

    def __init__(self, tenant: str = TENANT) -> None:
        self.token = _jwt({"tid": tenant, "aud": "https://management.azure.com", "appid": "edge-training-tests"})
        self.requests = 0

    def get_token(self, *scopes: str, **kwargs: Any):
        from azure.core.credentials import AccessToken

        self.requests += 1
        return AccessToken(self.token, int(time.time()) + 3600)


class AzureMLFake:
    """The fake service. Use as a context manager, or call :meth:`start` / :meth:`stop`.

    :param job_states: States a new job goes through, one per job GET after creation (the last one stays).
    :param job_runner: Called as ``job_runner(fake, name, properties)`` in a thread when a job is created;
        returns None for success or an error message (the job then fails with it).
    """

    def __init__(
        self,
        job_states: list[str] | None = None,
        job_runner: Callable[[AzureMLFake, str, dict], str | None] | None = None,
    ) -> None:
        self.job_states = list(job_states or ["Queued", "Running", "Completed"])
        self.job_runner = job_runner
        self.requests: list[Request] = []
        self.jobs: dict[str, dict] = {}
        self.job_errors: dict[str, dict] = {}
        self._progress: dict[str, list[str]] = {}
        self.codes: dict[str, str] = {}  # hash -> code version ARM id
        self.blobs: dict[str, dict] = {}  # /account/container/name -> {"data", "metadata"}
        self.models: dict[str, dict[str, dict]] = {}
        self.faults: list[Fault] = []
        self.workspace_exists = True
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.credential = StaticCredential()

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def workspace_path(self) -> str:
        return (
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
        )

    def start(self) -> AzureMLFake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> AzureMLFake:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def transport(self):
        """An azure-core transport sending every request to this fake."""
        return rewriting_transport(self.base_url)

    # -- test controls --------------------------------------------------------------------------------------

    def fail(self, kind: str, status: int, times: int = 1, body: Any = None, headers: dict | None = None) -> None:
        """Answer the next ``times`` calls of ``kind`` (see :attr:`Request.kind`) with ``status``."""
        method, pattern = kind.split(" ", 1) if " " in kind else ("", kind)
        self.faults.append(Fault(method, pattern, status, times, body, dict(headers or {})))

    def calls(self, kind: str) -> list[Request]:
        return [r for r in self.requests if r.kind == kind]

    def kinds(self) -> list[str]:
        return [r.kind for r in self.requests]

    def finish_job(self, name: str, status: str, error: str | None = None) -> None:
        """End a job now with ``status`` (and the service's error text for a failed one)."""
        with self._lock:
            self._progress[name] = [status]
            if error is not None:
                self.job_errors[name] = {"code": "UserError", "message": error}

    def add_completed_job(self, name: str) -> None:
        """A finished command job of that name, as if submitted earlier (its output can be registered)."""
        with self._lock:
            self.jobs[name] = {"id": f"{self.workspace_path}/jobs/{name}", "name": name,
                               "properties": {"jobType": "Command", "status": "Completed", "tags": {}}}
            self._progress[name] = ["Completed"]

    def add_model_version(self, name: str, version: str, tags: dict, model_uri: str = "azureml://jobs/other/outputs/model") -> None:
        body = {"properties": {"tags": tags, "modelUri": model_uri, "modelType": "custom_model", "properties": {}}}
        self._store_model(name, version, body)

    # -- responses ------------------------------------------------------------------------------------------

    def _error(self, status: int, code: str, message: str) -> tuple[int, dict, dict]:
        return status, {}, {"error": {"code": code, "message": message}}

    def _fault_for(self, method: str, path: str) -> Fault | None:
        kind = classify(method, path)
        for fault in self.faults:
            if fault.times > 0 and fault.pattern == kind and (not fault.method or fault.method == method):
                fault.times -= 1
                return fault
        return None

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict, body: Any) -> tuple:
        fault = self._fault_for(method, path)
        if fault is not None:
            payload = fault.body
            if payload is None:
                payload = {"error": {"code": f"Http{fault.status}", "message": f"fake fault {fault.status}"}}
            return fault.status, fault.headers, payload
        kind = classify(method, path)
        if kind.startswith("blob."):
            return self._blob(method, path, query, headers, body)
        if kind == "discovery":
            return 200, {}, {"api": "https://westeurope.api.azureml.ms", "history": "https://westeurope.api.azureml.ms"}
        ws = self.workspace_path
        if not self.workspace_exists and kind != "unknown":
            if kind == "workspace.get":
                return self._error(404, "ResourceNotFound", f"The Resource '{ws}' was not found.")
            return self._error(
                404, "ParentResourceNotFound",
                f"Failed to perform 'read' on resource(s) of type 'workspaces/jobs', because the parent resource "
                f"'{ws}' could not be found.",
            )  # fmt: skip
        handler = getattr(self, "_" + kind.replace(".", "_"), None)
        if handler is None:
            return self._error(400, "FakeUnsupported", f"The Azure ML fake does not implement {method} {path}")
        return handler(path, query, body)

    def _resource(self, path: str) -> str:
        return path[path.index("/subscriptions/") :] if "/subscriptions/" in path else path

    # jobs

    def _job_view(self, name: str) -> dict:
        job = copy.deepcopy(self.jobs[name])
        states = self._progress[name]
        job["properties"]["status"] = states[0]
        if len(states) > 1:
            states.pop(0)
        return job

    def _job_get(self, path, query, body):
        name = path.rsplit("/", 1)[1]
        with self._lock:
            if name not in self.jobs:
                return self._error(404, "UserError", f"Job {name} not found in workspace {WORKSPACE}.")
            return 200, {}, self._job_view(name)

    def _job_put(self, path, query, body):
        name = path.rsplit("/", 1)[1]
        with self._lock:
            if name in self.jobs:
                # The service refuses to overwrite a job (the SDK gets HTTP 400).
                return self._error(400, "UserError", f"A job with name {name} already exists.")
            resource = copy.deepcopy(body)
            resource["id"] = self._resource(path)
            resource["name"] = name
            resource["type"] = "Microsoft.MachineLearningServices/workspaces/jobs"
            props = resource["properties"]
            props["services"] = {
                "Studio": {"jobServiceType": "Studio", "endpoint": f"https://ml.azure.com/runs/{name}?wsid={self.workspace_path}"}
            }
            props.setdefault("properties", {})
            self.jobs[name] = resource
            if self.job_runner is None:
                self._progress[name] = list(self.job_states)
            else:
                self._progress[name] = ["Running"]
                threading.Thread(target=self._run_job, args=(name, copy.deepcopy(props)), daemon=True).start()
            created = copy.deepcopy(resource)
            created["properties"]["status"] = "NotStarted"
        return 201, {}, created

    def _run_job(self, name: str, properties: dict) -> None:
        try:
            error = self.job_runner(self, name, properties)
        except Exception as exc:  # the fake compute crashed: the job fails with that text
            error = f"{type(exc).__name__}: {exc}"
        self.finish_job(name, "Failed" if error else "Completed", error)

    def _job_cancel(self, path, query, body):
        name = path.rsplit("/", 2)[1]
        with self._lock:
            if name not in self.jobs:
                return self._error(404, "UserError", f"Job {name} not found.")
            self._progress[name] = ["CancelRequested", "Canceled"]
        return 202, {}, None

    def _run_details(self, path, query, body):
        name = path.rsplit("/", 2)[1]
        with self._lock:
            status = self._progress.get(name, ["NotStarted"])[0]
            details = {"runId": name, "status": status, "target": "compute", "logFiles": {}, "warnings": []}
            if name in self.job_errors:
                details["error"] = {"error": self.job_errors[name]}
        return 200, {}, details

    def _workspace_get(self, path, query, body):
        return 200, {}, {
            "id": self.workspace_path,
            "name": WORKSPACE,
            "location": "westeurope",
            "type": "Microsoft.MachineLearningServices/workspaces",
            "properties": {"discoveryUrl": "https://westeurope.api.azureml.ms/discovery"},
        }

    # code + environment

    def _code_by_hash(self, path, query, body):
        found = self.codes.get(query.get("hash", ""))
        return 200, {}, {"value": [{"id": found, "properties": {}}] if found else []}

    def _code_start_upload(self, path, query, body):
        container = f"code-{uuid.uuid4().hex[:12]}"
        blob_uri = f"{self.base_url}/{ACCOUNT}/{container}"
        return 200, {}, {
            "blobReferenceForConsumption": {
                "blobUri": blob_uri,
                "credential": {"credentialType": "SAS", "sasUri": f"{blob_uri}?sv=2021-08-06&sr=c&sp=rcwl&sig=fake"},
            },
            "pendingUploadId": uuid.uuid4().hex,
            "pendingUploadType": "TemporaryBlobReference",
        }

    def _code_put(self, path, query, body):
        resource = {**copy.deepcopy(body), "id": self._resource(path), "name": path.rsplit("/", 1)[1]}
        digest = ((body.get("properties") or {}).get("properties") or {}).get("hash_sha256")
        if digest:
            self.codes[digest] = resource["id"]
        return 201, {}, resource

    def _code_get(self, path, query, body):
        return 200, {}, {"id": self._resource(path), "name": path.rsplit("/", 1)[1], "properties": {"codeUri": ""}}

    def _environment_put(self, path, query, body):
        return 201, {}, {**copy.deepcopy(body), "id": self._resource(path), "name": path.rsplit("/", 1)[1]}

    # models

    def _model_id(self, name: str, version: str) -> str:
        return f"{self.workspace_path}/models/{name}/versions/{version}"

    def _store_model(self, name: str, version: str, body: dict) -> dict:
        resource = copy.deepcopy(body)
        resource["id"] = self._model_id(name, version)
        resource["name"] = version
        props = resource.setdefault("properties", {})
        props.setdefault("flavors", {})
        props.setdefault("properties", {})
        with self._lock:
            self.models.setdefault(name, {})[version] = resource
        return resource

    def _model_put(self, path, query, body):
        name, version = path.split("/models/")[1].split("/versions/")
        with self._lock:  # check and write as one step, like the service's own store
            existing = self.models.get(name, {}).get(version)
            if existing is not None:
                before = existing.get("properties", {}).get("modelUri")
                after = (body or {}).get("properties", {}).get("modelUri")
                if before != after:
                    # The service keeps a version's files immutable: a PUT of an existing version may change tags
                    # and description, but one pointing it at other files is refused. The message is the one
                    # azure-ai-ml matches (azure/ai/ml/_artifacts/_constants.py, ASSET_PATH_ERROR =
                    # "(UserError) Asset paths cannot be updated.", compared in ModelOperations.create_or_update
                    # and CodeOperations.create_or_update); "UserError" answers from Azure ML's model/job
                    # endpoints are HTTP 400 (as for a job name that already exists, in _job_put above).
                    return self._error(400, "UserError", "Asset paths cannot be updated.")
            return (200 if existing is not None else 201), {}, self._store_model(name, version, body)

    def _model_get(self, path, query, body):
        name, version = path.split("/models/")[1].split("/versions/")
        found = self.models.get(name, {}).get(version)
        if found is None:
            return self._error(404, "UserError", f"Model {name}:{version} not found.")
        return 200, {}, found

    def _model_list(self, path, query, body):
        name = path.split("/models/")[1].split("/versions")[0]
        versions = list(self.models.get(name, {}).values())
        if query.get("$top") == "1":
            versions = versions[-1:]
        return 200, {}, {"value": versions}

    def _model_container(self, path, query, body):
        name = path.rsplit("/", 1)[1]
        versions = self.models.get(name)
        if not versions:
            return self._error(404, "UserError", f"Model container {name} not found.")
        numeric = [int(v) for v in versions if v.isdigit()]
        return 200, {}, {"id": self._resource(path), "name": name, "properties": {"nextVersion": str(max(numeric, default=0) + 1)}}

    # blobs (the code upload's SAS container)

    def _blob(self, method, path, query, headers, body):
        stamp = {"ETag": f'"0x{uuid.uuid4().hex[:16].upper()}"', "Last-Modified": formatdate(usegmt=True)}
        with self._lock:
            blob = self.blobs.get(path)
            if method == "HEAD":
                if blob is None:
                    return 404, {"x-ms-error-code": "BlobNotFound"}, None
                meta = {f"x-ms-meta-{k}": v for k, v in blob["metadata"].items()}
                return 200, {**stamp, **meta, "Content-Length": str(len(blob["data"]))}, None
            if method == "PUT" and query.get("comp") == "metadata":
                if blob is None:
                    return 404, {"x-ms-error-code": "BlobNotFound"}, None
                blob["metadata"] = {k[len("x-ms-meta-"):]: v for k, v in headers.items() if k.startswith("x-ms-meta-")}
                return 200, stamp, None
            if method == "PUT":
                self.blobs[path] = {"data": body if isinstance(body, bytes) else b"", "metadata": {}}
                return 201, {**stamp, "x-ms-request-server-encrypted": "true"}, None
        return 400, {"x-ms-error-code": "UnsupportedHttpVerb"}, None

    def uploaded_code(self) -> dict[str, bytes]:
        """Files of the last code upload, by path relative to the uploaded folder."""
        by_container: dict[str, dict[str, bytes]] = {}
        for path, blob in self.blobs.items():
            _, _, container, name = path.split("/", 3)
            by_container.setdefault(container, {})[name.split("/", 1)[1]] = blob["data"]
        return list(by_container.values())[-1] if by_container else {}

    # -- HTTP plumbing --------------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                body: Any = raw
                if raw and "json" in headers.get("content-type", ""):
                    body = json.loads(raw)
                fake.requests.append(Request(self.command, parts.path, query, headers, body, time.monotonic()))
                status, out_headers, payload = fake.handle(self.command, parts.path, query, headers, body)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for key, value in out_headers.items():
                    self.send_header(key, value)
                if payload is not None:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = _serve

        return Handler
