"""The drift report: one self-contained HTML page (inline CSS and SVG, nothing fetched) a person opens.

Per feature: the reference and the current histogram on the suite's grid (shares of rows; suppressed bins drawn
as empty and counted), null rate, count, mean and deviation of both sides, the three metrics against their
thresholds, and the verdict. Built only from published profiles and the metrics, so it holds no row and no value
of the data. No Airflow import.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from edge_training.drift import METRICS, DriftResult

_WIDTH, _HEIGHT = 560, 120
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.drift{color:#b00020;font-weight:bold}.ok{color:#1b5e20;font-weight:bold}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.over{background:#fde7ea}
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _bars(reference: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """Two overlaid histograms as inline SVG: reference (blue) and current (orange), as shares of visible rows."""

    def shares(feature):
        counts = [c or 0 for c in feature["counts"]]
        total = sum(counts) or 1
        return [c / total for c in counts]

    ref, cur = shares(reference), shares(current)
    peak = max(ref + cur) or 1.0
    bins = len(ref)
    step = _WIDTH / bins
    parts = [f'<svg width="{_WIDTH}" height="{_HEIGHT + 18}" role="img" xmlns="http://www.w3.org/2000/svg">']
    for i, (a, b) in enumerate(zip(ref, cur)):
        x = i * step
        for share, colour, offset in ((a, "#1f77b4", 0.0), (b, "#ff7f0e", step / 2)):
            h = _HEIGHT * share / peak
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{_HEIGHT - h:.1f}" width="{max(step / 2 - 1, 0.5):.1f}" '
                f'height="{h:.1f}" fill="{colour}"/>'
            )
    parts.append(f'<line x1="0" y1="{_HEIGHT}" x2="{_WIDTH}" y2="{_HEIGHT}" stroke="#888"/>')
    # The axis shows the grid's ends: the suite's range, not the data's extremes.
    parts.append(f'<text x="0" y="{_HEIGHT + 14}" font-size="11">{_fmt(float(reference["lo"]))}</text>')
    parts.append(
        f'<text x="{_WIDTH}" y="{_HEIGHT + 14}" font-size="11" text-anchor="end">{_fmt(float(reference["hi"]))}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def render_drift_report(
    result: DriftResult,
    reference: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    title: str,
    details: Mapping[str, Any] | None = None,
) -> str:
    """The HTML page of one drift check.

    :param result: the comparison (:func:`edge_training.drift.compare_profiles`).
    :param reference: the champion's published reference profile.
    :param current: the new partitions' published profile.
    :param title: what was checked, e.g. ``dt=2026-06-08 against predictive-maintenance version 3``.
    :param details: extra lines for the header table (run id, champion version, ...): names and plain values.
    """
    verdict = (
        f'<span class="drift">DRIFT in {", ".join(html.escape(f) for f in result.drifted_features)}</span>'
        if result.drifted
        else '<span class="ok">no drift</span>'
    )
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in (details or {}).items()
    )
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Data drift: {html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Data drift: {html.escape(title)}</h1>",
        f"<p>Verdict: {verdict}. {html.escape(result.reason())}</p>",
        "<table>",
        rows,
        f"<tr><th>rows (reference / current)</th><td>{result.reference_rows} / {result.current_rows}</td></tr>",
        f"<tr><th>thresholds</th><td>{'calibrated on the training window' if result.calibrated else 'fixed'}</td></tr>",
        f"<tr><th>bins under k rows suppressed</th><td>k = {_fmt(reference.get('k'))}</td></tr>",
        "</table>",
        '<p class="legend"><span style="background:#1f77b4"></span>reference (training window)'
        '<span style="background:#ff7f0e"></span>current</p>',
    ]
    for name, verdicts in result.features.items():
        ref, cur = reference["features"][name], current["features"][name]
        status = '<span class="drift">drift</span>' if verdicts["drifted"] else '<span class="ok">ok</span>'
        out.append(f"<h2>{html.escape(name)}: {status}</h2>")
        out.append(_bars(ref, cur))
        out.append("<table><tr><th>metric</th><th>value</th><th>threshold</th></tr>")
        for metric in METRICS:
            over = metric in verdicts["over"]
            out.append(
                f"<tr{' class=over' if over else ''}><td>{metric}</td><td>{_fmt(verdicts['metrics'][metric])}</td>"
                f"<td>{_fmt(verdicts['thresholds'][metric])}</td></tr>"
            )
        out.append("</table><table><tr><th></th><th>count</th><th>null rate</th><th>mean</th><th>std</th>"
                   "<th>suppressed bins</th></tr>")
        for label, side in (("reference", ref), ("current", cur)):
            out.append(
                f"<tr><td>{label}</td><td>{side['count']}</td><td>{_fmt(side['null_rate'])}</td>"
                f"<td>{_fmt(side['mean'])}</td><td>{_fmt(side['std'])}</td><td>{side['suppressed_bins']}</td></tr>"
            )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
