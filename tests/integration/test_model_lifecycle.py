"""Champion lifecycle against a real MLflow registry (SQLite store, local artifacts; concurrent registrations also
on a real MLflow tracking server with basic auth): the promotion rule on training windows, concurrent promotions,
identical re-trains, rollback, and files attached to a version."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_training.exceptions import RollbackRefusedError
from edge_training.lineage import lineage_tags
from edge_training.operators.register import RegisterModelOperator
from tests._pipeline import stage_outputs
from edge_training.promotion import rollback_champion, settle_champion
from edge_training.registry import CHAMPION_ALIAS, MLflowModelRegistry
from tests._models import assert_lease_is_free, write_model

pytestmark = pytest.mark.integration

MODEL = "lifecycle-test"
HOLDOUT_DAYS = 1
WINDOW_DAYS = 7


def _document(end: date, roc_auc: float, champion_roc_auc: float | None, fingerprint: str, seed: int = 0) -> dict:
    """metrics.json as include/training/train.py writes it for a window ending (exclusive) at ``end``."""
    start, split = end - timedelta(days=WINDOW_DAYS), end - timedelta(days=HOLDOUT_DAYS)
    return {
        "metrics": {"roc_auc": roc_auc, "n_train": 1000, "n_holdout": 100},
        "champion_metrics": None if champion_roc_auc is None else {"roc_auc": champion_roc_auc},
        "window": {"start": start.isoformat(), "end": end.isoformat(), "days": WINDOW_DAYS},
        "train_window": {"start": start.isoformat(), "end": split.isoformat(), "days": WINDOW_DAYS - HOLDOUT_DAYS},
        "holdout_window": {"start": split.isoformat(), "end": end.isoformat(), "days": HOLDOUT_DAYS},
        "data_fingerprint": fingerprint,
        "model": {"params": {"n_estimators": 20}, "seed": seed},
    }


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("onnx"), seed=3, trees=5)


def _training(onnx_dir: Path, job: str, document: dict, champion_version: str | None) -> dict:
    folder = onnx_dir.parent / f"arts-{job}"
    folder.mkdir(exist_ok=True)
    (folder / "model.onnx").write_bytes((onnx_dir / "model.onnx").read_bytes())
    (folder / "metrics.json").write_text(json.dumps(document))
    return {"job_id": job, "folder": str(folder), "metrics": document, "code_version": "c0de",
            "window": f"{document['window']['start']}/{document['window']['end']}", "training_seconds": 1.0,
            "champion_version": champion_version}


@pytest.fixture
def mlflow_env(monkeypatch, tmp_path, edge_env) -> MLflowModelRegistry:
    monkeypatch.setenv("EDGE_MODEL_REGISTRY", "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("EDGE_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    return MLflowModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")


def _register_model(training: dict, run_id: str, force: bool = False) -> dict:
    # As the training task leaves it: the outputs in the site's output container, named in the result.
    training = {**training, "artifacts": stage_outputs(Path(training["folder"]), training["job_id"])}
    op = RegisterModelOperator(task_id="register_model", model_name=MODEL, training=training,
                               validation={"success": True, "data_fingerprint": training["metrics"]["data_fingerprint"]},
                               force_promote=force)
    return op.execute({"ti": SimpleNamespace(dag_id="edge_training", run_id=run_id),
                       "data_interval_start": None, "data_interval_end": None})


def test_a_past_window_or_an_overlapping_backfill_leaves_the_newer_champion(mlflow_env, onnx_dir):
    registry = mlflow_env
    newer = date(2026, 12, 1)
    first = _register_model(_training(onnx_dir, "job-new", _document(newer, 0.80, None, "sha256:new"), None), "manual__new")
    assert first["decision"]["outcome"] == "promoted_no_champion"

    # A manual re-train of 2026-09-27..2026-10-04 that happens to score better on its old holdout.
    past = _training(onnx_dir, "job-past", _document(date(2026, 10, 4), 0.99, 0.70, "sha256:past"), "1")
    kept = _register_model(past, "manual__past")
    # A backfill whose window ends two days before the champion's: its holdout is a day the champion trained on.
    overlap = _training(onnx_dir, "job-bf", _document(newer - timedelta(days=2), 0.95, 0.90, "sha256:bf"), "1")
    backfill = _register_model(overlap, "backfill__2026-11-29")

    assert registry.get_champion(MODEL).version == "1"
    for result, why in ((kept, "the champion trained on it"), (backfill, "the champion trained on it")):
        tags = registry.get_version(MODEL, result["version"]).tags
        assert result["promoted"] is False and tags["champion.decision"] == "not_compared_older_window"
        assert why in tags["champion.reason"] and "force_promote overrides" in tags["champion.rule"]
        assert tags["edge.holdout_window"] and tags["edge.train_window"]

    # A candidate of the next day competes (its holdout is after the champion's training days) and wins.
    later = _training(onnx_dir, "job-next", _document(newer + timedelta(days=1), 0.85, 0.80, "sha256:next"), "1")
    promoted = _register_model(later, "scheduled__next")
    assert promoted["decision"]["outcome"] == "promoted"
    # A promotion names the champion it replaced; a version that was not promoted names none.
    assert registry.get_version(MODEL, promoted["version"]).tags["champion.replaced_version"] == "1"
    assert "champion.replaced_version" not in registry.get_version(MODEL, kept["version"]).tags
    assert registry.get_version(MODEL, "1").tags["champion.replaced_version"] == "none"
    # force_promote still promotes a past window, and says so.
    forced = _register_model(_training(onnx_dir, "job-f", _document(date(2026, 10, 4), 0.5, 0.9, "sha256:f"), "4"),
                             "manual__forced", force=True)
    assert forced["decision"]["outcome"] == "promoted_forced" and registry.get_champion(MODEL).version == forced["version"]
    forced_tags = registry.get_version(MODEL, forced["version"]).tags
    assert "window rule and comparison skipped" in forced_tags["champion.reason"]
    assert forced_tags["champion.replaced_version"] == promoted["version"]


def test_an_identical_retrain_reuses_its_version(mlflow_env, onnx_dir):
    registry = mlflow_env
    document = _document(date(2026, 12, 1), 0.8, None, "sha256:same")
    first = _register_model(_training(onnx_dir, "job-a", document, None), "manual__a")
    again = _register_model(_training(onnx_dir, "job-b", dict(document, champion_metrics={"roc_auc": 0.8}), "1"),
                            "manual__b")
    assert (first["reused"], again["reused"]) == (False, True)
    assert again["version"] == first["version"] == "1" and len(registry.list_versions(MODEL)) == 1
    tags = registry.get_version(MODEL, "1").tags
    assert tags["edge.reused_by"] == "manual__b" and tags["champion.decision"] == "promoted_no_champion"
    # Other hyperparameters (another seed) are another model: a new version.
    other = dict(document, model={"params": {"n_estimators": 20}, "seed": 1}, champion_metrics={"roc_auc": 0.8})
    assert _register_model(_training(onnx_dir, "job-c", other, "1"), "manual__c")["version"] == "2"


def _widen_the_race(barrier, patch=setattr) -> None:
    """In this process: wait for the other promoter after the first champion read, and pause before moving the alias.

    The pause widens the gap between the re-read and the move: without the lock both promotions would pass the
    re-read and both move the alias (checked by hand with ``champion_lock`` replaced by a no-op).
    """
    from mlflow import MlflowClient

    read, set_alias = MLflowModelRegistry.get_champion, MlflowClient.set_registered_model_alias
    state = threading.local()

    def read_together(self, name):
        found = read(self, name)
        if not getattr(state, "done", False):
            state.done = True
            barrier.wait()  # both decided against the same champion
        return found

    patch(MLflowModelRegistry, "get_champion", read_together)
    patch(MlflowClient, "set_registered_model_alias", lambda self, *a, **k: (time.sleep(0.05), set_alias(self, *a, **k))[1])


def _registration_task(uri: str, artifacts: str, training: dict, barrier, results) -> None:
    """What register_model does, in a process of its own (as two Airflow task processes would)."""
    try:
        _widen_the_race(barrier)
        registry = MLflowModelRegistry(uri, artifacts)
        job = training["job_id"]
        version = registry.register(MODEL, Path(training["folder"]), job,
                                    lineage_tags("d", job, None, None, {}, training))
        decision = settle_champion(registry, MODEL, version, training, metric="roc_auc", margin=0.0, force=False,
                                   decided_by=job)[0]
        results.put((version.version, decision.outcome, None))
    except BaseException as exc:  # reported to the parent
        results.put((None, None, f"{type(exc).__name__}: {exc}"))


def _seed_champion(registry: MLflowModelRegistry, onnx_dir: Path, end: date) -> None:
    seed = _training(onnx_dir, "job-0", _document(end, 0.6, None, "sha256:0"), None)
    registry.register(MODEL, Path(seed["folder"]), "job-0", lineage_tags("d", "r0", None, None, {}, seed))
    registry.promote(MODEL, "1", expected=None)


def _assert_one_winner(registry: MLflowModelRegistry, champion: str, results: list[tuple[str, str]]) -> None:
    assert sorted(outcome for _, outcome in results) == ["not_compared_champion_changed", "promoted"], results
    [winner] = [v for v, outcome in results if outcome == "promoted"]
    [loser] = [v for v, outcome in results if outcome != "promoted"]
    assert registry.get_champion(MODEL).version == winner
    reason = registry.get_version(MODEL, loser).tags["champion.reason"]
    assert f"champion is now version {winner}" in reason and f"scored version {champion}" in reason


def _race_two_registration_tasks(registry: MLflowModelRegistry, onnx_dir: Path) -> None:
    """Two processes register a model each and promote it, having read the same champion: one wins."""
    import multiprocessing

    base = date(2026, 11, 1)
    _seed_champion(registry, onnx_dir, base)
    spawn = multiprocessing.get_context("spawn")  # each child inherits this environment (tracking URI, credentials)
    barrier, results = spawn.Barrier(2, timeout=300), spawn.Queue()
    trainings = [_training(onnx_dir, f"job-{s}", _document(base + timedelta(days=1), 0.9, 0.6, f"sha256:{s}"), "1")
                 for s in "ab"]
    workers = [spawn.Process(target=_registration_task,
                             args=(registry.tracking_uri, str(registry.artifacts_dir), t, barrier, results))
               for t in trainings]
    for w in workers:
        w.start()
    done = [results.get(timeout=600) for _ in workers]
    for w in workers:
        w.join(60)
    assert not [error for *_, error in done if error], done
    _assert_one_winner(registry, "1", [(v, outcome) for v, outcome, _ in done])
    assert len(registry.list_versions(MODEL)) == 3


def test_two_registration_tasks_at_once_leave_exactly_one_champion(mlflow_env, onnx_dir):
    _race_two_registration_tasks(mlflow_env, onnx_dir)


def test_two_registration_tasks_at_once_on_a_tracking_server_leave_exactly_one_champion(
    mlflow_server, monkeypatch, tmp_path, onnx_dir
):
    """The same race over HTTP, as the site's user: the champion lease on the server serialises the moves."""
    mlflow_server.provision(models=[MODEL])
    for key, value in mlflow_server.info().site_env().items():
        monkeypatch.setenv(key, value)
    registry = MLflowModelRegistry(os.environ["MLFLOW_TRACKING_URI"], tmp_path / "unused")
    _race_two_registration_tasks(registry, onnx_dir)
    assert_lease_is_free(registry.client, MODEL)


