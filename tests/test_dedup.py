"""Dedup through the real pipeline: near-duplicates and story clusters in the warehouse,
across runs, in any order, with source policies and manual overrides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from flows.cli import main
from flows.ingest import ingest
from tests.conftest import ROOT, SHARED, write_config

EXAMPLES = ROOT / "examples" / "articles"
GAZETTE = "marrowford-line4-gazette.html"
COURIER = "marrowford-line4-courier.html"
LEDGER = "pellham-ferry-wire-ledger.html"
RIVERTON = "pellham-ferry-wire-riverton.html"
EASTHAVEN = "easthaven-line2-observer.html"


def copy_examples(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(EXAMPLES / n, folder / n)
    return folder


def stories_by_file(db) -> dict[str, str]:
    rows = db(
        "SELECT regexp_extract(a.url, '[^/]+$'), s.story_id "
        "FROM story_articles s JOIN articles a USING (article_id)"
    )
    return dict(rows)


def partition(db) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for aid, sid in db("SELECT article_id, story_id FROM story_articles"):
        groups.setdefault(sid, set()).add(aid)
    return {frozenset(g) for g in groups.values()}


SINGLES = ["brennick-apple-harvest.txt", "wendle-flood-barrier.txt", "saltmere-robotics.md"]
ALL = [GAZETTE, COURIER, LEDGER, RIVERTON, EASTHAVEN, *SINGLES]


def test_truth_table_in_the_warehouse(tmp_path, make_config, db):
    folder = copy_examples(tmp_path / "in", ALL)
    cfg = make_config([{"name": "in", "kind": "files", "path": str(folder)}])

    s = ingest(config_path=str(cfg))

    story = stories_by_file(db)
    # Same event, two outlets, different words: one story, and not a copy.
    assert story[GAZETTE] == story[COURIER]
    # A wire copy under another headline and boilerplate: a near-duplicate, in the same story.
    assert story[LEDGER] == story[RIVERTON]
    near = db(
        "SELECT level, score, threshold FROM duplicates d JOIN articles a USING (article_id) "
        "WHERE a.url LIKE '%pellham%'"
    )
    assert len(near) == 1 and near[0][0] == "near_duplicate" and near[0][1] >= near[0][2]
    # Same topic (a tram line opens), other city, months later: not the same story.
    assert story[EASTHAVEN] != story[GAZETTE]
    # Unrelated articles stand alone.
    singles = [story[f] for f in ALL[5:]]
    assert len(set(singles)) == 3 and not set(singles) & {story[GAZETTE], story[LEDGER]}
    assert db("SELECT count(*) FROM stories") == [(6,)]
    assert s.near_duplicates == 1
    # The stories table describes each story from its members.
    (n_articles, n_outlets, title) = db(
        "SELECT n_articles, n_outlets, title FROM stories WHERE story_id = ?", [story[GAZETTE]]
    )[0]
    assert (n_articles, n_outlets) == (2, 2)
    assert title in {r[0] for r in db("SELECT title FROM articles WHERE url LIKE '%marrowford%'")}
    # Every link says why: the article it points to, the score, the threshold.
    why = db(
        "SELECT reason, linked_to IS NOT NULL, score >= threshold FROM story_articles s "
        "JOIN articles a USING (article_id) WHERE a.url LIKE '%line4-courier%'"
    )
    assert why == [("similar", True, True)]


def load_in_batches(root: Path, batches: list[list[str]]) -> set[frozenset[str]]:
    """Ingest the files batch by batch (one run each) into a fresh warehouse under ``root``;
    return the stories as sets of file names."""
    folder = root / "in"
    root.mkdir(parents=True)
    cfg = write_config(
        root / "c.toml", root / "n.duckdb", [{"name": "in", "kind": "files", "path": str(folder)}]
    )
    for batch in batches:
        copy_examples(folder, batch)
        ingest(config_path=str(cfg))
    con = duckdb.connect(str(root / "n.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT s.story_id, regexp_extract(a.url, '[^/]+$') "
        "FROM story_articles s JOIN articles a USING (article_id)"
    ).fetchall()
    con.close()
    groups: dict[str, set[str]] = {}
    for sid, name in rows:
        groups.setdefault(sid, set()).add(name)
    return {frozenset(g) for g in groups.values()}


def test_new_articles_join_stories_across_runs_in_any_order(tmp_path):
    one_run = load_in_batches(tmp_path / "a", [ALL])
    forward = load_in_batches(
        tmp_path / "b", [[GAZETTE, LEDGER, SINGLES[1]], [COURIER, RIVERTON, EASTHAVEN, *SINGLES]]
    )
    backward = load_in_batches(
        tmp_path / "c", [[COURIER, RIVERTON, EASTHAVEN], [SINGLES[2]], [GAZETTE, LEDGER, *SINGLES]]
    )

    assert frozenset({GAZETTE, COURIER}) in one_run
    assert frozenset({LEDGER, RIVERTON}) in one_run
    assert one_run == forward == backward


def test_clustering_twice_changes_nothing(tmp_path, make_config, db):
    folder = copy_examples(tmp_path / "in", ALL)
    cfg = make_config([{"name": "in", "kind": "files", "path": str(folder)}])
    ingest(config_path=str(cfg))
    before = db("SELECT * EXCLUDE (assigned_at) FROM story_articles ORDER BY article_id")
    stories_before = db("SELECT * EXCLUDE (updated_at) FROM stories ORDER BY story_id")

    result = CliRunner().invoke(main, ["cluster", "--config", str(cfg)])
    ingest(config_path=str(cfg))

    assert result.exit_code == 0, result.output
    assert "clustered 0 articles" in result.output
    assert db("SELECT * EXCLUDE (assigned_at) FROM story_articles ORDER BY article_id") == before
    assert db("SELECT * EXCLUDE (updated_at) FROM stories ORDER BY story_id") == stories_before


def test_source_policies_keep_every_copy_and_every_story_apart(tmp_path, make_config, db):
    a = copy_examples(tmp_path / "a", [GAZETTE, LEDGER])
    b = copy_examples(tmp_path / "b", [COURIER, RIVERTON])
    shutil.copy(EXAMPLES / GAZETTE, b / "gazette-copy.html")  # an exact copy of a's article
    cfg = make_config(
        [
            {"name": "a", "kind": "files", "path": str(a)},
            {
                "name": "b",
                "kind": "files",
                "path": str(b),
                "near_duplicates": False,
                "stories": False,
            },
        ]
    )

    ingest(config_path=str(cfg))

    story = stories_by_file(db)
    assert story[GAZETTE] != story[COURIER]
    assert story[LEDGER] != story[RIVERTON]
    assert story[GAZETTE] != story["gazette-copy.html"]  # b's copies stay out of a's stories
    assert db("SELECT count(*) FROM duplicates WHERE level = 'near_duplicate'") == [(0,)]


def test_overrides_undo_and_force_merges_and_later_runs_respect_them(tmp_path, make_config, db):
    folder = copy_examples(tmp_path / "in", [GAZETTE, COURIER, EASTHAVEN])
    cfg = make_config([{"name": "in", "kind": "files", "path": str(folder)}])
    ingest(config_path=str(cfg))
    ids = dict(db("SELECT regexp_extract(url, '[^/]+$'), article_id FROM articles"))
    runner = CliRunner()

    out = runner.invoke(main, ["override", "split", ids[GAZETTE], ids[COURIER], "-c", str(cfg),
                               "--note", "different lines"])  # fmt: skip
    assert out.exit_code == 0, out.output
    story = stories_by_file(db)
    assert story[GAZETTE] != story[COURIER]

    out = runner.invoke(main, ["override", "merge", ids[GAZETTE], ids[EASTHAVEN], "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    copy_examples(folder, ["wendle-flood-barrier.txt"])
    ingest(config_path=str(cfg))  # a later run re-clusters nothing it should not

    story = stories_by_file(db)
    assert story[GAZETTE] == story[EASTHAVEN] != story[COURIER]
    assert db("SELECT reason FROM story_articles WHERE article_id = ?", [ids[EASTHAVEN]]) in (
        [("must_link",)],
        [("similar",)],
    )
    assert db("SELECT action, note FROM merge_overrides ORDER BY action") == [
        ("merge", None),
        ("split", "different lines"),
    ]
    bad = runner.invoke(main, ["override", "split", "nope", ids[GAZETTE], "-c", str(cfg)])
    assert bad.exit_code != 0 and "no such article" in bad.output


def test_stories_and_story_commands(tmp_path, make_config):
    folder = copy_examples(tmp_path / "in", ALL)
    cfg = make_config([{"name": "in", "kind": "files", "path": str(folder)}])
    ingest(config_path=str(cfg))
    runner = CliRunner()

    out = runner.invoke(main, ["stories", "--since", "all", "-c", str(cfg), "-f", "json"])
    rows = json.loads(out.output)
    assert rows[0]["outlets"] == 2 and rows[0]["articles"] == 2
    assert [r["outlets"] for r in rows] == sorted((r["outlets"] for r in rows), reverse=True)
    recent = json.loads(
        runner.invoke(main, ["stories", "--since", "24h", "-c", str(cfg), "-f", "json"]).output
    )
    assert len(recent) < len(rows)  # the dated demo stories are months old

    out = runner.invoke(main, ["story", rows[0]["story_id"], "-c", str(cfg), "-f", "json"])
    members = json.loads(out.output)
    assert len(members) == 2
    assert {m["reason"] for m in members} == {"similar"}
    assert all(m["score"] >= m["threshold"] for m in members)
    missing = runner.invoke(main, ["story", "nope", "-c", str(cfg)])
    assert missing.exit_code != 0
    assert runner.invoke(main, ["stories", "--since", "soon", "-c", str(cfg)]).exit_code != 0


@pytest.mark.skipif(not (SHARED / "seeds").is_dir(), reason="../shared/seeds absent")
def test_the_seed_pair_lands_in_one_story(tmp_path, make_config, db):
    folder = copy_examples(tmp_path / "in", ALL)
    lines = []
    for i, f in enumerate(sorted((SHARED / "seeds").glob("*.txt"))):
        title, _, body = f.read_text(encoding="utf-8").partition("\n")
        lines.append(json.dumps({"url": f"https://seed{i}.invalid/iss", "title": title.strip(),
                                 "text": body.strip(), "source": f"seed{i}.invalid"}))  # fmt: skip
    (folder / "seeds.jsonl").write_text("\n".join(lines) + "\n")
    cfg = make_config([{"name": "in", "kind": "files", "path": str(folder)}])

    ingest(config_path=str(cfg))

    seeds = db(
        "SELECT s.story_id FROM story_articles s JOIN articles a USING (article_id) "
        "WHERE a.url LIKE 'https://seed%'"
    )
    assert len(seeds) == 2 and seeds[0] == seeds[1]
    members = db("SELECT count(*) FROM story_articles WHERE story_id = ?", [seeds[0][0]])
    assert members == [(2,)]  # no other article joins it


WIRE = (
    "The harbour authority of Kellswick said on Monday that its new tidal lock will open to "
    "cargo barges in the first week of March, two months later than planned, after divers found "
    "cracks in two of the twelve gate hinges during a final inspection. The authority's director, "
    "Maren Oduya, told reporters that the hinges had been replaced at the supplier's cost and that "
    "the delay would not raise the project's budget of 41 million crowns. Barge operators had "
    "warned that a longer closure of the old lock would push freight onto the coast road, where "
    "lorry traffic has doubled since the autumn. The lock, the largest built on the estuary in "
    "sixty years, lets ships pass at any state of the tide and is meant to cut waiting times at "
    "the harbour mouth by half. Test runs with empty barges are due to start in February."
)


def wire_copies() -> dict[str, dict[str, str]]:
    """Three outlets' copies of one wire story (other headline, a dateline, a trimmed ending),
    published an hour apart: the earliest is the canonical copy whatever order they arrive in."""
    ending = WIRE.rsplit(" Test runs", 1)[0]
    return {
        "a": {"title": "Kellswick tidal lock delayed", "text": WIRE, "at": "2024-05-06T08:00:00Z"},
        "b": {
            "title": "Cracked hinges delay Kellswick lock",
            "text": "KELLSWICK (Wire) - " + WIRE,
            "at": "2024-05-06T09:00:00Z",
        },
        "c": {
            "title": "Tidal lock opening pushed to March",
            "text": ending,
            "at": "2024-05-06T10:00:00Z",
        },
    }


def near_links_in_runs(root: Path, runs: list[list[str]]) -> list[tuple[str, str, bool]]:
    """Load the copies named in each run (one ``newsflow run`` each); return the near-duplicate
    links as (copy, canonical, score >= threshold) by copy name."""
    folder = root / "in"
    folder.mkdir(parents=True)
    cfg = write_config(
        root / "c.toml", root / "n.duckdb", [{"name": "in", "kind": "files", "path": str(folder)}]
    )
    copies = wire_copies()
    for k, names in enumerate(runs):
        lines = [
            json.dumps(
                {"id": n, "url": f"https://wire.example/{n}", "title": copies[n]["title"],
                 "text": copies[n]["text"], "published": copies[n]["at"]}
            )
            for n in names
        ]  # fmt: skip
        (folder / f"run{k}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        ingest(config_path=str(cfg))
    con = duckdb.connect(str(root / "n.duckdb"), read_only=True)
    rows = con.execute(
        """
        SELECT regexp_extract(a.url, '[^/]+$'), regexp_extract(c.url, '[^/]+$'),
               d.score >= d.threshold
        FROM duplicates d JOIN articles a USING (article_id)
        JOIN articles c ON c.article_id = d.duplicate_of
        WHERE d.level = 'near_duplicate' ORDER BY 1
        """
    ).fetchall()
    con.close()
    return rows


def test_near_duplicate_groups_point_at_the_earliest_copy_in_any_order(tmp_path):
    expected = [("b", "a", True), ("c", "a", True)]

    assert near_links_in_runs(tmp_path / "once", [["a", "b", "c"]]) == expected
    # The latest copy first: each earlier arrival takes the group over and the copies follow it.
    assert near_links_in_runs(tmp_path / "backward", [["c"], ["b"], ["a"]]) == expected
    assert near_links_in_runs(tmp_path / "mixed", [["b"], ["c", "a"]]) == expected


def filed_copies_in_runs(root: Path, runs: list[list[str]]) -> list[tuple[str, ...]]:
    """Each article's story, reason and linked article (by name) after the runs."""
    near_links_in_runs(root, runs)
    con = duckdb.connect(str(root / "n.duckdb"), read_only=True)
    rows = con.execute(
        """
        SELECT regexp_extract(a.url, '[^/]+$'), regexp_extract(r.url, '[^/]+$'), s.reason,
               coalesce(regexp_extract(l.url, '[^/]+$'), ''), n.n_articles::TEXT
        FROM story_articles s JOIN articles a USING (article_id)
        JOIN articles r ON r.article_id = s.story_id JOIN stories n USING (story_id)
        LEFT JOIN articles l ON l.article_id = s.linked_to ORDER BY 1
        """
    ).fetchall()
    assert con.execute("SELECT count(*) FROM stories").fetchone() == (1,)
    con.close()
    return rows


