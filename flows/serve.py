"""Unattended runs on Prefect's own machinery: deployments, schedules, event triggers.

``newsflow serve`` builds, from the config:

- ``ingest-<source>`` (or ``ingest-<group>``) deployments with the sources' schedules
  (interval or cron with time zone);
- ``ingest-inbox``, triggered by each ``newsflow.file.dropped`` event (the inbox watcher emits
  one per new file in a ``watch = true`` folder) to ingest just that file;
- ``cluster-stories``, triggered by each ``newsflow.articles.loaded`` event, so new articles are
  clustered without waiting for a schedule (one run at a time);

and serves them all from one long-running process (``prefect.serve``), beside the watcher.
``prefect.yaml`` deploys the same flows to a work pool instead.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from config.settings import Schedule, Settings
from flows.cluster import cluster_flow
from flows.ingest import ingest
from tasks.pipeline import ARTICLES_LOADED
from tasks.watch import FILE_DROPPED


def _schedule(s: Schedule) -> IntervalSchedule | CronSchedule:
    if s.cron is not None:
        return CronSchedule(cron=s.cron, timezone=s.timezone)
    seconds = s.interval_seconds
    assert seconds is not None
    return IntervalSchedule(interval=timedelta(seconds=seconds), timezone=s.timezone)


def scheduled_groups(settings: Settings) -> dict[str, tuple[Schedule, list[str]]]:
    """Deployment name -> (schedule, source names), in config order."""
    groups: dict[str, tuple[Schedule, list[str]]] = {}
    for s in settings.sources:
        if s.schedule is None or not s.enabled:
            continue
        name = f"ingest-{s.schedule.group or s.name}"
        groups.setdefault(name, (s.schedule, []))[1].append(s.name)
    return groups


def build_deployments(settings: Settings, config_path: Path) -> list[RunnerDeployment]:
    """Every deployment ``newsflow serve`` serves for this config."""
    cfg = str(config_path.resolve())
    deployments: list[RunnerDeployment] = []
    for name, (schedule, names) in scheduled_groups(settings).items():
        deployments.append(
            RunnerDeployment.from_flow(
                ingest,
                name=name,
                schedules=[_schedule(schedule)],
                parameters={"config_path": cfg, "source_names": names, "cluster": False},
                description=f"Ingest {', '.join(names)} on schedule",
                tags=["newsflow", "scheduled"],
            )
        )
    if any(s.watch for s in settings.sources):
        deployments.append(
            RunnerDeployment.from_flow(
                ingest,
                name="ingest-inbox",
                parameters={"config_path": cfg, "cluster": False},
                triggers=[
                    DeploymentEventTrigger(
                        name="file dropped",
                        expect={FILE_DROPPED},
                        match={"prefect.resource.id": "newsflow.file.*"},
                        parameters={
                            "config_path": cfg,
                            "source_names": ["{{ event.payload.source }}"],
                            "paths": ["{{ event.payload.path }}"],
                            "cluster": False,
                        },
                    )
                ],
                description="Ingest one dropped file (triggered by newsflow.file.dropped)",
                tags=["newsflow", "event"],
            )
        )
    deployments.append(
        RunnerDeployment.from_flow(
            cluster_flow,
            name="cluster-stories",
            parameters={"config_path": cfg},
            triggers=[
                DeploymentEventTrigger(
                    name="articles loaded",
                    expect={ARTICLES_LOADED},
                    match={"prefect.resource.id": "newsflow.source.*"},
                    parameters={"config_path": cfg},
                )
            ],
            concurrency_limit=1,
            description="Cluster new articles (triggered by newsflow.articles.loaded)",
            tags=["newsflow", "event"],
        )
    )
    return deployments


def serve_config(settings: Settings, config_path: Path, **kwargs: Any) -> None:
    """Serve the deployments and watch the inboxes until interrupted."""
    from prefect import serve
    from prefect.events import emit_event

    from tasks.watch import InboxWatcher

    watched = [s for s in settings.sources if s.watch and s.enabled]
    watcher = InboxWatcher(watched, emit_event) if watched else None
    if watcher:
        watcher.start()
    try:
        serve(*build_deployments(settings, config_path), **kwargs)
    finally:
        if watcher:
            watcher.stop()
