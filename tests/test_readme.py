"""The README's promises: its SQL runs on the demo warehouse, every command is documented,
and it opens with the two quickstart commands."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from flows.cli import main
from tasks.db import Warehouse
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
SQL_BLOCKS = re.findall(r"```sql\n(.*?)```", README, re.S)


@pytest.fixture(scope="module")
def demo_warehouse(tmp_path_factory):
    from tests.conftest import write_config

    tmp = tmp_path_factory.mktemp("demo")
    cfg = write_config(
        tmp / "c.toml",
        tmp / "news.duckdb",
        [
            {"name": "demo-articles", "kind": "files", "path": str(ROOT / "examples/articles")},
            {"name": "demo-feeds", "kind": "files", "path": str(ROOT / "examples/feeds")},
        ],
        fetch={"fetch_pages": False},
    )
    result = CliRunner().invoke(main, ["run", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return Warehouse(tmp / "news.duckdb")


def test_quickstart_comes_first():
    head = README.split("## What it does")[0]
    assert "make demo" in head and "make test" in head
    assert (
        "bash .ci/run" in (ROOT / ".ci/run").read_text()
        or "make test" in (ROOT / ".ci/run").read_text()
    )


@pytest.mark.parametrize("sql", SQL_BLOCKS, ids=[f"sql{i}" for i in range(len(SQL_BLOCKS))])
def test_readme_sql_runs_on_the_demo_warehouse(demo_warehouse, sql):
    cols, rows = demo_warehouse.query(sql)
    assert cols and rows


def test_every_command_is_documented():
    for name in main.list_commands(None):  # type: ignore[arg-type]
        assert f"`newsflow {name}" in README, name
