"""The Dagster UI as a user sees it, in headless Chromium: `etl-assets dev` (webserver and daemon) on
the test databases after one `etl-assets run`.

Playwright drives Debian's `chromium` (`executable_path`); `playwright install` is never called.
Where no browser is installed the test is reported skipped with the reason (`.ci/run` installs one).
Screenshots go to ``.etl-test/screenshots/`` (or ``$ETL_TEST_ARTIFACTS``) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from etl_assets.settings import PROJECT_ROOT
from etl_assets_tests.conftest import DevServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("ETL_TEST_ARTIFACTS", PROJECT_ROOT / ".etl-test")) / "screenshots"

pytestmark = [
    pytest.mark.drill,
    pytest.mark.timeout(900),  # a webserver, a daemon, a run and a browser on 2 shared cores
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"),
]

LATEST_RUN = """
query Runs { runsOrError(limit: 1) { __typename ... on Runs { results { runId status
  assetSelection { path } } } } }
"""


@pytest.fixture
def browser_page(dev_server: DevServer):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        # Dagster's "Join the community" dialog opens a second after a page loads on localhost and
        # covers what the test clicks; mark it dismissed the way its Skip button does (local storage).
        context.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        page = context.new_page()
        page.console_errors = []  # type: ignore[attr-defined]
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        yield page
        browser.close()


def open_page(page, server: DevServer, path: str, wait_for: str, shot: str) -> str:
    """Open ``path``, wait until ``wait_for`` is shown, dismiss the newsletter prompt, screenshot."""
    page.goto(server.base + path)
    page.get_by_text(wait_for).first.wait_for(timeout=90_000)
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()
    time.sleep(1)  # let the remaining panels render for the screenshot
    page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    return page.inner_text("body")


def test_what_a_user_sees_in_the_ui(dev_server: DevServer, browser_page) -> None:
    warehouse_dsn = dev_server.env["ETL_WAREHOUSE_DSN"]
    done = subprocess.run([sys.executable, "-m", "etl_assets.cli", "run"], capture_output=True, text=True,
                          timeout=600, env=dev_server.env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    dev_server.poll(lambda: dev_server.query("{ assetNodes { id } }")["assetNodes"], "the code location")
    page = browser_page
    from etl_assets.definitions import build_definitions

    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}

    # The catalog lists every asset of the graph, and the lineage shows every group with its size.
    catalog = open_page(page, dev_server, "/assets", "daily_category_totals", "catalog")
    for key in keys:
        assert key.replace("/", " / ") in catalog, key
    open_page(page, dev_server, "/asset-groups", "Global asset lineage", "lineage")
    groups: dict[str, list[str]] = {}
    for spec in defs.resolve_all_asset_specs():
        groups.setdefault(spec.group_name or "default", []).append(spec.key.path[-1])
    for group, names in groups.items():
        shown = open_page(page, dev_server, f"/locations/etl_assets/asset-groups/{group}", names[0],
                          f"lineage-{group}")
        for name in names:
            assert name in shown, (group, name)

    # raw/orders: its declared checks with their blocking/non-blocking nature, freshness, metadata plots.
    checks = open_page(page, dev_server, "/assets/raw/orders?view=checks", "no_null_ids", "orders-checks")
    for name in ("no_null_ids", "unique_ids", "reasonable_amounts", "no_future_dates", "known_categories",
                 "few_dirty_rows"):
        assert name in checks, name
    page.get_by_text("no_null_ids", exact=True).first.click()
    page.get_by_text("This is a blocking asset check", exact=False).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "orders-check-error.png"), full_page=True)
    page.get_by_text("reasonable_amounts", exact=True).first.click()
    page.get_by_text("This is a non-blocking asset check", exact=False).first.wait_for(timeout=30_000)
    overview = open_page(page, dev_server, "/assets/raw/orders", "Freshness policy", "orders-overview")
    assert "Passing" in overview.split("Freshness policy", 1)[1][:40]
    page.get_by_text("Plots", exact=True).first.click()
    page.get_by_text("profile/amount/mean", exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "orders-plots.png"), full_page=True)
    assert page.locator("canvas").count() > 0  # the numeric metadata is drawn as charts

    # The Automation page lists the project's sensors and schedules.
    automation = open_page(page, dev_server, "/automation", "etl_dead_run_cleanup", "automation")
    for sensor in defs.sensors or ():
        assert sensor.name in automation, sensor.name
    for schedule in defs.schedules or ():
        assert schedule.name in automation, schedule.name

    # A Materialize click launches a run through the daemon's queue, and it succeeds.
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM raw.categories WHERE id = 1")
    open_page(page, dev_server, "/assets/raw/categories", "Materialize", "categories")
    page.get_by_role("button", name="Materialize").first.click()

    def finished() -> str | None:
        runs = dev_server.query(LATEST_RUN)["runsOrError"]["results"]
        run = runs[0] if runs else None
        if not run or [a["path"] for a in run["assetSelection"] or []] != [["raw", "categories"]]:
            return None
        return run["status"] if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert dev_server.poll(finished, "the clicked run to finish", timeout=240) == "SUCCESS"
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM raw.categories WHERE id = 1").fetchone()[0] == 1
    assert page.console_errors == [], page.console_errors  # type: ignore[attr-defined]