@pytest.mark.parametrize("lock", ["file", "lease"])
def test_many_interleavings_of_two_promotions_leave_exactly_one_champion(mlflow_env, onnx_dir, monkeypatch, lock):
    """A bounded loop of rounds: two candidates that read the same champion promote at once, in varying order."""
    registry = mlflow_env
    if lock == "lease":
        # The tracking-server lock (a lease the store grants atomically), exercised on the same real store.
        from edge_training.registry import locks

        monkeypatch.setattr(MLflowModelRegistry, "champion_lock",
                            lambda self, name: locks.mlflow_lease(self.client, name))
        registry.client.create_registered_model(locks.lease_names(MODEL)[0])  # what provisioning does
    base = date(2026, 11, 1)
    _seed_champion(registry, onnx_dir, base)
    source = registry.get_version(MODEL, "1").source
    rng = random.Random(11)
    from mlflow import MlflowClient

    original_read, original_set = MLflowModelRegistry.get_champion, MlflowClient.set_registered_model_alias
    rounds = 6
    for round_no in range(1, rounds + 1):
        monkeypatch.setattr(MLflowModelRegistry, "get_champion", original_read)
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", original_set)
        champion = registry.get_champion(MODEL).version
        _widen_the_race(threading.Barrier(2, timeout=60), monkeypatch.setattr)
        jitter = {s: rng.random() * 0.03 for s in "ab"}
        results: list[tuple[str, str]] = []
        errors: list[BaseException] = []

        def promote(suffix: str) -> None:
            try:
                mine = MLflowModelRegistry(registry.tracking_uri, registry.artifacts_dir)  # like another worker
                job = f"job-{round_no}{suffix}"
                training = _training(onnx_dir, job, _document(base + timedelta(days=round_no), 0.9, 0.6,
                                                              f"sha256:{job}"), champion)
                # The version is created directly (same files) to keep the loop cheap; registering for real
                # in threads would share MLflow's process-wide fluent state.
                created = mine.client.create_model_version(MODEL, source=source,
                                                           tags=lineage_tags("d", job, None, None, {}, training))
                version = mine.get_version(MODEL, str(created.version))
                time.sleep(jitter[suffix])
                decision = settle_champion(mine, MODEL, version, training, metric="roc_auc", margin=0.0,
                                           force=False, decided_by=job)[0]
                results.append((version.version, decision.outcome))
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=promote, args=(s,)) for s in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        monkeypatch.setattr(MLflowModelRegistry, "get_champion", original_read)
        assert not errors, errors
        _assert_one_winner(registry, champion, results)
    assert len(registry.list_versions(MODEL)) == 1 + 2 * rounds
    if lock == "lease":
        assert_lease_is_free(registry.client, MODEL)


