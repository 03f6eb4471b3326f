"""The global model (opt-in): pool the sites' champions centrally, score it at every site, promote it by quorum.

Only models and scores cross between sites and central: :class:`PoolSiteModelsOperator` reads each site's champion
from the model registry (where the models already are) and registers the pooled forest
(:func:`edge_training.pooling.pool_forests`); :class:`EvaluateAtSiteOperator` runs at one site, with that site's blob
connection, and scores the pooled model and the site's champion on the champion's own holdout days, returning two
numbers and a row count; :class:`PromoteGlobalModelOperator` decides on the score matrix by quorum
(:func:`edge_training.pooling.global_decision`) and moves the global model's champion by compare-and-set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from edge_training.exceptions import EdgeTrainingError

if TYPE_CHECKING:
    from airflow.sdk import Context

    from edge_training.registry import ModelRegistry, RegisteredModelVersion

N_TRAIN_TAG = "metric.n_train"
HOLDOUT_TAG = "edge.holdout_window"
POOLED_SITES_TAG = "global.pooled_sites"
POOLED_VERSIONS_TAG = "global.pooled_versions"


class _RegistryMixin:
    registry_backend: str | None = None

    @cached_property
    def registry(self) -> ModelRegistry:
        from edge_training.registry import get_model_registry

        return get_model_registry(self.registry_backend)


def _as_dict(name: str, value: Any) -> dict:
    if isinstance(value, str) and value.strip():
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise EdgeTrainingError(
            f"Checked the {name} result: expected a dict, found {type(value).__name__}. Pass the upstream task's output."
        )
    return dict(value)


def holdout_days(version: RegisteredModelVersion) -> list[dt.date]:
    """The days a site's champion was scored on (its ``edge.holdout_window`` tag, ``start/end`` end exclusive)."""
    text = version.tags.get(HOLDOUT_TAG, "")
    try:
        start, end = (dt.date.fromisoformat(part) for part in text.split("/"))
    except ValueError:
        raise EdgeTrainingError(
            f"Checked tag {HOLDOUT_TAG} of model {version.name} version {version.version}: found {text!r}, not "
            "'YYYY-MM-DD/YYYY-MM-DD'. Score a champion registered by the edge_training pipeline."
        ) from None
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


