"""A global model without moving rows: pool the sites' random forests, and decide on it by a quorum of sites.

Each site trains a random forest on its own data (``include/training/train.py``, exported to ONNX as one
``TreeEnsembleClassifier`` whose leaf weights already average over the forest's trees). :func:`pool_forests` builds
one forest from all the sites' trees, each site's share of the vote its training size over the total, so the pooled
model's probability is ``sum(share_s * forest_s(x))``: only the models (which leave the sites anyway) are needed,
no row. :func:`global_decision` takes the cross-site score matrix (every site scores the pooled candidate and its
own champion on its own holdout; only the scores leave the site) and promotes the candidate only when it beats the
site's champion at a quorum of sites (``EDGE_SITES_QUORUM``).

Pure logic: ``onnx`` is imported inside :func:`pool_forests`; nothing here imports Airflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edge_training.exceptions import EdgeTrainingError

ENSEMBLE_OP = "TreeEnsembleClassifier"
ML_DOMAIN = "ai.onnx.ml"
# Per-node attributes (one value per node of every tree) and per-leaf-weight attributes of the tree ensemble.
_NODE_ATTRS = ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
               "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true", "nodes_hitrates")  # fmt: skip
_WEIGHT_ATTRS = ("class_treeids", "class_nodeids", "class_ids", "class_weights")
# Attributes that must be the same in every site's model for their trees to vote together.
_SHARED_ATTRS = ("classlabels_int64s", "classlabels_strings", "post_transform")


class PoolingError(EdgeTrainingError):
    """The sites' models cannot be pooled into one forest, or the quorum setting is invalid."""


@dataclass(frozen=True)
class SiteForest:
    """One site's model to pool: its name, the ONNX bytes, and the number of rows it was trained on."""

    site: str
    onnx_bytes: bytes = field(repr=False)
    n_train: int


def site_shares(forests: Sequence[SiteForest]) -> dict[str, float]:
    """Each site's share of the pooled vote: its training rows over all sites' training rows."""
    if not forests:
        raise PoolingError("Checked the sites' models to pool: found none. Pool at least one site's champion.")
    bad = [f"{f.site} ({f.n_train!r})" for f in forests if not isinstance(f.n_train, int) or f.n_train <= 0]
    if bad:
        raise PoolingError(
            f"Checked each site's training size (n_train in its metrics): not a positive integer for {', '.join(bad)}. "
            "Pool models whose training run recorded n_train (train.py writes it to metrics.json)."
        )
    sites = [f.site for f in forests]
    if len(set(sites)) != len(sites):
        raise PoolingError(f"Checked the sites' models to pool: a site appears twice ({sites}). Pool one model per site.")
    total = sum(f.n_train for f in forests)
    return {f.site: f.n_train / total for f in forests}


def _ensemble(model, site: str):
    nodes = [n for n in model.graph.node if n.op_type == ENSEMBLE_OP and n.domain == ML_DOMAIN]
    if len(nodes) != 1:
        raise PoolingError(
            f"Checked site {site!r}'s model for one {ML_DOMAIN}.{ENSEMBLE_OP} node: found {len(nodes)}. Only random "
            "forests exported by include/training/train.py (skl2onnx, zipmap off) can be pooled."
        )
    attrs = {a.name: a for a in nodes[0].attribute}
    unsupported = sorted(name for name in attrs if name.endswith("_as_tensor") or name == "base_values")
    if unsupported:
        raise PoolingError(
            f"Checked site {site!r}'s {ENSEMBLE_OP}: it has {', '.join(unsupported)}, which pooling does not merge. "
            "Export the forest with float attributes and no base values (train.py's to_onnx_model does)."
        )
    return nodes[0], attrs


def _values(attr) -> list:
    import onnx

    return list(onnx.helper.get_attribute_value(attr))


