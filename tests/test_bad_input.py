"""Hostile input, case by case, in one run: each case ends as a row naming the source and the
reason, and the run's good source loads normally."""

from __future__ import annotations

import time

import pytest

from flows.ingest import ingest
from tests.support.bad_inputs import CASES, FETCH, outcome_table, sources_for


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from tests.conftest import write_config
    from tests.support.httpserver import TestServer

    tmp = tmp_path_factory.mktemp("bad")
    with TestServer() as server:
        cfg = write_config(tmp / "c.toml", tmp / "news.duckdb", sources_for(server), fetch=FETCH)
        t0 = time.monotonic()
        summary = ingest(config_path=str(cfg))
        elapsed = time.monotonic() - t0
    return summary, elapsed, {r["case"]: r for r in outcome_table(tmp / "news.duckdb")}, tmp


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_bad_input_is_recorded_with_its_reason(table, case):
    _, _, rows, _ = table
    row = rows[case.name]
    assert row["ok"], row
    assert row["other_sources_loaded"]
    if case.level == "source":
        assert row["status"] == "error" and not row["articles"]
    elif case.level == "item":
        # The feed loads; the wall or the refused page never becomes the article's text.
        assert row["status"] == "ok" and row["articles"]
    elif case.level == "warning":
        # Read anyway, and said so: no expansion, no crash.
        assert row["status"] == "ok"


def test_walls_never_become_article_text(table):
    import duckdb

    *_, tmp = table
    con = duckdb.connect(str(tmp / "news.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT source, text, text_origin, fallback_reason FROM articles "
        "WHERE source IN ('consent-wall', 'bot-challenge') ORDER BY source"
    ).fetchall()
    con.close()
    assert [(r[0], r[2], r[3].split(":")[0]) for r in rows] == [
        ("bot-challenge", "feed_summary", "bot_challenge"),
        ("consent-wall", "feed_summary", "consent_wall"),
    ]
    assert all(r[1].startswith("Feed summary for") for r in rows)


def test_the_run_completes_quickly_and_names_the_failed_sources(table):
    summary, elapsed, _, _ = table
    assert summary.status == "completed_with_failures"
    expected = {c.name for c in CASES if c.level == "source"}
    assert set(summary.failed_sources) == expected
    assert elapsed < 60
