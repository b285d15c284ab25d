"""The dashboard's sections laid out from the analytics functions' contract objects (`insource forecast --json`,
`savings --json`, `opportunities --json`), and the pieces every panel shares (CSV, charts, formats)."""

from __future__ import annotations

from typing import Any

from insource.server.ui.render import figure, fmt, json_for_script
from insource.service.dashboard_analytics import forecast_outlook, opportunities_panel, savings_panel
from insource.service.dashboard_types import Chart, Column, Panel, Series

FORECAST = {
    "as_of": "2026-12-06",
    "timezone": "UTC",
    "month": "2026-12",
    "month_to_date_usd": 60.0,
    "run_rate_usd_per_month": 310.0,
    "forecast_month_usd": {"p10": 280.0, "p50": 300.0, "p90": 330.0},
    "method": "ets",
    "backtest_mape": 0.081,
    "daily": [
        {"date": "2026-12-05", "actual_usd": 10.0, "p10": None, "p50": None, "p90": None},
        {"date": "2026-12-06", "actual_usd": 11.0, "p10": None, "p50": None, "p90": None},
        {"date": "2026-12-07", "actual_usd": None, "p10": 9.0, "p50": 10.0, "p90": 12.0},
        {"date": "2026-12-08", "actual_usd": None, "p10": 9.5, "p50": 10.5, "p90": 12.5},
    ],
    "budgets": [
        {"scope": "tenant", "name": "acme", "budget_usd": 50.0, "spent_usd": 40.0, "exhausted_on": "2026-12-08"},
        {"scope": "key", "name": "key_1", "budget_usd": 500.0, "spent_usd": 4.0, "exhausted_on": None},
    ],
}


def test_the_forecast_section_draws_actuals_the_median_and_the_80_percent_band() -> None:
    outlook = forecast_outlook(FORECAST)
    assert outlook.figures[0].value == 300.0 and "$280.00 to $330.00" in outlook.figures[0].note
    chart = outlook.panel.chart
    assert chart is not None and chart.band is not None
    assert [s.name for s in chart.series] == ["actual", "forecast (p50)"]
    assert chart.series[0].y == [10.0, 11.0] and chart.series[1].y == [10.0, 10.5]
    assert chart.band[0].y == [9.0, 9.5] and chart.band[1].y == [12.0, 12.5]
    traces = figure(chart)["data"]
    assert traces[1]["fill"] == "tonexty" and len(traces) == 4
    assert outlook.exhausted_on == {("tenant", "acme"): "2026-12-08", ("key", "key_1"): None}
    assert "8.1%" in outlook.panel.note
    assert len(outlook.panel.rows) == 4


def test_not_enough_history_is_an_empty_state_not_an_error() -> None:
    for month in (None, {"p10": None, "p50": None, "p90": None}):
        short = {**FORECAST, "forecast_month_usd": month, "daily": [], "method": "none", "backtest_mape": None}
        outlook = forecast_outlook(short)
        assert outlook.figures == [] and outlook.panel.rows == [] and "3 days" in outlook.panel.empty


def test_the_savings_section_lists_tasks_and_the_net_total() -> None:
    row = {
        "task": "intent",
        "requests": 100,
        "insourced": 80,
        "share_insourced": 0.8,
        "teacher_cost_avoided_usd": 8.0,
        "student_cost_usd": 0.5,
        "audit_cost_usd": 0.5,
        "net_savings_usd": 7.0,
    }
    total = {k: v for k, v in row.items() if k != "task"}
    panel = savings_panel({"rows": [row], "total": total})
    assert panel.rows == [["intent", 100, 80, 0.8, 8.0, 0.5, 0.5, 7.0]]
    assert panel.chart is not None and panel.chart.series[0].y == [7.0]
    assert "$7.00" in panel.note
    assert savings_panel({"rows": [], "total": {}}).chart is None


