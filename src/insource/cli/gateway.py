"""Gateway commands: serve, keys, spend."""

from __future__ import annotations

import logging.config
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from insource.cli import app
from insource.cli.common import (
    ConfigOpt,
    JsonOpt,
    UrlOpt,
    check_url,
    console,
    fail,
    finite,
    get_config,
    get_store,
    handle_errors,
    literal,
    print_json,
    shown,
)
from insource.cli.tables import Cell, Col, CsvOpt, emit, print_csv, print_table
from insource.config import CONFIG_ENV, Config, find_config, missing_env
from insource.errors import ConfigError

keys_app = typer.Typer(help="Tenants' virtual keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are never followed: the admin key must not travel to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect)
MAX_RATE = 10**12  # --rpm / --tpm: far beyond any real limit, within a 64-bit integer column


def remote(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call a remote gateway's admin API (admin key from INSOURCE_ADMIN_KEY); redirects are refused."""
    check_url(url)
    admin_key = os.environ.get("INSOURCE_ADMIN_KEY")
    if not admin_key:
        raise fail("--url needs the admin key in the INSOURCE_ADMIN_KEY environment variable", 2)
    req = urllib.request.Request(
        url.rstrip("/") + path,
        method=method,
        data=orjson.dumps(body) if body is not None else None,
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
    )
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location") or "an unnamed address"
            raise fail(f"the gateway answered with a redirect to {where}; not followed", 2) from None
        try:
            message = orjson.loads(exc.read())["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise fail(f"the gateway refused: {message}", 2) from None
    except orjson.JSONDecodeError:
        raise fail(f"the gateway at {url} did not answer with JSON", 2) from None
    except (urllib.error.URLError, OSError) as exc:
        raise fail(f"cannot reach {url}: {getattr(exc, 'reason', exc)}", 2) from None


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def check_env(cfg: Config) -> None:
    missing = missing_env(cfg)
    if missing:
        raise ConfigError(
            "the config references environment variables that are not set: "
            + "; ".join(missing)
            + ". Set them before starting the gateway."
        )


def _checked_config(config: Path | None) -> Config:
    """The config, refused now (not as errors on live traffic) when something it names is missing or wrong; the
    store created and migrated before any worker starts."""
    from insource.capture.redact import check_redactors
    from insource.metering.prices import resolve_prices
    from insource.service.routes import check_config_routes

    cfg = get_config(config, setup=True)
    check_env(cfg)  # a secret that is not set must fail here, not as 401s from the upstream
    resolve_prices(cfg)  # refuse to start with an unpriced model
    check_config_routes(cfg)  # ... or a route to a missing model, another task's model, or misfit options
    check_redactors(cfg.capture.redactors)  # a typo must fail here, not silently in the writer
    get_store(cfg, create=True)
    return cfg


def _banner(banner: str, log_format: LogFormat, log_config: dict[str, Any]) -> None:
    if log_format is LogFormat.json:  # every line of a JSON log is JSON, the banner included
        logging.config.dictConfig(log_config)
        logging.getLogger("insource.server").info(banner)
    else:
        console.print(literal(banner, style="bold"))


@app.command()
@handle_errors
def serve(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8700,
    workers: Annotated[int, typer.Option(min=1, max=1024, help="Worker processes.")] = 1,
    log_level: Annotated[
        LogLevel,
        typer.Option(envvar="INSOURCE_LOG_LEVEL", help="info: one access-log line per request; warning: failures."),
    ] = LogLevel.info,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar="INSOURCE_LOG_FORMAT", help="text (time level logger: message {fields}) or json (one object a line)."
        ),
    ] = LogFormat.text,
) -> None:
    """Run the OpenAI-compatible gateway."""
    import uvicorn

    from insource.server.app import create_app
    from insource.server.logs import log_config
    from insource.server.protocol import HTTP_PROTOCOL
    from insource.server.runner import run_one_worker
    from insource.service.limits import HOST_LIMITS_ENV

    cfg = _checked_config(config)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level.value,
        "log_config": log_config(log_level.value, log_format.value),  # applied again in every worker
        "access_log": False,  # uvicorn's own: insource writes a richer line per request
        "loop": "uvloop",
        "http": HTTP_PROTOCOL,  # httptools, each response sent in one write: `server/protocol.py`
        "timeout_graceful_shutdown": 30,
    }
    _banner(f"insource gateway on http://{host}:{port}/v1 ({workers} worker(s))", log_format, common["log_config"])
    if workers == 1:
        run_one_worker(create_app(cfg), **common)  # uvicorn, its heartbeat once a second: `server/runner.py`
        return
    found = find_config(config)  # --config, $INSOURCE_CONFIG or ./insource.toml: the workers read the same file
    if found is not None:
        os.environ[CONFIG_ENV] = str(found.resolve())
    os.environ["INSOURCE_WORKERS"] = str(workers)
    if cfg.server.redis_url is not None:
        uvicorn.run("insource.server.app:app_factory", factory=True, workers=workers, **common)
        return
    # No Redis: the workers of this host share budgets and rate limits through one private file.
    with tempfile.TemporaryDirectory(prefix="insource-limits-") as shared:
        os.environ[HOST_LIMITS_ENV] = str(Path(shared) / "limits.db")
        uvicorn.run("insource.server.app:app_factory", factory=True, workers=workers, **common)


