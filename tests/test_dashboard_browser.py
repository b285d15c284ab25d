"""The dashboard in a real browser: Debian's chromium driven by Playwright (never `playwright install`). Logs in,
opens every page of a real `insource serve` over a filled store, checks each chart has data points (plotly's
`gd.data`), that no request leaves 127.0.0.1 and that a visitor without the cookie lands on the login form.
Screenshots go to $INSOURCE_ARTIFACTS/dashboard (default: test-artifacts/dashboard)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests._dashboard_data import ADMIN_KEY, fill, write_config
from tests.conftest import Gateway, start_gateway, stop_gateway

CHROMIUM = os.environ.get("INSOURCE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
ARGS += ["--disable-component-update", "--disable-sync", "--disable-quic"]
PAGES = {
    "overview": "/ui",
    "tasks": "/ui/tasks",
    "routes": "/ui/routes",
    "tenants": "/ui/tenants",
    "provider": "/ui/provider",
    "task-detail": "/ui/tasks/support-intent",
}
POINTS_JS = """() => Array.from(document.querySelectorAll('div.chart')).map(gd => ({
    panel: gd.dataset.panel,
    points: (gd.data || []).reduce((n, trace) => n + ((trace.y || []).length), 0)
}))"""

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}: apt-get install -y chromium"),
]


def artifacts() -> Path:
    root = Path(os.environ.get("INSOURCE_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")
    folder = root / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("ui-browser")
    config = write_config(folder)
    fill(config)
    gw = start_gateway(config, {"TEST_UI_ADMIN_KEY": ADMIN_KEY})
    yield gw
    stop_gateway(gw)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_every_page_draws_its_charts_offline(served: Gateway, browser: Any) -> None:
    shots = artifacts()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)  # the first overview may fit a forecast on a loaded machine
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(urllib.parse.urlsplit(request.url).netloc))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(served.url + "/ui")
    assert page.url.endswith("/ui/login")
    page.fill("input[name=key]", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(served.url + "/ui")
    for name, path in PAGES.items():
        page.goto(served.url + path)
        page.wait_for_load_state("networkidle")
        page.wait_for_function("() => typeof Plotly !== 'undefined'")
        charts = page.evaluate(POINTS_JS)
        assert charts, f"{name}: no chart"
        for chart in charts:
            assert chart["points"] > 0, f"{name}: chart {chart['panel']} has no data points"
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert hosts == {urllib.parse.urlsplit(served.url).netloc}, hosts
    assert not errors, errors
    page.close()


def test_the_turn_off_button_asks_then_acts(served: Gateway, browser: Any) -> None:
    page = browser.new_page()
    page.goto(served.url + "/ui/login")
    page.fill("input[name=key]", ADMIN_KEY)
    page.click("button[type=submit]")
    page.goto(served.url + "/ui/routes")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("form.action button")
    assert "done=off" not in page.url  # dismissed: nothing sent
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form.action button")
    page.wait_for_url("**/ui/routes?done=off")
    assert "turned off" in page.content()
    page.screenshot(path=str(artifacts() / "route-off.png"), full_page=True)
    page.close()


def test_a_visitor_without_the_cookie_is_sent_to_the_login(served: Gateway, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    for path in PAGES.values():
        page.goto(served.url + path)
        assert page.url == served.url + "/ui/login", path
        assert page.locator("input[name=key]").count() == 1
    page.screenshot(path=str(artifacts() / "login.png"))
    context.close()
