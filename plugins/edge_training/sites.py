"""Edge sites: which sites one deployment trains at, and what each site's tasks may use.

A deployment with several sites (plants, hospitals, branches, each with its own Stack Hub blob storage and edge VM)
lists them in a sites file, ``include/sites.yaml`` or the file ``EDGE_SITES_FILE`` names::

    sites:
      - name: plant-a
        queue: edge-plant-a               # the queue of the edge worker at the site
        pool: edge_vm_plant-a             # the pool bounding trainings on the site's VM
        blob_conn_id: edge_blob_plant-a   # the site's Stack Hub blob storage (wasb)
        vm_conn_id: edge_vm_plant-a       # the site's edge VM (ssh, host key pinned)
        container: sensor-readings        # the site's data container
        schedule: "0 3 * * *"             # optional: the site's own training cron (default EDGE_TRAINING_SCHEDULE)
      - name: plant-b

Every key but ``name`` is optional; a missing one is derived from the name (shown above for ``plant-a``), see
:func:`parse_sites`. Each site gets a pipeline of its own (DAG ``edge_training_<name>``) whose tasks use only that
site's connections, queue and pool, and a registered model of its own (``<EDGE_MODEL_NAME>-<name>``), so one site's
failure, data or champion never touches another site's.

Without a sites file there is one site, :func:`default_site`: today's settings (``EDGE_BLOB_CONN_ID``,
``EDGE_VM_CONN_ID``, ``EDGE_VM_POOL``, ``EDGE_WORKER_QUEUE``, ``EDGE_BLOB_CONTAINER``, ``EDGE_MODEL_NAME``, …) and the
DAG id ``edge_training``.

Pure logic: no Airflow import. :func:`site_mixing` checks a parsed DAG's tasks (anything with the operator
attributes) for a task that uses two sites' connections, queues or pools.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edge_training import config
from edge_training.exceptions import EdgeTrainingError

# The sites file read when EDGE_SITES_FILE is unset (and only if it exists).
DEFAULT_SITES_FILE = config.INCLUDE_DIR / "sites.yaml"
# The pipeline's DAG id without a sites file, and the prefix of each site's DAG id with one.
DAG_ID = "edge_training"
# Lower-case letters, digits, '-' and '_', starting with a letter: valid in DAG ids, pool names, queue names and
# registered model names alike.
SITE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
# The central workers' queue: a site serving it would take central tasks (and another site's).
CENTRAL_QUEUE = "default"


class SitesFileError(EdgeTrainingError):
    """The sites file cannot be read or one of its entries is invalid."""


@dataclass(frozen=True)
class Site:
    """One edge site and everything its pipeline's tasks are sent to or use.

    :param name: Site name (``[a-z][a-z0-9_-]*``); ``default`` for the one site without a sites file.
    :param dag_id: The site's pipeline.
    :param queue: Queue of the edge worker at the site (used with ``EDGE_EXECUTOR_TOPOLOGY=edge``).
    :param pool: Pool bounding concurrent trainings on the site's edge VM.
    :param blob_conn_id: Connection of the site's blob storage (the data).
    :param vm_conn_id: Connection of the site's edge VM.
    :param output_conn_id: Connection that writes the site's training output container.
    :param container: The site's data container.
    :param output_container: The site's training output container.
    :param model_name: The site's registered model.
    :param schedule: The site's training cron.
    """

    name: str
    dag_id: str
    queue: str
    pool: str
    blob_conn_id: str
    vm_conn_id: str
    output_conn_id: str
    container: str
    output_container: str
    model_name: str
    schedule: str

    def bound_values(self) -> dict[str, str]:
        """The values no other site may use (what :func:`site_mixing` traces a task to its site by)."""
        return {
            "queue": self.queue,
            "pool": self.pool,
            "blob_conn_id": self.blob_conn_id,
            "vm_conn_id": self.vm_conn_id,
            "output_conn_id": self.output_conn_id,
            "model_name": self.model_name,
        }


# Keys a site entry may have (name is required, dag_id is not configurable: it is derived from the name).
_KEYS = tuple(f.name for f in fields(Site) if f.name != "dag_id")


def default_site() -> Site:
    """The one site of a deployment without a sites file: the ``EDGE_*`` settings, DAG id ``edge_training``."""
    return Site(
        name="default",
        dag_id=DAG_ID,
        queue=config.EDGE_WORKER_QUEUE,
        pool=config.VM_POOL,
        blob_conn_id=config.BLOB_CONN_ID,
        vm_conn_id=config.VM_CONN_ID,
        output_conn_id=config.OUTPUT_CONN_ID,
        container=config.BLOB_CONTAINER,
        output_container=config.OUTPUT_CONTAINER,
        model_name=config.MODEL_NAME,
        schedule=config.SCHEDULE,
    )


def _derived(name: str) -> dict[str, str]:
    """The settings of site ``name`` that its entry does not give."""
    return {
        "queue": f"edge-{name}",
        "pool": f"edge_vm_{name}",
        "blob_conn_id": f"edge_blob_{name}",
        "vm_conn_id": f"edge_vm_{name}",
        "container": config.BLOB_CONTAINER,
        "output_container": config.OUTPUT_CONTAINER,
        "model_name": f"{config.MODEL_NAME}-{name}",
        "schedule": config.SCHEDULE,
    }


def sites_file_path(environ: Mapping[str, str] | None = None) -> tuple[Path | None, bool]:
    """The sites file to read and whether it was named explicitly (``EDGE_SITES_FILE``).

    :return: ``(path, explicit)``; ``(None, False)`` when EDGE_SITES_FILE is unset and ``include/sites.yaml`` does not
        exist (one site, :func:`default_site`).
    """
    named = (os.environ if environ is None else environ).get("EDGE_SITES_FILE", "").strip()
    if named:
        path = Path(named)
        return (path if path.is_absolute() else config.PROJECT_ROOT / path), True
    return (DEFAULT_SITES_FILE, False) if DEFAULT_SITES_FILE.is_file() else (None, False)


def load_sites(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> list[Site]:
    """The deployment's sites: from ``path``, else the sites file (:func:`sites_file_path`), else :func:`default_site`.

    :raises SitesFileError: the file named by EDGE_SITES_FILE is missing, is not YAML, or an entry is invalid.
    """
    explicit = path is not None
    if path is None:
        path, explicit = sites_file_path(environ)
        if path is None:
            return [default_site()]
    path = Path(path)
    if not path.is_file():
        raise SitesFileError(
            f"Checked the sites file {path}{' (EDGE_SITES_FILE)' if explicit else ''}: it does not exist. "
            "Create it (see include/sites.example.yaml), or unset EDGE_SITES_FILE for one site with the EDGE_* "
            "settings."
        )
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SitesFileError(
            f"Checked the sites file {path}: it is not valid YAML{where} ({getattr(err, 'problem', None) or err}). "
            "Fix the file; each site is an entry of the `sites:` list."
        ) from None
    return parse_sites(document, source=str(path))


def parse_sites(document: Any, source: str = "the sites file") -> list[Site]:
    """Validate a sites document (``{"sites": [{"name": ..., ...}, ...]}``) and return its sites.

    A missing key is derived from the site's name: queue ``edge-<name>``, pool ``edge_vm_<name>``, connections
    ``edge_blob_<name>`` / ``edge_vm_<name>``, output connection = the blob connection, containers and schedule the
    ``EDGE_*`` settings, model ``<EDGE_MODEL_NAME>-<name>``.

    Refused, all problems in one message naming each bad entry: no site, an entry that is not a mapping, a missing or
    malformed name, an unknown key, a value that is not a non-empty string, two sites with the same name, and a queue,
    pool, connection id or model name that two sites share (it would let one site's tasks use the other's
    connections, share its worker or VM, or move its champion) or the central queue ``default``.

    :raises SitesFileError: what was checked, what was found, what to do.
    """
    entries = document.get("sites") if isinstance(document, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise SitesFileError(
            f"Checked {source} for a non-empty `sites:` list: found {_kind(entries if entries is not None else document)}. "
            "List the sites as `sites:` entries, each a mapping with at least `name:`, or remove the file for one site "
            "with the EDGE_* settings."
        )
    problems: list[str] = []
    sites: list[Site] = []
    for index, entry in enumerate(entries, start=1):
        site = _parse_entry(index, entry, problems)
        if site is not None:
            sites.append(site)
    problems += _shared_values(sites)
    if problems:
        raise SitesFileError(
            f"Checked the {len(entries)} site entries of {source}: "
            + "; ".join(problems)
            + ". Fix these entries: each site needs its own name, queue, pool, connection ids and model."
        )
    return sites


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return type(value).__name__ if not isinstance(value, str) else f"the text {value[:40]!r}"


def _parse_entry(index: int, entry: Any, problems: list[str]) -> Site | None:
    if not isinstance(entry, Mapping):
        problems.append(f"entry {index} is {_kind(entry)}, not a mapping with `name:`")
        return None
    name = entry.get("name")
    label = f"entry {index}" + (f" ({name!r})" if isinstance(name, str) else "")
    if not isinstance(name, str) or not SITE_NAME.fullmatch(name):
        problems.append(
            f"{label} has name {name!r}: a site name is 1-40 lower-case letters, digits, '-' or '_', starting with "
            "a letter"
        )
        return None
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if unknown:
        problems.append(f"{label} has unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
    values = _derived(name)
    for key in _KEYS[1:]:
        if key not in entry:
            continue
        value = entry[key]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{label} has {key}: {value!r}; expected a non-empty string")
            continue
        values[key] = value.strip()
    values.setdefault("output_conn_id", values["blob_conn_id"])
    if values["queue"] == CENTRAL_QUEUE:
        problems.append(
            f"{label} has queue {CENTRAL_QUEUE!r}, the central workers' queue: its edge worker would take central "
            "tasks; give the site a queue of its own"
        )
    return Site(name=name, dag_id=f"{DAG_ID}_{name}", **values)


def _shared_values(sites: Sequence[Site]) -> list[str]:
    """Problems for names and site-bound values (queue, pool, connection ids, model) that two sites share."""
    problems: list[str] = []
    seen_names: set[str] = set()
    for site in sites:
        if site.name in seen_names:
            problems.append(f"site name {site.name!r} appears twice")
        seen_names.add(site.name)
    owners: dict[str, list[tuple[str, str]]] = {}
    for site in sites:
        # The same value twice within one site (blob and output connection) is fine; across sites it is not.
        for value, keys in _by_value(site).items():
            owners.setdefault(value, []).append((site.name, "/".join(keys)))
    for value, users in owners.items():
        if len({name for name, _ in users}) > 1:
            problems.append(
                f"{value!r} is shared by " + " and ".join(f"site {name!r} ({keys})" for name, keys in users)
            )
    return problems


def _by_value(site: Site) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in site.bound_values().items():
        grouped.setdefault(value, []).append(key)
    return grouped


# The connection ids of a site's entry, in the order its problems are named.
CONNECTION_KEYS = ("blob_conn_id", "vm_conn_id", "output_conn_id")


def undefined_connections(sites: Sequence[Site], is_defined: Callable[[str], bool],
                          source: str = "the sites file") -> None:  # fmt: skip
    """Refuse sites whose connection ids name no Airflow connection, each bad entry named at once.

    Each distinct connection id is looked up once. A site whose connection is missing would fail every run at its
    first task ("The conn_id ... isn't defined"); refused here it is one import error that says which entry and
    which key, before any run.

    :param sites: the sites of ``source`` in file order (:func:`parse_sites`), so entry numbers match the file.
    :param is_defined: whether Airflow resolves a connection id (the dag-processor's own lookup).
    :raises SitesFileError: naming every site, key and connection id not found.
    """
    known: dict[str, bool] = {}
    problems = []
    for index, site in enumerate(sites, start=1):
        missing = []
        for key in CONNECTION_KEYS:
            conn_id = getattr(site, key)
            if conn_id not in known:
                known[conn_id] = is_defined(conn_id)
            if not known[conn_id] and (key != "output_conn_id" or conn_id != site.blob_conn_id):
                missing.append(f"{key} {conn_id!r}")
        if missing:
            problems.append(f"entry {index} ({site.name!r}) has {' and '.join(missing)}")
    if problems:
        raise SitesFileError(
            f"Checked the connection ids of the {len(sites)} site entries of {source} against Airflow's connections: "
            + "; ".join(problems)
            + " — no such connection. Create each connection (Admin > Connections, `airflow connections add`, an "
            "AIRFLOW_CONN_<ID> variable or the secrets backend) or correct the id in the entry."
        )


# Operator attributes that name something of one site: connections, routing, the registered model.
SITE_BOUND_ATTRIBUTES = ("ssh_conn_id", "wasb_conn_id", "output_conn_id", "pool", "queue", "model_name")


def site_mixing(dag_id: str, tasks: Iterable[Any], sites: Sequence[Site]) -> list[str]:
    """What is wrong with a DAG whose tasks use more than one site: one line per offending task, empty if none.

    A task's attributes (:data:`SITE_BOUND_ATTRIBUTES`) are traced to the site whose value they hold. Refused: a task
    that uses two sites (say site A's VM connection and site B's blob connection), and in a site's own DAG (its
    ``dag_id``) a task that uses another site's anything.

    :param dag_id: the DAG's id.
    :param tasks: its tasks (``dag.tasks``); only ``task_id`` and the attributes above are read.
    :param sites: the deployment's sites (:func:`load_sites`).
    """
    owner = next((s.name for s in sites if s.dag_id == dag_id), None)
    index: dict[str, tuple[str, str]] = {}
    for site in sites:
        for key, value in site.bound_values().items():
            index.setdefault(value, (site.name, key))
    problems = []
    for task in tasks:
        used: dict[str, list[str]] = {}
        for attr in SITE_BOUND_ATTRIBUTES:
            value = getattr(task, attr, None)
            if isinstance(value, str) and value in index:
                used.setdefault(index[value][0], []).append(f"{attr}={value!r}")
        foreign = sorted(set(used) - {owner}) if owner is not None else []
        if len(used) > 1 or foreign:
            uses = "; ".join(f"site {name!r}: {', '.join(attrs)}" for name, attrs in sorted(used.items()))
            whose = f" in site {owner!r}'s DAG" if owner is not None else ""
            problems.append(
                f"{dag_id}.{task.task_id}{whose} uses more than its own site ({uses}). Give each task the "
                "connections, queue, pool and model of the site its DAG serves (build it from that Site)."
            )
    return problems