@keys_app.command("create")
@handle_errors
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", min=0, callback=finite, help="Monthly budget in USD.")
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=0, max=MAX_RATE, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=0, max=MAX_RATE, help="Tokens per minute.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models this key may use.")] = None,
    capture: Annotated[
        bool | None, typer.Option("--capture/--no-capture", help="Capture this key's traffic (default: config).")
    ] = None,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create a virtual key. The key is printed once; only its HMAC is stored."""
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    if url:
        body = {
            "tenant": tenant,
            "budget_usd": budget_usd,
            "rpm": rpm,
            "tpm": tpm,
            "models": model_list,
            "capture": capture,
        }
        created = remote(url, "POST", "/admin/keys", body)
    else:
        from insource.service.keys import create_key, server_secret

        cfg = get_config(config, setup=True)
        store = get_store(cfg, create=True)
        created = create_key(
            store,
            server_secret(cfg, store),
            tenant,
            budget_usd=budget_usd,
            rpm=rpm,
            tpm=tpm,
            models=model_list,
            capture=capture,
        )
    if json:
        print_json(created)
        return
    console.print(
        f"created key [bold]{shown(created['id'])}[/] for tenant [bold]{shown(created['tenant'])}[/]:", highlight=False
    )
    print(created["key"])
    console.print("[dim]Store it now: it will not be shown again.[/]")


@keys_app.command("list")
@handle_errors
def keys_list(config: ConfigOpt = None, url: UrlOpt = None, json: JsonOpt = False, csv: CsvOpt = False) -> None:
    """List keys (never the keys themselves), with this month's spend next to each budget."""
    if url:
        rows = remote(url, "GET", "/admin/keys")
    else:
        from insource.service.keys import list_keys

        rows = list_keys(get_store(get_config(config)))
    if emit(rows, json=json, csv=csv, empty="No keys yet: run `insource keys create --tenant NAME`"):
        return
    print_table(KEY_COLUMNS, [_key_cells(r) for r in rows])


KEY_COLUMNS = (
    Col("id", "id"),
    Col("tenant"),
    Col("prefix", "id", drop=4),
    Col("budget_usd", "num", short="budget"),
    Col("spent_usd", "num", short="spent"),
    Col("rpm", "num", drop=3),
    Col("tpm", "num", drop=2),
    Col("models", drop=1),
    Col("revoked", short="rev."),
)


