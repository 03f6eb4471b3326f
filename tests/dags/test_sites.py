"""Per-site pipelines from the sites file: one DAG per site, each task bound to its own site's connections, queue,
pool and model; the isolation check refuses a DAG whose task mixes two sites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_training.sites import SITE_BOUND_ATTRIBUTES, load_sites, site_mixing

ROOT = Path(__file__).resolve().parents[2]
EDGE_EXECUTORS = "LocalExecutor,airflow.providers.edge3.executors.EdgeExecutor"
TWO_SITES = """\
sites:
  - name: plant-a
  - name: plant-b
    blob_conn_id: stackhub_b_blob
    vm_conn_id: stackhub_b_vm
    container: readings-b
    schedule: "30 4 * * *"
"""
ATTRIBUTES = ("task_id", "executor", *SITE_BOUND_ATTRIBUTES, "container", "output_container", "upstream_task_ids",
              "trigger_rule")


def parse_dag_folder(sites_file: Path | None, **env: str) -> dict:
    """Parse the DAG folder in a fresh interpreter (settings are read at import) with ``sites_file``.

    :return: ``{"errors": {file: error}, "dags": {dag_id: {"schedule", "tags", "tasks": [{attribute: value}]}}}``.
    """
    probe = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "def _plain(v):\n"
        "    return sorted(v) if isinstance(v, (set, frozenset)) else v if v is None or isinstance(v, (str, int)) else str(v)\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "print(json.dumps({'errors': bag.import_errors, 'dags': {d.dag_id: {\n"
        "    'schedule': getattr(d.timetable, 'expression', None), 'tags': sorted(d.tags),\n"
        "    'model_param': d.params.get_param('model_name').schema if 'model_name' in d.params else None,\n"
        f"    'tasks': [{{a: _plain(getattr(t, a, None)) for a in {ATTRIBUTES!r}}} for t in d.tasks]}}\n"
        "    for d in bag.dags.values()}}))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "EDGE_SITES_FILE"}
    if sites_file is not None:
        environ["EDGE_SITES_FILE"] = str(sites_file)
    result = subprocess.run(
        [sys.executable, "-c", probe], env={**environ, **env}, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory) -> tuple[Path, dict]:
    """The DAG folder parsed with a two-site sites file, tasks sent to the sites' edge workers."""
    path = tmp_path_factory.mktemp("sites") / "sites.yaml"
    path.write_text(TWO_SITES)
    return path, parse_dag_folder(path, EDGE_EXECUTOR_TOPOLOGY="edge", AIRFLOW__CORE__EXECUTOR=EDGE_EXECUTORS,
                                  EDGE_GLOBAL_MODEL="true")


@pytest.fixture(scope="module")
def one_site() -> dict:
    return parse_dag_folder(None)


def test_without_a_sites_file_the_pipeline_keeps_its_dag_and_task_ids(one_site):
    assert one_site["errors"] == {}
    assert "edge_training_global" not in one_site["dags"]
    assert not any(dag_id.startswith("edge_training_") for dag_id in one_site["dags"])
    tasks = [t["task_id"] for t in one_site["dags"]["edge_training"]["tasks"]]
    assert sorted(tasks) == sorted([
        "validate_data", "check_edge_vm", "choose_training_backend", "train_on_edge_vm", "train_on_azureml",
        "register_model", "build_image",
    ])  # fmt: skip
    assert "site:default" not in one_site["dags"]["edge_training"]["tags"]
    assert one_site["dags"]["edge_training"]["schedule"] == "0 2 * * *"


def test_each_site_gets_its_own_pipeline_with_the_same_tasks(two_sites, one_site):
    path, parsed = two_sites
    assert parsed["errors"] == {}
    dags = parsed["dags"]
    assert "edge_training" not in dags
    assert {"edge_training_plant-a", "edge_training_plant-b"} <= set(dags)
    single = sorted(t["task_id"] for t in one_site["dags"]["edge_training"]["tasks"])
    for name in ("plant-a", "plant-b"):
        dag = dags[f"edge_training_{name}"]
        assert sorted(t["task_id"] for t in dag["tasks"]) == single
        assert f"site:{name}" in dag["tags"]
    # A site trains on its own schedule when the file gives one.
    assert dags["edge_training_plant-b"]["schedule"] == "30 4 * * *"


