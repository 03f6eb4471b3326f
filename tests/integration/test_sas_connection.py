"""The real DAG with ``edge_blob`` as a SAS connection string: the signature shows up nowhere a person can read.

One ``airflow dags test`` run (session fixtures ``pipeline`` and ``vm_work_dir``) with
``BlobEndpoint=...;SharedAccessSignature=...`` instead of the account key. Then everything the run left to read is
scanned for the SAS signature (URL-encoded and decoded) and for ``sig=`` at all: the console and task logs, XCom,
the job's train.log on the edge VM, the Data Docs report and the registered version's tags. The failure path (task
error and alert) with a SAS is tested in tests/integration/test_train_on_vm.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import parse_qsl, quote

import pytest

from tests._residency import files_under
from tests.integration.test_pipeline_run import assert_succeeded, version_of

pytestmark = pytest.mark.integration


def sas_connection(pipeline) -> tuple[str, str]:
    """A read+list SAS connection string on the pipeline's container, and its signature."""
    from azure.storage.blob import generate_container_sas

    from scripts.edge_stack import AZURITE_ACCOUNT, AZURITE_KEY

    sas = generate_container_sas(AZURITE_ACCOUNT, pipeline.container, account_key=AZURITE_KEY, permission="rl",
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))  # fmt: skip
    return f"BlobEndpoint={pipeline.stack.blob_endpoint};SharedAccessSignature={sas}", dict(parse_qsl(sas))["sig"]


def test_a_run_on_a_sas_connection_shows_its_signature_nowhere(pipeline, vm_work_dir):
    connection_string, signature = sas_connection(pipeline)
    conn = json.dumps({"conn_type": "wasb", "extra": {"connection_string": connection_string}})

    # The read+list SAS cannot write the training output container: the outputs go with a connection of their own.
    run = pipeline.run(dt.date(2026, 6, 13), env={"AIRFLOW_CONN_EDGE_BLOB": conn, "EDGE_OUTPUT_CONN_ID": "edge_output",
                                                  "AIRFLOW_CONN_EDGE_OUTPUT": pipeline.env["AIRFLOW_CONN_EDGE_BLOB"]})

    assert_succeeded(run)
    assert "holds a SAS, not an account key: the edge VM gets that SAS" in run.log
    validation, training = run.value("validate_data"), run.value("train_on_edge_vm")
    train_log = Path(vm_work_dir, "jobs", training["job_id"], "train.log").read_text()
    assert f"at {pipeline.stack.blob_endpoint};" in train_log  # the endpoint is logged, without its query
    assert "read the blob credentials and removed blob.cs" in train_log
    assert f"reading the {len(validation['manifest'])} blob(s) validation {validation['validation_id']}" in train_log
    tags = version_of(pipeline, run).tags
    # The VM read exactly what validation checked: one fingerprint scheme, equal values.
    assert tags["edge.data_fingerprint"] == tags["edge.training_data_fingerprint"] == validation["data_fingerprint"]

    docs = Path(validation["data_docs"])
    material = [
        ("console and task logs", run.log),
        *files_under(pipeline.home / "logs"),
        *((f"xcom {task}.{key}", json.dumps(value)) for (task, key), value in run.xcom.items()),
        ("train.log", train_log),
        *files_under(docs.parent if docs.name == "index.html" else docs),
        ("model version tags", json.dumps(tags)),
    ]
    assert len(material) > 10 and any("Data Docs" in text or "<html" in text for _, text in material)
    for source, text in material:
        for secret in (signature, quote(signature, safe=""), "sig="):
            assert secret not in text, f"{secret[:6]}... found in {source}"
