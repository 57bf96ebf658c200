"""Shared pytest fixtures: a real HTTP server on 127.0.0.1, a real Prefect API (the test
harness: a temporary server on loopback), and helpers to write configs and query the
warehouse with SQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.support.httpserver import TestServer

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[None]:
    """Every flow in the suite runs against one real, temporary Prefect API."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def http_server() -> Iterator[TestServer]:
    """A real HTTP server on 127.0.0.1 (random port), closed after the test."""
    server = TestServer()
    try:
        yield server
    finally:
        server.close()


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(v)


def write_config(
    path: Path, warehouse: Path, sources: list[dict[str, Any]], **sections: dict[str, Any]
) -> Path:
    """Write a newsflow TOML config (sections such as fetch={...}, extract={...})."""
    lines = ["[warehouse]", f"path = {toml_value(warehouse)}", ""]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    for s in sources:
        lines.append("[[sources]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in s.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """``make_config(sources, fetch={...})`` -> path of a config using ``tmp_path/news.duckdb``."""

    def make(sources: list[dict[str, Any]], **sections: dict[str, Any]) -> Path:
        sections.setdefault("fetch", {})
        sections["fetch"] = {
            "timeout": 5.0,
            "deadline": 10.0,
            "retry_backoff": 0.1,
            **sections["fetch"],
        }
        return write_config(
            tmp_path / "newsflow.toml", tmp_path / "news.duckdb", sources, **sections
        )

    return make


@pytest.fixture
def db(tmp_path: Path) -> Callable[..., list[tuple[Any, ...]]]:
    """``db("SELECT ...")`` -> rows from the test's warehouse, read-only."""

    def q(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(tmp_path / "news.duckdb"), read_only=True)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()

    return q


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("NEWSFLOW_SKIP_SLOW"):
        skip = pytest.mark.skip(reason="NEWSFLOW_SKIP_SLOW is set")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
