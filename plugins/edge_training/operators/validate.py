"""Operator that validates the training window's data in blob storage before anything is trained on it."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from edge_training import config
from edge_training.operators.links import DataDocsLink
from edge_training.reports import docs_dir_for_run
from edge_training.window import run_window

if TYPE_CHECKING:
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
    from airflow.sdk import Context


class ValidateTrainingDataOperator(BaseOperator):
    """
    Validate the training window's daily partitions in blob storage against the Great Expectations suite.

    Blobs are streamed in chunks (never whole into memory). Every failure is collected and raised at once as
    ``DataValidationError`` (not retried: the data must be fixed first). An HTML Data Docs report is written to
    ``reports_dir/<dag_id>/<run_id>/index.html`` on success and failure, and its path is logged. Blobs that are not
    data (``_SUCCESS`` markers, ``.crc`` checksums, ...) are not validated and are listed as ignored. Returns a
    summary to XCom (window, partitions, row counts, ignored blobs, Data Docs path, and the ``manifest`` of the
    validated blobs with ETag and Content-MD5 plus its data fingerprint: what training must read): no data values. The task's "Data Docs" extra link opens the
    report through the Airflow api-server.

    :param wasb_conn_id: Airflow connection of the blob storage (wasb).
    :param container: blob container holding the ``dt=YYYY-MM-DD/part-NNNN.csv`` partitions.
    :param window_days: number of whole days in the training window, ending at the run's data interval end.
    :param window_end: end date of the training window (``YYYY-MM-DD``, exclusive) replacing the data interval
        end, for a manual re-train of a past window; empty keeps the interval end. Templated.
    :param suite_path: the expectation suite JSON.
    :param reports_dir: folder under which each run's Data Docs are written.
    :param chunk_rows: rows read and validated at a time; bounds the task's memory.
    :param profile_k: the data are profiled for drift while they stream (``profile`` in the summary: per feature a
        histogram on the suite's grid, null rate, count, mean, deviation); bins of fewer than ``profile_k`` rows are
        suppressed. None profiles nothing.
    """

    template_fields: Sequence[str] = (
        "wasb_conn_id", "container", "window_days", "window_end", "suite_path", "reports_dir",
    )  # fmt: skip
    ui_color = "#e6f0ff"
    operator_extra_links = (DataDocsLink(),)

    def __init__(
        self,
        *,
        wasb_conn_id: str = config.BLOB_CONN_ID,
        container: str = config.BLOB_CONTAINER,
        window_days: int = config.TRAINING_WINDOW_DAYS,
        window_end: str | None = None,
        suite_path: str | Path = config.EXPECTATION_SUITE_PATH,
        reports_dir: str | Path = config.REPORTS_DIR,
        chunk_rows: int = config.VALIDATION_CHUNK_ROWS,
        profile_k: int | None = config.DRIFT_PROFILE_K,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.wasb_conn_id = wasb_conn_id
        self.container = container
        self.window_days = window_days
        self.window_end = window_end
        self.suite_path = str(suite_path)
        self.reports_dir = str(reports_dir)
        self.chunk_rows = chunk_rows
        self.profile_k = profile_k

    @cached_property
    def hook(self) -> WasbHook:
        # Imported here: the azure SDK is slow to import and the DAG file imports this module.
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        return WasbHook(wasb_conn_id=self.wasb_conn_id)

    def execute(self, context: Context) -> dict:
        from edge_training.validation import blob_partitions, validate_partitions

        window = run_window(context, self.window_days, self.window_end)
        docs_dir = docs_dir_for_run(self.reports_dir, self.dag_id, context["run_id"])
        container_client = self.hook.get_conn().get_container_client(self.container)
        partitions = blob_partitions(container_client, window)
        self.log.info(
            "Validating training window %s: %d blobs listed in container %s, %d days expected.",
            window.label, len(partitions), self.container, len(window.days),
        )
        try:
            summary = validate_partitions(
                partitions,
                window.days,
                suite_path=self.suite_path,
                docs_dir=docs_dir,
                chunk_rows=int(self.chunk_rows),
                window_label=window.label,
                profile_k=self.profile_k,
            )
        finally:
            # Logged on success and failure alike: the report is where a failed run is diagnosed.
            self.log.info("Data Docs report: %s", docs_dir / "index.html")
        self.log.info(
            "Training window %s passed: %d rows in %d data blobs (%d other blobs ignored), data fingerprint %s; "
            "training reads exactly these blobs (manifest in this task's XCom).",
            summary["window"], summary["row_count"], len(summary["manifest"]), summary["ignored_blob_count"],
            summary["data_fingerprint"],
        )
        profile = summary.get("profile")
        if profile:
            self.log.info(
                "Data profile of %d rows: %d features on the suite's grid, %d bins under %d rows suppressed.",
                profile["rows"], len(profile["features"]),
                sum(f["suppressed_bins"] for f in profile["features"].values()), profile["k"],
            )
        return summary
