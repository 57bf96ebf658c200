"""The Prefect UI, driven in headless Chromium: after ``newsflow run`` against a real Prefect
server, a user finds the ``ingest-all`` flow run on the runs page, its ``ingest-summary``
artifact on the run's Artifacts tab, and the run's counts in that artifact. Screenshots of
each page are saved under the test's temporary folder."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, write_config
from tests.support.prefect_server import prefect_server, server_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FIRST_LOAD_MS = 60_000  # the SPA's first load (bundle, then its API calls)
STEP_MS = 30_000  # each later page or tab
MIN_SCREENSHOT_BYTES = 10_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="the Python playwright package is not installed",
    ),
]


def run_ingest(tmp_path: Path, home: Path, api: str) -> subprocess.CompletedProcess[str]:
    """``newsflow run`` over the demo folders, in a subprocess that reports to ``api``."""
    cfg = write_config(
        tmp_path / "newsflow.toml",
        tmp_path / "news.duckdb",
        [
            {"name": "demo-articles", "kind": "files", "path": ROOT / "examples" / "articles"},
            {"name": "demo-feeds", "kind": "files", "path": ROOT / "examples" / "feeds"},
        ],
        fetch={"fetch_pages": False},
    )
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "newsflow"), "run", "--config", str(cfg)],
        cwd=ROOT,
        env=server_env(home, api),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_screenshot(path: Path) -> None:
    assert path.is_file(), f"no screenshot at {path}"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
    assert len(data) > MIN_SCREENSHOT_BYTES, f"{path} is only {len(data)} bytes"


def test_ui_shows_ingest_run_and_its_artifact(
    tmp_path: Path,
    db: Callable[..., list[tuple[Any, ...]]],
) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    home = tmp_path / "prefect"
    with prefect_server(home) as api:
        base = api.removesuffix("/api")
        proc = run_ingest(tmp_path, home, api)
        assert proc.returncode == 0, f"newsflow run failed:\n{proc.stdout}\n{proc.stderr}"

        # What the UI should show: the run as the warehouse and the API recorded it.
        [(run_id, status, new_articles)] = db("SELECT run_id, status, new_articles FROM runs")
        assert status == "completed" and new_articles > 0
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"name": {"any_": ["ingest-all"]}}},
            timeout=10,
        ).json()
        assert [(r["id"], r["state_type"]) for r in runs] == [(run_id, "COMPLETED")]

        console_errors: list[str] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            page: Page | None = None
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on(
                    "console",
                    lambda m: console_errors.append(m.text) if m.type == "error" else None,
                )

                # The runs page lists the flow run by name; following it opens the run.
                page.goto(f"{base}/runs", wait_until="domcontentloaded", timeout=FIRST_LOAD_MS)
                run_link = page.get_by_role("link", name="ingest-all", exact=True)
                expect(run_link).to_be_visible(timeout=FIRST_LOAD_MS)
                page.screenshot(path=tmp_path / "runs.png", full_page=True)
                run_link.click()
                page.wait_for_url(f"**/runs/flow-run/{run_id}**", timeout=STEP_MS)
                state = page.get_by_text("Completed", exact=True).first
                expect(state).to_be_visible(timeout=STEP_MS)

                # Its Artifacts tab has both artifacts the flow published.
                page.locator(".p-tab", has_text="Artifacts").click(timeout=STEP_MS)
                summary_card = page.get_by_text("ingest-summary", exact=True)
                expect(summary_card).to_be_visible(timeout=STEP_MS)
                expect(page.get_by_text("failed-sources", exact=True)).to_be_visible()
                page.screenshot(path=tmp_path / "flow-run.png", full_page=True)

                # The summary artifact renders the run's id, outcome and counts.
                summary_card.click()
                page.wait_for_url("**/artifacts/artifact/**", timeout=STEP_MS)
                title = page.get_by_role("heading", name=re.compile(r"^Ingest run"))
                expect(title).to_be_visible(timeout=STEP_MS)
                expect(title).to_have_text(f"Ingest run {run_id}: completed")
                expect(page.get_by_role("listitem").filter(has_text="new articles")).to_have_text(
                    f"new articles: {new_articles}"
                )
                for source in ("demo-articles", "demo-feeds"):
                    expect(page.get_by_role("cell", name=source, exact=True)).to_be_visible()
                page.screenshot(path=tmp_path / "artifact.png", full_page=True)

                # The artifacts page lists it too.
                page.goto(f"{base}/artifacts", wait_until="domcontentloaded", timeout=STEP_MS)
                expect(page.get_by_text("ingest-summary", exact=True)).to_be_visible(
                    timeout=STEP_MS
                )
                page.screenshot(path=tmp_path / "artifacts.png", full_page=True)
            except Exception as exc:
                if page is not None:
                    page.screenshot(path=tmp_path / "failure.png", full_page=True)
                    (tmp_path / "failure.html").write_text(page.content(), encoding="utf-8")
                exc.add_note(
                    f"page: {page.url if page else None}; screenshots in {tmp_path}; "
                    f"console errors: {console_errors[-10:]}"
                )
                raise
            finally:
                browser.close()

    for name in ("runs.png", "flow-run.png", "artifact.png", "artifacts.png"):
        assert_screenshot(tmp_path / name)
