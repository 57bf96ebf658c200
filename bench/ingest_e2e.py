"""End-to-end ingest benchmark over ../shared/corpus pages, served from 127.0.0.1.

Serves every corpus page (``--copies`` times, under distinct URLs) and one feed listing them,
runs ``newsflow run`` in a subprocess into a fresh warehouse, and prints JSON: wall seconds,
articles loaded, articles/s, and the peak RSS of the run. Only loopback traffic.

    .venv/bin/python bench/ingest_e2e.py [--copies 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.httpserver import TestServer  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=1, help="serve each page this many times")
    args = ap.parse_args()
    if not (CORPUS / "manifest.csv").exists():
        print(json.dumps({"skipped": "../shared/corpus absent"}))
        return
    with (CORPUS / "manifest.csv").open(newline="", encoding="utf-8") as f:
        pages = [r["local_path"] for r in csv.DictReader(f) if r["kind"] == "html"]
    with TestServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.serve_dir("/corpus", CORPUS)
        items = []
        for copy in range(args.copies):
            for p in pages:
                url = server.url(f"/corpus/{p}?copy={copy}")
                items.append(f"<item><title>{escape(p)}</title><link>{escape(url)}</link>"
                             f"<guid>{copy}/{escape(p)}</guid></item>")  # fmt: skip
        feed = server.set(
            "/feed.xml",
            body=f'<rss version="2.0"><channel><title>b</title>{"".join(items)}</channel></rss>',
            content_type="application/rss+xml",
        )
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(
            f'[warehouse]\npath = "{tmp}/news.duckdb"\n'
            f'[[sources]]\nname = "bench"\nkind = "feed"\nurl = "{feed}"\n'
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(ROOT / ".venv/bin/newsflow"), "run", "--config", str(cfg), "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(proc.returncode)
        summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    outcome = summary["outcomes"][0]
    print(
        json.dumps(
            {
                "pages_served": len(items),
                "articles_loaded": summary["new_articles"] + summary["duplicates"],
                "new_articles": summary["new_articles"],
                "duplicates": summary["duplicates"],
                "pages_fetched": outcome["pages_fetched"],
                "source_seconds": round(outcome["seconds"], 2),
                "wall_seconds_incl_prefect_start": round(wall, 2),
                "articles_per_s_source": round(outcome["pages_fetched"] / outcome["seconds"], 1),
                "peak_rss_mb_largest_process": round(peak_kb / 1024, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
