"""edge_training.model_card: the card of a version, built from a real training job's metrics.json and registry tags."""

from __future__ import annotations

import base64
import html
import json
import re

import pytest

from edge_training.model_card import (
    CardLinks,
    VersionSnapshot,
    build_model_card,
    champion_periods,
    history_points,
)
from tests._model_card import history, trained_document, version_tags
from tests._residency import RowSignatures, scan_text

LINKS = CardLinks(data_docs="/edge-training/data-docs/edge_training/run4/index.html",
                  model_version="/edge-training/model-versions/predictive-maintenance/4",
                  image="/edge-training/images/predictive-maintenance/4")
IMAGE = {"image.reference": "127.0.0.1:5000/predictive-maintenance:4@sha256:" + "ab" * 32,
         "image.digest": "sha256:" + "ab" * 32}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_document(tmp_path_factory.mktemp("train"))


def card_for(document, extra_tags=None, previous_document=None, links=LINKS):
    tags = version_tags(4, document["metrics"]["roc_auc"], "kept_champion", "2026-11-01/2026-11-06",
                        **(extra_tags or {}))
    snapshots = history(tags)
    return build_model_card("predictive-maintenance", snapshots[-1], document, snapshots,
                            previous_document=previous_document, links=links, generated_at="2026-11-06T03:00:00+00:00")


def test_training_job_reports_holdout_aggregates(trained):
    document, _ = trained
    evaluation = document["evaluation"]
    assert evaluation["rows"] == document["rows"]["holdout"] == document["metrics"]["n_holdout"]
    # The interval is around the very score the champion gate uses.
    roc = evaluation["intervals"]["roc_auc"]
    assert roc["value"] == pytest.approx(document["metrics"]["roc_auc"])
    assert roc["lower"] < roc["value"] < roc["upper"]
    confusion = evaluation["confusion"]
    assert sum(confusion[k] for k in ("true_positives", "false_positives", "true_negatives", "false_negatives")) \
        == evaluation["rows"]


def test_json_uses_model_card_toolkit_fields(trained):
    document, _ = trained
    card = card_for(document).json
    assert set(card) == {"schema_version", "model_details", "model_parameters", "quantitative_analysis",
                         "considerations"}
    assert card["schema_version"] == "0.0.2"
    details = card["model_details"]
    assert set(details) <= {"name", "overview", "documentation", "owners", "version", "licenses", "references",
                            "citations", "path"}
    assert details["version"]["name"] == "4" and set(details["version"]) == {"name", "date", "diff"}
    assert {r["reference"] for r in details["references"]} == {LINKS.data_docs, LINKS.model_version, LINKS.image}
    assert set(card["model_parameters"]) == {"model_architecture", "data", "input_format", "output_format"}
    metrics = {m["type"]: m for m in card["quantitative_analysis"]["performance_metrics"]}
    roc = document["evaluation"]["intervals"]["roc_auc"]
    assert metrics["roc_auc"]["confidence_interval"] == {"lower_bound": roc["lower"], "upper_bound": roc["upper"]}
    assert metrics["true_positives"]["value"] == document["evaluation"]["confusion"]["true_positives"]
    graphics = card["quantitative_analysis"]["graphics"]["collection"]
    assert [g["name"] for g in graphics] == ["roc", "pr", "calibration", "history"]
    assert all(base64.b64decode(g["image"]).startswith(b"<svg") for g in graphics)
    considerations = card["considerations"]
    assert set(considerations) == {"users", "use_cases", "limitations", "tradeoffs", "ethical_considerations"}
    assert considerations["ethical_considerations"][0]["name"] == "data residency"
    assert "never left the site" in considerations["ethical_considerations"][0]["mitigation_strategy"]


def test_html_shows_what_a_reader_needs(trained):
    document, _ = trained
    previous = json.loads(json.dumps(document))
    previous["model"]["params"]["n_estimators"] = 10
    page = card_for(document, IMAGE, previous_document=previous).html
    text = re.sub(r"<[^>]+>", " ", page)
    for expected in [
        "predictive-maintenance version 4", "kept_champion", "rule applied",
        "compete only on a holdout neither model trained on", IMAGE["image.reference"], IMAGE["image.digest"],
        "2026-11-01/2026-11-06", "sha256:" + "4".rjust(64, "0"), "edge_training-2026-11-04",
        "SHA256:hostkeyfingerprintofthevm", f"scikit-learn", document["versions"]["scikit-learn"],
        f"{document['evaluation']['confusion']['true_positives']}", "95 % interval", "Limitations",
        "Training data never left the site", "param n_estimators", "percentile bootstrap, 1000 resamples",
    ]:
        assert expected in text, expected
    roc = document["evaluation"]["intervals"]["roc_auc"]
    assert f"{roc['lower']:.4f} – {roc['upper']:.4f}" in text
    assert f"{document['metrics']['roc_auc']:.4f} (" in text  # roc_auc now vs v3, with its change
    for partition in document["partitions"]:
        assert partition["partition"] in text
    assert f'href="{LINKS.data_docs}"' in page and f'href="{LINKS.model_version}"' in page


