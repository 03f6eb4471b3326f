"""Settings read from the environment, with defaults that match the local edge stack.

Everything here is a plain value; connections (hosts, keys, passwords) live in Airflow connections only.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = PROJECT_ROOT / "include"

# Airflow connection ids.
BLOB_CONN_ID = os.getenv("EDGE_BLOB_CONN_ID", "edge_blob")
VM_CONN_ID = os.getenv("EDGE_VM_CONN_ID", "edge_vm")
REGISTRY_CONN_ID = os.getenv("EDGE_IMAGE_REGISTRY_CONN_ID", "image_registry")

# Blob layout: <container>/dt=YYYY-MM-DD/part-NNNN.csv, one folder per day ("partition").
BLOB_CONTAINER = os.getenv("EDGE_BLOB_CONTAINER", "sensor-readings")

# Where run-time reports (Data Docs) are kept; the local stack points this into its state folder.
REPORTS_DIR = Path(os.getenv("EDGE_REPORTS_DIR", str(PROJECT_ROOT / ".edge-stack" / "reports")))

EXPECTATION_SUITE_PATH = INCLUDE_DIR / "expectations" / "sensor_readings.json"

# Training window: the last N days of the run's data interval.
TRAINING_WINDOW_DAYS = int(os.getenv("EDGE_TRAINING_WINDOW_DAYS", "7"))
SCHEDULE = os.getenv("EDGE_TRAINING_SCHEDULE", "0 2 * * *")

# Registered model name and the Airflow pool that bounds concurrent trainings on the edge VM.
MODEL_NAME = os.getenv("EDGE_MODEL_NAME", "predictive-maintenance")
VM_POOL = os.getenv("EDGE_VM_POOL", "edge_vm")

# Model registry: "mlflow" (local SQLite-backed MLflow registry, the embedded default) or "azureml".
MODEL_REGISTRY = os.getenv("EDGE_MODEL_REGISTRY", "mlflow")
MLFLOW_TRACKING_URI = os.getenv(
    "MLFLOW_TRACKING_URI", f"sqlite:///{PROJECT_ROOT / '.edge-stack' / 'mlflow' / 'mlflow.db'}"
)
MLFLOW_ARTIFACTS_DIR = Path(
    os.getenv("EDGE_MLFLOW_ARTIFACTS_DIR", str(PROJECT_ROOT / ".edge-stack" / "mlflow" / "artifacts"))
)
MLFLOW_EXPERIMENT = os.getenv("EDGE_MLFLOW_EXPERIMENT", "edge-training")
# Champion gate: the candidate must beat the champion by at least this much on the same holdout.
PROMOTION_METRIC = os.getenv("EDGE_PROMOTION_METRIC", "roc_auc")
PROMOTION_MARGIN = float(os.getenv("EDGE_PROMOTION_MARGIN", "0.0"))

# Edge VM: where training runs on the VM, and the health check's thresholds (GB = 10^9 bytes).
VM_WORK_DIR = os.getenv("EDGE_VM_WORK_DIR", "~/edge-training")
VM_MIN_FREE_DISK_GB = float(os.getenv("EDGE_VM_MIN_FREE_DISK_GB", "5"))
VM_MIN_FREE_MEMORY_GB = float(os.getenv("EDGE_VM_MIN_FREE_MEMORY_GB", "1"))
# A busy VM only trains slower; refuse one so overloaded that the job would crawl.
VM_MAX_LOAD_PER_CPU = float(os.getenv("EDGE_VM_MAX_LOAD_PER_CPU", "4.0"))
VM_MIN_PYTHON = os.getenv("EDGE_VM_MIN_PYTHON", "3.9")
# Storage requests signed more than 15 minutes off are refused by Azure Storage; warn long before that.
VM_MAX_CLOCK_SKEW_S = float(os.getenv("EDGE_VM_MAX_CLOCK_SKEW_S", "120"))
VM_REQUIRE_GPU = os.getenv("EDGE_VM_REQUIRE_GPU", "false").lower() in ("1", "true", "yes")
VM_REQUIRE_DOCKER = os.getenv("EDGE_VM_REQUIRE_DOCKER", "false").lower() in ("1", "true", "yes")

# Training outputs (model.onnx, metrics.json, reference_profile.json) of both training backends: in the site's own
# blob storage, container EDGE_OUTPUT_CONTAINER, one <EDGE_OUTPUT_PREFIX>/<job id>/ folder per job. register_model
# reads them from there, so training and registration may run on different workers. The EDGE_AZUREML_OUTPUT_* names
# of earlier releases still work when the new ones are unset. The outputs are written with EDGE_OUTPUT_CONN_ID,
# the blob connection itself by default; a site whose blob connection holds a read-only SAS of the data container
# names a connection here that may write the output container.
OUTPUT_CONN_ID = os.getenv("EDGE_OUTPUT_CONN_ID") or BLOB_CONN_ID


def output_container() -> str:
    """The training output container, read from the environment now."""
    return os.getenv("EDGE_OUTPUT_CONTAINER") or os.getenv("EDGE_AZUREML_OUTPUT_CONTAINER") or "models"


def output_prefix() -> str:
    """The folder of the job folders in the training output container, read from the environment now."""
    return os.getenv("EDGE_OUTPUT_PREFIX") or os.getenv("EDGE_AZUREML_OUTPUT_PREFIX") or "edge-training"


OUTPUT_CONTAINER = output_container()
OUTPUT_PREFIX = output_prefix()

# Training job on the edge VM: the code shipped to the VM, how the VM builds its training env (interpreter, extra
# pip arguments such as --index-url for a site mirror), and waiting.
TRAINING_CODE_DIR = Path(os.getenv("EDGE_TRAINING_CODE_DIR", str(INCLUDE_DIR / "training")))
VM_PYTHON = os.getenv("EDGE_VM_PYTHON", "python3")
VM_PIP_ARGS = os.getenv("EDGE_VM_PIP_ARGS", "")
VM_ENV_TIMEOUT_S = float(os.getenv("EDGE_VM_ENV_TIMEOUT_S", "1800"))
TRAINING_TIMEOUT_S = float(os.getenv("EDGE_TRAINING_TIMEOUT_S", str(6 * 3600)))
TRAINING_POLL_INTERVAL_S = float(os.getenv("EDGE_TRAINING_POLL_INTERVAL_S", "30"))

# Data validation: rows of a blob read and checked at a time (bounds the validate task's memory, ~40 MB per 250k).
VALIDATION_CHUNK_ROWS = int(os.getenv("EDGE_VALIDATION_CHUNK_ROWS", "250000"))

# Scheduling: catch up missed intervals (off: a paused or new deployment does not train on every past day),
# concurrent runs, and what starts a run: "schedule" (the cron above) or "asset" (a new daily partition
# announced by the edge_partition_watch DAG).
CATCHUP = os.getenv("EDGE_TRAINING_CATCHUP", "false").lower() in ("1", "true", "yes")
MAX_ACTIVE_RUNS = int(os.getenv("EDGE_TRAINING_MAX_ACTIVE_RUNS", "3"))
TRAINING_TRIGGER = os.getenv("EDGE_TRAINING_TRIGGER", "schedule").strip().lower()
# Base retry delay of edge_training's tasks, in seconds: after failed try n Airflow waits between d*2^(n-1) and d*2^n
# (its jittered exponential backoff), at most 10 minutes. Errors that cannot fix themselves are not retried
# (edge_training/retry.py).
RETRY_DELAY_S = float(os.getenv("EDGE_RETRY_DELAY_S", "30"))
# How often the partition watch looks for the newest daily partition, and how long it waits for one.
PARTITION_WATCH_POKE_S = float(os.getenv("EDGE_PARTITION_WATCH_POKE_S", "300"))
PARTITION_WATCH_TIMEOUT_S = float(os.getenv("EDGE_PARTITION_WATCH_TIMEOUT_S", str(20 * 3600)))

# How long the edge VM may go unanswered while a training job runs before the wait fails (the job keeps running on
# the VM; the task's retry re-attaches to it). Covers an sshd restart or a VM reboot without failing the task.
VM_UNREACHABLE_GRACE_S = float(os.getenv("EDGE_VM_UNREACHABLE_GRACE_S", "600"))

# Training backend: "edge_vm" (train.py over SSH on the edge VM, the embedded default) or "azureml" (an Azure ML
# command job on a compute attached to the workspace). The DAG's training_backend Param overrides it per run.
TRAINING_BACKEND = os.getenv("EDGE_TRAINING_BACKEND", "edge_vm")
# Azure ML: connection (type azure, extras subscriptionId/resource_group_name/workspace_name), compute, experiment.
AZUREML_CONN_ID = os.getenv("EDGE_AZUREML_CONN_ID", "azureml_default")
AZUREML_COMPUTE = os.getenv("EDGE_AZUREML_COMPUTE", "stackhub-k8s")
AZUREML_EXPERIMENT = os.getenv("EDGE_AZUREML_EXPERIMENT", "edge-training")
# Workspace datastores on the Stack Hub storage account: the data container (mounted as the job's input) and the
# training output container (OUTPUT_CONTAINER above), which the job writes its outputs to under OUTPUT_PREFIX.
AZUREML_DATA_DATASTORE = os.getenv("EDGE_AZUREML_DATA_DATASTORE", "stackhub_sensor_readings")
AZUREML_OUTPUT_DATASTORE = os.getenv("EDGE_AZUREML_OUTPUT_DATASTORE", "stackhub_models")
# Job environment: a registered one ("azureml:name:version"), or empty to build it from the conda spec in the
# training code folder on top of the base image.
AZUREML_ENVIRONMENT = os.getenv("EDGE_AZUREML_ENVIRONMENT", "")
AZUREML_BASE_IMAGE = os.getenv("EDGE_AZUREML_BASE_IMAGE", "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest")
AZUREML_CONDA_FILE = os.getenv("EDGE_AZUREML_CONDA_FILE", "azureml-environment.yml")

# Where the tasks that touch data rows or the edge VM run: "local" (on the same workers as the rest, the all-in-one
# default) or "edge" (on an `airflow edge worker` at the site serving EDGE_WORKER_QUEUE through the EdgeExecutor,
# so the site only dials out over HTTPS and opens no inbound port). "edge" needs the EdgeExecutor in
# AIRFLOW__CORE__EXECUTOR, e.g. "CeleryExecutor,airflow.providers.edge3.executors.EdgeExecutor".
EXECUTOR_TOPOLOGY = os.getenv("EDGE_EXECUTOR_TOPOLOGY", "local").strip().lower()
EDGE_WORKER_QUEUE = os.getenv("EDGE_WORKER_QUEUE", "edge")
EDGE_WORKER_EXECUTOR = os.getenv("EDGE_WORKER_EXECUTOR", "EdgeExecutor")

# Scoring image (build_image): base image, buildah's own storage (vfs driver, no daemon, nothing under
# /var/lib/containers), the offline wheel cache and the image's Python (which wheels pip downloads for it), and the
# smoke test's limits. The default base is the Debian bookworm + python3 image scripts/build_base_image.sh imports.
IMAGE_BASE = os.getenv("EDGE_IMAGE_BASE", "localhost/edge-python-base:bookworm")
IMAGE_SERVING_DIR = Path(os.getenv("EDGE_IMAGE_SERVING_DIR", str(INCLUDE_DIR / "serving")))
BUILDAH_ROOT = Path(os.getenv("EDGE_BUILDAH_ROOT", str(PROJECT_ROOT / ".edge-stack" / "buildah" / "root")))
BUILDAH_RUNROOT = Path(os.getenv("EDGE_BUILDAH_RUNROOT", str(PROJECT_ROOT / ".edge-stack" / "buildah" / "run")))
IMAGE_WHEELS_DIR = Path(os.getenv("EDGE_IMAGE_WHEELS_DIR", str(PROJECT_ROOT / ".edge-stack" / "cache" / "wheels")))
IMAGE_PYTHON_VERSION = os.getenv("EDGE_IMAGE_PYTHON_VERSION", "3.11")
IMAGE_GLIBC = os.getenv("EDGE_IMAGE_GLIBC", "2.36")
IMAGE_PIP_ARGS = os.getenv("EDGE_IMAGE_PIP_ARGS", "")
IMAGE_BUILD_TIMEOUT_S = float(os.getenv("EDGE_IMAGE_BUILD_TIMEOUT_S", "1800"))
IMAGE_SMOKE_TIMEOUT_S = float(os.getenv("EDGE_IMAGE_SMOKE_TIMEOUT_S", "90"))
# Same onnxruntime build inside and outside the image: predictions must agree to float32 rounding.
IMAGE_SMOKE_TOLERANCE = float(os.getenv("EDGE_IMAGE_SMOKE_TOLERANCE", "1e-5"))

# Job dirs on the edge VM (train.log, job.json, archived failed attempts) that ended more than this many days ago are
# swept at the next submission; a running job's never is. 0 keeps them all. A training task cleared after that
# trains again instead of re-attaching to its finished job.
VM_JOB_RETENTION_DAYS = float(os.getenv("EDGE_VM_JOB_RETENTION_DAYS", "14"))

# Drift-aware retraining. EDGE_RETRAIN_POLICY: "schedule" (retrain on EDGE_TRAINING_TRIGGER only), "drift" (retrain
# only when the daily drift check finds the newest partition drifted from the champion's reference profile), "both".
RETRAIN_POLICY = os.getenv("EDGE_RETRAIN_POLICY", "schedule").strip().lower()
# Bins of a data profile holding fewer rows than this are suppressed before the profile leaves the site.
DRIFT_PROFILE_K = int(os.getenv("EDGE_DRIFT_PROFILE_K", "10"))
# Per-feature thresholds from the training window's own day-to-day variation (true), or the fixed defaults (false).
DRIFT_CALIBRATE = os.getenv("EDGE_DRIFT_CALIBRATE", "true").lower() in ("1", "true", "yes")
# When the daily drift check runs (after the day's partition has landed).
DRIFT_CHECK_SCHEDULE = os.getenv("EDGE_DRIFT_CHECK_SCHEDULE", SCHEDULE)

# Global model across the sites of the sites file (opt-in): the sites' champions pooled into one forest
# (EDGE_GLOBAL_MODEL_NAME), scored at every site on its own holdout, and promoted only when it beats the champion at
# EDGE_SITES_QUORUM sites (a number, "majority" (default) or "all"). EDGE_GLOBAL_MODEL_SCHEDULE: cron, empty = manual.
GLOBAL_MODEL = os.getenv("EDGE_GLOBAL_MODEL", "false").lower() in ("1", "true", "yes")
GLOBAL_MODEL_NAME = os.getenv("EDGE_GLOBAL_MODEL_NAME") or f"{MODEL_NAME}-global"
SITES_QUORUM = os.getenv("EDGE_SITES_QUORUM", "majority")
GLOBAL_MODEL_SCHEDULE = os.getenv("EDGE_GLOBAL_MODEL_SCHEDULE") or None
