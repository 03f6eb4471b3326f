"""Failure alerts: one line per failed try of a task, logged and optionally posted to a webhook.

Two task callbacks send it: :func:`on_task_retry` (``on_retry_callback``) after a try that Airflow will retry, and
:func:`on_task_failure` (``on_failure_callback``) after the try that fails the task, so every failed try alerts once.
The summary names the DAG, run, task, try, whether the task will be retried, and the error class with the first line
of its message (URL queries, account keys and SAS signatures removed), cut to a bounded length. It never carries XCom
values or log excerpts, so no data row can travel in an alert.

Set ``EDGE_ALERT_CONN_ID`` to an Airflow ``http`` connection (host = webhook URL or host name, schema = http/https,
optional port, login/password for basic auth, extra = JSON headers) to also POST ``{"text": <summary>, "dag_id",
"run_id", "task_id", "try_number", "will_retry"}`` there. Unset, the summary is only logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 300
WEBHOOK_TIMEOUT_S = 10.0


def first_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """First non-empty line of ``text``, cut to ``limit`` characters (with ``...`` when cut)."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failure_summary(
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int | None,
    error: BaseException | str | None,
    will_retry: bool = False,
) -> str:
    """One-line summary of a failed try, e.g.
    ``edge_training FAILED run=manual__2026-11-08 task=train_on_edge_vm try=3 error=EdgeVMJobError: ...``, or with
    ``(will retry)`` after the try number when Airflow runs the task again.

    The error's first line is redacted (URL queries, ``AccountKey=``/``SharedAccessSignature=`` values, ``sig=``)
    before it is cut, so a credential in an exception text does not travel in the alert.
    """
    from edge_training.redact import redact_text

    if isinstance(error, BaseException):
        described = f"{type(error).__name__}: {first_line(redact_text(str(error)))}".rstrip(": ")
    else:
        described = first_line(redact_text(error or "")) or "unknown (no exception in the context)"
    tried = try_number if try_number is not None else "?"
    retrying = " (will retry)" if will_retry else ""
    return f"{dag_id} FAILED run={run_id} task={task_id} try={tried}{retrying} error={described}"


def webhook_request(
    host: str | None,
    schema: str | None,
    port: int | None,
    login: str | None,
    password: str | None,
    extra: Mapping[str, Any] | None,
) -> tuple[str, dict[str, str], tuple[str, str] | None]:
    """URL, headers and basic-auth pair of an ``http`` connection, read the way Airflow's HttpHook reads it."""
    if not host:
        raise ValueError(
            "Checked the alert connection's host: it is empty. Set it to the webhook URL "
            "(e.g. https://hooks.example.com/services/T000/B000) or unset EDGE_ALERT_CONN_ID to only log alerts."
        )
    if "://" in host:
        url = host
    else:
        url = f"{schema or 'https'}://{host}"
        if port:
            url = f"{url}:{port}"
    headers = {str(k): str(v) for k, v in (extra or {}).items()}
    auth = (login, password or "") if login else None
    return url, headers, auth


def post_alert(conn_id: str, summary: str, payload: Mapping[str, Any]) -> None:
    """POST the alert to the webhook of Airflow connection ``conn_id``; raises on an HTTP error."""
    import httpx
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    url, headers, auth = webhook_request(
        conn.host, conn.schema, conn.port, conn.login, conn.password, conn.extra_dejson
    )
    response = httpx.post(url, json={"text": summary, **payload}, headers=headers, auth=auth,
                          timeout=WEBHOOK_TIMEOUT_S)  # fmt: skip
    response.raise_for_status()


def on_task_failure(context: Mapping[str, Any]) -> None:
    """Task ``on_failure_callback``: the try failed the task (no retry left, or an error not worth retrying).

    Logs the one-line summary, then posts it when ``EDGE_ALERT_CONN_ID`` is set. Never raises: an alert that cannot
    be sent must not hide the task's own failure.
    """
    _alert(context, will_retry=False)


def on_task_retry(context: Mapping[str, Any]) -> None:
    """Task ``on_retry_callback``: the try failed and Airflow will run the task again after its retry delay.

    The same summary as :func:`on_task_failure`, marked ``(will retry)`` (``"will_retry": true`` in the posted body),
    so each failed try of a task sends exactly one alert. Never raises.
    """
    _alert(context, will_retry=True)


def _alert(context: Mapping[str, Any], will_retry: bool) -> None:
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or "?"
    run_id = getattr(ti, "run_id", None) or context.get("run_id") or "?"
    task_id = getattr(ti, "task_id", None) or "?"
    try_number = getattr(ti, "try_number", None)
    summary = failure_summary(dag_id, run_id, task_id, try_number, context.get("exception"), will_retry=will_retry)
    (log.warning if will_retry else log.error)("%s", summary)

    conn_id = os.getenv("EDGE_ALERT_CONN_ID", "").strip()
    if not conn_id:
        return
    payload = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "try_number": try_number,
               "will_retry": will_retry}  # fmt: skip
    try:
        post_alert(conn_id, summary, payload)
    except Exception as err:  # noqa: BLE001 - reported, never raised (see the callbacks' docstrings)
        # Only the class: an HTTP error's text could echo the URL with a token in it.
        log.warning(
            "Could not post the failure alert to connection %r: %s. Check the connection's host and credentials.",
            conn_id, type(err).__name__,
        )  # fmt: skip
    else:
        log.info("Failure alert posted to connection %r", conn_id)
