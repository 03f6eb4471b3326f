"""Train the model as an Azure ML command job on a compute next to the data, and bring back model and metrics."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from edge_training import azureml_naming as naming
from edge_training import config, model_artifacts, remote_job
from edge_training.exceptions import AzureMLError, EdgeTrainingError
from edge_training.triggers.azureml_job import AzureMLJobTrigger
from edge_training.window import run_window

if TYPE_CHECKING:
    from airflow.sdk import Context

    from edge_training.hooks.azureml import AzureMLHook, JobState
    from edge_training.hooks.model_artifacts import ModelArtifactsHook

# A task instance trains again after a failed job under the next attempt name; this bounds a runaway loop.
MAX_ATTEMPTS = 20


class AzureMLTrainingOperator(BaseOperator):
    """
    Run ``include/training/train.py`` as an Azure ML v2 command job for the run's training window and wait.

    The job mounts the Stack Hub data datastore as its ``data`` input and reads the training window there
    (``train.py --data-dir``); it writes ``model.onnx``, ``metrics.json`` and ``reference_profile.json`` to its
    ``model`` output on the output datastore: the training output container (``EDGE_OUTPUT_CONTAINER``), under
    ``<output_prefix>/<job name>/``, which this task then describes with the blob connection. The current champion
    (if any) goes along as the ``champion`` input, to be scored on the same holdout, and the manifest of the
    blobs validation checked as the ``manifest`` input: the job reads exactly those from the mount and fails
    (bad input) when one is gone or has another size or MD5. The job gets no credentials from this task: the
    workspace's datastores grant its access.

    The job name comes from the task instance (see :func:`edge_training.azureml_naming.job_name`): submission
    looks the name up first and creates the job only if the workspace has none, so a retry or a restarted
    worker re-attaches instead of training twice. A job that failed, was canceled or paused is left as it is;
    the next try submits the next attempt name. A killed task cancels its job.

    Returns the same shape as the edge VM operator: ``{"job_id", "artifacts", "metrics", "code_version",
    "vm_host_fingerprint" (None), "window", "training_seconds", "champion_version", "reference_profile"}``
    (``artifacts`` names the output blobs with their ETag, Content-MD5 and size; no local path) plus
    ``"studio_url"``, ``"compute"`` and ``"model_uri"`` (``azureml://jobs/<job>/outputs/model``).

    :param azureml_conn_id: Airflow ``azure`` connection of the workspace (see ``AzureMLHook``).
    :param wasb_conn_id: Blob connection of the Stack Hub storage account holding the output container
        (``EDGE_OUTPUT_CONN_ID``, by default the blob connection).
    :param compute: Compute target in the workspace (Arc-enabled Kubernetes or attached VM on Stack Hub).
    :param experiment_name: Azure ML experiment the jobs are grouped under.
    :param container: Blob container with the daily partitions (the data datastore's container).
    :param data_datastore: Workspace datastore of ``container``, mounted read-only as the job's input.
    :param output_datastore: Workspace datastore the job writes its ``model`` output to.
    :param output_container: Blob container of ``output_datastore`` (read back with ``wasb_conn_id``; created when
        missing), ``EDGE_OUTPUT_CONTAINER``.
    :param output_prefix: Folder in ``output_container`` holding one ``<job name>/`` folder per job.
    :param window_days: Length of the training window in days (templated).
    :param window_end: End date of the training window (``YYYY-MM-DD``, exclusive) replacing the data interval
        end; None or empty uses the run's interval (templated).
    :param model_name: Registered model whose champion is sent along to be scored on the same holdout.
    :param training_params: Hyperparameters passed to ``train.py --params`` (dict or JSON; templated).
    :param holdout_days: Last days of the window held out for evaluation.
    :param validation: The ``validate_data`` result (templated, e.g. ``validate_data.output``) whose ``manifest``
        the job trains on; None lets train.py list the window in the mount itself.
    :param environment: A registered environment (``azureml:name:version``); empty builds one from
        ``conda_file`` in the code folder on top of ``base_image``.
    :param base_image: Docker image the built environment starts from.
    :param conda_file: Conda spec, relative to ``code_dir``.
    :param code_dir: Local folder uploaded as the job's code (the same training code as on the edge VM).
    :param deferrable: Wait in the triggerer (no worker slot held) rather than polling in the worker.
    :param poll_interval: Seconds between two status checks of the job.
    :param timeout: Seconds to wait for the job (also capped by ``execution_timeout``); then it is canceled.
    """

    template_fields: Sequence[str] = (
        "window_days", "window_end", "training_params", "container", "model_name", "compute", "validation",
    )  # fmt: skip
    ui_color = "#d9e8f7"

    def __init__(
        self,
        *,
        azureml_conn_id: str = config.AZUREML_CONN_ID,
        wasb_conn_id: str = config.OUTPUT_CONN_ID,
        compute: str = config.AZUREML_COMPUTE,
        experiment_name: str = config.AZUREML_EXPERIMENT,
        container: str = config.BLOB_CONTAINER,
        data_datastore: str = config.AZUREML_DATA_DATASTORE,
        output_datastore: str = config.AZUREML_OUTPUT_DATASTORE,
        output_container: str = config.OUTPUT_CONTAINER,
        output_prefix: str = config.OUTPUT_PREFIX,
        window_days: int | str = config.TRAINING_WINDOW_DAYS,
        window_end: str | None = None,
        model_name: str = config.MODEL_NAME,
        training_params: dict | str | None = None,
        holdout_days: int = 1,
        environment: str = config.AZUREML_ENVIRONMENT,
        base_image: str = config.AZUREML_BASE_IMAGE,
        conda_file: str = config.AZUREML_CONDA_FILE,
        code_dir: str | Path = config.TRAINING_CODE_DIR,
        deferrable: bool = True,
        poll_interval: float = config.TRAINING_POLL_INTERVAL_S,
        timeout: float | timedelta = config.TRAINING_TIMEOUT_S,
        validation: dict | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.validation = validation
        self.azureml_conn_id = azureml_conn_id
        self.wasb_conn_id = wasb_conn_id
        self.compute = compute
        self.experiment_name = experiment_name
        self.container = container
        self.data_datastore = data_datastore
        self.output_datastore = output_datastore
        self.output_container = output_container
        self.output_prefix = output_prefix
        self.window_days = window_days
        self.window_end = window_end
        self.model_name = model_name
        self.training_params = training_params
        self.holdout_days = holdout_days
        self.environment = environment
        self.base_image = base_image
        self.conda_file = conda_file
        self.code_dir = Path(code_dir)
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._job_name: str | None = None

    @cached_property
    def hook(self) -> AzureMLHook:
        from edge_training.hooks.azureml import AzureMLHook

        return AzureMLHook(azureml_conn_id=self.azureml_conn_id)

    @cached_property
    def outputs(self) -> ModelArtifactsHook:
        from edge_training.hooks.model_artifacts import ModelArtifactsHook

        return ModelArtifactsHook(wasb_conn_id=self.wasb_conn_id)

    def _output_container(self):
        """The training output container's client, the container created if missing."""
        self.outputs.ensure_container(self.output_container)
        return self.outputs.container(self.output_container)

    # -- execute -------------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        identity = (ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))
        state = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            name = naming.job_name(*identity, attempt=attempt)
            state = self.hook.get_job(name)
            if state is None or state.status not in naming.FAILED_STATES:
                break
            self.log.info("Azure ML job %s ended %s earlier; this try trains again as the next attempt", name, state.status)
        else:
            raise AzureMLError(
                f"Checked Azure ML jobs {naming.job_name(*identity)} .. -a{MAX_ATTEMPTS}: every attempt failed. "
                "Fix the cause (see the last job in the studio), then re-run the DAG run as a new run."
            )
        self._job_name = name
        if state is None:
            state = self._submit(context, name)
        else:
            self.log.info("Azure ML job %s already exists (%s): re-attaching, not submitting another", name, state.status)
        ti.xcom_push(key="job_id", value=name)
        ti.xcom_push(key="studio_url", value=state.studio_url)

        if state.status in naming.TERMINAL_STATES:
            return self._complete(self._terminal_event(state))
        trigger = AzureMLJobTrigger(
            azureml_conn_id=self.azureml_conn_id,
            job_name=name,
            poll_interval=self.poll_interval,
            timeout_at=time.time() + self._timeout_seconds(),
        )
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete")
        # Same poll loop as the triggerer, run here: one code path for both modes.
        return self._complete(asyncio.run(_first_event(trigger)))

    def _timeout_seconds(self) -> float:
        limits = [
            value.total_seconds() if isinstance(value, timedelta) else float(value)
            for value in (self.timeout, self.execution_timeout)
            if value
        ]
        return min(limits) if limits else 12 * 3600

    @staticmethod
    def _terminal_event(state: JobState) -> dict[str, Any]:
        ok = state.status in naming.SUCCEEDED_STATES
        return {
            "status": "success" if ok else "error",
            "job_id": state.name,
            "job_status": state.status,
            "studio_url": state.studio_url,
            "message": f"Azure ML job {state.name} ended: {state.status}",
            "timed_out": False,
        }

    def _submit(self, context: Context, name: str) -> JobState:
        from azure.ai.ml import Input, Output, command
        from azure.ai.ml.entities import Environment

        from edge_training import drift  # the profile code is run-time only: kept out of DAG parsing

        ti = context["ti"]
        window = run_window(context, self.window_days, self.window_end)
        params = remote_job.parse_training_params(self.training_params)
        files = remote_job.collect_code(self.code_dir)
        if "train.py" not in files:
            raise EdgeTrainingError(
                f"Checked the training code dir {self.code_dir} for train.py; it is not there. "
                "Point code_dir (EDGE_TRAINING_CODE_DIR) at the folder holding train.py."
            )
        code_version = remote_job.code_hash(files)

        if self.environment:
            environment: Any = self.environment
        else:
            conda = self.code_dir / self.conda_file
            if not conda.is_file():
                raise EdgeTrainingError(
                    f"Checked {conda} for the Azure ML job's conda spec: not found. Add it, or set "
                    "EDGE_AZUREML_ENVIRONMENT to a registered environment (azureml:name:version)."
                )
            environment = Environment(image=self.base_image, conda_file=str(conda))

        inputs = {
            naming.INPUT_DATA: Input(
                type="uri_folder", path=naming.datastore_uri(self.data_datastore), mode="ro_mount"
            ),
        }
        champion = self._ship_champion(name)
        if champion is not None:
            inputs[naming.INPUT_CHAMPION] = Input(type="uri_file", path=champion[1], mode="download")
        manifest = self._ship_manifest(name)
        if manifest is not None:
            inputs[naming.INPUT_MANIFEST] = Input(type="uri_file", path=manifest[1], mode="download")
        output_uri = naming.datastore_uri(self.output_datastore, naming.output_prefix(self.output_prefix, name))
        tags = {
            "edge.dag_id": ti.dag_id,
            "edge.dag_run_id": ti.run_id,
            "edge.task_id": ti.task_id,
            "edge.training_window": window.label,
            "edge.code_version": code_version,
            "edge.champion_version": champion[0] if champion else "none",
            "edge.validation_id": str(manifest[0]["validation_id"] or "none") if manifest else "none",
        }
        job = command(
            name=name,
            display_name=f"{ti.dag_id} {window.label}",
            experiment_name=self.experiment_name,
            compute=self.compute,
            code=str(self.code_dir),
            command=naming.training_command(
                self.container,
                window.start.isoformat(),
                window.end.isoformat(),
                holdout_days=int(self.holdout_days),
                params=params,
                champion=champion is not None,
                manifest=manifest is not None,
                profile_grid=drift.suite_grid(),
            ),
            environment=environment,
            inputs=inputs,
            outputs={naming.OUTPUT_MODEL: Output(type="uri_folder", path=output_uri, mode="rw_mount")},
            tags=tags,
        )
        state = self.hook.create_job(job)
        self.log.info(
            "Submitted Azure ML job %s on compute %s (experiment %s) for training window %s, code version %s: %s",
            name, self.compute, self.experiment_name, window.label, code_version, state.studio_url,
        )  # fmt: skip
        return state

    def _ship_champion(self, job: str) -> tuple[str, str] | None:
        """Put the champion's model.onnx next to the job's output; return (version, datastore URI) or None."""
        from edge_training.registry import get_model_registry

        registry = get_model_registry()
        champion = registry.get_champion(self.model_name)
        if champion is None:
            self.log.info("Model %s has no champion yet: the new model is scored on its own", self.model_name)
            return None
        blob = naming.output_prefix(self.output_prefix, f"{job}-champion") + "model.onnx"
        with tempfile.TemporaryDirectory(prefix="edge-champion-") as tmp:
            onnx = registry.download_onnx(champion, Path(tmp))
            with open(onnx, "rb") as data:
                self._output_container().upload_blob(blob, data, overwrite=True)
        self.log.info("Sent champion %s version %s to be scored on the same holdout", self.model_name, champion.version)
        return champion.version, naming.datastore_uri(self.output_datastore, blob)

    def _ship_manifest(self, job: str) -> tuple[dict[str, Any], str] | None:
        """Put the validated blobs' manifest next to the job's output; return (manifest, datastore URI) or None."""
        manifest = remote_job.training_manifest(self.validation)
        if manifest is None:
            self.log.warning(
                "No manifest of validated blobs was given: the job lists the training window in its mount, so "
                "blobs that land or change after validation would be trained unvalidated. Pass "
                "validation=validate_data.output."
            )
            return None
        blob = naming.output_prefix(self.output_prefix, f"{job}-manifest") + "manifest.json"
        self._output_container().upload_blob(blob, json.dumps(manifest).encode(), overwrite=True)
        self.log.info(
            "Sent the manifest of validation %s (%d blobs): the job trains exactly those",
            manifest["validation_id"], len(manifest["blobs"]),
        )  # fmt: skip
        return manifest, naming.datastore_uri(self.output_datastore, blob)

    # -- completion ----------------------------------------------------------------------------------------

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return self._complete(event)

    def _complete(self, event: dict[str, Any]) -> dict[str, Any]:
        name = event["job_id"]
        self._job_name = name
        if event.get("status") != "success":
            self._fail(name, event)
        job = self.hook.get_job(name)
        if job is None:
            raise AzureMLError(f"Azure ML job {name} completed but is gone from the workspace; clear the task to train again.")
        tags = job.tags
        artifacts = self._find_outputs(name)
        metrics = self.outputs.read_json(artifacts, model_artifacts.METRICS_FILE)
        champion_version = tags.get("edge.champion_version")
        result = {
            "job_id": name,
            "artifacts": artifacts,
            "metrics": metrics,
            "code_version": tags.get("edge.code_version"),
            "vm_host_fingerprint": None,
            "window": tags.get("edge.training_window"),
            "training_seconds": metrics.get("training_seconds"),
            "champion_version": None if champion_version in (None, "none") else champion_version,
            # The training window's data profile (k-suppressed aggregates): what drift is measured against.
            "reference_profile": self.outputs.read_json(artifacts, model_artifacts.REFERENCE_PROFILE_FILE),
            "studio_url": event.get("studio_url"),
            "compute": job.compute,
            "model_uri": naming.job_output_uri(name),
        }
        primary = metrics.get("primary_metric")
        self.log.info(
            "Azure ML job %s done: code version %s, training window %s, %s=%s",
            name, result["code_version"], result["window"], primary, (metrics.get("metrics") or {}).get(primary),
        )  # fmt: skip
        return result

    def _find_outputs(self, job: str) -> dict[str, Any]:
        """Describe the job's ``model`` output blobs (ETag, Content-MD5, size) for register_model to download."""
        prefix = naming.output_prefix(self.output_prefix, job)
        try:
            artifacts = self.outputs.find_outputs(self.output_container, prefix)
        except model_artifacts.ArtifactError as err:
            raise AzureMLError(
                f"Azure ML job {job} completed, but its output is incomplete: {err} Checked with connection "
                f"{self.wasb_conn_id!r}: check that datastore {self.output_datastore!r} is container "
                f"{self.output_container!r} of that storage account, and the job's logs in the studio."
            ) from None
        self.log.info(
            "Azure ML job %s left %s in %s/%s", job, ", ".join(artifacts["blobs"]), self.output_container, prefix
        )
        return artifacts

    def _fail(self, job: str, event: dict[str, Any]) -> None:
        status = event.get("job_status")
        if event.get("timed_out"):
            self.log.warning("Azure ML job %s timed out: canceling it", job)
            self.hook.cancel_job(job)
            raise AirflowException(
                f"{event.get('message')}. The job was canceled. Raise the operator's timeout "
                f"(EDGE_TRAINING_TIMEOUT_S) or check the compute. Studio: {event.get('studio_url')}"
            )
        if status is None:
            raise AirflowException(event.get("message") or f"Azure ML job {job}: waiting failed")
        error = self.hook.job_error(job) if status == "Failed" else None
        raise AirflowException(naming.failure_message(job, status, error, event.get("studio_url")))

    def on_kill(self) -> None:
        if not self._job_name:
            return
        try:
            self.hook.cancel_job(self._job_name)
            self.log.info("Canceled Azure ML job %s", self._job_name)
        except Exception:
            self.log.exception("Could not cancel Azure ML job %s; cancel it in the studio", self._job_name)


async def _first_event(trigger: AzureMLJobTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AirflowException("The Azure ML job trigger ended without an event.")
