"""The dashboard at /ui of a real `insource serve`: login, cookie flags, forged and expired cookies, CSRF,
pages and their CSV against a constructed store with known figures; `insource ui` and `insource report`."""

from __future__ import annotations

import csv
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests._dashboard_data import ADMIN_KEY, fill, write_config
from tests.conftest import Gateway, free_port, run_cli, start_gateway, stop_gateway

from insource.config import load_config
from insource.service.keys import server_secret
from insource.store import open_store

TIMEOUT = 60  # a page's first build may fit a forecast (statsmodels) on a loaded machine
http_get = functools.partial(httpx.get, timeout=TIMEOUT)
http_post = functools.partial(httpx.post, timeout=TIMEOUT)
PAGES = ["/ui", "/ui/tasks", "/ui/routes", "/ui/tenants", "/ui/provider", "/ui/tasks/support-intent"]
ENV = {"TEST_UI_ADMIN_KEY": ADMIN_KEY}


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("ui")
    config = write_config(folder)
    facts = fill(config)
    gw = start_gateway(config, ENV)
    yield gw, facts
    stop_gateway(gw)
    shutil.rmtree(folder, ignore_errors=True)


def login(url: str, key: str = ADMIN_KEY) -> httpx.Client:
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=TIMEOUT)
    r = client.post("/ui/login", data={"key": key})
    assert r.status_code == 303, r.text
    return client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def secret_of(config: Path) -> bytes:
    cfg = load_config(config)
    store = open_store(cfg)
    try:
        return server_secret(cfg, store)
    finally:
        store.close()


