"""The ``cluster`` flow: near-duplicates and story clusters for articles not yet clustered.

The ingest flow runs the same task at its end; this flow lets clustering run on its own (from
``newsflow cluster``, a schedule, or an event).
"""

from __future__ import annotations

from prefect import flow

from config.settings import load_config
from tasks.db import Warehouse
from tasks.dedup import DedupResult
from tasks.pipeline import cluster_stories


@flow(name="cluster", flow_run_name="cluster-stories", log_prints=False)
def cluster_flow(config_path: str | None = None) -> DedupResult:
    """Cluster every article that has not been clustered yet."""
    settings = load_config(config_path)
    wh = Warehouse.configured(settings.warehouse)
    wh.migrate()
    result = cluster_stories(settings, wh)
    if result.articles or wh.search_index_stale():
        wh.refresh_search_index()
    return result
