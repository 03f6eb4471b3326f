"""Train the model on the edge VM, next to the data, and bring back only the model and its metrics."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from edge_training import config, model_artifacts, remote_job
from edge_training.exceptions import EdgeTrainingError, EdgeVMJobError, EdgeVMUnreachableError
from edge_training.triggers.edge_vm_job import EdgeVMJobTrigger
from edge_training.window import run_window

if TYPE_CHECKING:
    from airflow.sdk import Context

    from edge_training.hooks.edge_vm import EdgeVMHook
    from edge_training.hooks.model_artifacts import ModelArtifactsHook


def _as_seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class EdgeVMTrainingOperator(BaseOperator):
    """
    Run ``include/training/train.py`` on the edge VM for the run's training window and wait for it.

    The job id comes from the task instance (dag, run, task, map index), so a retry or a restarted worker
    re-attaches to the job that is already running or finished instead of training twice. A failed job fails
    the task; the next try (an automatic retry, or a clear after a fix) sets it aside on the VM and trains
    again. Bad input (train.py exit code 2) is not retried automatically, since the same input fails the same way.

    When the job has finished, its ``out/`` folder is fetched from the VM to a temporary folder and its
    ``model.onnx``, ``metrics.json`` and ``reference_profile.json`` are uploaded to the training output container
    (``output_container``, under ``<output_prefix>/<job id>/``, with a completion marker written last); only then is
    the job dir on the VM cleaned up. A retry that finds the complete upload reuses it, whether or not the VM
    still has its copy.

    Returns ``{"job_id", "artifacts", "metrics", "code_version", "vm_host_fingerprint", "window",
    "training_seconds", "champion_version", "reference_profile"}``: ``artifacts`` names the uploaded blobs
    (``{"container", "prefix", "blobs": {file: {"name", "etag", "content_md5", "size"}}}``, see
    :mod:`edge_training.model_artifacts`; no local path), ``metrics`` is the metrics.json document,
    ``champion_version`` the champion scored on the same holdout (None when there was none), ``reference_profile``
    the training window's data profile.

    :param ssh_conn_id: SSH connection of the edge VM (with its pinned ``host_key``).
    :param wasb_conn_id: Blob connection. The VM reads the data itself with a SAS derived from it: read and list
        on ``container`` only, expiring at the training timeout (a connection holding a SAS instead of the
        account key passes it through). It goes to the job dir on the VM in a mode-600 file that train.py deletes
        once read; it never appears on a command line or in a log, and the account key never leaves Airflow.
    :param validation: The ``validate_data`` result (templated, e.g. ``validate_data.output``): its ``manifest``
        of validated blobs goes to the job, which trains exactly those blobs and fails (exit code 2, no retry)
        if one changed since. None lets train.py list the window itself.
    :param container: Blob container with the daily partitions.
    :param output_conn_id: Blob connection the outputs are uploaded with (``EDGE_OUTPUT_CONN_ID``, by default
        the blob connection): it needs read, write and create on ``output_container``.
    :param output_container: Blob container the job's outputs are uploaded to, created when missing
        (``EDGE_OUTPUT_CONTAINER``).
    :param output_prefix: Folder in ``output_container`` holding one ``<job id>/`` folder per job
        (``EDGE_OUTPUT_PREFIX``).
    :param window_days: Length of the training window in days (templated).
    :param window_end: End date of the training window (``YYYY-MM-DD``, exclusive) replacing the data interval
        end, for a manual re-train of a past window; empty keeps the interval end. Templated.
    :param model_name: Registered model whose champion is sent along to be scored on the same holdout.
    :param base_dir: Work dir on the edge VM (code, envs and jobs live under it).
    :param training_params: Hyperparameters passed to ``train.py --params`` (dict or JSON; templated).
    :param holdout_days: Last days of the window held out for evaluation.
    :param deferrable: Wait in the triggerer (no worker slot held) rather than polling in the worker.
    :param poll_interval: Seconds between two status checks of the job.
    :param timeout: Seconds the job may run from submission; also capped by ``execution_timeout``.
        When it passes the job is stopped on the VM and the task fails.
    :param code_dir: Local folder shipped to the VM as the training code.
    :param env_timeout: Seconds allowed for building the VM's virtualenv (pip install) the first time.
    :param unreachable_grace: Seconds the edge VM may go unanswered while the job runs before the task fails
        (``EDGE_VM_UNREACHABLE_GRACE_S``); the job keeps running and the task's retry re-attaches to it.
    """

    template_fields: Sequence[str] = (
        "window_days", "window_end", "training_params", "container", "model_name", "validation",
    )  # fmt: skip
    ui_color = "#d9ecf7"

    def __init__(
        self,
        *,
        ssh_conn_id: str = config.VM_CONN_ID,
        wasb_conn_id: str = config.BLOB_CONN_ID,
        container: str = config.BLOB_CONTAINER,
        output_conn_id: str = config.OUTPUT_CONN_ID,
        output_container: str = config.OUTPUT_CONTAINER,
        output_prefix: str = config.OUTPUT_PREFIX,
        window_days: int | str = config.TRAINING_WINDOW_DAYS,
        window_end: str | None = None,
        model_name: str = config.MODEL_NAME,
        base_dir: str = config.VM_WORK_DIR,
        training_params: dict | str | None = None,
        holdout_days: int = 1,
        deferrable: bool = True,
        poll_interval: float = config.TRAINING_POLL_INTERVAL_S,
        timeout: float | timedelta = config.TRAINING_TIMEOUT_S,
        code_dir: str | Path = config.TRAINING_CODE_DIR,
        env_timeout: float = config.VM_ENV_TIMEOUT_S,
        unreachable_grace: float = config.VM_UNREACHABLE_GRACE_S,
        validation: Mapping[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.validation = validation
        self.ssh_conn_id = ssh_conn_id
        self.wasb_conn_id = wasb_conn_id
        self.container = container
        self.output_conn_id = output_conn_id
        self.output_container = output_container
        self.output_prefix = output_prefix
        self.window_days = window_days
        self.window_end = window_end
        self.model_name = model_name
        self.base_dir = base_dir
        self.training_params = training_params
        self.holdout_days = holdout_days
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.code_dir = Path(code_dir)
        self.env_timeout = env_timeout
        self.unreachable_grace = unreachable_grace
        self._job_id: str | None = None
        self._abs_base: str | None = None
        # After the last try nobody re-attaches to the job: stop it and remove its credentials (beside the DAG's own
        # failure callbacks, e.g. the alert).
        self.on_failure_callback = [*self.on_failure_callback, stop_job_after_final_failure]

    @cached_property
    def hook(self) -> EdgeVMHook:
        from edge_training.hooks.edge_vm import EdgeVMHook

        return EdgeVMHook(ssh_conn_id=self.ssh_conn_id)

    @cached_property
    def outputs(self) -> ModelArtifactsHook:
        from edge_training.hooks.model_artifacts import ModelArtifactsHook

        return ModelArtifactsHook(wasb_conn_id=self.output_conn_id)

    # -- remote helpers -------------------------------------------------------------------------------------

    def _run(self, command: str, step: str, timeout: float = 60, input: bytes | None = None) -> str:
        result = self.hook.run(command, timeout=timeout, input=input)
        if result.exit_status != 0:
            # stderr of our own commands (mkdir, pip, venv) carries no data rows; keep only its end.
            err = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise EdgeVMJobError(
                f"Edge VM step '{step}' on {self.hook.address} exited with status {result.exit_status}: {err} "
                "Check the message above on the VM (disk space, permissions, PyPI reachable for pip), then retry."
            )
        return result.stdout

    def _resolve_base(self) -> str:
        if self._abs_base is None:
            out = self._run(remote_job.resolve_base_command(self.base_dir), "create work dir").strip()
            self._abs_base = out.splitlines()[-1] if out else ""
            if not self._abs_base.startswith("/"):
                raise EdgeVMJobError(
                    f"Checked the edge VM work dir {self.base_dir!r}; `pwd` printed {self._abs_base!r}, not an "
                    "absolute path. Set base_dir (EDGE_VM_WORK_DIR) to a directory the SSH user can create."
                )
        return self._abs_base

    def _job_script(self, command: str, step: str, timeout: float = 60) -> str:
        """Run one of remote_job's job-script commands (status, stop, cleanup, archive, discard, sweep)."""
        return self._run(command, step, timeout=timeout, input=remote_job.JOB_SCRIPT.encode())

    def _status(self, job: str) -> remote_job.JobStatus:
        base = self._resolve_base()
        return remote_job.parse_status(
            self._job_script(remote_job.status_command(base, job, script_on_stdin=True), "job status")
        )

    # -- execute -------------------------------------------------------------------------------------------

    def _close_hook(self) -> None:
        # The SSH session is not needed while the job trains (deferred, or between polls in the trigger).
        if "hook" in self.__dict__:
            self.hook.close()

    def execute(self, context: Context) -> Any:
        try:
            return self._execute(context)
        finally:
            self._close_hook()

    def _execute(self, context: Context) -> Any:
        ti = context["ti"]
        job = remote_job.job_id(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))
        self._job_id = job
        base = self._resolve_base()

        status = self._status(job)
        if status.state == "failed":
            # A failed job is only seen again by a new try (automatic retry, or a clear after a fix): train again.
            self.log.info("Edge VM job %s failed earlier (%s); setting it aside and starting it again", job, status.reason)
            self.log.info("%s", self._job_script(remote_job.archive_failed_command(base, job), "set failed job aside").strip())
            status = self._status(job)

        if status.state == "missing":
            # The job dir may be gone from the VM (swept, or removed by hand) after its outputs were uploaded.
            done = self.outputs.find_complete(self.output_container, self._prefix(job))
            if done is not None:
                self.log.info(
                    "Edge VM job %s is gone from the VM, but its outputs are completely uploaded to %s/%s: "
                    "reusing them, not training again", job, self.output_container, self._prefix(job),
                )  # fmt: skip
                ti.xcom_push(key="job_id", value=job)
                return self._result(job, *done)
            self._sweep(base)
            status = self._submit_or_discard(context, job)
        else:
            self.log.info("Edge VM job %s already exists (%s): re-attaching, not starting another", job, status.state)

        ti.xcom_push(key="job_id", value=job)
        if status.terminal:
            return self._complete(remote_job.status_event(job, status))

        trigger = EdgeVMJobTrigger(
            ssh_conn_id=self.ssh_conn_id,
            job_id=job,
            base_dir=base,
            poll_interval=self.poll_interval,
            timeout_at=self._timeout_at(status),
            unreachable_grace=self.unreachable_grace,
        )
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete")
        # Same poll loop as the triggerer, run here: one code path for both modes.
        self._close_hook()
        event = asyncio.run(self._first_event(trigger))
        return self._complete(event)

    @staticmethod
    async def _first_event(trigger: EdgeVMJobTrigger) -> dict:
        async for event in trigger.run():
            return event.payload
        raise AirflowException("The edge VM job trigger ended without an event.")

    def _time_limit(self) -> float:
        """Seconds a job may run from submission: ``timeout``, capped by ``execution_timeout``."""
        limits = [s for s in (_as_seconds(self.timeout), _as_seconds(self.execution_timeout)) if s]
        return min(limits) if limits else 12 * 3600

    def _timeout_at(self, status: remote_job.JobStatus) -> float:
        submitted = (status.job or {}).get("submitted_at_epoch") or time.time()
        return float(submitted) + self._time_limit()

    def _sweep(self, base: str) -> None:
        """Remove job dirs on the VM that ended more than ``EDGE_VM_JOB_RETENTION_DAYS`` ago (housekeeping only)."""
        if config.VM_JOB_RETENTION_DAYS <= 0:
            return
        try:
            out = self._job_script(remote_job.sweep_command(base, config.VM_JOB_RETENTION_DAYS), "sweep old job dirs")
        except Exception as err:
            # Old folders can wait for the next submission; this training should not.
            self.log.warning("Could not sweep old job dirs on the edge VM (%s): %s", type(err).__name__, err)
            return
        self.log.info("Edge VM work dir %s: %s", base, out.strip())

    def _submit_or_discard(self, context: Context, job: str) -> remote_job.JobStatus:
        """Submit the job; if submission fails before the job started, remove what it had written to the VM."""
        try:
            return self._submit(context, job)
        except BaseException:
            # The credentials (and champion) may already sit in the job dir; nothing will ever run to use them.
            try:
                out = self._job_script(
                    remote_job.discard_unstarted_command(self._resolve_base(), job), "discard unstarted job"
                )
                self.log.info("Edge VM job %s: %s", job, out.strip())
            except Exception:
                self.log.exception(
                    "Could not remove the dir of edge VM job %s after its submission failed; the next try "
                    "overwrites it, or remove it on the VM",
                    job,
                )
            raise

    def _submit(self, context: Context, job: str) -> remote_job.JobStatus:
        from edge_training import drift  # the profile code is run-time only: kept out of DAG parsing

        base = self._resolve_base()
        layout = remote_job.RemoteLayout(base)
        window = run_window(context, self.window_days, self.window_end)
        params = remote_job.parse_training_params(self.training_params)

        code_version = self._ship_code(base)
        req_text = (self.code_dir / "requirements.txt").read_text()
        req_hash = remote_job.requirements_hash(req_text)
        self.log.info("Preparing the training env %s on the edge VM (first time per requirements: pip install)", req_hash)
        out = self._run(
            remote_job.prepare_env_command(
                base,
                req_hash,
                f"{layout.code_dir(code_version)}/requirements.txt",
                python=config.VM_PYTHON,
                pip_args=config.VM_PIP_ARGS.split(),
                lock_timeout=int(self.env_timeout),
            ),
            "prepare training env",
            timeout=self.env_timeout + 60,
        )
        self.log.info("%s", out.strip())

        self._run(remote_job.mkdirs_command([layout.job_dir(job)]), "create job dir")
        champion = self._ship_champion(layout.job_file(job, "champion.onnx"))
        manifest = self._ship_manifest(layout.job_file(job, "manifest.json"))
        submitted_at = time.time()
        # The credential goes over SFTP into a 600 file: never on a command line, never in a log.
        cs = self._blob_connection_string(datetime.fromtimestamp(submitted_at + self._time_limit(), timezone.utc))
        self.hook.put_bytes(cs.encode(), layout.job_file(job, "blob.cs"), mode=0o600)

        ti = context["ti"]
        meta = {
            "job_id": job,
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": getattr(ti, "map_index", -1),
            "code_version": code_version,
            "requirements_hash": req_hash,
            "container": self.container,
            "window": window.label,
            "window_start": window.start.isoformat(),
            "window_end": window.end.isoformat(),
            "holdout_days": int(self.holdout_days),
            "training_params": params or {},
            "champion_version": champion,
            "validation_id": manifest["validation_id"] if manifest else None,
            "data_fingerprint": manifest["data_fingerprint"] if manifest else None,
            "submitted_at": datetime.fromtimestamp(submitted_at, timezone.utc).isoformat(),
            "submitted_at_epoch": submitted_at,
        }
        self.hook.put_bytes(json.dumps(meta, indent=2).encode(), layout.job_file(job, "job.json"), mode=0o600)

        args = remote_job.training_args(
            self.container,
            window.start.isoformat(),
            window.end.isoformat(),
            holdout_days=int(self.holdout_days),
            params=params,
            champion=champion is not None,
            manifest=manifest is not None,
            profile_grid=drift.suite_grid(),
        )
        out = self._run(
            remote_job.start_job_command(base, job, code_version, req_hash, args), "start training job", timeout=120
        )
        status = remote_job.parse_status(out)
        if status.started:
            self.log.info(
                "Started edge VM job %s (pid %s) for training window %s, code version %s",
                job, status.pid, window.label, code_version,
            )  # fmt: skip
        else:
            # Another worker won the start lock between our status check and now: attach to its job.
            self.log.info("Edge VM job %s was started by another attempt (%s): re-attaching", job, status.state)
        return status

    def _ship_code(self, base: str) -> str:
        files = remote_job.collect_code(self.code_dir)
        if "train.py" not in files:
            raise EdgeTrainingError(
                f"Checked the training code dir {self.code_dir} for train.py; it is not there. "
                "Point code_dir (EDGE_TRAINING_CODE_DIR) at the folder holding train.py and requirements.txt."
            )
        version = remote_job.code_hash(files)
        present = self._run(remote_job.code_present_command(base, version), "check code version").strip()
        if present.endswith("present"):
            self.log.info("Training code version %s is already on the edge VM", version)
            return version
        code_dir = remote_job.RemoteLayout(base).code_dir(version)
        for name, content in files.items():
            mode = 0o700 if name.endswith(".sh") else 0o600
            self.hook.put_bytes(content, f"{code_dir}/{name}", mode=mode)
        # The marker is written last so a half-shipped version is never taken as complete.
        self._run(remote_job.mark_code_complete_command(base, version), "mark code version complete")
        self.log.info("Shipped training code version %s (%d files) to the edge VM", version, len(files))
        return version

    def _ship_champion(self, remote_path: str) -> str | None:
        try:
            from edge_training.registry import get_model_registry
        except ImportError:
            self.log.info("No model registry configured: training without a champion to compare against")
            return None
        registry = get_model_registry()
        champion = registry.get_champion(self.model_name)
        if champion is None:
            self.log.info("Model %s has no champion yet: the new model is scored on its own", self.model_name)
            return None
        version = str(getattr(champion, "version", champion))
        with tempfile.TemporaryDirectory(prefix="edge-champion-") as tmp:
            onnx = registry.download_onnx(champion, Path(tmp))
            self.hook.put_file(Path(onnx), remote_path)
        self.log.info("Sent champion %s version %s to be scored on the same holdout", self.model_name, version)
        return version

    def _ship_manifest(self, remote_path: str) -> dict[str, Any] | None:
        """Write the validated blobs' manifest to the job dir (mode 600); None when validation gave none."""
        manifest = remote_job.training_manifest(self.validation)
        if manifest is None:
            self.log.warning(
                "No manifest of validated blobs was given (validation=%s): train.py lists the training window "
                "itself, so blobs that land or change after validation would be trained unvalidated. Pass "
                "validation=validate_data.output.", "none" if not self.validation else "a result without 'manifest'",
            )  # fmt: skip
            return None
        self.hook.put_bytes(json.dumps(manifest).encode(), remote_path, mode=0o600)
        self.log.info(
            "Sent the manifest of validation %s (%d blobs, data fingerprint %s): the job trains exactly those",
            manifest["validation_id"], len(manifest["blobs"]), manifest["data_fingerprint"],
        )  # fmt: skip
        return manifest

    def _blob_connection_string(self, expiry: datetime) -> str:
        """The job's blob credential: a read+list SAS of the data container until ``expiry``, never the key."""
        conn = BaseHook.get_connection(self.wasb_conn_id)
        full = remote_job.blob_connection_string(conn.login, conn.password, conn.host, conn.extra_dejson)
        cs, derived = remote_job.scoped_blob_connection_string(full, self.container, expiry)
        if derived:
            self.log.info(
                "The edge VM gets a read+list SAS for container %s only, expiring %s (the training timeout)",
                self.container, expiry.isoformat(timespec="seconds"),
            )  # fmt: skip
        else:
            self.log.info("Connection %r holds a SAS, not an account key: the edge VM gets that SAS", self.wasb_conn_id)
        return cs

    # -- completion ----------------------------------------------------------------------------------------

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._complete(event)
        finally:
            self._close_hook()

    def _complete(self, event: dict[str, Any]) -> dict[str, Any]:
        job = event["job_id"]
        self._job_id = job
        if event.get("unreachable"):
            # The job is most likely still training: its dir (credentials, scratch) must stay for the re-attach.
            raise EdgeVMUnreachableError(
                f"Edge VM training job {job} on {self.hook.address} {event.get('message')}. The job keeps running "
                "on the VM: once the VM answers again, the task's retry re-attaches to it (no second training). "
                "Bring the VM or its sshd back (or fix the network to it); raise EDGE_VM_UNREACHABLE_GRACE_S to "
                "ride out longer outages without a failed try."
            )
        base = self._resolve_base()
        if event.get("status") != "success":
            if event.get("timed_out"):
                self.log.warning("Edge VM job %s timed out: stopping it on the VM", job)
                self.log.info("%s", self._job_script(remote_job.kill_command(base, job), "stop timed-out job").strip())
            else:
                # Credentials and scratch data must not outlive the job. The VM decides whether it has ended: after
                # an error while checking its status the job may still be training, and a retry re-attaches to it.
                self._tidy(remote_job.cleanup_command(base, job), job)
            self._fail(job, event)

        status = self._status(job)
        meta = status.job or {}
        prefix = self._prefix(job)
        done = self.outputs.find_complete(self.output_container, prefix)
        if done is not None:
            self.log.info(
                "Outputs of edge VM job %s are already uploaded to %s/%s: reusing them",
                job, self.output_container, prefix,
            )  # fmt: skip
        else:
            about = {
                "code_version": meta.get("code_version"),
                "vm_host_fingerprint": self.hook.presented_host_key_fingerprint(),
                "window": meta.get("window"),
                "training_seconds": status.training_seconds,
                "champion_version": meta.get("champion_version"),
            }
            with tempfile.TemporaryDirectory(prefix="edge-job-out-") as tmp:
                self._fetch(base, job, Path(tmp))
                done = self.outputs.upload_outputs(self.output_container, prefix, Path(tmp), about), about
        # Only now, with the outputs in the site's storage, may the VM's copy go.
        self._job_script(remote_job.cleanup_command(base, job), "clean up job dir")
        return self._result(job, *done)

    def _prefix(self, job: str) -> str:
        return model_artifacts.output_prefix(self.output_prefix, job)

    def _result(self, job: str, artifacts: dict[str, Any], about: Mapping[str, Any]) -> dict[str, Any]:
        """The task's result, from the uploaded outputs and what the upload marker says about the job."""
        metrics = self.outputs.read_json(artifacts, model_artifacts.METRICS_FILE)
        result = {
            "job_id": job,
            "artifacts": artifacts,
            "metrics": metrics,
            "code_version": about.get("code_version"),
            "vm_host_fingerprint": about.get("vm_host_fingerprint"),
            "window": about.get("window"),
            "training_seconds": about.get("training_seconds"),
            # Which champion train.py scored on the same holdout; the registry step compares only against it.
            "champion_version": about.get("champion_version"),
            # The training window's data profile (k-suppressed aggregates): what drift is measured against.
            "reference_profile": self.outputs.read_json(artifacts, model_artifacts.REFERENCE_PROFILE_FILE),
        }
        primary = metrics.get("primary_metric")
        self.log.info(
            "Edge VM job %s done in %ss: code version %s, training window %s, %s=%s",
            job, result["training_seconds"], result["code_version"], result["window"],
            primary, (metrics.get("metrics") or {}).get(primary),
        )  # fmt: skip
        return result

    def _fetch(self, base: str, job: str, local: Path) -> None:
        """Copy the job's out/ from the VM into the (temporary) folder ``local``."""
        remote_out = remote_job.RemoteLayout(base).job_file(job, "out")
        prefix = model_artifacts.output_prefix(self.output_prefix, job)
        try:
            self.hook.get_dir(remote_out, local)
        except FileNotFoundError as err:
            raise EdgeVMJobError(
                f"Edge VM job {job} succeeded, but its outputs {remote_out} are gone from the VM and no complete "
                f"upload of them is in {self.output_container}/{prefix} (connection {self.wasb_conn_id!r}; checked "
                f"for {model_artifacts.COMPLETE_MARKER} and the ETags it names, connection {self.output_conn_id!r}). "
                "Check that every worker's output connection points at the site's storage account, or remove the "
                "job dir on the VM and clear the task to train again."
            ) from err
        missing = [name for name in model_artifacts.REQUIRED_FILES if not (local / name).is_file()]
        if missing:
            raise EdgeVMJobError(
                f"Edge VM job {job} exited 0 but its out/ lacks {', '.join(missing)}; "
                f"train.py must write model.onnx and metrics.json to --out. Check train.log in the job dir on the VM."
            )
        self.log.info("Fetched the outputs of edge VM job %s from the VM", job)

    def _tidy(self, command: str, job: str) -> None:
        """Clean up on the VM on the way to a failure: a cleanup error is logged, not raised over the real one."""
        try:
            self.log.info("Edge VM job %s: %s", job, self._job_script(command, "clean up job dir").strip())
        except Exception as err:
            self.log.warning("Could not clean up edge VM job %s (%s): %s", job, type(err).__name__, err)

    def _fail(self, job: str, event: Mapping[str, Any]) -> None:
        tail = event.get("log_tail") or "(train.log is empty)"
        bad_input = event.get("exit_code") == remote_job.EXIT_BAD_INPUT
        if bad_input:
            advice = "train.py rejected its input (exit code 2): fix the data or the window/params; a retry cannot help."
        elif event.get("timed_out"):
            advice = "Raise the operator's timeout, or check the VM's load; the job was stopped."
        else:
            advice = "The next try sets this job aside on the VM and trains again; see train.log there for the full log."
        message = (
            f"Edge VM training job {job} {event.get('message', 'failed')}. {advice}\n"
            f"Last lines of train.log:\n{tail}"
        )
        raise (AirflowFailException if bad_input else AirflowException)(message)

    def on_kill(self) -> None:
        if self._job_id:
            self.stop_job(self._job_id, "the task was stopped")

    def stop_job(self, job: str, why: str) -> None:
        """Stop the job on the VM and remove its credentials and scratch data; errors are logged, not raised.

        :param job: Id of the job.
        :param why: What ended the task, for the log.
        """
        try:
            out = self._job_script(remote_job.kill_command(self._resolve_base(), job), "stop job", timeout=60)
            self.log.info("Edge VM job %s: %s; %s", job, why, " / ".join(out.strip().splitlines()))
        except Exception:
            self.log.exception(
                "Could not stop edge VM job %s (%s): stop it on the VM (kill its process group) and remove %s",
                job, why, remote_job.RemoteLayout(self.base_dir).job_file(job, "blob.cs"),
            )  # fmt: skip
        finally:
            self._close_hook()


def stop_job_after_final_failure(context: Context) -> None:
    """on_failure_callback of EdgeVMTrainingOperator: after its last try no task watches the job, so stop it.

    Runs only when the task has failed for good (retries exhausted, or the retry policy failed it at once); a
    failed try that will be retried leaves the job to the retry, which re-attaches to it.
    """
    task = context["task"]
    ti = context["ti"]
    if isinstance(task, EdgeVMTrainingOperator):
        job = remote_job.job_id(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))
        task.stop_job(job, f"the task failed on try {ti.try_number}, its last")
