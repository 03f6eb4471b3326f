"""Whether Airflow defines a connection, as the dag-processor sees it: the sites file's parse-time connection check.

The dag-processor parses DAG files under a supervisor that resolves connections the way tasks do (environment
variables, the secrets backend, the metadata DB), so a connection id it cannot resolve fails every task that uses it.
Elsewhere a parse cannot tell, and the check is not made:

- ``EDGE_EXECUTOR_TOPOLOGY=edge``: a site's connections are held by the site's edge worker only; central Airflow does
  not have them, by design, so their absence there says nothing.
- a worker parsing the file to run one task (Airflow's parsing context names its DAG): the task resolves its own
  connections when it runs, and looking up every site's connections at every task start would cost each start.
- a plain interpreter, ``DagBag`` or ``dag.test()``: no supervisor, so the metadata DB's connections are not seen.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from edge_training import config

TASK_RUNNER_MODULE = "airflow.sdk.execution_time.task_runner"


def parse_time_lookup(topology: str = config.EXECUTOR_TOPOLOGY) -> Callable[[str], bool] | None:
    """:func:`connection_defined` when this process is the dag-processor parsing DAG files (all-in-one topology),
    else None: this parse cannot tell whether a connection exists (see the module's docstring)."""
    if topology != "local":
        return None
    # The parse runs under a supervisor (dag-processor or task runner) once the supervisor set its channel; the task
    # runner module is only imported there, so a plain interpreter does not pay for importing it.
    runner = sys.modules.get(TASK_RUNNER_MODULE)
    if getattr(runner, "SUPERVISOR_COMMS", None) is None:
        return None
    from airflow.sdk import get_parsing_context

    if get_parsing_context().dag_id is not None:
        return None
    return connection_defined


def connection_defined(conn_id: str) -> bool:
    """Whether Airflow resolves ``conn_id`` (the connection itself is not kept)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        Connection.get(conn_id)
    except AirflowNotFoundException:
        return False
    return True
