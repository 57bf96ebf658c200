"""``newsflow``: the command line over the flows and the warehouse.

Commands: ``run`` (the ingest flow), ``sql`` (read-only queries, exports), ``sources`` (health),
``search`` (BM25 full text), ``reprocess`` (re-extract stored pages). Every command has ``--help``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from config.settings import ConfigError, Settings, default_config_path, load_config

# Quieter, local-first Prefect defaults; the user's environment wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks")


def _settings(config: str | None) -> Settings:
    try:
        return load_config(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _warehouse(config: str | None, database: str | None, *, upgrade: bool = True) -> Any:
    """The warehouse; with ``upgrade``, an existing file gets the schema this version reads."""
    from tasks.db import Warehouse

    if database:  # a warehouse named on the command line: no config needed
        wh = Warehouse(Path(database), lock_timeout=10.0)
    else:
        wh = Warehouse.configured(_settings(config).warehouse, lock_timeout=10.0)
    if upgrade and wh.path.exists():
        wh.migrate()
    return wh


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 120 else s[:117] + "..."


def print_table(
    cols: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(_cell(v) for v in r))
    Console(
        width=max(100, min(220, os.get_terminal_size(0).columns if sys.stdin.isatty() else 160))
    ).print(table)
    click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


config_option = click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Config file (default: $NEWSFLOW_CONFIG or {default_config_path()}).",
)
db_option = click.option(
    "--database", "-d", type=click.Path(dir_okay=False), default=None,
    help="Warehouse file (default: the config's warehouse.path).",
)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="newsflow")
def main() -> None:
    """newsflow: ingest news feeds and files into a DuckDB warehouse, deduplicated."""


@main.command()
@config_option
@click.option("--source", "-s", "sources", multiple=True, help="Run only this source (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option(
    "--force", is_flag=True, help="Fetch feeds even before the time their servers asked for."
)
def run(config: str | None, sources: tuple[str, ...], as_json: bool, force: bool) -> None:
    """Run the ingest flow over the configured sources.

    Progress is logged per source as it completes; a summary follows. Exits 1 when a source
    failed (the others are loaded all the same).
    """
    settings = _settings(config)
    try:
        settings.select(list(sources))
    except KeyError as exc:
        raise click.ClickException(f"unknown source(s): {exc.args[0]}") from exc
    from flows.ingest import ingest

    summary = ingest(config_path=config, source_names=list(sources) or None, force=force)
    if as_json:
        from flows.ingest import summary_dict

        click.echo(json.dumps(summary_dict(summary), default=str, indent=2))
    else:
        click.echo()
        print_table(
            ["source", "status", "entries", "new", "duplicates", "errors", "error"],
            [
                (o.source, o.status, o.entries, o.new_articles, o.duplicates, o.errors, o.error)
                for o in summary.outcomes
            ],
            title=f"run {summary.run_id}",
        )
        click.echo(
            f"sources: {summary.sources}  entries: {summary.entries}  "
            f"new articles: {summary.new_articles}  duplicates: {summary.duplicates}  "
            f"near-duplicates: {summary.near_duplicates}  "
            f"stories touched: {summary.stories_touched}  "
            f"failures: {summary.failures}"
            + (f" ({', '.join(summary.failed_sources)})" if summary.failed_sources else "")
        )
        click.echo(f"warehouse: {summary.warehouse}")
    if summary.failures:
        sys.exit(1)


def _export(cols: list[str], rows: list[tuple[Any, ...]], fmt: str, output: str | None) -> None:
    if fmt == "table":
        print_table(cols, rows)
        return
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not output:
            raise click.UsageError("--format parquet needs --output FILE")
        pq.write_table(
            pa.Table.from_pylist([dict(zip(cols, r, strict=True)) for r in rows]), output
        )
        click.echo(f"wrote {len(rows)} rows to {output}", err=True)
        return
    buf = io.StringIO()
    if fmt == "csv":
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(["" if v is None else v for v in r] for r in rows)
    else:
        json.dump([dict(zip(cols, r, strict=True)) for r in rows], buf, default=str, indent=1)
        buf.write("\n")
    if output:
        Path(output).write_text(buf.getvalue(), encoding="utf-8")
        click.echo(f"wrote {len(rows)} rows to {output}", err=True)
    else:
        click.echo(buf.getvalue(), nl=False)


def _run_sql(wh: Any, query: str, fmt: str, output: str | None) -> None:
    import duckdb

    try:
        cols, rows = wh.query(query)
    except duckdb.Error as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    _export(cols, rows, fmt, output)


@main.command()
@click.argument("query", required=False)
@config_option
@db_option
@click.option(
    "--format", "-f", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table", show_default=True, help="Output format.",
)  # fmt: skip
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file.")
def sql(
    query: str | None, config: str | None, database: str | None, fmt: str, output: str | None
) -> None:
    """Run read-only SQL on the warehouse; with no QUERY, an interactive prompt.

    \b
    Examples:
      newsflow sql "SELECT source, count(*) FROM articles GROUP BY ALL"
      newsflow sql "SELECT * FROM articles" --format parquet --output articles.parquet
    At the prompt, end a statement with ';' and leave with .quit or Ctrl-D.
    """
    wh = _warehouse(config, database, upgrade=False)  # ad-hoc SQL never writes
    if query:
        _run_sql(wh, query, fmt, output)
        return
    click.echo(
        "newsflow SQL (read-only). End statements with ';'. .tables lists tables, .quit leaves."
    )
    buf: list[str] = []
    while True:
        try:
            line = input("newsflow> " if not buf else "     ...> ")
        except EOFError:
            break
        stripped = line.strip()
        if not buf and stripped in (".quit", ".exit", "\\q"):
            break
        if not buf and stripped == ".tables":
            _run_sql(wh, "SELECT table_name, table_type FROM information_schema.tables "
                         "WHERE table_schema = 'main' ORDER BY 1", "table", None)  # fmt: skip
            continue
        buf.append(line)
        if stripped.endswith(";"):
            statement = "\n".join(buf).strip().rstrip(";")
            buf = []
            try:
                _run_sql(wh, statement, fmt, output)
            except click.ClickException as exc:
                click.echo(f"Error: {exc.message}", err=True)


@main.command()
@config_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def sources(config: str | None, database: str | None, as_json: bool) -> None:
    """List sources with their health: last fetch, status, failures in a row, when the next
    fetch is due and why (the server's wish or a backoff), counts and the last error."""
    settings = _settings(config)
    wh = _warehouse(config, database)
    state: dict[str, tuple[Any, ...]] = {}
    cols = ["last_fetch_at", "last_status", "last_http_status", "consecutive_failures",
            "next_fetch_at", "next_fetch_reason", "entries_total", "articles_total",
            "duplicates_total", "last_error"]  # fmt: skip
    if wh.path.exists():
        _, rows = wh.query(f"SELECT name, {', '.join(cols)} FROM sources")
        state = {r[0]: r[1:] for r in rows}
    out = []
    for s in settings.sources:
        st = state.get(s.name, (None,) * len(cols))
        loc = s.location
        out.append((s.name, s.kind, loc, "yes" if s.enabled else "no", *st))
    header = ["name", "kind", "location", "enabled", *cols]
    if as_json:
        click.echo(
            json.dumps([dict(zip(header, r, strict=True)) for r in out], default=str, indent=1)
        )
    else:
        print_table(["name", "kind", "location", "on", "last fetch", "status", "http", "fails",
                     "next fetch", "why", "entries", "articles", "dups", "error"], out)  # fmt: skip


@main.command()
@click.argument("words")
@config_option
@db_option
@click.option("--limit", "-n", default=10, show_default=True, help="How many results.")
@click.option("--source", "-s", "source", default=None, help="Only this source's articles.")
@click.option(
    "--format", "-f", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True, help="Output format.",
)  # fmt: skip
def search(
    words: str, config: str | None, database: str | None, limit: int, source: str | None, fmt: str
) -> None:
    """Rank articles by full-text relevance (BM25 over title and text)."""
    wh = _warehouse(config, database)
    from tasks.db import search_sql

    q, params = search_sql(words, limit, source)
    try:
        cols, rows = wh.query(q, params)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    _export(cols, rows, fmt, None)


@main.command()
@config_option
@click.option("--source", "-s", "sources", multiple=True, help="Only this source (repeatable).")
def reprocess(config: str | None, sources: tuple[str, ...]) -> None:
    """Re-extract stored pages with the installed Trafilatura, without refetching."""
    settings = _settings(config)
    from tasks.reprocess import reprocess_pages

    n, changed = reprocess_pages(settings, list(sources) or None)
    click.echo(f"re-extracted {n} pages; {changed} articles changed")


def parse_since(value: str) -> timedelta | None:
    """``24h``, ``90m``, ``7d``, ``2w`` or ``all``."""
    m = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", value.lower())
    if value.strip().lower() == "all":
        return None
    if not m:
        raise click.BadParameter("use a number and a unit (m, h, d, w), e.g. 24h, or 'all'")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: n})