def test_the_opportunities_section_keeps_the_ranking_and_the_next_step() -> None:
    found = [
        {
            "template_id": f"t{i}",
            "template": "Classify: <*>",
            "task": None,
            "requests": 10,
            "monthly_spend_usd": 5.0,
            "kind": "classification",
            "labels": ["a"],
            "score": 30.0 - i,
            "next": "insource tasks assign ...",
        }
        for i in range(30)
    ]
    panel = opportunities_panel(found)
    assert len(panel.rows) == 20 and panel.rows[0][0] == "t0" and panel.rows[0][-1] == "insource tasks assign ..."


def test_csv_cells_never_start_a_spreadsheet_formula() -> None:
    panel = Panel("p", "P", [Column("task"), Column("cost_usd", "usd")], [["=HYPERLINK(1)", -1.5], ["+x", None]], "")
    lines = panel.csv().splitlines()
    assert lines == ["task,cost_usd", "'=HYPERLINK(1),-1.5", "'+x,"]


def test_chart_json_cannot_close_its_script_element() -> None:
    chart = Chart("bar", [Series("</script><script>alert(1)</script>", ["a"], [1])])
    text = str(json_for_script(figure(chart)))
    assert "</script" not in text and "<" not in text


def test_formats() -> None:
    assert fmt(None, "usd") == "–" and fmt(1234.5, "usd") == "$1,234.50" and fmt(0.000412, "usd") == "$0.000412"
    assert fmt(0.125, "share") == "12.5%" and fmt(12345, "int") == "12,345"


def test_names_from_traffic_are_escaped_in_pages_and_reports() -> None:
    from insource.server.ui.render import render_page, render_report
    from insource.service.dashboard_types import Figure, Page

    evil = '<img src=x onerror="alert(1)">'
    chart = Chart("stacked", [Series(evil, ["2026-12-01"], [1.0])])
    panel = Panel("spend", evil, [Column("task"), Column("cost_usd", "usd")], [[evil, 1.0]], evil, chart=chart)
    page = Page("overview", "Overview", [Figure(evil, evil, "text", evil)], [panel], None, "now")
    for html in (render_page(page, "tok", title="t", active="overview"), render_report(page)):
        assert evil not in html and "<img" not in html.split("<main>", 1)[1]
        assert "&lt;img" in html


def test_a_slow_analysis_never_holds_a_page_beyond_its_patience(tmp_path: Any) -> None:
    import threading

    from insource.service import dashboard_analytics as da
    from insource.service.dashboard_panels import Span
    from insource.store.sqlite import Store

    store = Store(tmp_path / "insource.db")
    release = threading.Event()
    runs: list[int] = []

    def slow() -> dict[str, Any]:
        runs.append(1)
        release.wait(10)
        return {"month": "2026-12", "daily": [], "budgets": []}

    impatient = Span.of(store, patience_s=0.05)
    assert da._cached("slow", store, impatient, slow, ttl_s=60) is da.PENDING
    assert da._cached("slow", store, impatient, slow, ttl_s=60) is da.PENDING  # one run, not two
    release.set()
    patient = Span.of(store, now=impatient.now, patience_s=None)
    assert da._cached("slow", store, patient, slow, ttl_s=60)["month"] == "2026-12"
    assert len(runs) == 1
    assert da._pending("forecast", "Spend forecast", "The forecast").empty.startswith("The forecast is still running")


def test_without_plotly_pages_say_how_to_install_it_and_keep_their_tables(monkeypatch: Any) -> None:
    from insource.server.ui import render
    from insource.service.dashboard_types import Page

    monkeypatch.setattr(render, "plotly_js", lambda: None)
    chart = Chart("bar", [Series("cost", ["a"], [1.0])])
    panel = Panel("spend", "Spend", [Column("task"), Column("cost_usd", "usd")], [["a", 1.0]], "", chart=chart)
    html = render.render_page(Page("overview", "Overview", [], [panel]), "tok", title="t", active="overview")
    assert "pip install &#34;insource[ui]&#34;" in html and "plotly-" not in html and "<td" in html