def test_ui_answers_303_to_login_without_a_session(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _ = filled
    for path in [*PAGES, "/ui/nope", "/ui/overview/csv/budgets.csv", "/ui/report.html"]:
        r = http_get(gw.url + path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"] == "/ui/login"
    r = http_get(gw.url + "/ui/login")
    assert r.status_code == 200 and 'name="key"' in r.text


def test_login_sets_a_signed_httponly_samesite_cookie(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _ = filled
    r = http_post(gw.url + "/ui/login", data={"key": ADMIN_KEY})
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("insource_ui=")
    flags = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")}
    assert "httponly" in flags
    assert flags["samesite"].split("=")[1].lower() == "strict"
    assert flags["path"].split("=")[1] == "/ui"
    assert 0 < int(flags["max-age"].split("=")[1]) <= 24 * 3600
    assert ADMIN_KEY not in cookie
    page = http_get(gw.url + "/ui", cookies={"insource_ui": r.cookies["insource_ui"]})
    assert page.status_code == 200 and "Spend per day by model" in page.text


def test_a_wrong_key_opens_no_session(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _ = filled
    for key in ("wrong", "", ADMIN_KEY + "x"):
        r = http_post(gw.url + "/ui/login", data={"key": key})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert "Wrong admin key" in r.text


def test_forged_expired_and_foreign_cookies_go_to_the_login(
    filled: tuple[Gateway, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from itsdangerous import TimestampSigner

    from insource.server.ui.session import Sessions

    gw, _ = filled
    secret = secret_of(gw.config)
    good = Sessions(secret, ADMIN_KEY).open()
    assert http_get(gw.url + "/ui", cookies={"insource_ui": good}).status_code == 200
    other_secret = Sessions(b"another-secret", ADMIN_KEY).open()
    other_key = Sessions(secret, "an-older-admin-key").open()  # the admin key was rotated since
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 9 * 3600)
    expired = Sessions(secret, ADMIN_KEY).open()
    for cookie in (other_secret, other_key, tampered, expired, "garbage", ""):
        r = http_get(gw.url + "/ui/tenants", cookies={"insource_ui": cookie}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login", cookie


def test_cross_site_posts_are_refused(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _ = filled
    client = login(gw.url)
    token = csrf_of(client.get("/ui/routes").text)
    evil = {"Origin": "http://evil.example"}
    r = client.post("/ui/routes/support-intent/off", data={"csrf": token}, headers=evil)
    assert r.status_code == 403
    r = client.post("/ui/routes/support-intent/off", data={"csrf": token}, headers={"Referer": "http://evil.example/x"})
    assert r.status_code == 403
    r = client.post("/ui/routes/support-intent/off", data={"csrf": "not-the-token"})
    assert r.status_code == 403
    r = client.post("/ui/routes/support-intent/off", data={})
    assert r.status_code == 403
    assert http_post(gw.url + "/ui/login", data={"key": ADMIN_KEY}, headers=evil).status_code == 403
    assert http_post(gw.url + "/ui/login", data={"key": ADMIN_KEY}, headers={"Origin": "null"}).status_code == 403
    assert "cascade" in client.get("/ui/routes").text and ">answering<" in client.get("/ui/routes").text


def test_the_turn_off_button_sends_the_task_back_to_the_teacher(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    fill(config, days=3)
    gw = start_gateway(config, ENV)
    try:
        client = login(gw.url)
        token = csrf_of(client.get("/ui/routes").text)
        r = client.post("/ui/routes/support-intent/off", data={"csrf": token}, headers={"Origin": gw.url})
        assert r.status_code == 303 and r.headers["location"] == "/ui/routes?done=off"
        page = client.get("/ui/routes").text
        assert "turned off" in page and ">off<" in page
        shown = orjson.loads(gw.cli("route", "show", "--json").stdout)
        assert [(r["task"], r["state"]) for r in shown] == [("support-intent", "off")]
        assert shown[0]["events"][-1]["kind"] == "off" and shown[0]["events"][-1]["detail"]["by"] == "dashboard"
        r = client.post("/ui/routes/no-such-task/off", data={"csrf": token}, headers={"Origin": gw.url})
        assert r.status_code == 404
    finally:
        stop_gateway(gw)


def test_pages_show_known_figures_and_every_chart_has_its_csv(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, facts = filled
    client = login(gw.url)
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        for panel in re.findall(r'data-panel="([^"]+)"', r.text):
            assert f"/csv/{panel}.csv" in r.text, (path, panel)
    rows = list(csv.DictReader(io.StringIO(client.get("/ui/overview/csv/spend-by-model.csv").text)))
    assert sum(float(r["cost_usd"]) for r in rows) == pytest.approx(facts["total_usd"], rel=1e-9)
    tenants = list(csv.DictReader(io.StringIO(client.get("/ui/provider/csv/revenue.csv").text)))
    assert sum(float(r["share"]) for r in tenants) == pytest.approx(1.0)
    download = client.get("/ui/report.html")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert "Plotly.newPlot" in download.text and '<script src="' not in download.text
    tasks = {r["task"]: r for r in csv.DictReader(io.StringIO(client.get("/ui/tasks/csv/tasks.csv").text))}
    assert set(tasks) == {"support-intent", "headline", "(untagged)"}
    assert int(tasks["support-intent"]["audits"]) == 60
    savings = {r["task"]: r for r in csv.DictReader(io.StringIO(client.get("/ui/routes/csv/savings.csv").text))}
    # every day: a student answer (costs 0.0001, avoids 0.02) and an audit (0.003): 60 days
    assert float(savings["support-intent"]["net_savings_usd"]) == pytest.approx(60 * (0.02 - 0.0001 - 0.003))


def test_pages_never_show_a_key_or_a_hash(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, facts = filled
    client = login(gw.url)
    store = open_store(load_config(gw.config))
    hashes = [r["hash"] for r in store.query("SELECT hash FROM keys")]
    store.close()
    texts = [client.get(p).text for p in PAGES] + [client.get("/ui/tenants/csv/keys.csv").text]
    for text in texts:
        assert ADMIN_KEY not in text
        for created in facts["keys"].values():
            assert created["key"] not in text and created["key"][:12] not in text
        for h in hashes:
            assert h not in text
    assert facts["keys"]["acme"]["id"] in texts[3]  # ids and prefixes are shown


def test_unknown_task_and_page_are_404_pages(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _ = filled
    client = login(gw.url)
    for path in ("/ui/tasks/no-such-task", "/ui/nope", "/ui/nope/deeper", "/ui/tasks/support-intent/csv/x.csv"):
        r = client.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), path
    assert "no-such-task" in client.get("/ui/tasks/no-such-task").text


def test_plotly_is_served_once_from_the_package_with_a_long_cache(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _ = filled
    page = login(gw.url).get("/ui").text
    src = re.search(r'<script src="(/ui/static/plotly-[^"]+\.min\.js)"', page)
    assert src, "the page does not load plotly.js from /ui/static"
    assert "cdn" not in page.lower() and "https://" not in page
    r = http_get(gw.url + src.group(1))
    assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
    assert len(r.content) > 1_000_000 and b"plotly" in r.content[:2000].lower()


def test_logout_clears_the_cookie(filled: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _ = filled
    client = login(gw.url)
    token = csrf_of(client.get("/ui").text)
    r = client.post("/ui/logout", data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert "insource_ui=" in r.headers["set-cookie"] and "max-age=0" in r.headers["set-cookie"].lower()
    assert client.get("/ui").status_code == 303


def test_without_an_admin_key_the_ui_is_off_and_the_log_says_how_to_turn_it_on(tmp_path: Path) -> None:
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n')
    gw = start_gateway(config)
    try:
        r = http_get(gw.url + "/ui", follow_redirects=False)
        assert r.status_code == 404 and "admin_key" in r.text
        assert http_post(gw.url + "/ui/login", data={"key": "x"}).status_code == 404
    finally:
        stop_gateway(gw)
    assert 'set [server] admin_key = "env::NAME"' in gw.log.read_text()


def test_the_server_path_imports_no_template_or_chart_library() -> None:
    code = (
        "import sys, insource.server.app\n"
        "bad = [m for m in ('jinja2', 'plotly', 'itsdangerous', 'insource.server.ui.app') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _start_ui(config: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "insource", "ui", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **ENV},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("http://127.0.0.1:"):
            url = line.strip()
            base = url.split("/ui/")[0]
            while time.monotonic() < deadline:
                try:
                    httpx.get(base + "/ui/login", timeout=0.5)
                    return proc, url
                except httpx.HTTPError:
                    time.sleep(0.05)
    proc.kill()
    raise AssertionError("insource ui printed no URL")


def test_insource_ui_one_time_link_and_empty_states(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc, url = _start_ui(config)
    try:
        assert "token=" in url
        base = url.split("/ui/")[0]
        client = httpx.Client(base_url=base, follow_redirects=False, timeout=TIMEOUT)
        r = client.get(url)
        assert r.status_code == 303 and r.headers["location"] == "/ui"
        assert http_get(url, follow_redirects=False).status_code == 403  # used once already
        for path in PAGES[:-1]:
            page = client.get(path)
            assert page.status_code == 200, path
            assert "insource keys create" in page.text or "No route yet" in page.text, path
        assert client.get("/ui/tasks/support-intent").status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)


def test_report_writes_one_self_contained_file_and_json(filled: tuple[Gateway, dict[str, Any]], tmp_path: Path) -> None:
    gw, facts = filled
    out = tmp_path / "report.html"
    result = gw.cli("report", "--out", str(out), "--json")
    page = orjson.loads(result.stdout)
    assert page["id"] == "overview"
    panel = next(p for p in page["panels"] if p["id"] == "spend-by-model")
    assert sum(r[2] for r in panel["rows"]) == pytest.approx(facts["total_usd"], rel=1e-9)
    html = out.read_text()
    assert "Plotly.newPlot" in html and len(html) > 1_000_000
    outside_scripts = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert not re.search(r'(src|href)="(https?:)?//', outside_scripts), "the report must not load anything"
    assert "<script src=" not in html and '<link rel="stylesheet"' not in html
    bad = run_cli("report", "--config", str(gw.config), check=False)
    assert bad.returncode == 2 and "--out" in bad.stderr and "Traceback" not in bad.stderr


def test_report_on_an_empty_store_says_what_to_do_first(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    page = orjson.loads(run_cli("report", "--config", str(config), "--json").stdout)
    assert "insource serve" in page["empty"]
    assert all(not p["rows"] for p in page["panels"] if p["id"] != "budgets")
    assert [r[:2] for r in page["panels"][-1]["rows"]] == [["tenant", "acme"]]  # a budget from config, nothing spent


def test_pages_use_the_reporting_timezone_like_the_cli(tmp_path: Path) -> None:
    """Day boundaries are the same in the dashboard, its report and `insource spend --by day`."""
    config = write_config(tmp_path, extra='[report]\ntimezone = "Asia/Kolkata"\n')
    evening = time.time() // 86_400 * 86_400 - 2 * 86_400 + 20 * 3600  # 20:00 UTC is 01:30 the next day in India
    fill(config, now=evening, days=5)
    page = orjson.loads(run_cli("report", "--config", str(config), "--json").stdout)
    panel = next(p for p in page["panels"] if p["id"] == "spend-by-model")
    per_day: dict[str, float] = {}
    for day, _model, cost, _requests in panel["rows"]:
        per_day[day] = per_day.get(day, 0.0) + cost
    cli = orjson.loads(run_cli("spend", "--by", "day", "--json", "--config", str(config)).stdout)
    assert {r["day"]: pytest.approx(r["cost_usd"]) for r in cli} == per_day
    utc_days = {time.strftime("%Y-%m-%d", time.gmtime(evening - d * 86_400)) for d in range(5)}
    assert max(per_day) > max(utc_days), "the days are UTC days, not the reporting timezone's"
    assert page["as_of"].endswith("Asia/Kolkata")


def test_insource_ui_on_a_busy_port_and_report_to_a_missing_folder_say_so(tmp_path: Path) -> None:
    import socket

    config = write_config(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("ui", "--config", str(config), "--port", str(port), check=False, timeout=60)
    assert result.returncode == 2 and "in use" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("report", "--config", str(config), "--out", str(tmp_path / "nope" / "r.html"), check=False)
    assert result.returncode == 2 and "r.html" in result.stderr and "Traceback" not in result.stderr


def test_traffic_through_the_gateway_shows_on_its_dashboard(gateway: Gateway, fake: Any) -> None:
    """Requests sent with the official SDK through the shared `insource serve` appear on its /ui pages."""
    import openai

    key = gateway.key("ui-live-tenant")["key"]
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    for i in range(5):
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Classify the ticket: order {i} is late"}],
            extra_headers={"X-Insource-Task": "ui-live-task"},
        )
    client = login(gateway.url, os.environ["TEST_ADMIN_KEY"])
    tenants = {r["tenant"]: r for r in csv.DictReader(io.StringIO(client.get("/ui/tenants/csv/tenants.csv").text))}
    assert int(tenants["ui-live-tenant"]["requests"]) == 5 and float(tenants["ui-live-tenant"]["cost_usd"]) > 0
    tasks = {r["task"]: r for r in csv.DictReader(io.StringIO(client.get("/ui/tasks/csv/tasks.csv").text))}
    assert int(tasks["ui-live-task"]["requests"]) == 5 and int(tasks["ui-live-task"]["captured"]) == 5
    page = client.get("/ui/tasks/ui-live-task")
    assert page.status_code == 200 and key not in page.text and key[:12] not in page.text
