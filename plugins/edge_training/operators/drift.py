"""Operator that compares the newest partitions' data profile with the champion's reference profile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from edge_training import config
from edge_training.exceptions import EdgeTrainingError
from edge_training.operators.links import DriftReportLink, record_drift_report_link
from edge_training.reports import docs_dir_for_run
from edge_training.window import window_from_label

if TYPE_CHECKING:
    from airflow.sdk import Context

    from edge_training.registry import ModelRegistry, RegisteredModelVersion

DRIFT_REPORT_FILE = "drift_report.html"
# The training tasks of edge_training whose result carries the reference profile (whichever ran).
TRAINING_TASK_IDS = ("train_on_edge_vm", "train_on_azureml")


class DriftCheckOperator(BaseOperator):
    """
    Compare the data profile of new partitions with the champion model's reference profile, write the drift report.

    The current profile is the one ``validate_data`` built while it streamed the partitions (no second read); the
    reference is the training window's profile ``train.py`` wrote next to the champion's ``model.onnx``, taken from
    the registry (``register_model`` attaches it to the version), or from the training result of the
    ``edge_training`` run that registered the champion (lineage tag ``edge.dag_run_id``). Per feature: population stability index, Jensen-Shannon distance and normalized
    Wasserstein distance against thresholds (fixed, or calibrated on the training window's day-to-day variation).

    Writes a self-contained HTML report to ``reports_dir/<dag_id>/<run_id>/drift_report.html`` (the task's "Drift
    report" link, served by the api-server beside the run's Data Docs) and returns a short
    summary for XCom: ``drifted``, ``drifted_features``, ``reason``, the metrics per feature, ``champion_version``,
    ``partitions`` with their ``window_end``, ``report`` (the file) and ``report_url`` (its path on the api-server). Profiles and metrics
    are aggregates: no row, no value of the data.

    :param current: the validation task's result (XComArg or dict) holding ``profile``. Templated.
    :param model_name: registered model whose champion is the reference.
    :param reports_dir: folder under which each run's report is written.
    :param calibrate: calibrate the thresholds on the reference's day profiles (``EDGE_DRIFT_CALIBRATE``).
    :param thresholds: fixed thresholds per metric overriding the defaults (used when not calibrating).
    :param training_dag_id: the DAG whose runs trained the champion.
    :param registry_backend: model registry backend; None uses ``EDGE_MODEL_REGISTRY``.
    """

    template_fields: Sequence[str] = ("current", "model_name", "reports_dir")
    ui_color = "#fff4e0"
    operator_extra_links = (DriftReportLink(),)

    def __init__(
        self,
        *,
        current: Any,
        model_name: str = config.MODEL_NAME,
        reports_dir: str | Path = config.REPORTS_DIR,
        calibrate: bool = config.DRIFT_CALIBRATE,
        thresholds: Mapping[str, float] | None = None,
        training_dag_id: str = "edge_training",
        registry_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.current = current
        self.model_name = model_name
        self.reports_dir = str(reports_dir)
        self.calibrate = calibrate
        self.thresholds = dict(thresholds or {})
        self.training_dag_id = training_dag_id
        self.registry_backend = registry_backend

    @cached_property
    def registry(self) -> ModelRegistry:
        from edge_training.registry import get_model_registry

        return get_model_registry(self.registry_backend)

    def execute(self, context: Context) -> dict[str, Any]:
        from edge_training.drift import compare_profiles
        from edge_training.drift_report import render_drift_report

        current_summary = self.current if isinstance(self.current, Mapping) else {}
        current = current_summary.get("profile")
        if not current:
            raise EdgeTrainingError(
                "Checked the validation result for the data profile of the new partitions: none found (keys: "
                f"{sorted(current_summary)}). Pass the validate task's output as current= and keep its profile_k set."
            )
        partitions = current_summary.get("window")
        champion = self.registry.get_champion(self.model_name)
        if champion is None:
            return self._no_reference(partitions, f"model {self.model_name} has no champion yet")
        reference = self._reference_profile(context, champion)
        if reference is None:
            return self._no_reference(
                partitions,
                f"champion version {champion.version} of {self.model_name} has no reference profile (trained before "
                "profiles were written)",
            )
        result = compare_profiles(reference, current, thresholds=self.thresholds, calibrate=self.calibrate)
        label = f"{partitions} against {self.model_name} version {champion.version}"
        docs_dir = docs_dir_for_run(self.reports_dir, self.dag_id, context["run_id"])
        docs_dir.mkdir(parents=True, exist_ok=True)
        report = docs_dir / DRIFT_REPORT_FILE
        report.write_text(
            render_drift_report(
                result, reference, current, title=label,
                details={"DAG run": context["run_id"], "partitions": partitions, "champion version": champion.version},
            ),
            encoding="utf-8",
        )
        report_url = record_drift_report_link(self, self.dag_id, context["run_id"], DRIFT_REPORT_FILE)
        summary = {
            **result.summary(str(partitions)),
            "champion_version": champion.version,
            "partitions": partitions,
            # A training run this check starts trains on the days up to the end of what drifted.
            "window_end": window_from_label(partitions).end.isoformat(),
            "report": str(report),
            "report_url": report_url,
        }
        self.log.info(
            "%s (champion version %s); drift report: %s, served at %s", summary["reason"], champion.version, report,
            report_url,
        )
        return summary

    def _no_reference(self, partitions: Any, why: str) -> dict[str, Any]:
        reason = f"drift not measured for {partitions}: {why}; train a model (trigger edge_training) to set one"
        self.log.warning("%s", reason)
        return {
            "drifted": False, "drifted_features": [], "reason": reason, "partitions": partitions, "report": None,
            "report_url": None,
        }

    def _reference_profile(self, context: Context, champion: RegisteredModelVersion) -> dict | None:
        """The champion's reference profile: attached to the version in the registry, or (for a version registered
        before profiles were attached) carried in the training result of the run that registered it."""
        import tempfile

        from edge_training.drift import REFERENCE_PROFILE_FILE, read_profile

        with tempfile.TemporaryDirectory(prefix="edge-reference-") as tmp:
            attached = self.registry.download_attachment(champion, REFERENCE_PROFILE_FILE, Path(tmp))
            if attached is not None:
                return read_profile(attached)
        run_id = champion.tags.get("edge.dag_run_id")
        if not run_id:
            return None
        ti = context["ti"]
        for task_id in TRAINING_TASK_IDS:
            training = ti.xcom_pull(task_ids=task_id, dag_id=self.training_dag_id, run_id=run_id)
            if isinstance(training, Mapping) and training.get("reference_profile"):
                return dict(training["reference_profile"])
        return None
