"""Shared fixtures.

Kept cheap on purpose: nothing here imports Airflow or starts anything unless a test asks for the fixture.

* ``edge_stack`` (session): the real local edge stack (Azurite, sshd edge VM, registry) on free loopback ports in a
  temporary state folder, stopped when the session ends. Returns ``scripts.edge_stack.StackInfo``.
* ``mlflow_server`` (session): the central MLflow tracking server with basic auth (``scripts/mlflow_server.py``)
  on a free loopback port in a temporary state folder, stopped when the session ends. Returns the started
  ``scripts.mlflow_server.MlflowServer``: ``.info()`` gives the URI and each side's credentials, and
  ``.provision(models=[name])`` creates a model and grants the site and central users on it.
* ``edge_env`` (function): ``edge_stack`` plus every Airflow connection / setting of the stack put in the
  environment (``AIRFLOW_CONN_EDGE_BLOB``, ``AIRFLOW_CONN_EDGE_VM``, ``AIRFLOW_CONN_IMAGE_REGISTRY``,
  ``MLFLOW_TRACKING_URI``, ``EDGE_*``), undone after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from scripts.edge_stack import StackInfo
    from scripts.mlflow_server import MlflowServer


@pytest.fixture(scope="session")
def edge_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    from scripts.edge_stack import EdgeStack

    stack = EdgeStack(tmp_path_factory.mktemp("edge-stack"), free_ports=True)
    try:
        info = stack.start()
    except BaseException:
        # A half-started stack must not outlive the session.
        stack.stop()
        raise
    try:
        yield info
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    from scripts.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), port=None, models=())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def edge_env(monkeypatch: pytest.MonkeyPatch, edge_stack: StackInfo) -> StackInfo:
    for name, value in edge_stack.airflow_env.items():
        monkeypatch.setenv(name, value)
    return edge_stack