def _key_cells(r: dict[str, Any]) -> list[Cell]:
    budget, spent = r["budget_usd"], r.get("spent_usd")
    return [
        literal(r["id"]),
        literal(r["tenant"]),
        literal(f"{r['prefix']}…"),
        "-" if budget is None else f"{budget:.2f}",
        "-" if spent is None else f"{spent:.6f}",
        "-" if r["rpm"] is None else str(r["rpm"]),
        "-" if r["tpm"] is None else str(r["tpm"]),
        literal(",".join(r["models"] or []) or "all"),
        "yes" if r["revoked"] else "",
    ]


@keys_app.command("revoke")
@handle_errors
def keys_revoke(key_id: str, config: ConfigOpt = None, url: UrlOpt = None, json: JsonOpt = False) -> None:
    """Revoke a key: refused on every worker within a second."""
    if url:
        remote(url, "DELETE", "/admin/keys/" + urllib.parse.quote(key_id, safe=""))
    else:
        from insource.service.keys import revoke_key

        revoke_key(get_store(get_config(config)), key_id)
    if json:
        print_json({"id": key_id, "revoked": True})
    else:
        console.print("revoked ", literal(key_id), sep="")


@app.command()
@handle_errors
def spend(
    by: Annotated[
        str,
        typer.Option(
            help="Group by one or two of tenant, key, model, provider, task, served_by, day, week (its Monday),"
            " month, e.g. task,day."
        ),
    ] = "tenant",
    since: Annotated[
        str | None, typer.Option(help="From this day (YYYY-MM-DD in [report] timezone, an ISO date-time, or 30d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Up to this day, included (same forms as --since).")] = None,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    json: JsonOpt = False,
    csv: CsvOpt = False,
) -> None:
    """Where the money goes, from the daily rollups (days in [report] timezone). `requests` reached a teacher or a
    student; `refused` did not (rate limit, budget, invalid request) and cost nothing."""
    from insource.service.spend import MEASURES, parse_by, parse_since

    dims = parse_by(by)  # bad input is refused here, before any store or gateway is asked
    parse_since(since)
    parse_since(until)
    if url:
        params = {"by": by, **({"since": since} if since else {}), **({"until": until} if until else {})}
        rows = remote(url, "GET", "/admin/spend?" + urllib.parse.urlencode(params))
    else:
        from insource.service.spend import spend as spend_rows

        rows = spend_rows(get_store(get_config(config)), by, since, until)
    if json and csv:
        raise typer.BadParameter("choose one of --json and --csv")
    if csv:
        print_csv(rows, [*dims, *MEASURES])  # the same columns, with or without rows
        return
    if emit(rows, json=json, empty=_no_spend(since)):
        return
    print_table(_spend_columns(dims), [_spend_cells(r, dims) for r in rows])


def _no_spend(since: str | None) -> str:
    when = f" since {since}" if since else ""
    return (
        f"No usage recorded{when}: send requests through the gateway (`insource serve`) with a key, or bring a"
        " bill's history in with `insource usage import FILE --format csv`"
    )


def _spend_columns(by: str | list[str]) -> list[Col]:
    """The dimension column(s) of `--by` ("task,day" or ["task", "day"]; days are never wrapped), then the figures."""
    dims = by.split(",") if isinstance(by, str) else by
    return [
        *(Col(d, "id" if d in ("day", "week", "month") else "text") for d in dims),
        Col("requests", "num", short="reqs"),
        Col("refused", "num", short="ref."),
        Col("audits", "num", drop=4),
        Col("prompt", "num", drop=3),
        Col("cached", "num", drop=5),
        Col("completion", "num", short="compl.", drop=2),
        Col("cost_usd", "num", short="cost"),
        Col("avoided_usd", "num", short="avoided", drop=1),
    ]


def _spend_cells(r: dict[str, Any], dims: list[str]) -> list[Cell]:
    return [
        *(literal(r[d]) for d in dims),
        str(r["requests"]),
        str(r.get("refused", 0)),
        str(r.get("audits", 0)),
        str(r["prompt_tokens"]),
        str(r["cached_tokens"]),
        str(r["completion_tokens"]),
        f"{r['cost_usd']:.6f}",
        f"{r['cost_avoided_usd']:.6f}",
    ]
