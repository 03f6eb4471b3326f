"""What starts a training run: the cron schedule with real data intervals, or a newly landed daily partition.

``EDGE_TRAINING_TRIGGER=schedule`` (default): ``CronDataIntervalTimetable`` on ``EDGE_TRAINING_SCHEDULE``; every run,
scheduled or backfilled, trains on the days before its own data interval end.
``EDGE_TRAINING_TRIGGER=asset``: the DAG runs when the ``edge_partition_watch`` DAG announces a new daily partition
(an update of :data:`NEW_PARTITION`); the run trains on the days before the day it starts.

``EDGE_RETRAIN_POLICY`` decides whether drift retrains: ``schedule`` (default) keeps the trigger above only; ``drift``
runs the DAG only when the ``edge_drift_check`` DAG finds the newest partition drifted from the champion's reference
profile (an update of :data:`DATA_DRIFT`, whose extra carries the reason); ``both`` keeps the trigger above and lets
drift add a run.
"""

from __future__ import annotations

# The SDK's authoring timetables: the scheduler-side ones (airflow.timetables) cost the DAG file ~0.3 s to import.
from airflow.sdk import Asset, CronDataIntervalTimetable

from edge_training import config

TRIGGERS = ("schedule", "asset")
RETRAIN_POLICIES = ("schedule", "drift", "both")

# "x-" scheme: a project-defined URI that Airflow keeps as written.
NEW_PARTITION = Asset(
    uri=f"x-edge-blob://{config.BLOB_CONTAINER}/daily-partitions",
    name="edge_new_partition",
)


# Updated by edge_drift_check when the newest partition drifted; the event's extra says which features and why.
DATA_DRIFT = Asset(
    uri=f"x-edge-blob://{config.BLOB_CONTAINER}/data-drift",
    name="edge_data_drift",
)


def triggering_drift(context) -> dict | None:
    """The extra of the newest :data:`DATA_DRIFT` event that started this DAG run (reason, drift report URL, ...),
    or None when no drift event did (a scheduled, manual or partition-triggered run).

    :param context: the task context; Airflow 3 puts the run's consumed asset events under
        ``triggering_asset_events``.
    """
    events = context.get("triggering_asset_events") or {}
    try:
        drift = list(events.get(DATA_DRIFT) or ())
    except (KeyError, TypeError):
        return None
    if not drift:
        return None
    newest = max(drift, key=lambda event: event.timestamp)
    return dict(newest.extra or {})


def check_retrain_policy(policy: str = config.RETRAIN_POLICY) -> str:
    """``policy`` if it is one of :data:`RETRAIN_POLICIES`, else a ValueError saying what to set."""
    if policy not in RETRAIN_POLICIES:
        raise ValueError(
            f"Checked EDGE_RETRAIN_POLICY: expected one of {', '.join(RETRAIN_POLICIES)}, found {policy!r}. Use "
            "'schedule' to retrain on EDGE_TRAINING_TRIGGER only, 'drift' to retrain only when the data drifts, "
            "'both' for the schedule plus a run whenever the data drifts."
        )
    return policy


def training_schedule(
    trigger: str = config.TRAINING_TRIGGER, cron: str = config.SCHEDULE, policy: str = config.RETRAIN_POLICY
):
    """The ``schedule=`` of the edge_training DAG for ``trigger`` (``schedule`` or ``asset``) and retrain ``policy``."""
    policy = check_retrain_policy(policy)
    if policy == "drift":
        return DATA_DRIFT
    base = _trigger_schedule(trigger, cron)
    if policy == "both":
        if isinstance(base, Asset):
            return base | DATA_DRIFT
        from airflow.sdk import AssetOrTimeSchedule

        return AssetOrTimeSchedule(timetable=base, assets=DATA_DRIFT)
    return base


def _trigger_schedule(trigger: str, cron: str):
    if trigger == "schedule":
        return CronDataIntervalTimetable(cron, timezone="UTC")
    if trigger == "asset":
        return NEW_PARTITION
    raise ValueError(
        f"Checked EDGE_TRAINING_TRIGGER: expected one of {', '.join(TRIGGERS)}, found {trigger!r}. "
        "Use 'schedule' for the cron schedule or 'asset' to train when a new daily partition lands."
    )


def site_schedule(site, trigger: str = config.TRAINING_TRIGGER, policy: str = config.RETRAIN_POLICY):
    """The ``schedule=`` of one site's pipeline (an :class:`edge_training.sites.Site`).

    The single site of a deployment without a sites file keeps :func:`training_schedule`. A site of the sites file
    trains on its own cron (``schedule:``, default ``EDGE_TRAINING_SCHEDULE``): the partition watch and the drift
    check watch one site's data, so their assets cannot start another site's runs.
    """
    from edge_training.sites import DAG_ID

    if site.dag_id == DAG_ID:
        return training_schedule(trigger, site.schedule, policy)
    if trigger != "schedule" or check_retrain_policy(policy) != "schedule":
        raise ValueError(
            f"Checked EDGE_TRAINING_TRIGGER={trigger!r} and EDGE_RETRAIN_POLICY={policy!r} for site {site.name!r} of "
            "the sites file: per-site pipelines train on their cron only (the partition watch and the drift check "
            "serve one site). Set both to 'schedule', or remove the sites file to use the asset or drift triggers."
        )
    return CronDataIntervalTimetable(site.schedule, timezone="UTC")