def test_every_task_of_a_site_uses_only_that_sites_connections_queue_pool_and_model(two_sites):
    path, parsed = two_sites
    sites = {site.name: site for site in load_sites(path)}
    for name, site in sites.items():
        tasks = {t["task_id"]: t for t in parsed["dags"][site.dag_id]["tasks"]}
        assert site_mixing(site.dag_id, [SimpleNamespace(**t) for t in tasks.values()], list(sites.values())) == []
        for task_id in ("validate_data", "check_edge_vm", "train_on_edge_vm", "register_model"):
            assert (tasks[task_id]["executor"], tasks[task_id]["queue"]) == ("EdgeExecutor", site.queue), task_id
        assert tasks["validate_data"]["wasb_conn_id"] == site.blob_conn_id
        assert tasks["validate_data"]["container"] == site.container
        assert (tasks["check_edge_vm"]["ssh_conn_id"], tasks["check_edge_vm"]["wasb_conn_id"]) == (
            site.vm_conn_id, site.blob_conn_id,
        )  # fmt: skip
        train = tasks["train_on_edge_vm"]
        assert (train["ssh_conn_id"], train["wasb_conn_id"], train["output_conn_id"], train["pool"]) == (
            site.vm_conn_id, site.blob_conn_id, site.output_conn_id, site.pool,
        )  # fmt: skip
        assert train["container"] == site.container
        # The site's own model: its champion is scored and moved by this site's runs only.
        assert train["model_name"] == tasks["register_model"]["model_name"] == site.model_name
        assert tasks["register_model"]["wasb_conn_id"] == site.output_conn_id
        # Central tasks stay central.
        assert tasks["build_image"]["queue"] == "default" and tasks["build_image"]["executor"] is None
    assert sites["plant-b"].container == "readings-b" and sites["plant-a"].container != "readings-b"


def test_the_isolation_check_refuses_a_dag_whose_task_mixes_two_sites(two_sites):
    from airflow.sdk import DAG

    from edge_training.operators.health import EdgeVMHealthCheckOperator
    from edge_training.operators.train import EdgeVMTrainingOperator

    path, _ = two_sites
    a, b = load_sites(path)
    with DAG(dag_id=a.dag_id, schedule=None, start_date=datetime(2026, 1, 1)) as mixed:
        # Site A's VM checking reachability of site B's storage: B's credentials would be handed to A's worker.
        EdgeVMHealthCheckOperator(task_id="check_edge_vm", ssh_conn_id=a.vm_conn_id, wasb_conn_id=b.blob_conn_id)
        # Site A's own connections but training in site B's VM pool.
        EdgeVMTrainingOperator(task_id="train_on_edge_vm", ssh_conn_id=a.vm_conn_id, wasb_conn_id=a.blob_conn_id,
                               output_conn_id=a.output_conn_id, model_name=a.model_name, pool=b.pool)  # fmt: skip
    problems = site_mixing(mixed.dag_id, mixed.tasks, [a, b])
    assert len(problems) == 2, problems
    assert problems[0].startswith(
        "edge_training_plant-a.check_edge_vm in site 'plant-a''s DAG uses more than its own site (site 'plant-a': "
        "ssh_conn_id='edge_vm_plant-a'; site 'plant-b': wasb_conn_id='stackhub_b_blob')"
    )
    assert "train_on_edge_vm" in problems[1] and "pool='edge_vm_plant-b'" in problems[1]


def test_an_invalid_sites_file_is_the_dag_files_import_error_naming_the_entry(tmp_path):
    path = tmp_path / "sites.yaml"
    path.write_text("sites:\n  - name: plant-a\n  - name: plant-b\n    queue: edge-plant-a\n")
    parsed = parse_dag_folder(path)
    (error,) = [e for f, e in parsed["errors"].items() if f.endswith("edge_training.py")]
    assert "SitesFileError" in error
    assert f"Checked the 2 site entries of {path}: 'edge-plant-a' is shared by site 'plant-a' (queue) and site " \
           "'plant-b' (queue)" in error  # fmt: skip
    assert not any(dag_id.startswith("edge_training") for dag_id in parsed["dags"])


def test_the_global_model_evaluates_at_each_site_with_that_sites_values_only(two_sites):
    path, parsed = two_sites
    sites = load_sites(path)
    tasks = {t["task_id"]: t for t in parsed["dags"]["edge_training_global"]["tasks"]}
    assert set(tasks) == {"pool_site_models", "evaluate_at_plant-a", "evaluate_at_plant-b", "promote_global_model"}
    assert site_mixing("edge_training_global", [SimpleNamespace(**t) for t in tasks.values()], sites) == []
    for site in sites:
        evaluate = tasks[f"evaluate_at_{site.name}"]
        assert (evaluate["executor"], evaluate["queue"], evaluate["wasb_conn_id"], evaluate["model_name"]) == (
            "EdgeExecutor", site.queue, site.blob_conn_id, site.model_name,
        )  # fmt: skip
        assert evaluate["upstream_task_ids"] == ["pool_site_models"]
    # Pooling and the decision are central; a site that could not evaluate does not stop the decision.
    assert tasks["pool_site_models"]["queue"] == tasks["promote_global_model"]["queue"] == "default"
    assert tasks["promote_global_model"]["trigger_rule"] == "all_done_min_one_success"
    assert set(tasks["promote_global_model"]["upstream_task_ids"]) >= {"evaluate_at_plant-a", "evaluate_at_plant-b"}