def _mlflow_version_without_onnx(registry: MLflowModelRegistry, tmp_path: Path) -> str:
    folder = tmp_path / "pyfunc"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: x\n")
    mv = registry.client.create_model_version(MODEL, source=folder.as_uri(),
                                              tags={"edge.registration_complete": "true"})
    return str(mv.version)


def test_rollback_puts_a_named_version_back_and_refuses_bad_input(mlflow_env, onnx_dir, tmp_path):
    registry = mlflow_env
    for n, end in ((1, date(2026, 11, 20)), (2, date(2026, 11, 21))):
        training = _training(onnx_dir, f"job-{n}", _document(end, 0.7 + n / 10, 0.0, f"sha256:{n}"), None)
        registry.register(MODEL, Path(training["folder"]), f"job-{n}",
                          {**lineage_tags("d", f"r{n}", None, None, {}, training), "champion.decision": "promoted"})
    registry.promote(MODEL, "2", expected=None)
    no_onnx = _mlflow_version_without_onnx(registry, tmp_path)
    before = {v.version: v.tags for v in registry.list_versions(MODEL)}

    for version, message in (("9", r"has no version '9' \(versions: 1, 2, 3\)"),
                             ("2", "version 2 is already the champion"),
                             (no_onnx, "version 3 cannot be served: .*not onnx")):
        with pytest.raises(RollbackRefusedError, match=message + ".*Nothing was changed"):
            rollback_champion(registry, MODEL, version, "bad model in production", decided_by="manual__rb")
    with pytest.raises(RollbackRefusedError, match="the reason: it is empty"):
        rollback_champion(registry, MODEL, "1", "  ", decided_by="manual__rb")
    assert registry.get_champion(MODEL).version == "2"
    assert {v.version: v.tags for v in registry.list_versions(MODEL)} == before

    done = rollback_champion(registry, MODEL, "1", "drift on line 3", decided_by="manual__rb")
    assert done == {"model_name": MODEL, "version": "1", "previous_champion": "2", "reason": "drift on line 3"}
    aliases = registry.client.get_registered_model(MODEL).aliases
    assert {k: str(v) for k, v in aliases.items()} == {CHAMPION_ALIAS: "1"}
    back, replaced = registry.get_version(MODEL, "1").tags, registry.get_version(MODEL, "2").tags
    assert (back["champion.decision"], replaced["champion.decision"]) == ("promoted_rollback", "demoted_rollback")
    assert "drift on line 3" in back["champion.reason"] and "replacing version 2" in back["champion.reason"]
    assert "drift on line 3" in replaced["champion.reason"] and replaced["champion.previous_decision"] == "promoted"
    # The same rollback run retried after the move finishes quietly.
    assert rollback_champion(registry, MODEL, "1", "drift on line 3", decided_by="manual__rb")["version"] == "1"


def test_a_file_attached_to_a_version_is_stored_with_it(mlflow_env, onnx_dir, tmp_path):
    registry = mlflow_env
    training = _training(onnx_dir, "job-card", _document(date(2026, 11, 20), 0.8, None, "sha256:card"), None)
    version = registry.register(MODEL, Path(training["folder"]), "job-card", {})
    card = tmp_path / "model_card.html"
    card.write_text("<html><body>card</body></html>")
    uri = registry.attach_file(MODEL, version.version, card)
    assert uri.endswith("/attachments/model_card.html")
    paths = [a.path for a in registry.client.list_artifacts(registry.client.get_model_version(MODEL, "1").run_id,
                                                             "attachments")]
    assert paths == ["attachments/model_card.html"]
    registry.set_tags(MODEL, version.version, {"card.path": uri})
    assert registry.get_version(MODEL, version.version).tags["card.path"] == uri
    assert datetime.now(timezone.utc)  # noqa: the version's time tags are ISO strings (checked elsewhere)