class PoolSiteModelsOperator(_RegistryMixin, BaseOperator):
    """Pool the sites' champions into one random forest and register it as a version of the global model.

    Each site's trees vote with the site's share of the training rows (the champion's ``metric.n_train`` tag). The
    registration key is derived from the pooled versions, so pooling the same champions again reuses the version.
    Sites without a champion are left out; fewer than two sites with one fails the task.

    Returns ``{"model_name", "version", "sites": {site: {"model_name", "version", "n_train", "share"}}, "left_out"}``.

    :param sites: ``[{"site": name, "model_name": the site's model}]``.
    :param model_name: The global model.
    :param registry_backend: Model registry backend; None uses ``EDGE_MODEL_REGISTRY``.
    """

    template_fields: Sequence[str] = ("model_name",)
    ui_color = "#efe6f7"

    def __init__(self, *, sites: Sequence[Mapping[str, str]], model_name: str, registry_backend: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.sites = [dict(s) for s in sites]
        self.model_name = model_name
        self.registry_backend = registry_backend

    def execute(self, context: Context) -> dict[str, Any]:
        from edge_training.pooling import SiteForest, pool_forests, site_shares

        registry = self.registry
        champions, left_out = {}, []
        for entry in self.sites:
            champion = registry.get_champion(entry["model_name"])
            if champion is None:
                self.log.warning("Site %s: model %s has no champion yet; it is left out of the pooled model",
                                 entry["site"], entry["model_name"])  # fmt: skip
                left_out.append(entry["site"])
            else:
                champions[entry["site"]] = champion
        if len(champions) < 2:
            raise EdgeTrainingError(
                f"Checked the sites' champions to pool: {len(champions)} of {len(self.sites)} site(s) have one "
                f"({', '.join(champions) or 'none'}; without: {', '.join(left_out) or 'none'}). A global model needs "
                "at least two sites' champions: run those sites' edge_training pipelines first."
            )
        with tempfile.TemporaryDirectory(prefix="edge-pool-") as tmp:
            forests = []
            for site, champion in champions.items():
                folder = Path(tmp) / site
                folder.mkdir()
                path = self.registry.download_onnx(champion, folder)
                forests.append(SiteForest(site, path.read_bytes(), _n_train(champion)))
            versions = {site: champion.version for site, champion in champions.items()}
            shares = site_shares(forests)
            pooled = pool_forests(forests, properties={"pooled_versions": json.dumps(versions, sort_keys=True)})
            out = Path(tmp) / "pooled"
            out.mkdir()
            (out / "model.onnx").write_bytes(pooled)
            (out / "metrics.json").write_text(json.dumps({"metrics": {"n_train": sum(f.n_train for f in forests)}}))
            key = "global-" + hashlib.sha256(
                json.dumps({champions[s].name: v for s, v in versions.items()}, sort_keys=True).encode()
            ).hexdigest()[:16]
            version = registry.register(self.model_name, out, key, {
                POOLED_SITES_TAG: json.dumps({s: round(v, 6) for s, v in shares.items()}, sort_keys=True),
                POOLED_VERSIONS_TAG: json.dumps(versions, sort_keys=True),
                "edge.dag_id": context["ti"].dag_id, "edge.dag_run_id": context["ti"].run_id,
            })  # fmt: skip
        self.log.info("Pooled %s into model %s version %s (shares %s)", ", ".join(
            f"{s} v{v}" for s, v in versions.items()), self.model_name, version.version,
            ", ".join(f"{s} {share:.3f}" for s, share in shares.items()))  # fmt: skip
        return {
            "model_name": self.model_name,
            "version": version.version,
            "sites": {
                site: {"model_name": champions[site].name, "version": champions[site].version,
                       "n_train": f.n_train, "share": shares[site]}
                for site, f in zip(champions, forests)
            },  # fmt: skip
            "left_out": left_out,
        }


def _n_train(version: RegisteredModelVersion) -> int:
    text = version.tags.get(N_TRAIN_TAG)
    try:
        return int(float(text))
    except (TypeError, ValueError):
        raise EdgeTrainingError(
            f"Checked tag {N_TRAIN_TAG} of model {version.name} version {version.version} (its training rows, the "
            f"site's share of the pooled vote): found {text!r}. Pool champions registered by the edge_training "
            "pipeline (train.py records n_train)."
        ) from None


class EvaluateAtSiteOperator(_RegistryMixin, BaseOperator):
    """At one site: score the pooled model and the site's champion on the champion's holdout days, rows read here.

    The holdout's rows are read with the site's blob connection into this task's memory and never leave it: the
    result is two scores, the row count and the days. Returns ``{"site", "metric", "global", "champion",
    "champion_version", "holdout_days", "rows"}``; a site the pooled model left out returns null scores.

    :param site: The site's name.
    :param model_name: The site's model (its champion is scored).
    :param wasb_conn_id: The site's blob connection.
    :param container: The site's data container.
    :param pooled: The pooling task's result (XComArg).
    """

    template_fields: Sequence[str] = ("pooled", "container")
    ui_color = "#e6f0ff"

    def __init__(self, *, site: str, model_name: str, wasb_conn_id: str, container: str, pooled: Any,
                 registry_backend: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.site = site
        self.model_name = model_name
        self.wasb_conn_id = wasb_conn_id
        self.container = container
        self.pooled = pooled
        self.registry_backend = registry_backend

    def execute(self, context: Context) -> dict[str, Any]:
        pooled = _as_dict("pooling", self.pooled)
        result = {"site": self.site, "metric": "roc_auc", "global": None, "champion": None, "champion_version": None,
                  "holdout_days": [], "rows": 0}  # fmt: skip
        pooled_site = pooled.get("sites", {}).get(self.site)
        if pooled_site is None:
            self.log.info("Site %s had no champion when the model was pooled: nothing to compare", self.site)
            return result
        registry = self.registry
        champion = registry.get_version(self.model_name, pooled_site["version"])
        candidate = registry.get_version(pooled["model_name"], pooled["version"])
        days = holdout_days(champion)
        with tempfile.TemporaryDirectory(prefix="edge-evaluate-") as tmp:
            paths = {}
            for key, version in (("champion", champion), ("global", candidate)):
                folder = Path(tmp) / key
                folder.mkdir()
                paths[key] = registry.download_onnx(version, folder)
            x, y = self._holdout(days, paths["champion"])
            for key, path in paths.items():
                result[key] = _roc_auc(path, x, y)
        result.update(champion_version=champion.version, holdout_days=[d.isoformat() for d in days], rows=len(y))
        self.log.info("Site %s, holdout %s (%d rows): global model %s roc_auc %.4f, champion version %s %.4f",
                      self.site, result["holdout_days"], len(y), candidate.version, result["global"],
                      champion.version, result["champion"])  # fmt: skip
        return result

    def _holdout(self, days: list[dt.date], model_path: Path):
        """Features and labels of the holdout days' data blobs (the model's own column order), read in memory."""
        import io

        import numpy as np
        import onnx
        import pandas as pd
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        from edge_training.fingerprint import is_data_blob

        meta = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
        features, label = json.loads(meta["features"]), meta["label"]
        client = WasbHook(wasb_conn_id=self.wasb_conn_id).get_conn().get_container_client(self.container)
        frames = []
        for day in days:
            for blob in client.list_blobs(name_starts_with=f"dt={day.isoformat()}/"):
                if is_data_blob(blob.name):
                    data = client.download_blob(blob.name).readall()
                    frames.append(pd.read_csv(io.BytesIO(data), usecols=[*features, label]))
        if not frames:
            raise EdgeTrainingError(
                f"Checked container {self.container} of site {self.site} for the holdout days "
                f"{', '.join(d.isoformat() for d in days)}: no data blob. The champion's holdout is gone from the "
                "site's storage; re-train the site's champion on data that is still there."
            )
        frame = pd.concat(frames).dropna()
        return frame[features].to_numpy(dtype=np.float32), frame[label].to_numpy(dtype=np.int64)


def _roc_auc(model_path: Path, x, y) -> float:
    import onnxruntime as ort
    from sklearn.metrics import roc_auc_score

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    proba = next(o for o in outputs if getattr(o, "ndim", 0) == 2)
    return float(roc_auc_score(y, proba[:, 1]))


class PromoteGlobalModelOperator(_RegistryMixin, BaseOperator):
    """Decide on the pooled model from the sites' scores and, with a quorum of wins, make it the global champion.

    A site whose evaluation failed or returned no score is ``not_compared``. The decision (wins, quorum, each site's
    verdict and the score matrix) is tagged on the pooled version either way. Returns the decision as a dict.

    :param pooled: The pooling task's result (XComArg).
    :param evaluation_task_ids: The sites' evaluation tasks, whose results form the score matrix.
    :param quorum: ``EDGE_SITES_QUORUM`` (a number of sites, ``majority`` or ``all``).
    :param margin: How much better than a site's champion a win needs to be (``EDGE_PROMOTION_MARGIN``).
    """

    template_fields: Sequence[str] = ("pooled",)
    ui_color = "#e8f4e8"

    def __init__(self, *, pooled: Any, evaluation_task_ids: Sequence[str], quorum: str | int | None = None,
                 margin: float = 0.0, registry_backend: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.pooled = pooled
        self.evaluation_task_ids = list(evaluation_task_ids)
        self.quorum = quorum
        self.margin = margin
        self.registry_backend = registry_backend

    def execute(self, context: Context) -> dict[str, Any]:
        from edge_training.exceptions import ChampionChangedError
        from edge_training.pooling import global_decision, parse_quorum

        pooled = _as_dict("pooling", self.pooled)
        ti = context["ti"]
        matrix = {}
        for task_id in self.evaluation_task_ids:
            row = ti.xcom_pull(task_ids=task_id) or {}
            site = row.get("site") or task_id
            matrix[site] = {"global": row.get("global"), "champion": row.get("champion")}
        decision = global_decision(matrix, parse_quorum(self.quorum, len(matrix)), self.margin)
        registry = self.registry
        outcome = "promoted" if decision.promote else "not_promoted"
        if decision.promote:
            current = registry.get_champion(pooled["model_name"])
            expected = current.version if current is not None else None
            if expected == pooled["version"]:
                outcome = "already_champion"
            else:
                try:
                    registry.promote(pooled["model_name"], pooled["version"], expected=expected)
                except ChampionChangedError:
                    outcome = "not_compared_champion_changed"
        registry.set_tags(pooled["model_name"], pooled["version"], {
            "global.decision": outcome, "global.wins": str(decision.wins), "global.quorum": str(decision.quorum),
            "global.verdicts": json.dumps(decision.verdicts, sort_keys=True),
            "global.scores": json.dumps(matrix, sort_keys=True),
        })  # fmt: skip
        self.log.info("Global model %s version %s: %s -> %s", pooled["model_name"], pooled["version"],
                      decision.reason, outcome)  # fmt: skip
        return {"model_name": pooled["model_name"], "version": pooled["version"], "promoted": outcome in (
            "promoted", "already_champion"), "outcome": outcome, "wins": decision.wins, "quorum": decision.quorum,
            "verdicts": decision.verdicts, "scores": matrix, "reason": decision.reason}  # fmt: skip
