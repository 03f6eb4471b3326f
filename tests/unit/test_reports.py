"""edge_training.reports and the extra-link URLs: where reports live and which URL serves them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edge_training import reports
from edge_training.operators.links import DataDocsLink, ImageLink, ModelCardLink, record_version_links, ui_base_path

RUN = "manual__2026-12-01T21:30:00.123+00:00"


def test_data_docs_url_names_the_folder_validate_data_writes(tmp_path):
    folder = reports.docs_dir_for_run(tmp_path, "edge_training", RUN)
    assert folder == tmp_path / "edge_training" / "manual__2026-12-01T21_30_00.123_00_00"
    assert reports.data_docs_url("edge_training", RUN) == (
        "/edge-training/data-docs/edge_training/manual__2026-12-01T21_30_00.123_00_00/index.html"
    )


def test_urls_carry_the_ui_base_path_and_quote_nothing_unsafe():
    assert reports.model_card_url("predictive-maintenance", "7", "/airflow") == (
        "/airflow/edge-training/model-cards/predictive-maintenance/7/model_card.html"
    )
    assert reports.model_version_url("a/../b", "1") == "/edge-training/model-versions/a_.._b/1"
    assert reports.image_url("m", "..") == "/edge-training/images/m/_"


def test_resolve_under_refuses_paths_that_leave_the_reports_folder(tmp_path):
    root = tmp_path / "reports"
    (root / "d").mkdir(parents=True)
    (root / "d" / "index.html").write_text("ok")
    (tmp_path / "secret.txt").write_text("no")
    (root / "d" / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert reports.resolve_under(root, "d/index.html") == (root / "d" / "index.html").resolve()
    assert reports.resolve_under(root, "../secret.txt") is None
    assert reports.resolve_under(root, "d/link.txt") is None
    assert reports.resolve_under(root, "d") is None  # a folder is not a report
    assert reports.resolve_under(root, "d/missing.html") is None


@pytest.mark.parametrize(("base_url", "path"), [("http://127.0.0.1:8080", ""), ("https://ops.example/airflow/", "/airflow")])
def test_links_use_the_path_of_the_api_base_url(monkeypatch, base_url, path):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", base_url)
    assert ui_base_path() == path
    ti = SimpleNamespace(dag_id="edge_training", run_id=RUN)
    assert DataDocsLink().get_link(None, ti_key=ti) == path + reports.data_docs_url("edge_training", RUN)
    op = SimpleNamespace()
    assert ModelCardLink().get_link(op, ti_key=ti) == ""  # nothing registered yet: no link
    record_version_links(op, "m", "3", image=True)
    assert ModelCardLink().get_link(op, ti_key=ti) == f"{path}/edge-training/model-cards/m/3/model_card.html"
    assert ImageLink().get_link(op, ti_key=ti) == f"{path}/edge-training/images/m/3"
