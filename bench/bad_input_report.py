"""The bad-input table: every hostile case of ``tests/support/bad_inputs.py`` as a source of
one run (beside a good source), served from 127.0.0.1; prints what the pipeline recorded per
case and whether the run's other sources loaded, as a Markdown table and as JSON.

    .venv/bin/python bench/bad_input_report.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import write_config  # noqa: E402
from tests.support.bad_inputs import FETCH, outcome_table, sources_for  # noqa: E402
from tests.support.httpserver import TestServer  # noqa: E402


def main() -> None:
    with TestServer() as server, tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp) / "c.toml", Path(tmp) / "news.duckdb", sources_for(server),
                           fetch=FETCH)  # fmt: skip
        env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        subprocess.run(
            [str(ROOT / ".venv/bin/newsflow"), "run", "--config", str(cfg), "--json"],
            cwd=ROOT, env=env, capture_output=True, check=False,
        )  # fmt: skip
        rows = outcome_table(Path(tmp) / "news.duckdb")
    print("| case | input | status | recorded | as expected | other sources loaded |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        recorded = r["recorded"].replace("|", "/").replace("\n", " ")[:160]
        ok = "yes" if r["ok"] else "NO"
        others = "yes" if r["other_sources_loaded"] else "NO"
        print(f"| {r['case']} | {r['input']} | {r['status']} | {recorded} | {ok} | {others} |")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "bad_input.json").write_text(json.dumps(rows, indent=1))
    totals = {
        "cases": len(rows),
        "as_expected": sum(r["ok"] for r in rows),
        "other_sources_loaded": all(r["other_sources_loaded"] for r in rows),
    }
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
