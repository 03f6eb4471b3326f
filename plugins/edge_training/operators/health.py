"""Operator that checks the edge VM is fit to train before a job is sent to it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator

from edge_training import config
from edge_training.exceptions import EdgeVMHealthError
from edge_training.health import (
    HealthThresholds,
    blob_endpoint_from_connection_string,
    build_health_script,
    evaluate_health,
    parse_health_report,
)
from edge_training.redact import redact_url

if TYPE_CHECKING:
    from airflow.sdk import Context

    from edge_training.hooks.edge_vm import EdgeVMHook


class EdgeVMHealthCheckOperator(BaseOperator):
    """
    Check over SSH (pinned host key) that the edge VM can take a training job.

    One script runs on the VM and reports CPUs, load, free disk at the work directory, available memory, Python,
    Docker, GPU, its clock, and whether the VM itself reaches the blob endpoint (the VM reads the training data,
    not Airflow). Each check is logged on one line; any failed check raises ``EdgeVMHealthError`` listing all
    failures. Returns the report, plus ``host_key_fingerprint`` (of the key the VM presented) and ``verdict``, to
    XCom.

    :param ssh_conn_id: Airflow connection of the edge VM (ssh, with ``host_key`` pinned).
    :param wasb_conn_id: Airflow connection of the blob storage (wasb); only its endpoint is used.
    :param thresholds: limits to apply; ``None`` takes them from the ``EDGE_VM_*`` settings.
    :param work_dir: directory the training job uses on the VM; it must be writable and have free disk.
    :param script_timeout: seconds the health script may take on the VM.
    """

    template_fields: Sequence[str] = ("ssh_conn_id", "wasb_conn_id", "work_dir")
    ui_color = "#d9f2e6"

    def __init__(
        self,
        *,
        ssh_conn_id: str = config.VM_CONN_ID,
        wasb_conn_id: str = config.BLOB_CONN_ID,
        thresholds: HealthThresholds | None = None,
        work_dir: str = config.VM_WORK_DIR,
        script_timeout: float = 90,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ssh_conn_id = ssh_conn_id
        self.wasb_conn_id = wasb_conn_id
        self.thresholds = thresholds or HealthThresholds()
        self.work_dir = work_dir
        self.script_timeout = script_timeout

    @cached_property
    def hook(self) -> EdgeVMHook:
        # Imported here: paramiko and the SSH provider are not needed to parse the DAG.
        from edge_training.hooks.edge_vm import EdgeVMHook

        return EdgeVMHook(ssh_conn_id=self.ssh_conn_id, cmd_timeout=self.script_timeout)

    def blob_endpoint(self) -> str:
        """Blob service URL of ``wasb_conn_id``, resolved the way ``WasbHook`` does, without any query string."""
        conn = BaseHook.get_connection(self.wasb_conn_id)
        extra = conn.extra_dejson or {}
        connection_string = extra.get("connection_string") or extra.get("extra__wasb__connection_string")
        if connection_string:
            endpoint = blob_endpoint_from_connection_string(connection_string)
        elif conn.host or conn.login:
            from airflow.providers.microsoft.azure.utils import parse_blob_account_url

            endpoint = parse_blob_account_url(conn.host, conn.login)
        else:
            raise EdgeVMHealthError(
                f"Connection {self.wasb_conn_id!r} names no blob endpoint: set the 'connection_string' extra, "
                "or the host to the blob service URL (https://<account>.blob.<region>.<fqdn>), or the login to "
                "the storage account name."
            )
        # A SAS token in the URL (or a user:password) is a credential: it must not reach the VM or the logs.
        return redact_url(endpoint).rstrip("/")

    def execute(self, context: Context) -> dict[str, Any]:
        endpoint = self.blob_endpoint()
        hook = self.hook
        self.log.info(
            "Checking edge VM %s (pinned host key %s), work dir %s, blob endpoint %s",
            hook.address,
            hook.host_key_fingerprint(),
            self.work_dir,
            endpoint,
        )
        try:
            # The script goes in on stdin, so the logged command line stays short.
            script = build_health_script(endpoint, self.work_dir)
            result = hook.run("sh -s", timeout=self.script_timeout, input=script.encode())
            received_at = time.time()
            # The key the VM proved it holds on this connection, for the record (it matched the pin to get here).
            fingerprint = hook.presented_host_key_fingerprint()
        finally:
            hook.close()
        if result.exit_status != 0:
            raise EdgeVMHealthError(
                f"The health script exited with status {result.exit_status} on edge VM {hook.address}; its last "
                f"error output: {result.stderr.strip()[-500:] or '(none)'}. Run it by hand over SSH to see why."
            )
        try:
            report = parse_health_report(result.stdout)
        except ValueError as err:
            raise EdgeVMHealthError(str(err)) from err

        verdict = evaluate_health(report, self.thresholds, received_at)
        for check in verdict.checks:
            level = {"ok": self.log.info, "warning": self.log.warning}.get(check.status, self.log.error)
            level("[%s] %s", check.status.upper(), check.message)
        if not verdict.ok:
            listed = "\n".join(f"- {failure}" for failure in verdict.failures)
            raise EdgeVMHealthError(
                f"Edge VM {report.get('hostname')} ({hook.address}) is not fit to train: "
                f"{len(verdict.failures)} check(s) failed:\n{listed}"
            )
        return {**report, "host_key_fingerprint": fingerprint, "verdict": verdict.to_dict()}

    def on_kill(self) -> None:
        if "hook" in self.__dict__:
            self.hook.close()
