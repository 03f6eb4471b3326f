"""Failure alerts: one line per failed task, logged and optionally posted to a webhook.

The summary names the DAG, run, task, try and the error class with the first line of its message, cut to a
bounded length. It never carries XCom values or log excerpts, so no data row can travel in an alert.

Set ``EDGE_ALERT_CONN_ID`` to an Airflow ``http`` connection (host = webhook URL or host name, schema = http/https,
optional port, login/password for basic auth, extra = JSON headers) to also POST ``{"text": <summary>, ...}`` there.
Unset, the summary is only logged.
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
    dag_id: str, run_id: str, task_id: str, try_number: int | None, error: BaseException | str | None
) -> str:
    """One-line summary of a failed task, e.g.
    ``edge_training FAILED run=manual__2026-11-08 task=train_on_edge_vm try=3 error=EdgeVMJobError: ...``.
    """
    if isinstance(error, BaseException):
        described = f"{type(error).__name__}: {first_line(str(error))}".rstrip(": ")
    else:
        described = first_line(error or "") or "unknown (no exception in the context)"
    tried = try_number if try_number is not None else "?"
    return f"{dag_id} FAILED run={run_id} task={task_id} try={tried} error={described}"


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
    """Task ``on_failure_callback``: log a one-line summary, then post it when ``EDGE_ALERT_CONN_ID`` is set.

    Never raises: an alert that cannot be sent must not hide the task's own failure.
    """
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or "?"
    run_id = getattr(ti, "run_id", None) or context.get("run_id") or "?"
    task_id = getattr(ti, "task_id", None) or "?"
    try_number = getattr(ti, "try_number", None)
    summary = failure_summary(dag_id, run_id, task_id, try_number, context.get("exception"))
    log.error("%s", summary)

    conn_id = os.getenv("EDGE_ALERT_CONN_ID", "").strip()
    if not conn_id:
        return
    payload = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "try_number": try_number}
    try:
        post_alert(conn_id, summary, payload)
    except Exception as err:  # noqa: BLE001 - reported, never raised (see docstring)
        # Only the class and first line: an HTTP error's text could echo the URL with a token in it.
        log.warning(
            "Could not post the failure alert to connection %r: %s. Check the connection's host and credentials.",
            conn_id, type(err).__name__,
        )  # fmt: skip
    else:
        log.info("Failure alert posted to connection %r", conn_id)