def test_near_copies_are_filed_alike_in_any_order(tmp_path):
    # b and c are near copies of a (the earliest): filed under it, whichever arrives first.
    expected = [("a", "a", "alone", "", "3"), ("b", "a", "duplicate", "a", "3"),
                ("c", "a", "duplicate", "a", "3")]  # fmt: skip

    assert filed_copies_in_runs(tmp_path / "once", [["a", "b", "c"]]) == expected
    assert filed_copies_in_runs(tmp_path / "backward", [["c"], ["b"], ["a"]]) == expected
    assert filed_copies_in_runs(tmp_path / "mixed", [["b"], ["c", "a"]]) == expected


def test_copies_join_their_originals_story_and_follow_it(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cfg = write_config(
        tmp_path / "c.toml",
        tmp_path / "n.duckdb",
        [{"name": "in", "kind": "files", "path": str(folder)}],
    )
    dateline = "KELLSWICK (Wire) - " + WIRE
    trimmed = WIRE.rsplit(" Test runs", 1)[0]
    runs = [
        [("orig", WIRE, "2024-05-06T08:00:00Z"), ("copy", WIRE, "2024-05-06T09:00:00Z")],
        [("early", dateline, "2024-05-06T07:00:00Z")],  # an earlier report: the story moves to it
        [("trimmed", trimmed, "2024-05-06T10:00:00Z")],  # a near copy, filed under the canonical
    ]
    for k, run in enumerate(runs):
        lines = [
            json.dumps({"id": n, "url": f"https://wire.example/{n}", "title": f"Lock delayed ({n})",
                        "text": text, "published": at})
            for n, text, at in run
        ]  # fmt: skip
        (folder / f"run{k}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        ingest(config_path=str(cfg))
    con = duckdb.connect(str(tmp_path / "n.duckdb"), read_only=True)
    rows = con.execute(
        """
        SELECT regexp_extract(a.url, '[^/]+$'), regexp_extract(r.url, '[^/]+$'), s.reason,
               regexp_extract(l.url, '[^/]+$'), n.n_articles
        FROM story_articles s JOIN articles a USING (article_id)
        JOIN articles r ON r.article_id = s.story_id
        LEFT JOIN articles l ON l.article_id = s.linked_to
        JOIN stories n USING (story_id) ORDER BY 1
        """
    ).fetchall()
    con.close()
    # Copies are filed under their original (not clustered again). The earlier report takes
    # the group over: the original becomes its near copy, and the original's own exact copy
    # follows it; a later near copy is filed under the group's canonical copy too.
    assert sorted(rows) == [
        ("copy", "early", "duplicate", "early", 4),
        ("early", "early", "alone", None, 4),
        ("orig", "early", "duplicate", "early", 4),
        ("trimmed", "early", "duplicate", "early", 4),
    ]


def test_articles_are_read_right_when_their_rowids_have_moved(tmp_path, make_config):
    # Clustering reads articles by rowid, which a checkpoint that merges row groups changes
    # under a pass that listed them earlier: rows must then be found by id, not lost or
    # swapped for the articles now at those rowids.
    from tasks.db import Warehouse
    from tasks.dedup import _pending, _read_rows, _texts

    folder = copy_examples(tmp_path / "in", ALL)
    cfg = make_config([{"name": "in", "kind": "files", "path": str(folder)}])
    ingest(config_path=str(cfg), cluster=False)
    wh = Warehouse(tmp_path / "news.duckdb")
    with wh.writer() as con:
        pending = _pending(con)
        assert len(pending) == len(ALL)
        # The first half's rowids now hold the second half's articles, or nothing.
        half = len(pending) // 2
        wanted = [aid for _, aid in pending[:half]]
        moved = [10**9] + [r for r, _ in pending[half:]]
        stale = list(zip(moved, wanted, strict=False))
        rows = _read_rows(con, stale)
        texts = _texts(con, {aid: r for r, aid in stale})
        truth = dict(con.execute("SELECT article_id, text FROM articles").fetchall())
    assert [r[0] for r in rows] == wanted
    assert {r[0]: r[2] for r in rows} == {aid: truth[aid] for aid in wanted}
    assert texts == {aid: truth[aid] for aid in wanted}


def test_texts_that_do_not_fit_the_lean_read_are_read_under_the_pass_limit(
    tmp_path, make_config, monkeypatch
):
    # A batch's texts are read under a small DuckDB memory limit, so that the blocks read are
    # not kept; texts too big for it are read again under the pass's limit, which then holds.
    import tasks.dedup
    from tasks.db import Warehouse
    from tasks.dedup import _pending, _read_rows, _read_rows_lean

    folder = copy_examples(tmp_path / "in", ALL)
    cfg = make_config([{"name": "in", "kind": "files", "path": str(folder)}])
    ingest(config_path=str(cfg), cluster=False)
    wh = Warehouse(tmp_path / "news.duckdb")
    monkeypatch.setattr(tasks.dedup, "TEXT_READ_MEMORY", "256KB")  # not one block
    with wh.writer() as con:
        pending = _pending(con)
        con.execute("SET memory_limit = '256KB'")
        with pytest.raises(duckdb.OutOfMemoryException):
            _read_rows(con, pending)  # what the lean read meets first
        rows = _read_rows_lean(con, pending, "300MB")
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() == ("286.1 MiB",)
        truth = {r[0]: r for r in _read_rows(con, pending)}
    assert len(rows) == len(ALL) and {r[0]: r for r in rows} == truth


def test_the_term_cache_holds_a_bounded_number_of_terms_oldest_out():
    # The cache of recent articles' term frequencies is bounded by terms, not articles: a
    # count of articles let long pages hold several times as much.
    from tasks.core.stories import RawTerms
    from tasks.dedup import _RawCache

    def raw(terms: str) -> RawTerms:
        return RawTerms.pack(dict.fromkeys(terms, 1.0))

    cache = _RawCache(size=10)
    cache.add({"a": raw("abcd"), "b": raw("efg")})
    cache.add({"a": raw("ab")})  # replaced: 2 + 3 terms
    assert cache.entries == 5 and set(cache.data) == {"a", "b"}
    cache.add({"c": raw("hijkl"), "d": raw("mn")})
    assert list(cache.data) == ["a", "c", "d"] and cache.entries == 9  # "b" was the oldest
