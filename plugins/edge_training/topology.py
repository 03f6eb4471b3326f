"""Which tasks run at the edge site, and the task arguments that send them there.

The tasks that read training-data rows, reach the edge VM, or read the model from the site's storage run at the site:
with an edge worker there, central Airflow never needs a route into the site. Everything else runs centrally.
"""

from __future__ import annotations

from edge_training import config
from edge_training.exceptions import EdgeTrainingError

TOPOLOGIES = ("local", "edge")
# register_model belongs here too: it reads the model from the site's training output container with the site's blob
# connection (which only the site holds), and publishing it to the registry (outbound HTTPS) is the one way the
# model leaves the site. Any worker at the site may run it: nothing is read from another task's local disk.
EDGE_SITE_TASKS = ("validate_data", "check_edge_vm", "train_on_edge_vm", "register_model")


def edge_site_task_args(
    topology: str = config.EXECUTOR_TOPOLOGY,
    queue: str = config.EDGE_WORKER_QUEUE,
    executor: str = config.EDGE_WORKER_EXECUTOR,
) -> dict[str, str]:
    """Operator arguments for a task that must run at the edge site: none all-in-one, executor and queue otherwise."""
    if topology == "local":
        return {}
    if topology == "edge":
        return {"executor": executor, "queue": queue}
    raise EdgeTrainingError(
        f"Checked EDGE_EXECUTOR_TOPOLOGY: expected one of {', '.join(TOPOLOGIES)}, found {topology!r}. "
        "Unset it for the all-in-one setup, or set it to 'edge' when an edge worker serves the site."
    )
