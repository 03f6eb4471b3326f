"""One click from a run's tasks to what they produced, on a real Airflow, clicked in headless Chromium.

One run of edge_training (with its scoring image). Then, logged in to the Airflow UI as a user would be, the task
pages of validate_data, register_model and build_image show the extra links "Data Docs", "Model card" /
"Model version" and "Image"; each click opens the report or page of that run's output, served by the api-server
itself. Without a session the same URLs answer 401 / send the browser to the login page.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests._pipeline import FAST_TRAINING
from tests.e2e.conftest import DAG_ID, model_versions

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 1200


@pytest.fixture(scope="module", autouse=True)
def no_scheduled_run():
    """Trigger on the partition asset, not the cron: unpausing then starts no scheduled run (and image build)
    beside the one run this module looks at. Set before ``e2e_airflow`` starts Airflow with this environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_TRAINING_TRIGGER", "asset")
        yield


@pytest.fixture(scope="module")
def finished_run(api):
    run = api.trigger(DAG_ID, conf={"training_params": FAST_TRAINING})
    lines: list[str] = []
    final = api.follow(DAG_ID, run["dag_run_id"], on_change=lines.append, timeout=RUN_TIMEOUT_S)
    assert final["state"] == "success", "\n".join(lines)
    return final


def links_of(api, run_id: str, task_id: str) -> dict:
    return api.extra_links_api.get_extra_links(DAG_ID, run_id, task_id).extra_links


def click_links(e2e_airflow, run_id: str, task_id: str, names: list[str], shots: Path) -> dict[str, dict]:
    airflow = e2e_airflow.airflow
    password = json.loads(airflow.password_file.read_text())["admin"]
    shots.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [shutil.which("node") or "node", str(ROOT / "tests" / "browser" / "browser.js"), "extra-links", airflow.url,
         "admin", password, f"/dags/{DAG_ID}/runs/{run_id}/tasks/{task_id}/details", str(shots), *names],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {link["name"]: link for link in json.loads(proc.stdout)["links"]}


def test_extra_links_open_what_the_run_produced(api, e2e_airflow, finished_run, tmp_path):
    run_id = finished_run["dag_run_id"]
    [version] = [v for v in model_versions(e2e_airflow.tracking_uri) if v.tags.get("edge.dag_run_id") == run_id]
    model, number = version.name, str(version.version)

    # What the API hands the UI: one URL per declared link, on the api-server.
    assert links_of(api, run_id, "validate_data") == {
        "Data Docs": f"/edge-training/data-docs/{DAG_ID}/{run_id.replace(':', '_').replace('+', '_')}/index.html"
    }
    assert links_of(api, run_id, "register_model") == {
        "Model card": f"/edge-training/model-cards/{model}/{number}/model_card.html",
        "Model version": f"/edge-training/model-versions/{model}/{number}",
    }
    assert links_of(api, run_id, "build_image") == {"Image": f"/edge-training/images/{model}/{number}"}

    docs = click_links(e2e_airflow, run_id, "validate_data", ["Data Docs"], tmp_path / "validate_data")["Data Docs"]
    assert docs["status"] == 200 and docs["url"].endswith("/index.html")
    assert docs["title"] == "Data Docs created by Great Expectations"

    clicked = click_links(e2e_airflow, run_id, "register_model", ["Model card", "Model version"],
                          tmp_path / "register_model")
    card = clicked["Model card"]
    assert card["status"] == 200 and card["title"] == f"Model card {model} v{number}"
    assert version.tags["image.reference"] in card["text"], "the card shows the image recorded by build_image"
    assert "95 % interval" in card["text"] and "Training data never left the site" in card["text"]
    page = clicked["Model version"]
    assert page["status"] == 200 and f"Model {model} version {number}" in page["text"]
    assert run_id in page["text"] and version.tags["edge.data_fingerprint"] in page["text"]

    image = click_links(e2e_airflow, run_id, "build_image", ["Image"], tmp_path / "build_image")["Image"]
    assert image["status"] == 200 and version.tags["image.digest"] in image["text"]
    assert (tmp_path / "register_model" / "model-card.png").stat().st_size > 20_000

    # The same reports without a session: refused for an API client, sent to the login page for a browser.
    url = f"{e2e_airflow.airflow.url}/edge-training/model-cards/{model}/{number}/model_card.html"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, headers={"Accept": "text/html"})
    with pytest.raises(urllib.error.HTTPError) as redirected:
        urllib.request.build_opener(NoRedirect).open(request, timeout=10)
    assert redirected.value.code == 303 and "/login" in redirected.value.headers["Location"]
