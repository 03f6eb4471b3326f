"""MLflow model registry: the :class:`~edge_training.registry.base.ModelRegistry` interface on MLflow.

Two ways to reach it, chosen by the tracking URI:

* a local store (``sqlite:///…`` or a folder): the all-in-one demo's stand-in for the Azure ML registry, with the
  experiment's artifacts in a local folder (``EDGE_MLFLOW_ARTIFACTS_DIR``);
* an MLflow tracking server (``http(s)://host:port``), which both the edge site and central Airflow reach over
  HTTP: the server stores the runs and models and serves their files (proxied artifacts), so no worker needs a
  shared disk. Credentials come from MLflow's own ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
  (basic auth), never from the URI; a refused login or a denied action is a :class:`ModelRegistryAuthError`
  naming the server, the user and what to fix.

Registration is idempotent per ``run_id``: the key is stored as the ``edge.registration_key`` tag
on the version, and a version only counts as complete once the ``edge.registration_complete`` tag is set, which
happens last. A retry after any failure resumes from what already exists instead of creating a second version.

MLflow has no compare-and-set on aliases, so :meth:`MLflowModelRegistry.promote` re-reads the alias and moves it
while holding a lock that every promoter of the same store shares: an exclusive ``flock`` on a file beside a
SQLite database or file store, or, for a tracking server, a lease that the server itself grants atomically.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from edge_training import config
from edge_training.exceptions import ModelRegistryAuthError, ModelRegistryError
from edge_training.registry.base import (
    CHAMPION_ALIAS,
    METRICS_FILE,
    REGISTRATION_COMPLETE_TAG,
    REGISTRATION_KEY_TAG,
    RegisteredModelVersion,
    champion_must_move,
    check_safe,
    read_artifacts,
    version_number,
)
from edge_training.registry.locks import file_lock, mlflow_lease

log = logging.getLogger(__name__)


@contextmanager
def _keep_tracking_uri_env():
    """Restore ``MLFLOW_TRACKING_URI`` in ``os.environ`` after MLflow's fluent API changed it.

    Switching MLflow's tracking URI temporarily writes the environment variable, and switching back to "not
    set" deletes it: without this, the next registry built in the same process (``airflow dags test`` runs
    every task in one process) would silently fall back to the default database.
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before



TRACKING_SERVER_SCHEMES = ("http", "https")
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"


def _auth_status(exc: BaseException) -> int | None:
    """401 or 403 when ``exc`` is an MLflow server refusing the credentials or the action, else None.

    The REST client raises ``MlflowException`` (with MLflow's error code); the proxied-artifact client raises
    ``requests.HTTPError`` with the response attached.
    """
    code = getattr(exc, "error_code", None)
    if code == "UNAUTHENTICATED":
        return 401
    if code == "PERMISSION_DENIED":
        return 403
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if status in (401, 403) else None


class _CheckedClient:
    """An ``MlflowClient`` whose every call turns a 401/403 answer into a :class:`ModelRegistryAuthError`."""

    def __init__(self, client, registry: MLflowModelRegistry) -> None:
        self._client = client
        self._registry = registry

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._registry.access_checked(f"MlflowClient.{name}"):
                return attr(*args, **kwargs)

        return call


