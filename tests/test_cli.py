"""The `newsflow` command line, through click's runner, on a real warehouse."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flows.cli import main
from tests.conftest import ROOT


@pytest.fixture
def demo(tmp_path, make_config):
    """A config over the bundled demo folders, loaded once."""
    cfg = make_config(
        [
            {"name": "demo-articles", "kind": "files", "path": str(ROOT / "examples/articles")},
            {"name": "demo-feeds", "kind": "files", "path": str(ROOT / "examples/feeds")},
        ],
        fetch={"fetch_pages": False},
    )
    result = CliRunner().invoke(main, ["run", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return cfg, result


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_has_help():
    commands = main.list_commands(None)  # type: ignore[arg-type]
    assert {"run", "sql", "sources", "search", "reprocess"} <= set(commands)
    for name in commands:
        out = run(name, "--help")
        assert "Usage: main " + name in out or f"Usage: newsflow {name}" in out or "Usage:" in out
        assert len(main.get_command(None, name).help or "") > 20  # type: ignore[arg-type]


def test_run_prints_a_summary(demo):
    _, result = demo
    out = result.output
    assert "new articles:" in out and "duplicates:" in out and "failures: 0" in out
    assert "demo-articles" in out and "demo-feeds" in out


def test_run_json_summary(demo):
    cfg, _ = demo
    out = run("run", "--config", str(cfg), "--json")
    summary = json.loads(out[out.index("{") :])
    assert summary["status"] == "completed" and summary["new_articles"] == 0
    assert [o["status"] for o in summary["outcomes"]] == ["ok", "ok"]
    assert set(summary["seconds"]) >= {"sources", "dedup", "search_index", "flow"}


def test_sql_table_csv_json_parquet(demo, tmp_path):
    cfg, _ = demo
    q = "SELECT source, count(*) AS n FROM articles GROUP BY ALL ORDER BY source"
    assert "demo-articles" in run("sql", q, "--config", str(cfg))
    lines = run("sql", q, "--config", str(cfg), "--format", "csv").splitlines()
    assert lines[0] == "source,n" and lines[1].startswith("demo-articles,")
    rows = json.loads(run("sql", q, "--config", str(cfg), "--format", "json"))
    assert [r["source"] for r in rows] == ["demo-articles", "demo-feeds"]
    out = tmp_path / "a.parquet"
    run("sql", "SELECT * FROM articles", "-c", str(cfg), "-f", "parquet", "-o", str(out))
    assert pq.read_table(out).num_rows == sum(r["n"] for r in rows)


def test_sql_is_read_only(demo):
    cfg, _ = demo
    result = CliRunner().invoke(main, ["sql", "DELETE FROM articles", "--config", str(cfg)])
    assert result.exit_code != 0
    assert "read-only" in result.output
    assert (
        int(run("sql", "SELECT count(*) FROM articles", "-c", str(cfg), "-f", "csv").split()[1]) > 0
    )


def test_the_warehouse_keeps_to_the_configured_memory_limit(demo, tmp_path):
    cfg, _ = demo
    q = "SELECT current_setting('memory_limit') AS m"
    assert run("sql", q, "-c", str(cfg), "-f", "csv").splitlines()[1] != "286.1 MiB"
    limited = tmp_path / "limited.toml"
    text = cfg.read_text(encoding="utf-8")
    limited.write_text(text.replace("[warehouse]\n", "[warehouse]\nmemory_limit = '300MB'\n", 1))
    assert run("sql", q, "-c", str(limited), "-f", "csv").splitlines() == ["m", "286.1 MiB"]


def test_sql_prompt(demo):
    cfg, _ = demo
    result = CliRunner().invoke(
        main, ["sql", "--config", str(cfg)],
        input="SELECT count(*) AS n\nFROM sources;\nSELECT nope;\n.quit\n",
    )  # fmt: skip
    assert result.exit_code == 0
    assert "│ 2 " in result.output
    assert "Error:" in result.output  # a bad statement does not end the session


def test_sources_shows_health(demo):
    cfg, _ = demo
    rows = json.loads(run("sources", "--config", str(cfg), "--json"))
    assert {r["name"]: r["last_status"] for r in rows} == {
        "demo-articles": "ok",
        "demo-feeds": "ok",
    }
    assert all(r["articles_total"] > 0 for r in rows)


def test_search_ranks_by_relevance(demo):
    cfg, _ = demo
    rows = json.loads(run("search", "orchid moor", "--config", str(cfg), "-f", "json"))
    assert rows and "orchid" in rows[0]["title"].lower()
    assert rows == sorted(rows, key=lambda r: -r["score"])


def test_config_errors_are_reported_cleanly(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[fetch]\nspeed = 'fast'\n")
    result = CliRunner().invoke(main, ["run", "--config", str(bad)])
    assert result.exit_code != 0
    assert f"{bad}: fetch.speed: unknown key" in result.output


def test_unknown_source_is_refused(demo):
    cfg, _ = demo
    result = CliRunner().invoke(main, ["run", "--config", str(cfg), "--source", "nope"])
    assert result.exit_code != 0 and "unknown source(s): nope" in result.output


def test_clustering_holds_duckdb_to_a_bounded_cache_and_restores_the_limit(tmp_path):
    # A clustering pass caps DuckDB's cache (it grew to 1.6 GB over a 20k-page pass) and
    # then gives DuckDB its default back.
    import duckdb

    from tasks.db import capped_memory

    con = duckdb.connect(str(tmp_path / "x.duckdb"))

    def limit() -> str:
        return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    before = limit()
    with capped_memory(con, "512MB"):
        assert limit() == "488.2 MiB"
    assert limit() == before != "488.2 MiB"
