"""Model card of one registered model version: ``model_card.json`` (Model Card Toolkit fields) + ``model_card.html``.

Pure logic, no Airflow and no registry I/O: :func:`build_model_card` takes what the registry knows about the
version (its tags, aliases, the training job's ``metrics.json``) and about every other version of the model, and
returns both documents. The HTML is self-contained: one inline stylesheet, plots as inline SVG, no script, and no
font, image or stylesheet loaded from anywhere; the only URLs are the links a reader may follow (Data Docs, the
version's registry page, the image, and for a version whose run the data drift started, the drift report).

The JSON follows the Model Card Toolkit's schema (``schema_version`` 0.0.2): ``model_details`` (name, overview,
documentation, version with name/date/diff, references), ``model_parameters`` (model_architecture, data,
input_format, output_format), ``quantitative_analysis`` (performance_metrics with confidence_interval, graphics)
and ``considerations`` (users, use_cases, limitations, tradeoffs, ethical_considerations). Plots are its graphics,
as base64 SVG.

Everything on the card is an aggregate the training job computed on the edge VM (``evaluation`` in
``metrics.json``) or a registry tag: no data row can be on it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MCT_SCHEMA_VERSION = "0.0.2"
CARD_JSON = "model_card.json"
CARD_HTML = "model_card.html"
RESIDENCY_STATEMENT = (
    "Training data never left the site. The edge VM read the training window from Stack Hub blob storage, trained "
    "and evaluated the model there, and sent back only the model file and aggregate figures: metric values, "
    "bootstrap intervals, confusion counts, curves at fixed thresholds and calibration rates over bins of at least "
    "{min_bin_rows} rows. This card holds no training row, label or prediction of a single row."
)
HISTORY_METRIC_TAG = "metric.{metric}"
PROMOTED_DECISIONS = {"promoted", "promoted_no_champion", "promoted_forced", "already_champion"}
INTERVAL_METRICS = ("roc_auc", "pr_auc", "f1", "accuracy", "precision", "recall")


@dataclass(frozen=True)
class VersionSnapshot:
    """What the registry holds about one model version.

    :param version: Version ("1", "2", ...).
    :param created: When it was registered (ISO 8601), or "".
    :param tags: Its tags (lineage, champion decision, image).
    :param aliases: Aliases pointing at it (``champion``), empty if none.
    """

    version: str
    created: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class CardLinks:
    """Where the card's links point (None: not available, shown as text).

    :param data_docs: The validation run's Data Docs report.
    :param model_version: The version's page in the model registry.
    :param image: The scoring image's page.
    :param drift_report: The drift check's report that started the training run (a run the data drift started).
    """

    data_docs: str | None = None
    model_version: str | None = None
    image: str | None = None
    drift_report: str | None = None


@dataclass(frozen=True)
class ModelCard:
    """The two documents of a card: ``json`` (a dict in Model Card Toolkit fields) and ``html`` (text)."""

    json: dict
    html: str

    def files(self) -> dict[str, bytes]:
        """``{file name: content}`` as stored with the version."""
        return {CARD_JSON: (json.dumps(self.json, indent=2, sort_keys=True) + "\n").encode(),
                CARD_HTML: self.html.encode()}


# -- facts -------------------------------------------------------------------------------------------------------


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _version_key(snapshot: VersionSnapshot) -> tuple[int, str]:
    return (int(snapshot.version), "") if str(snapshot.version).isdigit() else (0, str(snapshot.version))


def history_points(history: Sequence[VersionSnapshot], metric: str) -> list[dict]:
    """Every version in order with its own holdout score, whether it was promoted and whether it is champion now.

    A version's champion period runs from its promotion to the next promoted version (or to now).
    """
    points = []
    for snap in sorted(history, key=_version_key):
        decision = snap.tags.get("champion.decision", "")
        points.append({
            "version": str(snap.version),
            "created": snap.created,
            "window": snap.tags.get("edge.training_window", ""),
            "score": _number(snap.tags.get(HISTORY_METRIC_TAG.format(metric=metric))),
            "promoted": decision in PROMOTED_DECISIONS or snap.tags.get("champion.promoted") == "true",
            "decision": decision or "none",
            "champion_now": "champion" in snap.aliases,
        })
    return points


def champion_periods(points: Sequence[dict]) -> list[tuple[str, str | None]]:
    """``[(version promoted, version of the next promotion or None)]`` in order."""
    promoted = [p["version"] for p in points if p["promoted"]]
    return [(v, promoted[i + 1] if i + 1 < len(promoted) else None) for i, v in enumerate(promoted)]


def changes_since(previous: VersionSnapshot | None, previous_document: dict | None, current: VersionSnapshot,
                  document: dict | None) -> list[dict]:
    """What changed since the previous version: ``[{"what", "before", "now"}]`` for params, window and metrics."""
    if previous is None:
        return []
    document, previous_document = document or {}, previous_document or {}
    rows = []
    params_now = (document.get("model") or {}).get("params") or {}
    params_before = (previous_document.get("model") or {}).get("params")
    if params_before is None:
        rows.append({"what": "params", "before": "not recorded", "now": _params_text(params_now)})
    else:
        for key in sorted(set(params_now) | set(params_before)):
            if params_now.get(key) != params_before.get(key):
                rows.append({"what": f"param {key}", "before": json.dumps(params_before.get(key)),
                             "now": json.dumps(params_now.get(key))})
    window_before, window_now = previous.tags.get("edge.training_window"), current.tags.get("edge.training_window")
    if window_before != window_now:
        rows.append({"what": "training window", "before": window_before or "none", "now": window_now or "none"})
    for key in sorted(k for k in set(current.tags) | set(previous.tags) if k.startswith("metric.")):
        before, now = _number(previous.tags.get(key)), _number(current.tags.get(key))
        if before != now:
            delta = f" ({now - before:+.4f})" if before is not None and now is not None else ""
            rows.append({"what": key.removeprefix("metric."), "before": _fmt(before), "now": _fmt(now) + delta})
    for key in ("edge.code_version", "edge.data_fingerprint"):
        if previous.tags.get(key) != current.tags.get(key):
            rows.append({"what": key.removeprefix("edge."), "before": previous.tags.get(key, "none"),
                         "now": current.tags.get(key, "none")})
    return rows


def _params_text(params: Mapping) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items())) or "defaults"


def _fmt(value, digits: int = 4) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def limitations(document: dict, tags: Mapping[str, str]) -> list[str]:
    """Known limitations, stated from the figures of this version."""
    evaluation = document.get("evaluation") or {}
    rows = document.get("rows") or {}
    holdout = document.get("holdout_window") or {}
    found = [
        f"Evaluated on one holdout: the newest {holdout.get('days', '?')} day(s) of the training window "
        f"({holdout.get('start', '?')} to {holdout.get('end', '?')}, end exclusive), {rows.get('holdout', '?')} rows. "
        "Scores on later data may differ; the intervals cover resampling of this holdout only, not drift.",
        f"Trained only on the window {tags.get('edge.training_window', 'n/a')}; machines, seasons or operating "
        "regimes absent from it are not represented.",
        f"Threshold metrics (f1, accuracy, precision, recall, confusion counts) use the decision threshold "
        f"{(evaluation.get('confusion') or {}).get('threshold', 0.5)}, as the scoring image does.",
        "Inputs are the six numeric sensor readings only; a row with a missing reading cannot be scored.",
    ]
    positives = evaluation.get("positives")
    total = evaluation.get("rows")
    if isinstance(positives, int) and isinstance(total, int) and total:
        found.append(
            f"Failures are rare: {positives} of {total} holdout rows ({positives / total:.1%}) are positive, "
            "so precision-recall figures rest on few events and their intervals are wide."
        )
    hidden = [b for b in (evaluation.get("calibration") or {}).get("bins", []) if b.get("observed_rate") is None]
    if hidden:
        found.append(
            f"{len(hidden)} calibration bin(s) hold fewer than "
            f"{(evaluation.get('calibration') or {}).get('min_bin_rows')} rows; their rates are not shown."
        )
    if not evaluation:
        found.append("The training job did not report holdout aggregates (an older training code version): no "
                     "intervals, curves or calibration for this version.")
    return found


# -- SVG plots ---------------------------------------------------------------------------------------------------

_W, _H, _PAD = 320, 240, 40


def _scale(value: float, lo: float, hi: float, out_lo: float, out_hi: float) -> float:
    if hi == lo:
        return (out_lo + out_hi) / 2
    return out_lo + (value - lo) * (out_hi - out_lo) / (hi - lo)


def _axes(title: str, x_label: str, y_label: str, x_ticks, y_ticks, x_range, y_range) -> list[str]:
    left, right, top, bottom = _PAD, _W - 10, 24, _H - _PAD + 6
    parts = [f'<text x="{_W / 2}" y="14" class="t">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" class="frame"/>']
    for value, label in x_ticks:
        x = _scale(value, *x_range, left, right)
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" class="tick"/>'
                     f'<text x="{x:.1f}" y="{bottom + 15}" class="l">{html.escape(label)}</text>')
    for value, label in y_ticks:
        y = _scale(value, *y_range, bottom, top)
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" class="tick"/>'
                     f'<text x="{left - 6}" y="{y + 3:.1f}" class="l r">{html.escape(label)}</text>')
    parts.append(f'<text x="{(left + right) / 2}" y="{_H - 4}" class="l">{html.escape(x_label)}</text>')
    parts.append(f'<text x="10" y="{(top + bottom) / 2}" class="l" transform="rotate(-90 10 {(top + bottom) / 2})">'
                 f'{html.escape(y_label)}</text>')
    return parts


def _frame_box():
    return _PAD, _W - 10, 24, _H - _PAD + 6


def _polyline(points: Sequence[tuple[float, float]], x_range, y_range, css: str) -> str:
    left, right, top, bottom = _frame_box()
    if not points:
        return ""
    coords = [(_scale(x, *x_range, left, right), _scale(y, *y_range, bottom, top)) for x, y in points]
    d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    return f'<path d="{d}" class="{css}"/>'


def _svg(name: str, parts: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
            f'role="img" aria-label="{html.escape(label)}" data-plot="{name}">' + "".join(parts) + "</svg>")


_UNIT_TICKS = [(v, f"{v:g}") for v in (0, 0.25, 0.5, 0.75, 1)]


def _empty(parts: list[str], why: str) -> None:
    parts.append(f'<text x="{_W / 2}" y="{_H / 2}" class="t">{html.escape(why)}</text>')


def roc_svg(evaluation: dict) -> str:
    roc = evaluation.get("roc") or {}
    parts = _axes("ROC curve (holdout)", "false positive rate", "true positive rate", _UNIT_TICKS, _UNIT_TICKS,
                  (0, 1), (0, 1))
    parts.append(_polyline([(0, 0), (1, 1)], (0, 1), (0, 1), "ref"))
    points = sorted(zip(roc.get("fpr", []), roc.get("tpr", [])))
    if points:
        parts.append(_polyline([(0.0, 0.0), *points, (1.0, 1.0)], (0, 1), (0, 1), "curve"))
    else:
        _empty(parts, "no curve reported")
    return _svg("roc", parts, "ROC curve")


def pr_svg(evaluation: dict) -> str:
    pr = evaluation.get("pr") or {}
    parts = _axes("Precision-recall (holdout)", "recall", "precision", _UNIT_TICKS, _UNIT_TICKS, (0, 1), (0, 1))
    rate = (evaluation.get("positives") or 0) / evaluation["rows"] if evaluation.get("rows") else None
    if rate is not None:
        parts.append(_polyline([(0, rate), (1, rate)], (0, 1), (0, 1), "ref"))
    points = sorted((r, p) for r, p in zip(pr.get("recall", []), pr.get("precision", [])) if p is not None)
    if points:
        parts.append(_polyline(points, (0, 1), (0, 1), "curve"))
    else:
        _empty(parts, "no curve reported")
    return _svg("pr", parts, "Precision-recall curve")


def calibration_svg(evaluation: dict) -> str:
    bins = (evaluation.get("calibration") or {}).get("bins", [])
    parts = _axes("Calibration (holdout)", "mean predicted probability", "observed failure rate", _UNIT_TICKS,
                  _UNIT_TICKS, (0, 1), (0, 1))
    left, right, top, bottom = _frame_box()
    most = max((b.get("rows", 0) for b in bins), default=0)
    for b in bins:  # row count per bin as faint bars: where the calibration points have support
        if most and b.get("rows"):
            x0, x1 = _scale(b["lower"], 0, 1, left, right), _scale(b["upper"], 0, 1, left, right)
            height = (bottom - top) * 0.3 * b["rows"] / most
            parts.append(f'<rect x="{x0:.1f}" y="{bottom - height:.1f}" width="{x1 - x0:.1f}" height="{height:.1f}" '
                         f'class="bar"/>')
    parts.append(_polyline([(0, 0), (1, 1)], (0, 1), (0, 1), "ref"))
    shown = [(b["mean_predicted"], b["observed_rate"]) for b in bins if b.get("observed_rate") is not None]
    if shown:
        parts.append(_polyline(shown, (0, 1), (0, 1), "curve"))
        for x, y in shown:
            parts.append(f'<circle cx="{_scale(x, 0, 1, left, right):.1f}" cy="{_scale(y, 0, 1, bottom, top):.1f}" '
                         f'r="3" class="dot"/>')
    else:
        _empty(parts, "no bin with enough rows")
    return _svg("calibration", parts, "Calibration plot")


def history_svg(points: Sequence[dict], metric: str, current: str) -> str:
    scored = [p for p in points if p["score"] is not None]
    xs = list(range(len(points)))
    position = {p["version"]: i for i, p in enumerate(points)}
    lo = min((p["score"] for p in scored), default=0.0)
    hi = max((p["score"] for p in scored), default=1.0)
    lo, hi = (lo - 0.02, hi + 0.02) if hi - lo < 0.04 else (lo, hi)
    x_range = (-0.5, max(len(points) - 0.5, 0.5))
    step = max(1, len(points) // 8)
    x_ticks = [(i, f"v{points[i]['version']}") for i in xs[::step]]
    y_ticks = [(lo + (hi - lo) * k / 4, f"{lo + (hi - lo) * k / 4:.3f}") for k in range(5)]
    parts = _axes(f"{metric} of every version (own holdout)", "version", metric, x_ticks, y_ticks, x_range, (lo, hi))
    left, right, top, bottom = _frame_box()
    for start, end in champion_periods(points):  # champion periods as bands
        x0 = _scale(position[start] - 0.5, *x_range, left, right)
        x1 = _scale((position[end] - 0.5) if end else (len(points) - 0.5), *x_range, left, right)
        parts.append(f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1):.1f}" height="{bottom - top}" '
                     f'class="band"><title>champion: version {start}</title></rect>')
    if scored:
        parts.append(_polyline([(position[p["version"]], p["score"]) for p in scored], x_range, (lo, hi), "curve"))
    for p in scored:
        x, y = _scale(position[p["version"]], *x_range, left, right), _scale(p["score"], lo, hi, bottom, top)
        css = "promo" if p["promoted"] else "dot"
        if p["version"] == current:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" class="now"/>')
        if p["promoted"]:
            parts.append(f'<path d="M{x:.1f},{y - 6:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},{y + 6:.1f} '
                         f'L{x - 6:.1f},{y:.1f} Z" class="{css}"><title>v{p["version"]} promoted '
                         f'({html.escape(p["decision"])})</title></path>')
        else:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="{css}"><title>v{p["version"]} '
                         f'{html.escape(p["decision"])}</title></circle>')
    if not scored:
        _empty(parts, f"no version has {metric}")
    return _svg("history", parts, "Metric history")


# -- the card ----------------------------------------------------------------------------------------------------


def build_model_card(
    model_name: str,
    current: VersionSnapshot,
    document: dict | None,
    history: Sequence[VersionSnapshot],
    *,
    previous_document: dict | None = None,
    links: CardLinks = CardLinks(),
    promotion_rule: str = "",
    generated_at: str = "",
) -> ModelCard:
    """Build the model card of ``current``.

    :param model_name: Registered model name.
    :param current: The version the card is for.
    :param document: Its training job's ``metrics.json`` (None if unavailable: the card says so).
    :param history: Every version of the model (``current`` included or not), for the metric history and the
        comparison with the previous version.
    :param previous_document: The previous version's ``metrics.json``, for the parameter changes.
    :param links: Where the Data Docs, registry and image links point.
    :param promotion_rule: The champion rule in words, when the version's tags do not state it
        (``champion.rule``).
    :param generated_at: When the card was built (ISO 8601), shown on it.
    """
    document = document or {}
    tags = dict(current.tags)
    others = {s.version: s for s in history if s.version != current.version}
    versions = sorted([*others.values(), current], key=_version_key)
    earlier = [s for s in versions if _version_key(s) < _version_key(current)]
    previous = earlier[-1] if earlier else None
    metric = tags.get("champion.metric") or document.get("primary_metric") or "roc_auc"
    points = history_points(versions, metric)
    evaluation = document.get("evaluation") or {}
    changes = changes_since(previous, previous_document, current, document)
    facts = {
        "model_name": model_name,
        "version": current.version,
        "created": current.created,
        "aliases": list(current.aliases),
        "tags": tags,
        "metric": metric,
        "rule": tags.get("champion.rule") or promotion_rule,
        "document": document,
        "evaluation": evaluation,
        "points": points,
        "previous": previous.version if previous else None,
        "changes": changes,
        "links": links,
        "limitations": limitations(document, tags),
        "residency": RESIDENCY_STATEMENT.format(
            min_bin_rows=(evaluation.get("calibration") or {}).get("min_bin_rows", "n/a")),
        "generated_at": generated_at,
    }
    plots = {
        "roc": roc_svg(evaluation),
        "pr": pr_svg(evaluation),
        "calibration": calibration_svg(evaluation),
        "history": history_svg(points, metric, current.version),
    }
    return ModelCard(json=_mct_json(facts, plots), html=_html(facts, plots))


def _decision_text(facts: dict) -> str:
    tags = facts["tags"]
    return (f"{tags.get('champion.decision', 'not decided')}: candidate {facts['metric']} "
            f"{_fmt(tags.get('champion.candidate_score'))}, champion {_fmt(tags.get('champion.previous_score'))}. "
            f"{tags.get('champion.reason', '')}").strip()


def _environment(facts: dict) -> dict[str, str]:
    tags, document = facts["tags"], facts["document"]
    env = {"code version": tags.get("edge.code_version", "none"),
           "edge VM host key": tags.get("edge.vm_host_fingerprint", "none"),
           "training job": tags.get("edge.training_job_id", "none"),
           "DAG run": tags.get("edge.dag_run_id", "none")}
    for name, version in sorted((document.get("versions") or {}).items()):
        env[name] = str(version)
    return env


def _data_facts(facts: dict) -> dict[str, str]:
    tags, document = facts["tags"], facts["document"]
    rows = document.get("rows") or {}
    return {
        "training window": tags.get("edge.training_window", "none"),
        "train days": _window_text(document.get("train_window")),
        "holdout days": _window_text(document.get("holdout_window")),
        "partitions": str(tags.get("edge.partition_count", len(document.get("partitions") or []))),
        "rows validated": tags.get("edge.row_count", "none"),
        "rows read by the VM": str(rows.get("read", "n/a")),
        "rows train / holdout / dropped": f"{rows.get('train', 'n/a')} / {rows.get('holdout', 'n/a')} / "
                                          f"{rows.get('dropped_incomplete', 'n/a')}",
        "data fingerprint (validated)": tags.get("edge.data_fingerprint", "none"),
        "data fingerprint (read by the VM)": tags.get("edge.training_data_fingerprint", "none"),
        "validation id": tags.get("edge.validation_id", "none"),
        "validation passed": tags.get("edge.validation_success", "none"),
    }


def _trigger_text(facts: dict) -> str:
    """Why this version was trained: the data drift that started its run, or that no drift check did."""
    reason = facts["tags"].get("edge.drift_reason")
    if facts["links"].drift_report or (reason and reason != "none"):
        return f"Retrained because the data drifted: {reason or 'reason not recorded'}"
    return "Not started by a drift check (a scheduled, manual or new-partition run): no drift report."


def _window_text(window) -> str:
    if not isinstance(window, dict):
        return "n/a"
    return f"{window.get('start')} to {window.get('end')} (end exclusive, {window.get('days')} days)"


def _metric_rows(facts: dict) -> list[dict]:
    intervals = facts["evaluation"].get("intervals") or {}
    metrics = (facts["document"].get("metrics") or {})
    rows = []
    for name in INTERVAL_METRICS:
        if name in intervals:
            rows.append({"name": name, **intervals[name]})
        elif _number(metrics.get(name)) is not None:
            rows.append({"name": name, "value": metrics[name], "lower": None, "upper": None})
    return rows


def _mct_json(facts: dict, plots: dict[str, str]) -> dict:
    tags, links, document = facts["tags"], facts["links"], facts["document"]
    diff = "; ".join(f"{c['what']}: {c['before']} -> {c['now']}" for c in facts["changes"])
    references = [{"reference": url} for url in (links.data_docs, links.model_version, links.image,
                                                 links.drift_report) if url]
    performance = []
    for row in _metric_rows(facts):
        entry = {"type": row["name"], "value": row["value"], "slice": "holdout"}
        if row["lower"] is not None:
            entry["confidence_interval"] = {"lower_bound": row["lower"], "upper_bound": row["upper"]}
        performance.append(entry)
    confusion = facts["evaluation"].get("confusion") or {}
    for name in ("true_positives", "false_positives", "true_negatives", "false_negatives"):
        if name in confusion:
            performance.append({"type": name, "value": confusion[name], "slice": "holdout",
                                "threshold": confusion.get("threshold")})
    environment = "; ".join(f"{k}: {v}" for k, v in _environment(facts).items())
    documentation = "\n".join([
        f"Aliases: {', '.join(facts['aliases']) or 'none'}.",
        f"Champion decision: {_decision_text(facts)}",
        f"Promotion rule: {facts['rule'] or 'not recorded'}.",
        _trigger_text(facts) + (f" (drift report: {links.drift_report})." if links.drift_report else ""),
        f"Image: {tags.get('image.reference', 'not built yet')} (digest {tags.get('image.digest', 'n/a')}).",
        f"Environment: {environment}.",
    ])
    model = document.get("model") or {}
    return {
        "schema_version": MCT_SCHEMA_VERSION,
        "model_details": {
            "name": facts["model_name"],
            "overview": "Predicts a machine failure within 24 h from six sensor readings; trained on the edge VM "
                        "next to its data.",
            "documentation": documentation,
            "version": {"name": facts["version"], "date": facts["created"],
                        "diff": diff or ("first version" if facts["previous"] is None else "no change recorded")},
            "references": references,
        },
        "model_parameters": {
            "model_architecture": f"{model.get('estimator', 'unknown')} ({_params_text(model.get('params') or {})}), "
                                  f"exported as {model.get('format', 'onnx')}",
            "data": [
                {"name": f"training window {tags.get('edge.training_window', 'none')}",
                 **({"link": links.data_docs} if links.data_docs else {}),
                 "description": "; ".join(f"{k}: {v}" for k, v in _data_facts(facts).items()),
                 "sensitive": {"sensitive_data": ["machine telemetry: stays on premises, not included here"]}},
            ],
            "input_format": f"float32 tensor '{model.get('input', 'input')}' of features "
                            f"{', '.join(document.get('features') or [])}",
            "output_format": "labels and class probabilities (column 1: failure within 24 h)",
        },
        "quantitative_analysis": {
            "performance_metrics": performance,
            "graphics": {
                "description": "Holdout ROC, precision-recall and calibration; metric history of every version.",
                "collection": [{"name": name, "image": base64.b64encode(svg.encode()).decode()}
                               for name, svg in plots.items()],
            },
        },
        "considerations": {
            "users": [{"description": "Maintenance planners and the platform team deploying the scoring image."}],
            "use_cases": [{"description": "Ranking machines by risk of failure within 24 h to schedule inspection."}],
            "limitations": [{"description": text} for text in facts["limitations"]],
            "tradeoffs": [{"description": "Class weights favour recall of rare failures over precision at the "
                                          "0.5 threshold."}],
            "ethical_considerations": [{"name": "data residency", "mitigation_strategy": facts["residency"]}],
        },
    }


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1040px;
color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #d6dbe4;
padding-bottom:4px}.sub{color:#5b6576}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #d6dbe4;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f2f4f8}.num{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:12px}.tag{display:inline-block;background:#e7f0ff;border-radius:9px;
padding:0 8px;margin-right:4px}.promoted{color:#0a7a32;font-weight:600}.kept{color:#8a5a00;font-weight:600}
code{font-size:12px;word-break:break-all}
svg .t{font-size:12px;text-anchor:middle;font-weight:600}svg .l{font-size:10px;text-anchor:middle;fill:#444}
svg .r{text-anchor:end}svg .frame{fill:#fff;stroke:#9aa3b2}svg .tick{stroke:#9aa3b2}
svg .curve{fill:none;stroke:#1f5fbf;stroke-width:2}svg .ref{fill:none;stroke:#9aa3b2;stroke-dasharray:4 3}
svg .dot{fill:#1f5fbf}svg .promo{fill:#0a7a32}svg .now{fill:none;stroke:#d2691e;stroke-width:2}
svg .band{fill:#0a7a32;opacity:.09}svg .bar{fill:#1f5fbf;opacity:.15}
"""


