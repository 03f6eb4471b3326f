"""Failure alerts: the one-line summary, the webhook request built from an http connection, and the callbacks for a
try that fails the task and a try that will be retried."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from airflow.models.connection import Connection

from edge_training.exceptions import EdgeVMJobError
from edge_training.notify import failure_summary, first_line, on_task_failure, on_task_retry, webhook_request
from tests._webhook import AlertSink


def test_summary_is_one_line_with_class_and_first_line_only():
    error = EdgeVMJobError("Edge VM step 'prepare env' exited with status 1\nTraceback...\nrow 17: 3.2,9.9")
    summary = failure_summary("edge_training", "manual__2026-11-08", "train_on_edge_vm", 2, error)
    assert summary == (
        "edge_training FAILED run=manual__2026-11-08 task=train_on_edge_vm try=2 "
        "error=EdgeVMJobError: Edge VM step 'prepare env' exited with status 1"
    )
    assert "\n" not in summary and "row 17" not in summary


def test_retry_summary_says_the_task_will_be_retried():
    error = ConnectionRefusedError("registry 127.0.0.1:5000 refused the connection")
    summary = failure_summary("edge_training", "manual__2026-11-08", "build_image", 1, error, will_retry=True)
    assert summary == (
        "edge_training FAILED run=manual__2026-11-08 task=build_image try=1 (will retry) "
        "error=ConnectionRefusedError: registry 127.0.0.1:5000 refused the connection"
    )
    assert "(will retry)" not in failure_summary("edge_training", "r", "build_image", 4, error)


def test_summary_leaves_out_sas_signatures_and_account_keys():
    error = RuntimeError(
        "GET https://acct.blob.local.azurestack.external/sensor-readings?sv=2024-08-04&sp=rl&sig=c2VjcmV0 failed; "
        "AccountKey=a2V5a2V5a2V5"
    )
    summary = failure_summary("edge_training", "r", "validate_data", 1, error)
    assert "c2VjcmV0" not in summary and "a2V5a2V5a2V5" not in summary and "sv=" not in summary
    assert "https://acct.blob.local.azurestack.external/sensor-readings" in summary


def test_summary_bounds_a_long_message_and_handles_a_missing_error():
    summary = failure_summary("d", "r", "t", None, ValueError("x" * 1000))
    assert summary.endswith("...") and len(summary) < 400
    assert "try=?" in summary
    assert failure_summary("d", "r", "t", 1, None).endswith("error=unknown (no exception in the context)")
    assert first_line("\n\n  second  \nthird") == "second"


@pytest.mark.parametrize(
    ("host", "schema", "port", "url"),
    [
        ("https://hooks.example.com/T0/B0", None, None, "https://hooks.example.com/T0/B0"),
        ("alerts.example.com", None, None, "https://alerts.example.com"),
        ("127.0.0.1", "http", 8080, "http://127.0.0.1:8080"),
    ],
)
def test_webhook_request_reads_the_connection_like_http_hook(host, schema, port, url):
    got_url, headers, auth = webhook_request(host, schema, port, "bot", "s3cret", {"X-Team": "ml"})
    assert (got_url, headers, auth) == (url, {"X-Team": "ml"}, ("bot", "s3cret"))


def test_webhook_without_host_says_what_to_set():
    with pytest.raises(ValueError, match="EDGE_ALERT_CONN_ID"):
        webhook_request("", None, None, None, None, None)


@pytest.fixture
def webhook():
    with AlertSink() as sink:
        yield sink


def _context(error):
    ti = SimpleNamespace(dag_id="edge_training", run_id="scheduled__2026-11-08", task_id="validate_data", try_number=1)
    return {"ti": ti, "exception": error}


def test_callback_posts_the_summary_to_the_alert_connection(webhook, monkeypatch, caplog):
    conn = Connection(conn_id="alerts", conn_type="http", host="127.0.0.1", schema="http", port=webhook.port,
                      login="bot", password="s3cret")  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS", conn.get_uri())
    monkeypatch.setenv("EDGE_ALERT_CONN_ID", "alerts")
    with caplog.at_level(logging.INFO, logger="edge_training.notify"):
        on_task_failure(_context(RuntimeError("blob endpoint refused the connection")))
    [alert] = webhook.received
    body = alert.body
    assert alert.authorization.startswith("Basic ")
    assert body["text"] == (
        "edge_training FAILED run=scheduled__2026-11-08 task=validate_data try=1 "
        "error=RuntimeError: blob endpoint refused the connection"
    )
    assert body["task_id"] == "validate_data"
    assert (body["try_number"], body["will_retry"]) == (1, False)
    assert body["text"] in caplog.text and "s3cret" not in caplog.text


def test_retry_callback_posts_one_alert_marked_will_retry(webhook, monkeypatch, caplog):
    conn = Connection(conn_id="alerts", conn_type="http", host=f"http://127.0.0.1:{webhook.port}/hooks/edge")
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS", conn.get_uri())
    monkeypatch.setenv("EDGE_ALERT_CONN_ID", "alerts")
    with caplog.at_level(logging.INFO, logger="edge_training.notify"):
        on_task_retry(_context(ConnectionResetError("connection reset by peer")))
    [alert] = webhook.received
    assert alert.path == "/hooks/edge" and alert.authorization is None
    body = alert.body
    assert body["text"] == (
        "edge_training FAILED run=scheduled__2026-11-08 task=validate_data try=1 (will retry) "
        "error=ConnectionResetError: connection reset by peer"
    )
    assert (body["dag_id"], body["run_id"], body["task_id"]) == ("edge_training", "scheduled__2026-11-08",
                                                                "validate_data")  # fmt: skip
    assert (body["try_number"], body["will_retry"]) == (1, True)
    assert "Failure alert posted to connection 'alerts'" in caplog.text


def test_callback_without_alert_connection_only_logs(monkeypatch, caplog):
    monkeypatch.delenv("EDGE_ALERT_CONN_ID", raising=False)
    with caplog.at_level(logging.INFO, logger="edge_training.notify"):
        on_task_failure(_context(RuntimeError("boom")))
    assert "try=1 error=RuntimeError: boom" in caplog.text
    assert "posted" not in caplog.text


@pytest.mark.parametrize("callback", [on_task_failure, on_task_retry])
def test_unreachable_webhook_is_reported_not_raised(monkeypatch, caplog, callback):
    conn = Connection(conn_id="alerts", conn_type="http", host="http://127.0.0.1:9/hook?token=t0k3n")
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS", conn.get_uri())
    monkeypatch.setenv("EDGE_ALERT_CONN_ID", "alerts")
    with caplog.at_level(logging.INFO, logger="edge_training.notify"):
        callback(_context(RuntimeError("boom")))
    assert "Could not post the failure alert to connection 'alerts': ConnectError" in caplog.text
    assert "t0k3n" not in caplog.text