def serving_signature(model) -> dict:
    """``signature``, ``input_example`` and ``metadata`` for logging the ONNX classifier ``model`` to MLflow, so that
    MLflow's own scorer (``mlflow models serve``, Azure ML's no-code MLflow deployments) serves it and the MLflow UI
    shows its schema.

    The input is one float32 tensor ``[rows, features]``, not one column per feature: with named columns MLflow's
    ONNX flavour hands the model a DataFrame and cannot turn the ``[rows, 2]`` probabilities back into one, so every
    request would fail. The feature names (ONNX metadata ``features``, written by the training job) go into the
    model's metadata; the input example is two synthetic rows (never training data) in feature order, given as an
    array because MLflow tries a DataFrame example on the bare model, which fails the same way.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from edge_training.image_context import smoke_rows

    dtypes = {1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32}  # onnx.TensorProto element types
    if len(model.graph.input) != 1:
        return {}  # not the training job's single-tensor classifier: no signature rather than a wrong one
    tensor = model.graph.input[0].type.tensor_type
    dtype = np.dtype(dtypes.get(tensor.elem_type, np.float32))
    width = tensor.shape.dim[1].dim_value if len(tensor.shape.dim) == 2 and tensor.shape.dim[1].dim_value else -1
    outputs = [
        TensorSpec(np.dtype(dtypes.get(o.type.tensor_type.elem_type, np.float32)),
                   tuple(d.dim_value or -1 for d in o.type.tensor_type.shape.dim), o.name)
        for o in model.graph.output if o.type.HasField("tensor_type")
    ]  # fmt: skip
    signature = ModelSignature(
        inputs=Schema([TensorSpec(dtype, (-1, width))]), outputs=Schema(outputs) if outputs else None
    )
    props = {p.key: p.value for p in model.metadata_props}
    features = json.loads(props["features"]) if "features" in props else None
    if not features or len(features) != width:
        return {"signature": signature}
    example = np.array([[row[f] for f in features] for row in smoke_rows(features, count=2)], dtype=dtype)
    return {"signature": signature, "input_example": example, "metadata": {"features": features}}


class MLflowModelRegistry:
    """MLflow model registry: a local store (SQLite, local artifacts) or an MLflow tracking server over HTTP(S).

    Each registration is one MLflow run (tagged with the registration key) in the experiment
    ``experiment_name``; with a local store its artifact location lies under ``artifacts_dir``, with a tracking
    server the server chooses it (its proxied artifact store). The run logs the model with the MLflow ONNX
    flavour, ``metrics.json`` and the numeric metrics; the registered version points at that logged model and
    carries the lineage tags. Only :meth:`promote` moves the ``champion`` alias.

    :param tracking_uri: MLflow tracking/registry URI, e.g. ``sqlite:////abs/path/mlflow.db`` or
        ``https://mlflow.central.example:5000`` (credentials in ``MLFLOW_TRACKING_USERNAME`` /
        ``MLFLOW_TRACKING_PASSWORD``, never in the URI).
    :param artifacts_dir: Folder under which the experiment's artifacts are stored (local stores only; unused
        with a tracking server).
    :param experiment_name: MLflow experiment holding the registration runs.
    """

    def __init__(
        self, tracking_uri: str, artifacts_dir: Path | str, experiment_name: str = config.MLFLOW_EXPERIMENT
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifacts_dir = Path(artifacts_dir).resolve()
        self.experiment_name = experiment_name

    def __repr__(self) -> str:
        # A remote tracking URI may carry credentials (https://user:token@host): never print them.
        parsed = urlparse(self.tracking_uri)
        shown = parsed._replace(netloc=parsed.hostname or "").geturl() if parsed.password else self.tracking_uri
        return f"MLflowModelRegistry(tracking_uri={shown!r}, artifacts_dir={str(self.artifacts_dir)!r})"

    @property
    def is_tracking_server(self) -> bool:
        """True when the registry is an MLflow tracking server reached over HTTP(S), not a local store."""
        return urlparse(self.tracking_uri).scheme in TRACKING_SERVER_SCHEMES

    @property
    def server_shown(self) -> str:
        """The tracking URI as it may be printed: scheme, host and port only."""
        parsed = urlparse(self.tracking_uri)
        host = parsed.hostname or ""
        return f"{parsed.scheme}://{host}{f':{parsed.port}' if parsed.port else ''}"

    @cached_property
    def client(self):
        from mlflow import MlflowClient

        parsed = urlparse(self.tracking_uri)
        if self.is_tracking_server:
            if parsed.username or parsed.password:
                # A URI ends up in logs, error messages and process listings; a password inside it leaks there.
                raise ModelRegistryAuthError(
                    f"Model registry: checked MLFLOW_TRACKING_URI for the MLflow server {self.server_shown}; it "
                    f"carries credentials in the URI. Remove them from the URI and give the user and password "
                    f"in {USERNAME_ENV} and {PASSWORD_ENV} instead."
                )
            return _CheckedClient(MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri), self)
        if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
            # SQLite creates the file but not its folder; a fresh checkout has neither.
            Path(parsed.path).parent.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @contextmanager
    def access_checked(self, action: str):
        """Turn an MLflow server's 401/403 answer to ``action`` into a :class:`ModelRegistryAuthError`.

        :param action: What was being done (an ``MlflowClient`` method name or a phrase), for the message.
        """
        try:
            yield
        except ModelRegistryError:
            raise
        except Exception as exc:
            status = _auth_status(exc)
            if status is None:
                raise
            raise ModelRegistryAuthError(self._auth_message(status, action)) from None

    def _auth_message(self, status: int, action: str) -> str:
        user = os.getenv(USERNAME_ENV)
        if status == 401:
            if not user:
                return (
                    f"Model registry: the MLflow server {self.server_shown} answered 401 (not authenticated) to "
                    f"{action}; this worker has no {USERNAME_ENV} set. Set {USERNAME_ENV} and {PASSWORD_ENV} in "
                    "the environment of every Airflow component that runs registry tasks (the site's credentials "
                    "on the edge worker, central's on the worker that builds images)."
                )
            return (
                f"Model registry: the MLflow server {self.server_shown} answered 401 (not authenticated) to "
                f"{action} as user {user!r} ({USERNAME_ENV}): the server does not know this user or "
                f"{PASSWORD_ENV} is not its password. Check both against the server's user (the MLflow admin "
                "can reset the password through the auth API's update-password endpoint); retrying will not help."
            )
        return (
            f"Model registry: the MLflow server {self.server_shown} answered 403 (permission denied) to {action} "
            f"as user {user!r} ({USERNAME_ENV}). The user needs EDIT on the experiment {self.experiment_name!r} "
            "and on the registered model (READ on the experiment and EDIT on the model to build images). Ask the "
            "MLflow admin to grant them (scripts/mlflow_server.py start --model <name> does it for the users it "
            "creates)."
        )

    # -- lookups -------------------------------------------------------------------------------------------

    def _to_version(self, mv) -> RegisteredModelVersion:
        tags = dict(mv.tags or {})
        return RegisteredModelVersion(
            name=mv.name,
            version=str(mv.version),
            run_id=tags.get(REGISTRATION_KEY_TAG),
            tags=tags,
            source=mv.source or "",
            uri=f"models:/{mv.name}/{mv.version}",
        )

    def find_version_by_run(self, model_name: str, run_id: str) -> RegisteredModelVersion | None:
        check_safe("registration run id", run_id)
        found = self.find_versions_by_tag(model_name, REGISTRATION_KEY_TAG, run_id)
        # More than one can only come from a concurrent double registration; the first one is canonical.
        return found[0] if found else None

    def find_versions_by_tag(self, model_name: str, key: str, value: str) -> list[RegisteredModelVersion]:
        check_safe("model name", model_name)
        check_safe("tag name", key)
        check_safe("tag value", value)
        found = self.client.search_model_versions(f"name = '{model_name}' and tags.`{key}` = '{value}'")
        return [self._to_version(mv) for mv in sorted(found, key=lambda mv: version_number(mv.version))]

    def list_versions(self, model_name: str) -> list[RegisteredModelVersion]:
        check_safe("model name", model_name)
        found = self.client.search_model_versions(f"name = '{model_name}'")
        return [self._to_version(mv) for mv in sorted(found, key=lambda mv: version_number(mv.version))]

    def get_version(self, model_name: str, version: str) -> RegisteredModelVersion | None:
        from mlflow.exceptions import MlflowException

        check_safe("model name", model_name)
        try:
            return self._to_version(self.client.get_model_version(model_name, str(version)))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def get_champion(self, model_name: str) -> RegisteredModelVersion | None:
        from mlflow.exceptions import MlflowException

        check_safe("model name", model_name)
        try:
            registered = self.client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = (registered.aliases or {}).get(CHAMPION_ALIAS)
        if version is None:
            return None
        return self._to_version(self.client.get_model_version(model_name, str(version)))

    # -- writes --------------------------------------------------------------------------------------------

    def _experiment_id(self) -> str:
        client = self.client
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            if self.is_tracking_server:
                # The server puts it in its own artifact store and serves the files to every client over HTTP.
                return client.create_experiment(self.experiment_name)
            location = (self.artifacts_dir / self.experiment_name).as_uri()
            return client.create_experiment(self.experiment_name, artifact_location=location)
        if experiment.lifecycle_stage == "deleted":
            # A deleted experiment still owns its name; restoring it is the only way to reuse the name.
            client.restore_experiment(experiment.experiment_id)
        if self.is_tracking_server:
            return experiment.experiment_id
        location = urlparse(experiment.artifact_location).path or experiment.artifact_location
        if not Path(location).resolve().is_relative_to(self.artifacts_dir):
            log.warning(
                "MLflow experiment %r stores artifacts at %s, outside EDGE_MLFLOW_ARTIFACTS_DIR=%s; new models go "
                "there too. Use a new EDGE_MLFLOW_EXPERIMENT name to move them.",
                self.experiment_name, location, self.artifacts_dir,
            )
        return experiment.experiment_id

    def _log_model(self, run_id: str, artifacts_dir: Path) -> tuple[str, str, str]:
        """Log the model once per registration key; return (MLflow run id, logged model id, model source)."""
        import mlflow
        import mlflow.onnx
        import onnx
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        onnx_path, metrics = read_artifacts(artifacts_dir)
        client = self.client
        experiment_id = self._experiment_id()
        runs = client.search_runs(
            [experiment_id], filter_string=f"tags.`{REGISTRATION_KEY_TAG}` = '{run_id}'", max_results=1
        )
        run = runs[0] if runs else None
        if run is not None and run.data.tags.get("edge.logged_model_id"):
            model_id = run.data.tags["edge.logged_model_id"]
            return run.info.run_id, model_id, client.get_logged_model(model_id).artifact_location
        if run is None:
            run = client.create_run(experiment_id, run_name=run_id[:250], tags={REGISTRATION_KEY_TAG: run_id})

        # MLflow's model logging only exists in the fluent API, which reads a process-wide tracking URI.
        with self.access_checked("log the model and its metrics"), _keep_tracking_uri_env(), \
                _use_tracking_uri(self.tracking_uri), mlflow.start_run(run_id=run.info.run_id):
            if metrics:
                # Logged before the model so MLflow links them to the logged model too.
                mlflow.log_metrics(metrics)
            if (artifacts_dir / METRICS_FILE).is_file():
                mlflow.log_artifact(str(artifacts_dir / METRICS_FILE))
            model = onnx.load(str(onnx_path))
            info = mlflow.onnx.log_model(
                model,
                name="model",
                # One self-contained model.onnx: the scoring image and the next champion check copy one file.
                save_as_external_data=False,
                **serving_signature(model),
            )
            mlflow.set_tag("edge.logged_model_id", info.model_id)
        return run.info.run_id, info.model_id, client.get_logged_model(info.model_id).artifact_location

    def register(self, model_name: str, artifacts_dir: Path, run_id: str, tags: dict) -> RegisteredModelVersion:
        """Register the trained model; see :meth:`ModelRegistry.register`.

        :param model_name: Registered model name.
        :param artifacts_dir: Local folder with ``model.onnx`` and ``metrics.json``.
        :param run_id: Registration key, one per trained model and stable across retries (the training job id).
        :param tags: Lineage tags for the version (string values).
        :raises ModelRegistryError: the artifacts are missing, or the version was created but tagging failed.
        """
        from mlflow.exceptions import MlflowException

        check_safe("model name", model_name)
        check_safe("registration run id", run_id)
        existing = self.find_version_by_run(model_name, run_id)
        if existing is not None and existing.complete:
            log.info("Model %s version %s is already registered for run %s", model_name, existing.version, run_id)
            return existing

        if existing is None:
            mlflow_run_id, model_id, source = self._log_model(run_id, Path(artifacts_dir))
            try:
                self.client.create_registered_model(model_name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            mv = self.client.create_model_version(
                model_name,
                source=source,
                run_id=mlflow_run_id,
                tags={REGISTRATION_KEY_TAG: run_id},
                model_id=model_id,
            )
            version = str(mv.version)
            log.info("Registered model %s version %s for run %s", model_name, version, run_id)
        else:
            version = existing.version
            log.warning(
                "Model %s version %s for run %s was left incomplete by an earlier attempt; completing its tags",
                model_name, version, run_id,
            )

        try:
            self.set_tags(model_name, version, tags)
            # Set last: its presence is what makes the version count as registered.
            self.set_tags(model_name, version, {REGISTRATION_COMPLETE_TAG: "true"})
        except Exception as exc:
            raise ModelRegistryError(
                f"Model registry: model {model_name} version {version} was created for run {run_id}, but writing "
                f"its lineage tags failed ({type(exc).__name__}: {exc}). The version is incomplete (no "
                f"{REGISTRATION_COMPLETE_TAG} tag) and will not be promoted. Retry the task: registration "
                "resumes from this version and finishes the tags."
            ) from exc
        registered = self.find_version_by_run(model_name, run_id)
        assert registered is not None  # the version was just created or found under this key
        return registered

    def set_tags(self, model_name: str, version: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model_name, str(version), key, str(value))

    def set_description(self, model_name: str, version: str, description: str) -> None:
        self.client.update_model_version(model_name, str(version), description=description)

    @contextmanager
    def champion_lock(self, model_name: str):
        """Serialise champion moves of ``model_name`` among every process using this store (see the module doc)."""
        parsed = urlparse(self.tracking_uri)
        if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
            store = Path(parsed.path)
        elif parsed.scheme in ("", "file"):
            store = Path(parsed.path or self.tracking_uri) / ".locks" / "store"
        else:
            with mlflow_lease(self.client, model_name):
                yield
            return
        with file_lock(store.with_name(f"{store.name}.{model_name}.champion.lock")):
            yield

    def promote(self, model_name: str, version: str, *, expected: str | None) -> None:
        check_safe("model name", model_name)
        with self.champion_lock(model_name):
            current = self.get_champion(model_name)
            if not champion_must_move(model_name, version, current.version if current else None, expected):
                log.info("Model %s version %s is already the %s", model_name, version, CHAMPION_ALIAS)
                return
            self.client.set_registered_model_alias(model_name, CHAMPION_ALIAS, str(version))
        log.info("Model %s version %s is now the %s", model_name, version, CHAMPION_ALIAS)

    def attach_file(self, model_name: str, version: str, path: Path) -> str:
        """Log ``path`` as an artifact of the version's MLflow run under ``attachments/``; return its URI."""
        path = Path(path)
        if not path.is_file():
            raise ModelRegistryError(f"Model registry: cannot attach {path} to model {model_name} version {version}: "
                                     "no such file.")
        mv = self.client.get_model_version(model_name, str(version))
        if not mv.run_id:
            raise ModelRegistryError(
                f"Model {model_name} version {version} has no MLflow run to hold attachments; only versions "
                "registered by this pipeline can have files attached."
            )
        self.client.log_artifact(mv.run_id, str(path), artifact_path="attachments")
        artifact_uri = self.client.get_run(mv.run_id).info.artifact_uri.rstrip("/")
        return f"{artifact_uri}/attachments/{path.name}"

    def download_attachment(self, version: RegisteredModelVersion, name: str, dest_dir: Path) -> Path | None:
        """Download ``attachments/<name>`` of the version's MLflow run into ``dest_dir``; None if it is not there."""
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        mv = self.client.get_model_version(version.name, str(version.version))
        if not mv.run_id:
            return None
        try:
            with self.access_checked(f"download the attachment {name}"):
                local = mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id, artifact_path=f"attachments/{name}", dst_path=str(dest_dir),
                    tracking_uri=self.tracking_uri,
                )
        except (MlflowException, OSError):
            return None  # not attached (a refused login is a ModelRegistryAuthError and propagates)
        return Path(local)

    def download_onnx(self, version: RegisteredModelVersion, dest_dir: Path) -> Path:
        """Download a version's MLflow model folder into ``dest_dir``; return the ONNX file inside it.

        :raises ModelRegistryError: the version is not an MLflow model with an ONNX flavour.
        """
        import mlflow.artifacts
        from mlflow.models import Model

        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        uri = self.client.get_model_version_download_uri(version.name, version.version)
        with self.access_checked(f"download model {version.name} version {version.version}"):
            # The tracking URI resolves the server's mlflow-artifacts:/ locations (and its credentials apply).
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dest_dir), tracking_uri=self.tracking_uri
            ))
        flavors = Model.load(str(local)).flavors
        if "onnx" not in flavors:
            raise ModelRegistryError(
                f"Model registry: model {version.name} version {version.version} has flavours "
                f"{sorted(flavors)}, not onnx. Only models registered by this pipeline can be packaged; "
                "register an ONNX model."
            )
        return local / flavors["onnx"]["data"]