class _Raw(str):
    """Markup built here (already escaped), put into a table cell as is."""


def _cell(value, tag: str = "td") -> str:
    text = value if isinstance(value, _Raw) else html.escape(str(value))
    return f"<{tag}>{text}</{tag}>"


def _table(rows: Mapping[str, str] | Sequence[Sequence[str]], head: Sequence[str] = ()) -> str:
    """A table: a mapping becomes ``<th>key</th><td>value</td>`` rows, a sequence plain rows under ``head``."""
    keyed = isinstance(rows, Mapping)
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(_cell(h, "th") for h in head) + "</tr>")
    for row in (rows.items() if keyed else rows):
        cells = list(row)
        out.append("<tr>" + _cell(cells[0], "th" if keyed else "td") + "".join(_cell(c) for c in cells[1:]) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _link(url: str | None, text: str) -> str:
    if not url:
        return html.escape(text) + " (no link)"
    return f'<a href="{html.escape(url, quote=True)}">{html.escape(text)}</a>'


def _html(facts: dict, plots: dict[str, str]) -> str:
    tags, links, evaluation = facts["tags"], facts["links"], facts["evaluation"]
    promoted = tags.get("champion.promoted") == "true"
    aliases = "".join(f'<span class="tag">{html.escape(a)}</span>' for a in facts["aliases"]) or "none"
    metric_rows = [
        (r["name"], _fmt(r["value"]),
         "n/a" if r["lower"] is None else f"{_fmt(r['lower'])} – {_fmt(r['upper'])}")
        for r in _metric_rows(facts)
    ]
    method = evaluation.get("bootstrap") or {}
    confusion = evaluation.get("confusion") or {}
    conf_table = (
        "<table><tr><th></th><th>predicted failure</th><th>predicted no failure</th></tr>"
        f"<tr><th>failure</th><td class=num>{confusion.get('true_positives', 'n/a')}</td>"
        f"<td class=num>{confusion.get('false_negatives', 'n/a')}</td></tr>"
        f"<tr><th>no failure</th><td class=num>{confusion.get('false_positives', 'n/a')}</td>"
        f"<td class=num>{confusion.get('true_negatives', 'n/a')}</td></tr></table>"
    )
    calibration = [(f"{b['lower']:.2f}–{b['upper']:.2f}", b["rows"], _fmt(b["mean_predicted"], 3),
                    _fmt(b["observed_rate"], 3)) for b in (evaluation.get("calibration") or {}).get("bins", [])]
    history = [(f"v{p['version']}", p["window"] or "n/a", _fmt(p["score"]), p["decision"],
                "yes" if p["champion_now"] else "") for p in facts["points"]]
    changes = [(c["what"], c["before"], c["now"]) for c in facts["changes"]]
    image_ref = tags.get("image.reference")
    partitions = [(p.get("partition"), p.get("parts"), p.get("rows")) for p in facts["document"].get("partitions") or []]
    body = [
        f"<h1>Model card: {html.escape(facts['model_name'])} version {html.escape(facts['version'])}</h1>",
        f'<div class="sub">training window {html.escape(tags.get("edge.training_window", "n/a"))} · card generated '
        f'{html.escape(facts["generated_at"] or "n/a")} · {_link(links.model_version, "model version in the registry")}'
        "</div>",
        "<h2>Version and champion decision</h2>",
        _table({
            "aliases": _Raw(aliases),
            "decision": _Raw(f'<span class="{"promoted" if promoted else "kept"}">'
                             f'{html.escape(tags.get("champion.decision", "not decided"))}</span>'),
            "rule applied": facts["rule"] or "not recorded",
            "candidate score": f"{facts['metric']} {_fmt(tags.get('champion.candidate_score'))}",
            "champion score (same holdout)": f"{facts['metric']} {_fmt(tags.get('champion.previous_score'))}",
            "reason": tags.get("champion.reason", "n/a"),
        }),
        "<h2>Scoring image</h2>",
        _table({"reference": image_ref or "not built yet", "digest": tags.get("image.digest", "n/a")}),
        f"<p>{_link(links.image, 'image details') if image_ref else ''}</p>",
        "<h2>Why it was trained</h2>",
        f"<p>{html.escape(_trigger_text(facts))}"
        + (f" {_link(links.drift_report, 'Drift report')}" if links.drift_report else "") + "</p>",
        "<h2>Training data</h2>",
        _table(_data_facts(facts)),
        f"<p>{_link(links.data_docs, 'Data Docs of the validation')}</p>",
        _table(partitions, ("partition", "part files", "rows")) if partitions else "",
        "<h2>Holdout metrics</h2>",
        _table(metric_rows, ("metric", "value", "95 % interval")),
        f'<p class="sub">{html.escape(str(method.get("method", "no bootstrap reported")))}, '
        f'{method.get("resamples", "n/a")} resamples, seed {method.get("seed", "n/a")}; threshold metrics at '
        f'{confusion.get("threshold", 0.5)}.</p>',
        "<h3>Confusion counts</h3>", conf_table,
        '<div class="plots">', plots["roc"], plots["pr"], plots["calibration"], "</div>",
        _table(calibration, ("probability bin", "rows", "mean predicted", "observed rate")) if calibration else "",
        "<h2>Metric history</h2>",
        '<p class="sub">Each version scored on its own holdout. Green bands: champion periods; diamonds: '
        'promotions; ring: this version.</p>',
        '<div class="plots">', plots["history"], "</div>",
        _table(history, ("version", "training window", facts["metric"], "decision", "champion now")),
        "<h2>What changed since the previous version</h2>",
        (_table(changes, ("what", f"v{facts['previous']}", f"v{facts['version']}")) if changes else
         f"<p>{'First version of the model.' if facts['previous'] is None else 'Nothing recorded changed.'}</p>"),
        "<h2>Environment</h2>",
        _table(_environment(facts)),
        "<h2>Limitations</h2>",
        "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in facts["limitations"]) + "</ul>",
        "<h2>Data residency</h2>",
        f"<p>{html.escape(facts['residency'])}</p>",
    ]
    title = html.escape(f"Model card {facts['model_name']} v{facts['version']}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")
