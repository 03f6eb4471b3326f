"""Sensor that waits for a day's partition to land in the Stack Hub blob container."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from edge_training import config
from edge_training.window import partition_prefix, run_window

if TYPE_CHECKING:
    from datetime import date

    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
    from airflow.sdk import Context


class DailyPartitionSensor(BaseSensorOperator):
    """
    Wait until the day before the run's data interval end has a data blob under ``dt=YYYY-MM-DD/``.

    That day is the one-day window ``validate_data`` would check for the run (``window_days=1``), so a task after this
    sensor reads exactly the partition it saw land. Markers and other files that are not data (``_SUCCESS``,
    ``_temporary/``, ``.crc``) do not count: a day holding only those is still missing. Each look that finds nothing
    logs how many blobs the day holds and that none is data. Waits in reschedule mode by default (no worker slot held
    between looks). When the wait times out the task fails, without retrying, with an error naming the container and
    the missing partition: the day is reported missing, never as checked. Returns ``{"partition": "YYYY-MM-DD"}``.

    :param wasb_conn_id: Airflow connection of the blob storage (wasb).
    :param container: blob container holding the ``dt=YYYY-MM-DD/part-NNNN.csv`` partitions. Templated.
    :param what: what waits for the partition, for the timeout error (e.g. "the drift check").
    """

    template_fields: Sequence[str] = ("wasb_conn_id", "container")
    ui_color = "#eef6ff"

    def __init__(
        self,
        *,
        wasb_conn_id: str = config.BLOB_CONN_ID,
        container: str = config.BLOB_CONTAINER,
        what: str = "this DAG run",
        poke_interval: float = config.PARTITION_WATCH_POKE_S,
        timeout: float = config.PARTITION_WATCH_TIMEOUT_S,
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.wasb_conn_id = wasb_conn_id
        self.container = container
        self.what = what

    @cached_property
    def hook(self) -> WasbHook:
        # Imported here: the azure SDK is slow to import and the DAG files import this module.
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        return WasbHook(wasb_conn_id=self.wasb_conn_id)

    @staticmethod
    def day(context: Context) -> date:
        """The partition day of the run: the one-day window ending at its data interval end (or ``run_after``)."""
        return run_window(context, 1).start

    def poke(self, context: Context) -> PokeReturnValue:
        from edge_training.fingerprint import is_data_blob

        day = self.day(context)
        names = self.hook.get_blobs_list_recursive(self.container, prefix=partition_prefix(day))
        data = [name for name in names if is_data_blob(name)]
        if not data:
            self.log.info(
                "Partition %s has not landed yet in container %s: %d blob(s) there, none of them data.",
                partition_prefix(day), self.container, len(names),
            )  # fmt: skip
        return PokeReturnValue(is_done=bool(data), xcom_value={"partition": day.isoformat()})

    def execute(self, context: Context) -> Any:
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            prefix = partition_prefix(self.day(context))
            raise AirflowSensorTimeout(
                f"Partition {prefix} is missing: checked container {self.container} for a data blob under {prefix} "
                f"for {self.timeout:.0f} s (EDGE_PARTITION_WATCH_TIMEOUT_S) and found none (markers and temporary "
                f"files do not count). Nothing was measured or started for that day by {self.what}. Load the "
                "partition, then clear this task to check it."
            ) from None
