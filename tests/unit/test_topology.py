"""Task arguments that send the data and VM tasks to the edge worker."""

from __future__ import annotations

import pytest

from edge_training.exceptions import EdgeTrainingError
from edge_training.topology import edge_site_task_args


def test_all_in_one_adds_nothing():
    assert edge_site_task_args("local", "edge", "EdgeExecutor") == {}


def test_edge_names_the_executor_and_the_queue():
    assert edge_site_task_args("edge", "site-a", "EdgeExecutor") == {"executor": "EdgeExecutor", "queue": "site-a"}


def test_unknown_topology_names_the_setting_and_the_choices():
    with pytest.raises(EdgeTrainingError, match=r"EDGE_EXECUTOR_TOPOLOGY.*local, edge.*'cloud'"):
        edge_site_task_args("cloud", "edge", "EdgeExecutor")
