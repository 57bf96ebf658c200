"""Nothing lost, nothing doubled: runs killed with SIGKILL at random points, two runs at once,
and ad-hoc SQL beside a running load. Each run is a real `newsflow run` process against the
suite's Prefect API and a real DuckDB file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from prefect.settings import PREFECT_API_URL

from tasks.db import Warehouse, search_sql
from tests.conftest import ROOT, write_config

pytestmark = pytest.mark.slow
NEWSFLOW = str(Path(sys.executable).parent / "newsflow")
N_FILES = 600


SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "dor", "pi", "an", "or", "ue", "ith"]


def make_inbox(folder: Path, n: int = N_FILES) -> None:
    """``n`` distinct short notes of made-up words (no two are near-duplicates)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    vocab = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))) for _ in range(3000)})
    for i in range(n):
        words = " ".join(rng.choices(vocab, k=60))
        (folder / f"note-{i:04d}.txt").write_text(f"Notice {i}\n\n{words}.\n")


def last_note_words(folder: Path, i: int) -> list[str]:
    """The first words of note ``i``'s text (made-up words: selective search terms)."""
    return (folder / f"note-{i:04d}.txt").read_text().split("\n\n")[1].split()[:6]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    e["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return e


def start_run(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [NEWSFLOW, "run", "--config", str(cfg)],
        cwd=ROOT,
        env=env(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until_loaded(db: Path, at_least: int, proc: subprocess.Popen[bytes]) -> int:
    """Poll (read-only, between the writer's batches) until ``at_least`` entries are in."""
    deadline = time.monotonic() + 120
    n = 0
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            con = duckdb.connect(str(db), read_only=True)
            try:
                row = con.execute("SELECT count(*) FROM entries").fetchone()
            finally:
                con.close()
            n = int(row[0]) if row else 0
            if n >= at_least:
                return n
        except (duckdb.IOException, duckdb.CatalogException):
            pass  # the writer holds the file, or the schema is not there yet
        time.sleep(0.02)
    return n


def consistent(db: Path) -> tuple[int, int]:
    """The warehouse opens and holds only whole batches: entries and articles agree."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        orphans = con.execute(
            "SELECT count(*) FROM entries e WHERE NOT EXISTS "
            "(SELECT 1 FROM articles a WHERE a.article_id = e.article_id)"
        ).fetchone()
        unlisted = con.execute(
            "SELECT count(*) FROM articles a WHERE NOT EXISTS "
            "(SELECT 1 FROM entries e WHERE e.source = a.source AND e.entry_key = a.entry_key)"
        ).fetchone()
        assert orphans == (0,) and unlisted == (0,)
        stray = con.execute(
            "SELECT count(*) FROM story_articles s WHERE NOT EXISTS "
            "(SELECT 1 FROM articles a WHERE a.article_id = s.article_id)"
        ).fetchone()
        assert stray == (0,)
        n = con.execute("SELECT count(*), count(DISTINCT article_id) FROM articles").fetchone()
        assert n is not None
        return int(n[0]), int(n[1])
    finally:
        con.close()


def test_sigkill_at_random_points_loses_and_doubles_nothing(tmp_path):
    make_inbox(tmp_path / "inbox")
    cfg = write_config(
        tmp_path / "c.toml",
        tmp_path / "news.duckdb",
        [{"name": "inbox", "kind": "files", "path": str(tmp_path / "inbox")}],
        extract={"batch_size": 40},
    )
    rng = random.Random(20261121)
    seen = []
    for _ in range(4):
        proc = start_run(cfg, tmp_path / "run.log")
        # Kill in the middle of the load: once a few more batches than last time are in.
        target = min(N_FILES - 1, (seen[-1] if seen else 0) + rng.randint(40, 160))
        loaded_before_kill = wait_until_loaded(tmp_path / "news.duckdb", target, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        total, distinct = consistent(tmp_path / "news.duckdb")
        assert total == distinct >= loaded_before_kill
        seen.append(total)

    assert any(0 < n < N_FILES for n in seen), f"no kill landed mid-load: {seen}"
    final = start_run(cfg, tmp_path / "run.log")
    assert final.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]

    assert consistent(tmp_path / "news.duckdb") == (N_FILES, N_FILES)
    assert seen == sorted(seen)  # what was loaded stayed loaded
    con = duckdb.connect(str(tmp_path / "news.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM entries").fetchone() == (N_FILES,)
    assert con.execute("SELECT count(*) FROM duplicates").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM story_articles").fetchone() == (N_FILES,)
    # The search index caught up too: every article once, the last note found by its number.
    assert con.execute(
        "SELECT count(*), count(DISTINCT article_id) FROM search_docs"
    ).fetchone() == (N_FILES, N_FILES)
    con.close()
    last = f"Notice {N_FILES - 1}"
    sql, params = search_sql(" ".join(last_note_words(tmp_path / "inbox", N_FILES - 1)), 1)
    _, rows = Warehouse(tmp_path / "news.duckdb").query(sql, params)
    assert rows[0][4] == last


def test_two_runs_at_once_wait_for_the_writer_and_load_once(tmp_path):
    make_inbox(tmp_path / "inbox", 300)
    cfg = write_config(
        tmp_path / "c.toml",
        tmp_path / "news.duckdb",
        [{"name": "inbox", "kind": "files", "path": str(tmp_path / "inbox")}],
        extract={"batch_size": 30},
    )
    a = start_run(cfg, tmp_path / "a.log")
    b = start_run(cfg, tmp_path / "b.log")

    codes = (a.wait(timeout=300), b.wait(timeout=300))

    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    # Both finish (one waited for the other at each write), or one says clearly why it did not.
    assert codes == (0, 0) or "in use by another process" in logs, logs[-3000:]
    assert consistent(tmp_path / "news.duckdb") == (300, 300)


def test_ad_hoc_sql_beside_a_running_load_never_writes_nor_stalls_it(tmp_path):
    make_inbox(tmp_path / "inbox", 400)
    cfg = write_config(
        tmp_path / "c.toml",
        tmp_path / "news.duckdb",
        [{"name": "inbox", "kind": "files", "path": str(tmp_path / "inbox")}],
        extract={"batch_size": 20},
    )
    run = start_run(cfg, tmp_path / "run.log")
    answered = 0
    while run.poll() is None:
        q = subprocess.run(
            [NEWSFLOW, "sql", "SELECT count(*) FROM articles", "--config", str(cfg), "-f", "csv"],
            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        answered += q.returncode == 0
        assert q.returncode == 0 or "in use" in q.stderr + q.stdout or "no warehouse" in q.stderr
    assert run.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert answered >= 1
    assert consistent(tmp_path / "news.duckdb") == (400, 400)