# Stories seen since a cutoff, by number of outlets (parameters: cutoff, min outlets, limit).
# The page of stories is chosen first; only its stories' other headlines are then gathered
# (a correlated subquery over the whole selection joined every story's articles: 0.3 s at 1M).
STORIES_SQL = """
    WITH top AS (
        SELECT story_id, n_outlets, n_articles, last_seen_at, title
        FROM stories
        WHERE last_seen_at >= ? AND n_outlets >= ?
        ORDER BY n_outlets DESC, n_articles DESC, last_seen_at DESC, story_id
        LIMIT ?
    ),
    others AS (
        SELECT m.story_id, string_agg(DISTINCT a.title, ' | ') AS other_headlines
        FROM top t JOIN story_articles m USING (story_id) JOIN articles a USING (article_id)
        WHERE a.article_id <> t.story_id AND a.title IS DISTINCT FROM t.title
        GROUP BY m.story_id
    )
    SELECT t.story_id, t.n_outlets AS outlets, t.n_articles AS articles,
           t.last_seen_at AS last_seen, t.title, o.other_headlines
    FROM top t LEFT JOIN others o USING (story_id)
    ORDER BY t.n_outlets DESC, t.n_articles DESC, t.last_seen_at DESC, t.story_id
"""


@main.command("stories")
@config_option
@db_option
@click.option(
    "--since",
    default="24h",
    show_default=True,
    help="Stories seen within this time (published, else fetched): 24h, 7d, all.",
)
@click.option("--limit", "-n", default=20, show_default=True, help="How many stories.")
@click.option(
    "--min-outlets", default=1, show_default=True, help="Only stories with this many outlets."
)
@click.option(
    "--format", "-f", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True, help="Output format.",
)  # fmt: skip
def stories_cmd(
    config: str | None, database: str | None, since: str, limit: int, min_outlets: int, fmt: str
) -> None:
    """List stories by how many outlets carry them, with their headlines."""
    wh = _warehouse(config, database)
    delta = parse_since(since)
    cutoff = datetime.now(UTC) - delta if delta else datetime(1, 1, 1, tzinfo=UTC)
    try:
        cols, rows = wh.query(STORIES_SQL, [cutoff, min_outlets, limit])
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    _export(cols, rows, fmt, None)


