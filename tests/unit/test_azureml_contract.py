"""The real azure-ai-ml code path against a local fake of the Azure ML REST API, asserted on the fake's request log.

No Azure and no edge stack: the hook, trigger, operator and registry run unchanged; only the HTTP transport and
the bearer token are the fake's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import pytest
from airflow.sdk import RetryAction
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from edge_training import azureml_naming as naming
from edge_training.exceptions import AzureMLAuthError, AzureMLWorkspaceNotFoundError
from edge_training.retry import EDGE_RETRY_POLICY
from tests.azureml_fake import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, AzureMLFake

CONN = {
    "conn_type": "azure",
    "extra": {
        "subscriptionId": SUBSCRIPTION,
        "resource_group_name": RESOURCE_GROUP,
        "workspace_name": WORKSPACE,
        "use_azure_identity_object": True,
    },
}


def use_fake(monkeypatch, fake: AzureMLFake) -> None:
    from edge_training.hooks.azureml import AzureMLHook

    monkeypatch.setenv("AIRFLOW_CONN_AZUREML_DEFAULT", json.dumps(CONN))
    monkeypatch.setenv("EDGE_MODEL_REGISTRY", "azureml")
    monkeypatch.setattr(AzureMLHook, "transport", fake.transport())
    monkeypatch.setattr(AzureMLHook, "get_credential", lambda self, conn=None: fake.credential)


@pytest.fixture
def fake(monkeypatch):
    with AzureMLFake() as service:
        use_fake(monkeypatch, service)
        yield service


class FakeTI:
    def __init__(self, run_id: str) -> None:
        self.dag_id, self.task_id, self.run_id, self.map_index = "edge_training", "train_on_azureml", run_id, -1
        self.pushed: dict = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def context(run_id: str | None = None) -> dict:
    end = dt.datetime(2026, 11, 8, 2, tzinfo=dt.timezone.utc)
    return {"ti": FakeTI(run_id or f"manual__2026-11-08T02:00:00+00:00-{uuid.uuid4().hex[:6]}"),
            "data_interval_start": end - dt.timedelta(days=1), "data_interval_end": end}


def operator(**kwargs):
    from edge_training.operators.azureml_train import AzureMLTrainingOperator

    args = {"task_id": "train_on_azureml", "window_days": 7, "compute": "ash-k8s", "experiment_name": "exp-edge",
            "training_params": {"n_estimators": 20}, "poll_interval": 0.05, "model_name": "pm-test"}
    return AzureMLTrainingOperator(**{**args, **kwargs})


def test_a_retry_after_submission_reattaches_with_one_job_put(fake):
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        operator().execute(ctx)
    # The worker died after submitting; the retry (a fresh operator) looks the job up and does not submit again.
    with pytest.raises(TaskDeferred):
        operator().execute(ctx)

    puts = fake.calls("job.put")
    assert len(puts) == 1
    name = ctx["ti"].pushed["job_id"]
    assert puts[0].path.endswith(f"/jobs/{name}") and name.startswith("aml-edge_training-train_on_azureml-")
    assert deferred.value.trigger.job_name == name
    assert fake.kinds().count("job.get") == 2

    props = puts[0].body["properties"]
    assert props["jobType"] == "Command"
    assert props["computeId"].endswith("/computes/ash-k8s")
    assert props["experimentName"] == "exp-edge"
    assert props["inputs"]["data"] == {
        "jobInputType": "uri_folder", "mode": "ReadOnlyMount",
        "uri": "azureml://datastores/stackhub_sensor_readings/paths/",
    }
    assert props["outputs"]["model"]["jobOutputType"] == "uri_folder"
    assert props["outputs"]["model"]["uri"] == f"azureml://datastores/stackhub_models/paths/edge-training/{name}/"
    assert "champion" not in props["inputs"]  # the registry has no champion yet
    assert props["tags"]["edge.training_window"] == "2026-11-01..2026-11-08"
    assert props["tags"]["edge.dag_run_id"] == ctx["ti"].run_id
    assert props["tags"]["edge.code_version"]
    assert "--data-dir ${{inputs.data}}" in props["command"] and "--out ${{outputs.model}}" in props["command"]
    assert "--start 2026-11-01 --end 2026-11-08" in props["command"]
    # The code that runs is include/training, uploaded once; the environment comes from its conda spec.
    assert {"train.py", "requirements.txt", "azureml-environment.yml"} <= set(fake.uploaded_code())
    env = fake.calls("environment.put")[0].body["properties"]
    assert "-r requirements.txt" in env["condaFile"]


def test_on_kill_cancels_the_job(fake):
    op = operator()
    with pytest.raises(TaskDeferred):
        op.execute(context())
    op.on_kill()
    cancels = fake.calls("job.cancel")
    assert len(cancels) == 1 and cancels[0].path.endswith(f"/jobs/{op._job_name}/cancel")


def test_refused_credentials_fail_at_once_with_a_clear_message(fake):
    fake.fail("job.get", 401, times=10, body={"error": {"code": "InvalidAuthenticationToken",
                                                         "message": "The access token is invalid."}})
    with pytest.raises(AzureMLAuthError) as err:
        operator().execute(context())
    text = str(err.value)
    assert "refused the credentials of connection 'azureml_default'" in text
    assert "The access token is invalid." in text and WORKSPACE in text
    assert len(fake.calls("job.get")) == 1 and not fake.calls("job.put")
    assert EDGE_RETRY_POLICY.evaluate(err.value, 1, 4, {}).action == RetryAction.FAIL


def test_a_missing_workspace_fails_at_once_naming_it(fake):
    fake.workspace_exists = False
    with pytest.raises(AzureMLWorkspaceNotFoundError) as err:
        operator().execute(context())
    assert f"workspace {WORKSPACE} (resource group {RESOURCE_GROUP}" in str(err.value)
    assert "workspace_name" in str(err.value)
    assert not fake.calls("job.put")
    assert EDGE_RETRY_POLICY.evaluate(err.value, 1, 4, {}).action == RetryAction.FAIL


def test_service_unavailable_is_retried_with_backoff(fake):
    from edge_training.hooks.azureml import AzureMLHook

    fake.fail("job.get", 503, times=2)
    assert AzureMLHook().get_job("aml-missing") is None  # the 4th answer: a plain 404
    gets = fake.calls("job.get")
    assert len(gets) == 3
    # azure-core's exponential backoff: no wait, then 0.8 * 2 s.
    assert gets[2].at - gets[1].at >= 1.4


def test_throttling_is_retried_after_retry_after(fake):
    from edge_training.hooks.azureml import AzureMLHook

    fake.fail("job.get", 429, times=1, headers={"Retry-After": "1"})
    assert AzureMLHook().get_job("aml-missing") is None
    gets = fake.calls("job.get")
    assert len(gets) == 2 and gets[1].at - gets[0].at >= 0.9


def test_a_failed_job_fails_the_task_with_the_service_error_and_studio_url(fake):
    op = operator()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context())
    name = op._job_name
    fake.finish_job(name, "Failed", "Disk quota exceeded on compute ash-k8s")
    event = asyncio.run(_first(deferred.value.trigger))
    assert event["status"] == "error" and event["job_status"] == "Failed"
    with pytest.raises(AirflowException) as err:
        operator().execute_complete({}, event)
    text = str(err.value)
    assert "Disk quota exceeded on compute ash-k8s" in text
    assert f"https://ml.azure.com/runs/{name}" in text


def test_the_next_try_after_a_failed_job_submits_the_next_attempt(fake):
    ctx = context()
    op = operator()
    with pytest.raises(TaskDeferred):
        op.execute(ctx)
    fake.finish_job(op._job_name, "Failed", "boom")
    with pytest.raises(TaskDeferred):
        operator().execute(ctx)
    names = [r.path.rsplit("/", 1)[1] for r in fake.calls("job.put")]
    assert names == [op._job_name, op._job_name + "-a2"]


async def _first(trigger):
    async for event in trigger.run():
        return event.payload


@pytest.mark.parametrize(
    ("states", "status", "job_status"),
    [
        (["NotResponding", "Running", "Completed"], "success", "Completed"),
        (["Queued", "Failed"], "error", "Failed"),
        (["Running", "Canceled"], "error", "Canceled"),
        (["NotResponding", "Paused"], "error", "Paused"),
    ],
)
def test_trigger_waits_through_not_responding_until_a_terminal_state(monkeypatch, states, status, job_status):
    from edge_training.triggers.azureml_job import AzureMLJobTrigger

    with AzureMLFake(job_states=states) as service:
        use_fake(monkeypatch, service)
        with pytest.raises(TaskDeferred):
            operator().execute(context())
        name = service.calls("job.put")[0].path.rsplit("/", 1)[1]
        trigger = AzureMLJobTrigger("azureml_default", name, poll_interval=0.01)
        event = asyncio.run(_first(trigger))
    assert (event["status"], event["job_status"]) == (status, job_status)
    assert len(service.calls("job.get")) == 1 + len(states)  # the submit lookup, then one poll per state


def test_model_versions_have_explicit_versions_lineage_tags_and_a_moving_champion_tag(fake, tmp_path):
    from edge_training.registry import get_model_registry

    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"roc_auc": 0.9}}))
    with pytest.raises(TaskDeferred):
        operator().execute(context())
    job = fake.calls("job.put")[0].path.rsplit("/", 1)[1]
    registry = get_model_registry("azureml")
    lineage = {"edge.dag_run_id": "scheduled__1", "metric.roc_auc": "0.9"}

    first = registry.register("pm-test", tmp_path, job, lineage)
    again = registry.register("pm-test", tmp_path, job, lineage)

    puts = fake.calls("model.put")
    assert len(puts) == 1 and puts[0].path.endswith("/models/pm-test/versions/1")
    body = puts[0].body["properties"]
    assert body["modelUri"] == f"azureml://jobs/{job}/outputs/model"
    assert body["tags"]["edge.registration_key"] == job and body["tags"]["edge.dag_run_id"] == "scheduled__1"
    assert body["tags"]["edge.model_blob"] == f"models/edge-training/{job}/model.onnx"
    assert first.version == again.version == "1" and first.complete
    assert registry.get_champion("pm-test") is None

    fake.add_model_version("pm-test", "2", {"edge.registration_key": "other-job"})
    registry.promote("pm-test", "1", expected=None)
    assert registry.get_champion("pm-test").version == "1"
    registry.promote("pm-test", "2", expected="1")
    assert registry.get_champion("pm-test").version == "2"
    # The promotions are records 1 and 2 of the companion model, each naming its champion.
    records = fake.models["pm-test-champion"]
    assert [records[n]["properties"]["tags"]["edge.champion_version"] for n in ("1", "2")] == ["1", "2"]
    assert fake.models["pm-test"]["1"]["properties"]["tags"]["champion"] == "false"
    # Tags are updated by a full PUT of the same version: the lineage tags survive.
    assert fake.models["pm-test"]["1"]["properties"]["tags"]["edge.dag_run_id"] == "scheduled__1"


def test_the_connection_must_name_the_workspace_and_build_an_identity_credential(monkeypatch):
    from azure.identity import ClientSecretCredential

    from edge_training.exceptions import AzureMLError
    from edge_training.hooks.azureml import AzureMLHook

    sp = {"conn_type": "azure", "login": "app-id", "password": "s3cret",
          "extra": {**CONN["extra"], "tenantId": "tenant-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_AZUREML_DEFAULT", json.dumps(sp))
    assert isinstance(AzureMLHook().get_credential(), ClientSecretCredential)

    legacy = {**sp, "extra": {k: v for k, v in sp["extra"].items() if k != "use_azure_identity_object"}}
    monkeypatch.setenv("AIRFLOW_CONN_AZUREML_DEFAULT", json.dumps(legacy))
    with pytest.raises(AzureMLError, match="use_azure_identity_object"):
        AzureMLHook().get_credential()

    monkeypatch.setenv("AIRFLOW_CONN_AZUREML_DEFAULT", json.dumps({"conn_type": "azure", "extra": {"subscriptionId": "s"}}))
    with pytest.raises(AzureMLError, match="resource_group_name, workspace_name is missing"):
        AzureMLHook().workspace


def test_job_names_are_deterministic_sanitised_and_bounded():
    run = "manual__2026-11-08T02:00:00.123456+00:00"
    name = naming.job_name("1-Edge Training", run, "train_on_azureml")
    assert name == naming.job_name("1-Edge Training", run, "train_on_azureml")
    assert name != naming.job_name("1-Edge Training", run.replace("+", "-"), "train_on_azureml")
    assert name[0] == "a" and len(name) <= 136 and set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")
    assert naming.job_name("d", "r" * 500, "t", attempt=3).endswith("-a3")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        naming.datastore_uri("bad-name")


def _registered(fake, tmp_path, job: str):
    """Artifacts for a registration of Azure ML job ``job`` (the fake knows the job, so the model path is its output)."""
    folder = tmp_path / job
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "metrics.json").write_text(json.dumps({"metrics": {"roc_auc": 0.9}}))
    fake.add_completed_job(job)
    return folder


def test_a_write_to_an_existing_version_with_other_files_is_refused_like_the_service(fake):
    from azure.ai.ml.entities import Model
    from azure.core.exceptions import HttpResponseError

    from edge_training.hooks.azureml import AzureMLHook

    fake.add_model_version("pm-test", "1", {"edge.registration_key": "job-a"}, "azureml://jobs/job-a/outputs/model")
    client = AzureMLHook().client
    with pytest.raises(HttpResponseError) as caught:
        client.models.create_or_update(Model(name="pm-test", version="1", path="azureml://jobs/job-b/outputs/model",
                                             type="custom_model"))
    assert caught.value.status_code == 400 and caught.value.error.code == "UserError"
    assert "Asset paths cannot be updated." in str(caught.value)
    assert fake.models["pm-test"]["1"]["properties"]["tags"] == {"edge.registration_key": "job-a"}
    # Tags of the same files may still change (that is how tags are updated).
    model = client.models.get("pm-test", version="1")
    model.tags = {**model.tags, "x": "y"}
    client.models.create_or_update(model)
    assert fake.models["pm-test"]["1"]["properties"]["tags"]["x"] == "y"


def test_two_registrations_racing_for_one_version_number_get_one_version_each(fake, tmp_path, monkeypatch):
    import threading

    from edge_training.registry import get_model_registry
    from edge_training.registry.azureml_registry import AzureMLModelRegistry

    folders = {job: _registered(fake, tmp_path, job) for job in ("job-a", "job-b")}
    barrier = threading.Barrier(2, timeout=30)
    original = AzureMLModelRegistry._get
    state = threading.local()

    def both_see_version_1_free(self, model_name, version):
        found = original(self, model_name, version)
        if (model_name, str(version)) == ("pm-test", "1") and not getattr(state, "done", False):
            state.done = True
            barrier.wait()  # both looked up version 1, found it free, and now both write it
        return found

    monkeypatch.setattr(AzureMLModelRegistry, "_get", both_see_version_1_free)
    results, errors = {}, []

    def register(job):
        try:
            results[job] = get_model_registry("azureml").register("pm-test", folders[job], job, {"edge.dag_run_id": job})
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(job,)) for job in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(v.version for v in results.values()) == ["1", "2"]
    stored = {v: m["properties"]["tags"]["edge.registration_key"] for v, m in fake.models["pm-test"].items()}
    assert stored == {results["job-a"].version: "job-a", results["job-b"].version: "job-b"}
    # Both wrote version 1; the service kept the first and refused the second (other files), which took version 2.
    assert len([r for r in fake.calls("model.put") if r.path.endswith("/pm-test/versions/1")]) == 2
    assert len([r for r in fake.calls("model.put") if r.path.endswith("/pm-test/versions/2")]) == 1
    # Retries of the same run (a task retry, or a second worker) still give that run's one version.
    again = get_model_registry("azureml").register("pm-test", folders["job-a"], "job-a", {})
    assert again.version == results["job-a"].version and len(fake.models["pm-test"]) == 2


def test_concurrent_promotions_on_azureml_leave_exactly_one_champion(fake, monkeypatch):
    import threading

    from edge_training.promotion import settle_champion
    from edge_training.registry import get_model_registry
    from edge_training.registry.azureml_registry import AzureMLModelRegistry

    windows = {"edge.train_window": "2026-11-01/2026-11-07", "edge.holdout_window": "2026-11-07/2026-11-08",
               "edge.registration_complete": "true"}
    for version, key in (("1", "job-c"), ("2", "job-a"), ("3", "job-b")):
        fake.add_model_version("pm-test", version, {**windows, "edge.registration_key": key},
                               f"azureml://jobs/{key}/outputs/model")
    get_model_registry("azureml").promote("pm-test", "1", expected=None)
    barrier = threading.Barrier(2, timeout=30)
    original = AzureMLModelRegistry.get_champion
    seen = threading.local()

    def read_together(self, model_name):
        champion = original(self, model_name)
        if not getattr(seen, "done", False):
            seen.done = True
            barrier.wait()  # both decide against champion 1 before either promotes
        return champion

    monkeypatch.setattr(AzureMLModelRegistry, "get_champion", read_together)
    document = {"metrics": {"roc_auc": 0.95}, "champion_metrics": {"roc_auc": 0.8},
                "train_window": {"start": "2026-11-02", "end": "2026-11-08"},
                "holdout_window": {"start": "2026-11-08", "end": "2026-11-09"}}
    decisions = {}

    def settle(version):
        registry = get_model_registry("azureml")
        candidate = registry.get_version("pm-test", version)
        decisions[version] = settle_champion(registry, "pm-test", candidate, {"metrics": document,
                                             "champion_version": "1"}, metric="roc_auc", margin=0.0, force=False,
                                             decided_by=f"run-{version}")[0]

    threads = [threading.Thread(target=settle, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    outcomes = sorted(d.outcome for d in decisions.values())
    assert outcomes == ["not_compared_champion_changed", "promoted"], decisions
    winner = next(v for v, d in decisions.items() if d.promote)
    assert original(get_model_registry("azureml"), "pm-test").version == winner
    tags = {v: fake.models["pm-test"][v]["properties"]["tags"] for v in ("1", "2", "3")}
    assert [v for v, t in tags.items() if t.get("champion") == "true"] == [winner]
    loser = "3" if winner == "2" else "2"
    assert tags[loser]["champion.decision"] == "not_compared_champion_changed"
    assert f"champion is now version {winner}" in tags[loser]["champion.reason"]
