"""URLs and secrets are made safe before they are logged: one rule (include/training/redact.py) for both sides."""

from __future__ import annotations

import json
import logging
import sys

from edge_training.redact import redact_text, redact_url
from tests.unit.test_train_manifest import load_train


def test_urls_and_secrets_are_redacted_wherever_they_appear():
    sas = "sv=2026-10-06&se=2026-12-01T22%3A21%3A43Z&sr=c&sp=rl&sig=ljJXW851nz%2B2%3D"
    assert redact_url(f"https://user:pw@acct.blob.local.azurestack.external/c?{sas}#x") == (
        "https://acct.blob.local.azurestack.external/c")
    text = redact_text(
        f"Max retries exceeded with url: /devstoreaccount1/c?restype=container&{sas} (Caused by ...)\n"
        f"at http://127.0.0.1:10000/devstoreaccount1?{sas}\n"
        f"BlobEndpoint=http://h/acct;SharedAccessSignature={sas};AccountKey=a2V5LWtleQ==\n"
        f"bare query {sas}"
    )
    assert "sig=" not in text and "ljJXW851nz" not in text and "a2V5LWtleQ" not in text
    assert "url: /devstoreaccount1/c (Caused by" in text and "at http://127.0.0.1:10000/devstoreaccount1\n" in text


def test_every_line_of_the_job_log_is_redacted_tracebacks_included():
    # A failed request's exception quotes its URL with the SAS query; train.py logs tracebacks of unexpected errors.
    formatter = load_train().RedactingFormatter("%(levelname)s train: %(message)s")
    try:
        raise ConnectionError("Max retries exceeded with url: /acct/c?restype=container&comp=list&sig=c2VjcmV0")
    except ConnectionError:
        record = logging.LogRecord("train", logging.ERROR, __file__, 1, "training from %s failed",
                                   ("http://127.0.0.1:10000/acct?sv=1&sig=c2VjcmV0",), sys.exc_info())  # fmt: skip

    line = formatter.format(record)

    assert line.startswith("ERROR train: training from http://127.0.0.1:10000/acct failed\nTraceback")
    assert "ConnectionError: Max retries exceeded with url: /acct/c" in line
    assert "c2VjcmV0" not in line and "sig=" not in line


def test_the_health_check_shows_the_vm_and_the_log_the_blob_endpoint_without_credentials(monkeypatch):
    from edge_training.operators.health import EdgeVMHealthCheckOperator

    monkeypatch.setenv("AIRFLOW_CONN_EDGE_BLOB", json.dumps({"conn_type": "wasb", "extra": {
        "connection_string": "BlobEndpoint=https://user:pw@acct.blob.local.azurestack.external/?sv=1&sig=c2VjcmV0;"
                             "SharedAccessSignature=sv=1&sig=c2VjcmV0"}}))  # fmt: skip
    endpoint = EdgeVMHealthCheckOperator(task_id="check_edge_vm").blob_endpoint()
    assert endpoint == "https://acct.blob.local.azurestack.external"
