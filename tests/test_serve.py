"""Unattended runs on a real Prefect server on a free loopback port: `newsflow serve` serves the
scheduled deployments from config, a file dropped into the inbox is ingested within seconds
through an event and a deployment trigger, and the load event triggers story clustering."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks.db import Warehouse
from tests.conftest import ROOT
from tests.support.prefect_server import prefect_server, server_env, stop_group

pytestmark = pytest.mark.slow

CONFIG = """
[warehouse]
path = "{warehouse}"

[fetch]
fetch_pages = false

[[sources]]
name = "demo-articles"
kind = "files"
path = "{root}/examples/articles"
schedule = {{ interval = "1h", group = "demo" }}

[[sources]]
name = "demo-feeds"
kind = "files"
path = "{root}/examples/feeds"
schedule = {{ interval = "1h", group = "demo" }}

[[sources]]
name = "morning"
kind = "files"
path = "{root}/examples/feeds"
enabled = true
schedule = {{ cron = "0 6 * * *", timezone = "Europe/Paris" }}

[[sources]]
name = "inbox"
kind = "files"
path = "{inbox}"
watch = true
"""

ARTICLE = """Harbour crane toppled by gale at Quillon docks

A container crane at Quillon docks toppled into the harbour during Tuesday night's gale,
the port authority said on Wednesday. Nobody was hurt. The authority closed berths four to
six while divers inspect the quay wall, and ships bound for Quillon were sent to Brayhaven.
"""


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)


class Served:
    def __init__(self, api: str, cfg: Path, warehouse: Path, inbox: Path) -> None:
        self.api, self.cfg, self.warehouse, self.inbox = api, cfg, warehouse, inbox

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = httpx.post(f"{self.api}{path}", json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def deployments(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.post("/deployments/filter", {})}

    def runs_of(self, deployment: str) -> list[dict[str, Any]]:
        dep = self.deployments().get(deployment)
        if dep is None:
            return []
        return self.post(
            "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}
        )

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        if not self.warehouse.exists():
            return []
        return Warehouse(self.warehouse, lock_timeout=30).query(query)[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    inbox = tmp / "inbox"
    inbox.mkdir()
    cfg = tmp / "newsflow.toml"
    cfg.write_text(CONFIG.format(warehouse=tmp / "news.duckdb", root=ROOT, inbox=inbox))
    with prefect_server(tmp / "prefect") as api:
        log = (tmp / "serve.log").open("wb")
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "newsflow"), "serve", "--config", str(cfg)],
            env=server_env(tmp / "prefect", api),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        s = Served(api, cfg, tmp / "news.duckdb", inbox)
        try:
            wait_for(
                lambda: (
                    {"ingest-demo", "ingest-morning", "ingest-inbox", "cluster-stories"}
                    <= set(s.deployments())
                ),
                90,
                "the served deployments",
            )
            time.sleep(2)  # the watcher and the trigger listeners are up once serving
            yield s
        finally:
            stop_group(proc, signal.SIGINT, 30)
            log.close()


def test_schedules_from_config_are_on_the_served_deployments(served):
    deps = served.deployments()

    demo = deps["ingest-demo"]
    assert demo["parameters"]["source_names"] == ["demo-articles", "demo-feeds"]
    [interval] = [s["schedule"] for s in demo["schedules"]]
    assert interval["interval"] == 3600
    [cron] = [s["schedule"] for s in deps["ingest-morning"]["schedules"]]
    assert (cron["cron"], cron["timezone"]) == ("0 6 * * *", "Europe/Paris")
    assert deps["ingest-inbox"]["schedules"] == []
    assert deps["cluster-stories"]["schedules"] == []


def test_a_dropped_file_is_ingested_within_seconds_and_clustered(served):
    t0 = time.monotonic()
    tmp = served.inbox / ".crane.txt.part"
    tmp.write_text(ARTICLE)
    tmp.rename(served.inbox / "crane.txt")  # dropped whole, as a mail filter or scp would

    rows = wait_for(
        lambda: served.sql(
            "SELECT article_id, source FROM articles WHERE title LIKE 'Harbour crane%'"
        ),
        90,
        "the dropped file's article in the warehouse",
    )
    elapsed = time.monotonic() - t0

    assert rows[0][1] == "inbox"
    assert elapsed < 60
    runs = wait_for(
        lambda: [r for r in served.runs_of("ingest-inbox") if r["state_type"] == "COMPLETED"],
        60,
        "a completed ingest-inbox flow run",
    )
    assert runs[0]["name"] == "ingest-inbox"
    assert runs[0]["parameters"]["paths"] == [str((served.inbox / "crane.txt").resolve())]
    # Only that file was read, and only its source ran.
    assert served.sql(
        f"SELECT source, entries, new_articles FROM fetches WHERE run_id = '{runs[0]['id']}'"
    ) == [("inbox", 1, 1)]

    # The load event triggered clustering: the article has a story.
    wait_for(
        lambda: [r for r in served.runs_of("cluster-stories") if r["state_type"] == "COMPLETED"],
        90,
        "a completed cluster-stories flow run",
    )
    assert served.sql(f"SELECT count(*) FROM story_articles WHERE article_id = '{rows[0][0]}'") == [
        (1,)
    ]
