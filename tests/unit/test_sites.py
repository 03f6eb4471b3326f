"""The sites file: one site with today's settings without it, each site's own values with it, bad entries named."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edge_training import config
from edge_training.sites import (
    SitesFileError,
    default_site,
    load_sites,
    parse_sites,
    site_mixing,
    sites_file_path,
    undefined_connections,
)


def _sites(*entries: dict) -> list:
    return parse_sites({"sites": list(entries)}, source="sites.yaml")


def test_without_a_sites_file_there_is_one_site_with_the_edge_settings(tmp_path, monkeypatch):
    monkeypatch.setattr("edge_training.sites.DEFAULT_SITES_FILE", tmp_path / "absent.yaml")
    assert sites_file_path({}) == (None, False)
    (site,) = load_sites(environ={})
    assert site == default_site()
    assert site.dag_id == "edge_training"
    assert (site.blob_conn_id, site.vm_conn_id, site.pool, site.queue, site.container, site.model_name) == (
        config.BLOB_CONN_ID, config.VM_CONN_ID, config.VM_POOL, config.EDGE_WORKER_QUEUE, config.BLOB_CONTAINER,
        config.MODEL_NAME,
    )  # fmt: skip


def test_a_missing_key_is_derived_from_the_site_name():
    (site,) = _sites({"name": "plant-a"})
    assert site.dag_id == "edge_training_plant-a"
    assert site.queue == "edge-plant-a"
    assert site.pool == "edge_vm_plant-a"
    assert (site.blob_conn_id, site.vm_conn_id, site.output_conn_id) == (
        "edge_blob_plant-a", "edge_vm_plant-a", "edge_blob_plant-a",
    )  # fmt: skip
    assert site.model_name == f"{config.MODEL_NAME}-plant-a"
    assert (site.container, site.schedule) == (config.BLOB_CONTAINER, config.SCHEDULE)


def test_given_keys_win():
    (site,) = _sites({"name": "b", "queue": "q-b", "pool": "p-b", "blob_conn_id": "blob_b", "vm_conn_id": "vm_b",
                      "output_conn_id": "out_b", "container": "data-b", "output_container": "models-b",
                      "model_name": "pm-b", "schedule": "0 4 * * *"})  # fmt: skip
    assert (site.queue, site.pool, site.blob_conn_id, site.vm_conn_id, site.output_conn_id) == (
        "q-b", "p-b", "blob_b", "vm_b", "out_b",
    )  # fmt: skip
    assert (site.container, site.output_container, site.model_name, site.schedule) == (
        "data-b", "models-b", "pm-b", "0 4 * * *",
    )  # fmt: skip


def test_two_sites_may_use_the_same_container_name_in_their_own_storage():
    a, b = _sites({"name": "a", "container": "sensor-readings"}, {"name": "b", "container": "sensor-readings"})
    assert a.container == b.container and a.blob_conn_id != b.blob_conn_id


def test_a_duplicate_name_is_refused():
    with pytest.raises(SitesFileError, match=r"Checked the 2 site entries of sites.yaml: site name 'a' appears twice"):
        _sites({"name": "a"}, {"name": "a", "queue": "other", "pool": "other", "blob_conn_id": "x", "vm_conn_id": "y",
                               "model_name": "z"})  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("queue", "edge-shared", "queue"),
        ("pool", "vm-pool", "pool"),
        ("blob_conn_id", "edge_blob", "blob_conn_id/output_conn_id"),
        ("vm_conn_id", "edge_vm", "vm_conn_id"),
        ("model_name", "pm", "model_name"),
    ],
)
def test_a_value_two_sites_share_is_refused_naming_both(key, value, what):
    with pytest.raises(SitesFileError) as err:
        _sites({"name": "a", key: value}, {"name": "b", key: value})
    assert f"{value!r} is shared by site 'a' ({what}) and site 'b' ({what})" in str(err.value)
    assert "Fix these entries" in str(err.value)


def test_one_sites_output_connection_may_be_its_blob_connection_but_not_another_sites():
    _sites({"name": "a", "output_conn_id": "edge_blob_a"})
    with pytest.raises(SitesFileError, match=r"'edge_blob_a' is shared by site 'a' \(blob_conn_id/output_conn_id\) "
                                             r"and site 'b' \(output_conn_id\)"):  # fmt: skip
        _sites({"name": "a"}, {"name": "b", "output_conn_id": "edge_blob_a"})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "Plant A"}, r"entry 1 \('Plant A'\) has name 'Plant A': a site name is 1-40 lower-case"),
        ({"queue": "q"}, r"entry 1 has name None"),
        ("plant-a", r"entry 1 is the text 'plant-a', not a mapping with `name:`"),
        ({"name": "a", "qeue": "q"}, r"entry 1 \('a'\) has unknown key\(s\) qeue \(known: name, queue, pool"),
        ({"name": "a", "pool": 3}, r"entry 1 \('a'\) has pool: 3; expected a non-empty string"),
        ({"name": "a", "vm_conn_id": " "}, r"entry 1 \('a'\) has vm_conn_id: ' '; expected a non-empty string"),
        ({"name": "a", "queue": "default"}, r"entry 1 \('a'\) has queue 'default', the central workers' queue"),
    ],
)
def test_a_bad_entry_is_named_with_what_was_found(entry, message):
    with pytest.raises(SitesFileError, match=message):
        _sites(entry)


def test_every_bad_entry_is_named_at_once():
    with pytest.raises(SitesFileError) as err:
        _sites({"name": "a", "pool": 1}, {"name": "B"}, {"name": "c"})
    text = str(err.value)
    assert "entry 1 ('a') has pool: 1" in text and "entry 2 ('B') has name 'B'" in text and "entry 3" not in text


@pytest.mark.parametrize("document", [None, {}, {"sites": []}, {"sites": {"a": {}}}, ["a"]])
def test_a_file_without_a_sites_list_is_refused(document):
    with pytest.raises(SitesFileError, match=r"Checked sites.yaml for a non-empty `sites:` list: found"):
        parse_sites(document, source="sites.yaml")


def test_the_file_named_by_edge_sites_file_must_exist(tmp_path):
    missing = tmp_path / "sites.yaml"
    with pytest.raises(SitesFileError, match=rf"Checked the sites file {missing} \(EDGE_SITES_FILE\): it does not exist"):
        load_sites(environ={"EDGE_SITES_FILE": str(missing)})


def test_a_file_that_is_not_yaml_is_refused_with_its_line(tmp_path):
    bad = tmp_path / "sites.yaml"
    bad.write_text("sites:\n  - name: a\n    queue: [unclosed\n")
    with pytest.raises(SitesFileError, match=r"it is not valid YAML at line \d+, column \d+"):
        load_sites(environ={"EDGE_SITES_FILE": str(bad)})


def test_the_file_named_by_edge_sites_file_is_read_relative_to_the_project(tmp_path):
    good = tmp_path / "sites.yaml"
    good.write_text("sites:\n  - name: a\n  - name: b\n    schedule: '0 4 * * *'\n")
    a, b = load_sites(environ={"EDGE_SITES_FILE": str(good)})
    assert (a.name, b.name, b.schedule) == ("a", "b", "0 4 * * *")
    path, explicit = sites_file_path({"EDGE_SITES_FILE": "include/sites.example.yaml"})
    assert explicit and path == config.PROJECT_ROOT / "include" / "sites.example.yaml"


def test_the_shipped_example_is_valid():
    a, b = load_sites(config.INCLUDE_DIR / "sites.example.yaml")
    assert (a.name, b.name) == ("plant-a", "plant-b")
    # The example spells out for plant-a what its missing keys would become.
    assert a == _sites({"name": "plant-a", "schedule": a.schedule})[0]


def _task(task_id: str, **attrs) -> SimpleNamespace:
    return SimpleNamespace(task_id=task_id, **attrs)


def test_tasks_that_use_only_their_sites_values_pass():
    a, b = _sites({"name": "a"}, {"name": "b"})
    tasks = [
        _task("check_edge_vm", ssh_conn_id="edge_vm_a", wasb_conn_id="edge_blob_a", pool="default_pool", queue="edge-a"),
        _task("train_on_edge_vm", ssh_conn_id="edge_vm_a", pool="edge_vm_a", model_name=a.model_name),
        _task("build_image", pool="default_pool", queue="default"),
    ]
    assert site_mixing("edge_training_a", tasks, [a, b]) == []


def test_a_task_using_two_sites_is_named_with_both_sites_values():
    sites = _sites({"name": "a"}, {"name": "b"})
    mixed = _task("check_edge_vm", ssh_conn_id="edge_vm_a", wasb_conn_id="edge_blob_b", pool="default_pool")
    (problem,) = site_mixing("some_dag", [mixed], sites)
    assert problem.startswith("some_dag.check_edge_vm uses more than its own site (site 'a': ssh_conn_id='edge_vm_a'; "
                              "site 'b': wasb_conn_id='edge_blob_b')")  # fmt: skip


def test_a_task_of_one_sites_dag_using_another_sites_pool_is_refused():
    sites = _sites({"name": "a"}, {"name": "b"})
    borrowed = _task("train_on_edge_vm", ssh_conn_id="edge_vm_b", pool="edge_vm_b")
    (problem,) = site_mixing("edge_training_a", [borrowed], sites)
    assert "edge_training_a.train_on_edge_vm in site 'a''s DAG uses more than its own site (site 'b':" in problem


def test_a_site_trains_on_its_own_cron_and_refuses_the_single_site_triggers():
    from edge_training.schedule import site_schedule

    (site,) = _sites({"name": "b", "schedule": "30 4 * * *"})
    assert site_schedule(site, trigger="schedule", policy="schedule").expression == "30 4 * * *"
    with pytest.raises(ValueError, match=r"EDGE_TRAINING_TRIGGER='asset'.*site 'b'.*Set both to 'schedule'"):
        site_schedule(site, trigger="asset", policy="schedule")
    with pytest.raises(ValueError, match=r"EDGE_RETRAIN_POLICY='drift' for site 'b'"):
        site_schedule(site, trigger="schedule", policy="drift")
    # The single site keeps the asset trigger.
    assert site_schedule(default_site(), trigger="asset", policy="schedule").name == "edge_new_partition"


def test_connection_ids_airflow_does_not_have_are_named_by_entry_and_key():
    sites = _sites({"name": "north"}, {"name": "south", "vm_conn_id": "south_vm_typo", "output_conn_id": "out_typo"})
    looked_up = []

    def is_defined(conn_id: str) -> bool:
        looked_up.append(conn_id)
        return conn_id in {"edge_blob_north", "edge_vm_north", "edge_blob_south"}

    with pytest.raises(SitesFileError) as refused:
        undefined_connections(sites, is_defined, source="sites.yaml")
    message = str(refused.value)
    assert message.startswith("Checked the connection ids of the 2 site entries of sites.yaml against Airflow's")
    assert "entry 2 ('south') has vm_conn_id 'south_vm_typo' and output_conn_id 'out_typo' — no such connection" in message
    assert "north" not in message.split("connections:", 1)[1].split("—")[0]
    assert "airflow connections add" in message
    # Each id once: north's output connection is its blob connection.
    assert sorted(looked_up) == sorted(set(looked_up)) and len(looked_up) == 5


def test_a_missing_blob_connection_is_named_once_even_when_it_also_writes_the_output():
    (site,) = _sites({"name": "north"})
    with pytest.raises(SitesFileError, match=r"entry 1 \('north'\) has blob_conn_id 'edge_blob_north' — "):
        undefined_connections([site], lambda conn_id: conn_id == "edge_vm_north")


def test_sites_whose_connections_all_exist_pass():
    sites = _sites({"name": "north"}, {"name": "south"})
    undefined_connections(sites, lambda conn_id: True)
