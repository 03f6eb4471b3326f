"""Azure ML training jobs: job names, data and output locations, the job's command line, job states.

Pure logic (no Airflow, no azure-ai-ml): the operator, the trigger and the registry build their requests from
these values, and the unit tests check them directly.

How an Azure ML job gets its data: the Stack Hub blob container is registered in the workspace as a datastore;
the job mounts it read-only as the ``uri_folder`` input ``data`` and ``train.py --data-dir`` reads the training
window's ``dt=YYYY-MM-DD/`` partitions from the mount, on the compute next to the storage. The job writes
``model.onnx`` and ``metrics.json`` to the ``uri_folder`` output ``model``, which lives on a (Stack Hub) blob
datastore too, under ``<output prefix>/<job name>/``; Airflow reads those two files back with the blob connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from edge_training import remote_job
from edge_training.model_artifacts import output_prefix  # noqa: F401 - the job's ``model`` output folder

INPUT_DATA = "data"
INPUT_CHAMPION = "champion"
INPUT_MANIFEST = "manifest"
OUTPUT_MODEL = "model"

# Job states as the service reports them (azure.ai.ml.entities.JobStatus values).
SUCCEEDED_STATES = frozenset({"Completed"})
FAILED_STATES = frozenset({"Failed", "Canceled", "Paused"})
TERMINAL_STATES = SUCCEEDED_STATES | FAILED_STATES
# NotResponding is what the service says while it cannot reach the compute; the job may recover, so keep waiting.

_NAME_OK = re.compile(r"^[a-z][a-z0-9_-]{0,254}$")
_DATASTORE_OK = re.compile(r"^[A-Za-z0-9_]{1,255}$")


def job_name(dag_id: str, run_id: str, task_id: str, map_index: int = -1, attempt: int = 1) -> str:
    """Deterministic Azure ML job name of one task instance: ``[a-z][a-z0-9_-]*``, at most 136 characters.

    The same identity gives the same name, so a retry or a restarted worker finds the job it submitted before
    (``jobs.get(name)``) instead of submitting a second one. It is the edge VM's job id with an ``aml-`` prefix:
    Azure ML names must start with a letter, and a DAG id may start with a digit. A job name can never be reused
    in a workspace, so training again after a failed job uses the next ``attempt`` (suffix ``-a2``, ``-a3``...).
    """
    if attempt < 1:
        raise ValueError(f"Azure ML job attempt must be >= 1, got {attempt}.")
    name = "aml-" + remote_job.job_id(dag_id, run_id, task_id, map_index)
    if attempt > 1:
        name += f"-a{attempt}"
    if not _NAME_OK.match(name):  # remote_job.job_id only emits [a-z0-9_-]; this guards a change there
        raise ValueError(f"Azure ML job name {name!r} is not of the form [a-z][a-z0-9_-]{{0,254}}.")
    return name


def check_datastore(name: str) -> str:
    """Refuse a datastore name Azure ML would reject (letters, digits and underscores only)."""
    if not isinstance(name, str) or not _DATASTORE_OK.match(name):
        raise ValueError(
            f"Azure ML datastore name {name!r} is not valid: Azure ML allows letters, digits and underscores "
            "(e.g. stackhub_sensor_readings). Fix EDGE_AZUREML_DATA_DATASTORE / EDGE_AZUREML_OUTPUT_DATASTORE."
        )
    return name


def datastore_uri(datastore: str, path: str = "") -> str:
    """``azureml://datastores/<datastore>/paths/<path>`` (a folder when ``path`` is empty or ends with /)."""
    return f"azureml://datastores/{check_datastore(datastore)}/paths/{path.lstrip('/')}"




def job_output_uri(job: str, output: str = OUTPUT_MODEL) -> str:
    """The ``azureml://jobs/<job>/outputs/<output>`` URI a model version is registered from."""
    return f"azureml://jobs/{job}/outputs/{output}"


def studio_url(subscription_id: str, resource_group: str, workspace: str, job: str) -> str:
    """Azure ML studio page of a job (the SDK builds the same when the service sends none)."""
    wsid = f"/subscriptions/{subscription_id}/resourcegroups/{resource_group}/workspaces/{workspace}"
    return f"https://ml.azure.com/runs/{quote(job)}?wsid={quote(wsid)}"


def training_command(
    container: str,
    start: str,
    end: str,
    holdout_days: int = 1,
    params: Mapping[str, Any] | None = None,
    champion: bool = False,
    manifest: bool = False,
    profile_grid: Mapping[str, Any] | None = None,
) -> str:
    """The command line of the Azure ML job (``${{inputs.*}}`` / ``${{outputs.*}}`` are filled in by Azure ML).

    Same training script and arguments as on the edge VM, except that the data comes from the mounted
    ``data`` input (``--data-dir``) instead of blob credentials, and the model goes to the ``model`` output.
    With ``manifest`` the ``manifest`` input (the blobs validation checked) says which blobs to read. With
    ``profile_grid`` the job also writes the training window's reference data profile, as on the edge VM.
    """
    args = [
        "python", "train.py",
        "--container", _shell_word(container),
        "--start", _shell_word(start),
        "--end", _shell_word(end),
        "--data-dir", "${{inputs.%s}}" % INPUT_DATA,
        "--out", "${{outputs.%s}}" % OUTPUT_MODEL,
        "--scratch", "scratch",
        "--holdout-days", str(int(holdout_days)),
    ]  # fmt: skip
    if params:
        args += ["--params", _shell_json(params)]
    if champion:
        args += ["--champion", "${{inputs.%s}}" % INPUT_CHAMPION]
    if manifest:
        args += ["--manifest", "${{inputs.%s}}" % INPUT_MANIFEST]
    if profile_grid:
        args += ["--profile-grid", _shell_json(profile_grid)]
    return " ".join(args)


def _shell_json(value: Mapping[str, Any]) -> str:
    # Single-quoted for the job's shell, with any single quote inside closed, escaped and reopened.
    return "'" + json.dumps(dict(value), sort_keys=True).replace("'", "'\\''") + "'"


def _shell_word(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._:=/-]+", value):
        raise ValueError(f"{value!r} cannot be passed on the Azure ML job's command line; use [A-Za-z0-9._:=/-].")
    return value


def failure_message(job: str, status: str, error: str | None, studio: str | None) -> str:
    """The task's error text for a job that ended without completing."""
    what = {
        "Failed": "failed",
        "Canceled": "was canceled",
        "Paused": "was paused (it does not resume by itself)",
    }.get(status, f"ended in state {status}")
    detail = f" Azure ML says: {error}" if error else ""
    advice = (
        "Fix the cause shown above (the job's logs are in the studio); the next try of the task submits the job "
        "again under the next attempt name."
    )
    return f"Azure ML job {job} {what}.{detail} Studio: {studio or 'n/a'}. {advice}"
