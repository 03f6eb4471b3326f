"""Data residency after real pipeline runs: the edge VM keeps no data, and no row left with the model or in XCom.

The runs are the session's ``airflow dags test`` runs (``conftest.first_run`` and whichever others ran before);
rows are recognised by ``tests/_residency.py`` (full CSV line, machine_id + timestamp, sensor readings) and, on the
VM, also by any machine id next to a reading timestamp, whatever data it came from.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests._residency import RowSignatures, audit, files_under

pytestmark = pytest.mark.integration

DATA_SUFFIXES = (".csv", ".parquet", ".pq", ".feather", ".arrow", ".orc", ".avro", ".json.gz", ".csv.gz")
# A machine id near a reading timestamp: a data row, in any rendering (CSV, JSON record, DataFrame repr).
ROW_PATTERN = re.compile(r"M-\d{4}.{0,40}?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}", re.DOTALL)
# What a finished job leaves in its dir on the VM: its record, its script, its log, its outcome, how it ran (pid, boot
# id, process start time) and the manifest of the blobs it trained (names, ETags, MD5s, sizes: no data).
JOB_LEFTOVERS = {
    ".started", "job.json", "run.sh", "pid", "pid_start", "boot_id", "exit_code", "train.log", "manifest.json",
}


@pytest.fixture(scope="module")
def signatures(pipeline) -> RowSignatures:
    sig = RowSignatures.from_csv_texts(pipeline.partition_texts())
    assert sig.rows > 0
    return sig


def vm_files(base: Path) -> list[Path]:
    """Every file under the VM work dir except the reusable training env (a link to the shared env cache)."""
    found = []
    for folder, dirs, files in os.walk(base):
        if Path(folder) == base:
            dirs[:] = [d for d in dirs if d != "envs"]
        found += [Path(folder) / f for f in files]
    return found


def test_the_scanners_recognise_a_training_row(pipeline, signatures):
    # Without this, a scan finding nothing would prove nothing.
    row = pipeline.partition_texts()[0].splitlines()[7]
    assert audit([("planted", f"log line: {row}")], signatures)[0]
    assert ROW_PATTERN.search(row)


def test_the_vm_keeps_only_code_env_and_logs(first_run, vm_work_dir, signatures):
    assert first_run.returncode == 0, first_run.log[-4000:]
    base = Path(vm_work_dir)  # the local stack's edge VM is this machine
    assert sorted(p.name for p in base.iterdir()) == ["code", "envs", "jobs"]
    assert (base / "envs").is_symlink()

    job = first_run.value("train_on_edge_vm")["job_id"]
    assert {p.name for p in (base / "jobs" / job).iterdir()} == JOB_LEFTOVERS
    for job_dir in (base / "jobs").iterdir():
        # Every job of the session, failed ones included: no scratch, outputs, champion copy or credentials.
        assert {p.name for p in job_dir.iterdir()} <= JOB_LEFTOVERS, job_dir

    files = vm_files(base)
    assert any(f.name == "train.log" for f in files) and any(f.name == "train.py" for f in files)
    assert not [f for f in files if f.name.lower().endswith(DATA_SUFFIXES)]
    texts = [(str(f), f.read_bytes().decode("latin-1")) for f in files]
    assert not [src for src, text in texts if ROW_PATTERN.search(text)]
    findings, sources, _ = audit(texts, signatures)
    assert sources == len(files) and not findings, "\n".join(map(str, findings[:5]))


def synthetic_example(onnx_path: Path) -> list[list[float]]:
    """The smoke test's first two synthetic rows in the model's feature order, as float32 (what MLflow stores)."""
    import numpy as np
    import onnx

    from edge_training.image_context import smoke_rows

    features = json.loads({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}["features"])
    rows = [[row[f] for f in features] for row in smoke_rows(features, count=2)]
    return np.array(rows, dtype=np.float32).tolist()


def test_the_registered_model_artifacts_hold_no_training_rows(pipeline, first_run, signatures):
    from edge_training.registry import MLflowModelRegistry

    env = pipeline.stack.airflow_env
    registry = MLflowModelRegistry(env["MLFLOW_TRACKING_URI"], env["EDGE_MLFLOW_ARTIFACTS_DIR"])
    version = registry.find_version_by_run(pipeline.model_name, first_run.value("train_on_edge_vm")["job_id"])
    assert version is not None
    model_dir = Path(version.source.removeprefix("file://"))
    run_artifacts = Path(registry.client.get_run(registry.client.get_model_version(
        pipeline.model_name, version.version).run_id).info.artifact_uri.removeprefix("file://"))  # fmt: skip
    files = [*files_under(model_dir), *files_under(run_artifacts)]
    names = {Path(src).name for src, _ in files}
    assert {"model.onnx", "MLmodel", "metrics.json"} <= names
    # No data file of any kind, and the one example MLflow stores is the smoke test's synthetic rows, not training rows.
    examples = {"input_example.json", "serving_input_example.json"}
    assert not [n for n in names - examples if "example" in n or n.lower().endswith(DATA_SUFFIXES)], names
    assert json.loads((model_dir / "input_example.json").read_text()) == synthetic_example(model_dir / "model.onnx")
    findings, _, _ = audit(files, signatures)
    assert not findings, "\n".join(map(str, findings[:5]))


def test_the_runs_xcom_holds_summaries_not_rows(first_run, signatures):
    assert {task for task, _ in first_run.xcom} >= {"validate_data", "check_edge_vm", "train_on_edge_vm",
                                                    "register_model"}  # fmt: skip
    texts = [(f"xcom {task}.{key}", json.dumps(value)) for (task, key), value in first_run.xcom.items()]
    assert all(len(text) < 20_000 for _, text in texts), [(src, len(text)) for src, text in texts]
    assert not [src for src, text in texts if ROW_PATTERN.search(text)]
    findings, _, _ = audit(texts, signatures)
    assert not findings, "\n".join(map(str, findings[:5]))
