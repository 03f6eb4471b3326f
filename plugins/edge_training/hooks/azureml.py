"""Azure Machine Learning workspace: an ``MLClient`` from an Airflow ``azure`` connection, and the job calls.

The connection (type ``azure``, default id ``azureml_default``) authenticates like every Azure provider hook:
a service principal (login = client id, password = secret, extra ``tenantId``), or, without login and password,
``DefaultAzureCredential`` (managed identity with extra ``managed_identity_client_id``, workload identity with
``workload_identity_tenant_id``). Extra ``use_azure_identity_object: true`` is required (azure-ai-ml needs an
azure-identity credential). The workspace is named by the extras ``subscriptionId``, ``resource_group_name`` and
``workspace_name``.

azure-ai-ml is imported only when a client is built: importing this module costs nothing at DAG parse time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from airflow.providers.microsoft.azure.hooks.base_azure import AzureBaseHook

from edge_training.azureml_naming import studio_url
from edge_training.exceptions import AzureMLAuthError, AzureMLError, AzureMLWorkspaceNotFoundError

# ARM error codes of a 404 that means "the workspace (or its resource group/subscription) is not there",
# as opposed to "this job/model does not exist yet".
_MISSING_PARENT_CODES = frozenset(
    {"ParentResourceNotFound", "ResourceNotFound", "ResourceGroupNotFound", "SubscriptionNotFound", "WorkspaceNotFound"}
)


@dataclass(frozen=True)
class Workspace:
    """Which Azure ML workspace a connection points at."""

    subscription_id: str
    resource_group: str
    name: str

    def __str__(self) -> str:
        return f"{self.name} (resource group {self.resource_group}, subscription {self.subscription_id})"


@dataclass(frozen=True)
class JobState:
    """What Airflow needs to know about an Azure ML job.

    :param name: Job name.
    :param status: The service's status string (``Running``, ``Completed``, ``NotResponding``...).
    :param studio_url: The job's page in Azure ML studio.
    :param tags: The job's tags.
    :param compute: The compute target the job runs on.
    """

    name: str
    status: str
    studio_url: str | None
    tags: dict[str, str] = field(default_factory=dict)
    compute: str | None = None


class AzureMLHook(AzureBaseHook):
    """Talk to one Azure ML workspace through azure-ai-ml.

    :param azureml_conn_id: Airflow connection of type ``azure`` naming the workspace (see the module docstring).
    """

    conn_name_attr = "azureml_conn_id"
    default_conn_name = "azureml_default"
    conn_type = "azure"
    hook_name = "Azure ML workspace"

    # An azure-core transport for every REST call of the client (None: azure-core's default). Tests point the
    # real SDK at a local fake of the service with it.
    transport: Any = None

    def __init__(self, azureml_conn_id: str = default_conn_name) -> None:
        super().__init__(sdk_client=None, conn_id=azureml_conn_id)
        self.azureml_conn_id = azureml_conn_id

    @cached_property
    def workspace(self) -> Workspace:
        extras = self.get_connection(self.conn_id).extra_dejson
        names = {key: str(extras.get(key) or "").strip() for key in ("subscriptionId", "resource_group_name", "workspace_name")}
        missing = [key for key, value in names.items() if not value]
        if missing:
            raise AzureMLError(
                f"Checked connection {self.conn_id!r} for the Azure ML workspace: extra {', '.join(missing)} is "
                "missing. Set the extras subscriptionId, resource_group_name and workspace_name."
            )
        return Workspace(names["subscriptionId"], names["resource_group_name"], names["workspace_name"])

    def get_credential(self, *, conn=None):
        conn = conn or self.get_connection(self.conn_id)
        # Checked first: without it the provider builds a legacy credential, which azure-ai-ml cannot use (and
        # the legacy service principal credential already calls Entra ID while being built).
        if str(conn.extra_dejson.get("use_azure_identity_object", "")).lower() not in ("true", "1"):
            raise AzureMLError(
                f"Checked connection {self.conn_id!r} for the extra use_azure_identity_object: it is not true, so "
                "the Azure provider would build a legacy credential that azure-ai-ml cannot use. Add the extra "
                "\"use_azure_identity_object\": true to the connection."
            )
        return super().get_credential(conn=conn)

    @cached_property
    def client(self):
        """The ``MLClient`` (built on first use; building it makes no request)."""
        from azure.ai.ml import MLClient

        # azure-core logs every request and response header block at INFO: that would drown the task log.
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        kwargs = {} if self.transport is None else {"transport": self.transport}
        ws = self.workspace
        return MLClient(
            credential=self.get_credential(),
            subscription_id=ws.subscription_id,
            resource_group_name=ws.resource_group,
            workspace_name=ws.name,
            **kwargs,
        )

    def get_conn(self):
        return self.client

    # -- errors --------------------------------------------------------------------------------------------

    @contextmanager
    def translate_errors(self, action: str) -> Iterator[None]:
        """Turn the SDK's auth and missing-workspace errors into ours (which fail the task without retries).

        Other errors pass through unchanged: throttling (429) and service errors (5xx) are already retried with
        backoff inside azure-core; what still fails after that is left to the task's retries.
        """
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

        try:
            yield
        except ClientAuthenticationError as err:
            raise AzureMLAuthError(
                f"Azure ML refused the credentials of connection {self.conn_id!r} while trying to {action} in "
                f"workspace {self.workspace} (HTTP {err.status_code}: {_short(err)}). Check the connection's "
                "client id, secret and tenantId (or the managed identity), and that the identity has a role such "
                "as 'AzureML Data Scientist' on the workspace. Retrying cannot fix this."
            ) from None
        except ResourceNotFoundError as err:
            if self.is_missing_workspace(err):
                raise AzureMLWorkspaceNotFoundError(
                    f"Azure ML workspace {self.workspace} was not found while trying to {action} ({_short(err)}). "
                    f"Fix the extras subscriptionId, resource_group_name and workspace_name of connection "
                    f"{self.conn_id!r}."
                ) from None
            raise
        except HttpResponseError as err:
            if err.status_code == 403:
                raise AzureMLAuthError(
                    f"Azure ML denied connection {self.conn_id!r} the right to {action} in workspace "
                    f"{self.workspace} (HTTP 403: {_short(err)}). Give the identity a role such as 'AzureML Data "
                    "Scientist' on the workspace. Retrying cannot fix this."
                ) from None
            raise

    @staticmethod
    def is_missing_workspace(err: Exception) -> bool:
        code = getattr(getattr(err, "error", None), "code", None)
        return code in _MISSING_PARENT_CODES

    # -- jobs ----------------------------------------------------------------------------------------------

    def get_job(self, name: str) -> JobState | None:
        """The job's state, or None if the workspace has no job of that name."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with self.translate_errors(f"look up job {name}"):
                job = self.client.jobs.get(name)
        except ResourceNotFoundError:
            return None
        return self._state(job)

    def create_job(self, job) -> JobState:
        """Submit a job entity (``azure.ai.ml.command(...)``); uploads its code folder first if needed."""
        with self.translate_errors(f"submit job {job.name}"):
            created = self.client.jobs.create_or_update(job)
        return self._state(created)

    def cancel_job(self, name: str) -> None:
        with self.translate_errors(f"cancel job {name}"):
            self.client.jobs.begin_cancel(name).result()

    def job_error(self, name: str) -> str | None:
        """The service's error text of a failed job (it lives in run history, not in the job resource)."""
        from azure.ai.ml.exceptions import JobException

        try:
            with self.translate_errors(f"read the error of job {name}"):
                self.client.jobs.stream(name)
        except JobException as err:
            return _service_error_text(str(err))
        return None

    def _state(self, job) -> JobState:
        status = getattr(job, "status", None) or "Unknown"
        status = str(getattr(status, "value", status))  # the SDK returns a JobStatus enum for known states
        ws = self.workspace
        return JobState(
            name=job.name,
            status=status,
            studio_url=getattr(job, "studio_url", None) or studio_url(ws.subscription_id, ws.resource_group, ws.name, job.name),
            tags=dict(getattr(job, "tags", None) or {}),
            compute=getattr(job, "compute", None),
        )


def _short(err: Exception, limit: int = 300) -> str:
    message = getattr(getattr(err, "error", None), "message", None) or str(err).splitlines()[0]
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _service_error_text(text: str) -> str:
    """Pull ``message`` (and ``code``) out of the SDK's failed-job exception, which embeds the error as JSON."""
    import json
    import re

    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            error = json.loads(match.group(0))
        except ValueError:
            error = None
        while isinstance(error, dict) and isinstance(error.get("error"), dict):
            error = error["error"]
        if isinstance(error, dict) and error.get("message"):
            return f"({error.get('code', 'Error')}) {error['message']}"
    return text.strip()[:1000]