@main.command("story")
@click.argument("story_id")
@config_option
@db_option
@click.option(
    "--format", "-f", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True, help="Output format.",
)  # fmt: skip
def story_cmd(story_id: str, config: str | None, database: str | None, fmt: str) -> None:
    """Show a story's articles and why each one is in it.

    STORY_ID may also be the id of any article in the story.
    """
    wh = _warehouse(config, database)
    sql = """
        WITH target AS (
            SELECT story_id FROM story_articles WHERE article_id = ? OR story_id = ? LIMIT 1
        )
        SELECT m.article_id, o.outlet, a.published_at, a.title, m.reason,
               m.linked_to, m.score, m.cohesion, m.threshold,
               d.level AS copy_level, d.duplicate_of AS copy_of, d.score AS copy_score
        FROM story_articles m
        JOIN target USING (story_id)
        JOIN articles a USING (article_id)
        JOIN article_outlets o USING (article_id)
        LEFT JOIN duplicates d ON d.article_id = m.article_id AND d.duplicate_of <> m.article_id
        ORDER BY m.is_representative DESC, coalesce(a.published_at, a.fetched_at), m.article_id
    """
    try:
        cols, rows = wh.query(sql, [story_id, story_id])
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    if not rows:
        raise click.ClickException(f"no story or article {story_id!r}")
    if fmt == "table":
        click.echo(
            "reason: similar = cosine with linked_to >= threshold (average linkage: cohesion is "
            "the mean cosine with the other members); copy_level = exact or near duplicate"
        )
    _export(cols, rows, fmt, None)