def test_the_rollback_form_names_the_sites_models(two_sites, one_site):
    path, parsed = two_sites
    models = [site.model_name for site in load_sites(path)]
    rollback = parsed["dags"]["edge_model_rollback"]
    assert rollback["model_param"]["enum"] == [*models, "predictive-maintenance-global"]
    assert rollback["tasks"][0]["model_name"] == "{{ params.model_name }}"
    # Without a sites file the form and the model are as they were.
    assert one_site["dags"]["edge_model_rollback"]["model_param"] is None
    assert one_site["dags"]["edge_model_rollback"]["tasks"][0]["model_name"] == "predictive-maintenance"


class DagProcessor:
    """A real ``airflow dag-processor`` over the project's DAG folder, one parse per :meth:`parse`, with its own
    metadata DB (SQLite in ``home``) and the given connections as environment variables."""

    def __init__(self, home: Path, sites_file: Path, connections: dict[str, dict], **env: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "EDGE_"))}
        self.env.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": str(ROOT / "plugins"),
            "EDGE_SITES_FILE": str(sites_file),
            **{f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in connections.items()},
            **env,
        })  # fmt: skip
        self.airflow("db", "migrate")

    def airflow(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        airflow = Path(sys.executable).with_name("airflow")
        done = subprocess.run([str(airflow), *args], env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode in ok, f"airflow {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def parse(self) -> tuple[dict[str, str], set[str]]:
        """Parse the folder once: ``({file: import error}, {active DAG id})`` as the metadata DB has them."""
        self.airflow("dag-processor", "--num-runs", "1")
        # list-import-errors exits 1 when it lists any.
        errors = {e["filepath"]: e["error"] for e in self.listed("dags", "list-import-errors", ok=(0, 1))}
        return errors, {d["dag_id"] for d in self.listed("dags", "list")}

    def listed(self, *command: str, ok: tuple[int, ...] = (0,)) -> list[dict]:
        """The rows of a listing command (``-o json``); none when it prints no JSON (it says "No data found")."""
        lines = [line for line in self.airflow(*command, "-o", "json", ok=ok).splitlines() if line.startswith("[")]
        return json.loads(lines[-1]) if lines else []


def test_the_dag_processor_names_a_site_whose_connection_airflow_does_not_have(tmp_path):
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text("sites:\n  - name: north\n  - name: south\n    vm_conn_id: south_vm_typo\n")
    defined = {"edge_blob_north": {"conn_type": "wasb"}, "edge_vm_north": {"conn_type": "ssh", "host": "127.0.0.1"},
               "edge_blob_south": {"conn_type": "wasb"}}  # fmt: skip
    processor = DagProcessor(tmp_path / "airflow", sites_file, defined)

    errors, dags = processor.parse()
    error = errors.get("edge_training.py", "")
    assert f"Checked the connection ids of the 2 site entries of the sites file {sites_file} against Airflow's " \
           "connections: entry 2 ('south') has vm_conn_id 'south_vm_typo' — no such connection." in error, errors  # fmt: skip
    assert not {"edge_training_north", "edge_training_south"} & dags

    # A connection in the metadata DB counts as much as one in the environment: the dag-processor resolves
    # connections the way the tasks will.
    processor.airflow("connections", "add", "south_vm_typo", "--conn-type", "ssh", "--conn-host", "127.0.0.1")
    errors, dags = processor.parse()
    assert "edge_training.py" not in errors, errors
    assert {"edge_training_north", "edge_training_south"} <= dags


def test_with_edge_workers_central_does_not_need_the_sites_connections(tmp_path):
    # The sites' connections are held by their edge workers only: central's dag-processor has none and parses.
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text(TWO_SITES)
    processor = DagProcessor(tmp_path / "airflow", sites_file, {}, EDGE_EXECUTOR_TOPOLOGY="edge",
                             AIRFLOW__CORE__EXECUTOR=EDGE_EXECUTORS)  # fmt: skip
    errors, dags = processor.parse()
    assert "edge_training.py" not in errors, errors
    assert {"edge_training_plant-a", "edge_training_plant-b"} <= dags