def pool_forests(forests: Sequence[SiteForest], *, properties: Mapping[str, str] | None = None) -> bytes:
    """One ONNX random forest from the sites' forests, each site weighted by its training size.

    The first site's model is the template (inputs, outputs, opsets, metadata); every site's trees are appended with
    tree ids made unique and leaf weights scaled by the site's share, so for any input the pooled probabilities are
    the share-weighted mean of the sites' probabilities. The metadata gains ``pooled_sites`` (site -> share) and
    ``properties``.

    :raises PoolingError: a model that is not one tree ensemble, or models that disagree on classes, inputs or
        features (they could not vote on the same thing).
    """
    import onnx

    shares = site_shares(forests)
    models = [onnx.load_from_string(f.onnx_bytes) for f in forests]
    ensembles = [_ensemble(model, f.site) for model, f in zip(models, forests)]
    first_model, (first_node, first_attrs) = models[0], ensembles[0]
    first_meta = {p.key: p.value for p in first_model.metadata_props}
    for model, (node, attrs), f in zip(models[1:], ensembles[1:], forests[1:]):
        for name in _SHARED_ATTRS:
            if (name in attrs) != (name in first_attrs) or (name in attrs and _values(attrs[name]) != _values(first_attrs[name])):
                raise PoolingError(
                    f"Checked {name} of site {f.site!r}'s model against site {forests[0].site!r}'s: they differ. "
                    "Pool models trained for the same label with the same training code."
                )
        meta = {p.key: p.value for p in model.metadata_props}
        if meta.get("features") != first_meta.get("features"):
            raise PoolingError(
                f"Checked the feature columns of site {f.site!r}'s model against site {forests[0].site!r}'s: "
                f"{meta.get('features')} vs {first_meta.get('features')}. Pool models trained on the same features."
            )
        if [i.name for i in model.graph.input] != [i.name for i in first_model.graph.input]:
            raise PoolingError(
                f"Checked the inputs of site {f.site!r}'s model against site {forests[0].site!r}'s: they differ. "
                "Pool models exported by the same training code."
            )
    merged: dict[str, list] = {name: [] for name in (*_NODE_ATTRS, *_WEIGHT_ATTRS)}
    offset = 0
    for (node, attrs), f in zip(ensembles, forests):
        missing = [name for name in ("nodes_treeids", "class_treeids", "class_weights") if name not in attrs]
        if missing:
            raise PoolingError(f"Checked site {f.site!r}'s {ENSEMBLE_OP}: it lacks {', '.join(missing)}.")
        tree_ids = _values(attrs["nodes_treeids"])
        for name in _NODE_ATTRS:
            if name not in attrs:
                continue
            values = _values(attrs[name])
            merged[name] += [t + offset for t in values] if name == "nodes_treeids" else values
        merged["class_treeids"] += [t + offset for t in _values(attrs["class_treeids"])]
        merged["class_nodeids"] += _values(attrs["class_nodeids"])
        merged["class_ids"] += _values(attrs["class_ids"])
        merged["class_weights"] += [w * shares[f.site] for w in _values(attrs["class_weights"])]
        offset += max(tree_ids) + 1
    keep = [a for a in first_node.attribute if a.name not in merged]
    del first_node.attribute[:]
    first_node.attribute.extend(keep)
    for name, values in merged.items():
        if values or name in first_attrs:
            first_node.attribute.append(onnx.helper.make_attribute(name, values))
    props = {**first_meta, "estimator": "PooledRandomForest",
             "pooled_sites": json.dumps({site: round(share, 6) for site, share in shares.items()}, sort_keys=True),
             **(properties or {})}  # fmt: skip
    onnx.helper.set_model_props(first_model, props)
    onnx.checker.check_model(first_model)
    return first_model.SerializeToString()


def parse_quorum(value: str | int | None, site_count: int) -> int:
    """How many sites the global model must win at: ``EDGE_SITES_QUORUM`` as a number of sites, ``majority``
    (the default: more than half) or ``all``.

    :raises PoolingError: not one of those, or more sites than there are.
    """
    if site_count < 1:
        raise PoolingError("Checked the sites for a quorum: there are none. List the sites in the sites file.")
    text = "majority" if value is None or str(value).strip() == "" else str(value).strip().lower()
    if text == "majority":
        return site_count // 2 + 1
    if text == "all":
        return site_count
    try:
        quorum = int(text)
    except ValueError:
        quorum = 0
    if not 1 <= quorum <= site_count:
        raise PoolingError(
            f"Checked EDGE_SITES_QUORUM: expected a number of sites from 1 to {site_count}, 'majority' or 'all', found "
            f"{value!r}. Set how many sites' champions the global model must beat before it is promoted."
        )
    return quorum


@dataclass(frozen=True)
class GlobalDecision:
    """Whether the pooled model is promoted, and each site's verdict (``won``, ``lost``, ``not_compared``)."""

    promote: bool
    wins: int
    quorum: int
    verdicts: dict[str, str]
    reason: str


def global_decision(scores: Mapping[str, Mapping[str, float | None]], quorum: int, margin: float = 0.0) -> GlobalDecision:
    """Decide on the pooled model from the cross-site score matrix.

    :param scores: per site ``{"global": score of the pooled model, "champion": score of the site's champion}``, both
        on the site's own holdout (higher is better). A site where either score is missing (no champion yet, its
        evaluation failed) is ``not_compared`` and does not count as a win.
    :param quorum: sites the pooled model must win at (:func:`parse_quorum`).
    :param margin: how much better than the champion a win needs to be.
    """
    verdicts: dict[str, str] = {}
    for site, row in scores.items():
        pooled, champion = row.get("global"), row.get("champion")
        if not _number(pooled) or not _number(champion):
            verdicts[site] = "not_compared"
        else:
            verdicts[site] = "won" if pooled > champion + margin else "lost"
    wins = sum(v == "won" for v in verdicts.values())
    promote = wins >= quorum
    detail = ", ".join(f"{site}: {verdict}" for site, verdict in sorted(verdicts.items()))
    reason = (
        f"the global model beat the site's champion at {wins} of {len(verdicts)} sites (quorum {quorum}): "
        f"{'promoted' if promote else 'not promoted'} ({detail})"
    )
    return GlobalDecision(promote, wins, quorum, verdicts, reason)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