def test_card_before_the_image_is_built_says_so(trained):
    document, _ = trained
    page = card_for(document, links=CardLinks(data_docs=LINKS.data_docs, model_version=LINKS.model_version)).html
    assert "not built yet" in page and "/edge-training/images/" not in page


def test_html_is_self_contained(trained):
    document, _ = trained
    page = card_for(document, IMAGE).html
    lowered = page.lower()
    for forbidden in ("<script", "<link", "<img", "<iframe", "<object", "@import", "url(", "src=", "@font-face"):
        assert forbidden not in lowered, forbidden
    # The only absolute URL is the SVG namespace; everything else is a link the reader may follow.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    assert {m for m in re.findall(r'href="([^"]+)"', page)} == {LINKS.data_docs, LINKS.model_version, LINKS.image}


def test_tag_values_are_escaped(trained):
    document, _ = trained
    page = card_for(document, {"champion.reason": "<script>alert(1)</script>"}).html
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_card_passes_the_residency_scanner_and_the_scanner_would_see_a_row(trained):
    document, csv_texts = trained
    signatures = RowSignatures.from_csv_texts(csv_texts)
    card = card_for(document, IMAGE)
    for name, content in card.files().items():
        assert scan_text(name, content.decode(), signatures) == [], name
    # The same scan finds a row that a careless tag would carry onto the card.
    row = csv_texts[0].splitlines()[1]
    leaked = card_for(document, {"champion.reason": f"worst row {row}"})
    assert scan_text("model_card.html", leaked.html, signatures)
    assert scan_text("model_card.json", json.dumps(leaked.json), signatures)


def test_history_marks_promotions_and_champion_periods(trained):
    document, _ = trained
    tags = version_tags(4, 0.84, "kept_champion", "2026-11-01/2026-11-06")
    points = history_points(history(tags), "roc_auc")
    assert [(p["version"], p["score"], p["promoted"], p["champion_now"]) for p in points] == [
        ("1", 0.81, True, False), ("2", 0.79, False, False), ("3", 0.86, True, True), ("4", 0.84, False, False)]
    assert champion_periods(points) == [("1", "3"), ("3", None)]
    svg = re.search(r'<svg[^>]*data-plot="history".*?</svg>', card_for(document).html, re.S).group(0)
    assert svg.count('class="band"') == 2 and svg.count('class="promo"') == 2
    assert svg.count('class="now"') == 1 and "champion: version 3" in svg


def test_first_version_and_a_training_without_aggregates(trained):
    document, _ = trained
    old = {k: v for k, v in document.items() if k != "evaluation"}
    first = VersionSnapshot("1", tags=version_tags(1, 0.8, "promoted_no_champion", "2026-10-01/2026-10-06"),
                            aliases=("champion",))
    card = build_model_card("predictive-maintenance", first, old, [first])
    assert "First version of the model." in card.html and card.json["model_details"]["version"]["diff"] == \
        "first version"
    assert card.html.count("no curve reported") == 2 and "did not report holdout aggregates" in card.html
    assert '<span class="tag">champion</span>' in card.html
    metrics = {m["type"]: m for m in card.json["quantitative_analysis"]["performance_metrics"]}
    assert "confidence_interval" not in metrics["roc_auc"] and metrics["roc_auc"]["value"] == old["metrics"]["roc_auc"]


def test_a_version_the_data_drift_retrained_links_its_drift_report(trained):
    document, _ = trained
    report = "/edge-training/data-docs/edge_drift_check/scheduled__2026-11-07T02_00_00_00_00/drift_report.html"
    reason = "data drift in 2026-11-06..2026-11-07 in 1 feature(s): temperature_c (population_stability_index 4.210 > 0.200)"
    card = card_for(document, {"edge.drift_reason": reason, "edge.drift_report": report},
                    links=CardLinks(**{**LINKS.__dict__, "drift_report": report}))
    text = html.unescape(re.sub(r"<[^>]+>", " ", card.html))
    assert f"Retrained because the data drifted: {reason}" in text
    assert f'<a href="{report}">Drift report</a>' in card.html
    assert {"reference": report} in card.json["model_details"]["references"]
    assert f"drift report: {report}" in card.json["model_details"]["documentation"]
    # A version of a scheduled run says no drift check started it, and links no report.
    plain = card_for(document, {"edge.drift_reason": "none", "edge.drift_report": "none"})
    assert "Not started by a drift check" in plain.html and "drift_report.html" not in plain.html
