"""Shared fixtures.

Kept cheap on purpose: nothing here imports Airflow or starts anything unless a test asks for the fixture.

* ``edge_stack`` (session): the real local edge stack (Azurite, sshd edge VM, registry) on free loopback ports in a
  temporary state folder, stopped when the session ends. Returns ``scripts.edge_stack.StackInfo``.
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


@pytest.fixture
def edge_env(monkeypatch: pytest.MonkeyPatch, edge_stack: StackInfo) -> StackInfo:
    for name, value in edge_stack.airflow_env.items():
        monkeypatch.setenv(name, value)
    return edge_stack