@main.command()
@click.argument("action", type=click.Choice(["split", "merge"]))
@click.argument("article_a")
@click.argument("article_b")
@config_option
@click.option("--note", default=None, help="Why (kept with the override).")
def override(
    action: str, article_a: str, article_b: str, config: str | None, note: str | None
) -> None:
    """Undo a wrong merge (split) or force one (merge) between two articles.

    Later runs respect it; the two articles' stories are re-clustered now.
    """
    settings = _settings(config)
    from tasks.db import Warehouse
    from tasks.dedup import add_override, cluster_pending

    wh = Warehouse.configured(settings.warehouse)
    wh.migrate()
    try:
        add_override(wh, article_a, article_b, action, note)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from exc
    r = cluster_pending(wh, settings)
    click.echo(f"{action}: {article_a} / {article_b} recorded; re-clustered {r.articles} articles")


DEFAULT_API = "http://127.0.0.1:4200/api"


def _require_server() -> str:
    import httpx

    api = os.environ.setdefault("PREFECT_API_URL", DEFAULT_API)
    try:
        ok = httpx.get(f"{api.rstrip('/')}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        ok = False
    if not ok:
        raise click.ClickException(
            f"no Prefect server answers at {api}: start one with `newsflow server` "
            "(or set PREFECT_API_URL to yours)"
        )
    return api


@main.command()
@config_option
def serve(config: str | None) -> None:
    """Serve the scheduled, inbox and clustering deployments, and watch the inboxes.

    One long-running process: sources with a `schedule` run on it; files dropped into a
    `watch = true` folder are ingested within seconds; each load triggers story clustering.
    Needs a Prefect server (`newsflow server`, or PREFECT_API_URL).
    """
    settings = _settings(config)
    api = _require_server()
    from flows.serve import build_deployments, serve_config

    path = Path(config) if config else default_config_path()
    names = [d.name for d in build_deployments(settings, path)]
    click.echo(f"serving {', '.join(names)} on {api}")
    serve_config(settings, path, print_starting_message=False)


@main.command()
@click.option("--port", default=4200, show_default=True, help="Port on 127.0.0.1.")
def server(port: int) -> None:
    """Start the Prefect server and UI on 127.0.0.1 (http://127.0.0.1:PORT)."""
    prefect = Path(sys.executable).parent / "prefect"
    click.echo(
        f"Prefect UI on http://127.0.0.1:{port}; set PREFECT_API_URL=http://127.0.0.1:{port}/api"
    )
    os.execv(
        str(prefect), [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    )


@main.command()
@config_option
def cluster(config: str | None) -> None:
    """Run near-duplicate detection and story clustering on articles not yet clustered."""
    from flows.cluster import cluster_flow

    r = cluster_flow(config_path=config)
    click.echo(
        f"clustered {r.articles} articles: {r.near_duplicates} near-duplicates, "
        f"{r.stories_touched} stories touched"
    )


if __name__ == "__main__":
    main()
