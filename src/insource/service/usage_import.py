"""Bring a bill's history in: `insource usage import FILE --format csv`.

One CSV row per day × tenant × model (× task), columns `date, tenant, model, task, requests, prompt_tokens,
completion_tokens, cost_usd` (any order; a header row is required). `task` and `cost_usd` may be empty: the cost
is then priced from the price table (the config's `[models.X] price`, else the shipped table) at its uncached
input and output prices. `date` is the bill's day, taken as a day in the reporting timezone.

All or nothing: the whole file is checked first and every error names `FILE:LINE:COLUMN (name)`; one error and
nothing is imported. Idempotent: each row's id is a hash of its content (and of how many identical rows came
before it in the file, so a file may hold the same line twice), so importing a file again adds nothing.
Imported rows live in `usage_imports` (marked as imported: `imported = 1` in the rollups) and feed the daily
rollups in the same transaction.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from insource.config import Config
from insource.errors import BadRequest
from insource.metering.prices import ModelPrice, price_for, price_table
from insource.store import Store
from insource.store.usage_queries import existing_import_ids

COLUMNS = ("date", "tenant", "model", "task", "requests", "prompt_tokens", "completion_tokens", "cost_usd")
OPTIONAL = frozenset({"task", "cost_usd"})
MAX_ERRORS = 10  # shown at most; nothing is imported when there is any
MAX_TEXT = 200  # tenant, model and task names
MAX_COUNT = 10**15  # requests / tokens on one line: far beyond any real bill, within a 64-bit column


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: int
    skipped: int

    def as_dict(self) -> dict[str, int]:
        return {"imported": self.imported, "skipped": self.skipped}


class _LineError(ValueError):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def import_price(cfg: Config, model: str) -> ModelPrice | None:
    """The price of a model named in a bill: the config's alias first, then the shipped table."""
    configured = cfg.models.get(model)
    if configured is not None:
        return price_for(model, configured)
    return price_table()[1].get(model)


def _text(value: str, column: str, *, required: bool = True) -> str | None:
    text = value.strip()
    if not text:
        if required:
            raise _LineError(column, "is empty")
        return None
    if len(text) > MAX_TEXT or any(ord(c) < 0x20 for c in text):
        raise _LineError(column, f"{text[:40]!r} is not a name (control characters, or over {MAX_TEXT} characters)")
    return text


def _count(value: str, column: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_COUNT:  # "²" is a digit int() refuses
        raise _LineError(column, f"{text[:40]!r} is not a whole number ≥ 0")
    return int(text)


def _day(value: str) -> str:
    try:
        return dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise _LineError("date", f"{value.strip()[:40]!r} is not a date like 2026-11-01") from None


def _cost(value: str, model: str, pt: int, ct: int, cfg: Config) -> tuple[float, bool]:
    """(cost, priced from the price table)."""
    text = value.strip()
    if not text:
        price = import_price(cfg, model)
        if price is None:
            raise _LineError("cost_usd", f"is empty and model {model!r} has no price: give cost_usd, or a price")
        return (pt * price.input_per_mtok + ct * price.output_per_mtok) / 1_000_000, True
    try:
        cost = float(text)
    except ValueError:
        cost = math.nan
    if not math.isfinite(cost) or cost < 0:
        raise _LineError("cost_usd", f"{text[:40]!r} is not an amount ≥ 0 in USD")
    return cost, False


def _parse_row(fields: dict[str, str], cfg: Config) -> dict[str, Any]:
    day = _day(fields["date"])
    tenant = _text(fields["tenant"], "tenant")
    model = _text(fields["model"], "model")
    assert tenant is not None and model is not None
    task = _text(fields.get("task", ""), "task", required=False)
    requests = _count(fields["requests"], "requests")
    pt = _count(fields["prompt_tokens"], "prompt_tokens")
    ct = _count(fields["completion_tokens"], "completion_tokens")
    cost, priced = _cost(fields.get("cost_usd", ""), model, pt, ct, cfg)
    return {
        "day": day,
        "tenant": tenant,
        "model": model,
        "task": task,
        "requests": requests,
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "cost_usd": cost,
        "priced": int(priced),
        "cost_raw": fields.get("cost_usd", "").strip(),  # the id hashes what the file says, not today's price
    }


def _header(row: list[str], name: str) -> list[str]:
    cols = [c.strip().lower() for c in row]
    for i, col in enumerate(cols):
        if col not in COLUMNS:
            raise BadRequest(
                f"{name}:1:{i + 1}: unknown column {row[i].strip()[:40]!r}; the columns are {', '.join(COLUMNS)}"
            )
        if cols.index(col) != i:
            raise BadRequest(f"{name}:1:{i + 1}: column {col!r} appears twice")
    missing = [c for c in COLUMNS if c not in cols and c not in OPTIONAL]
    if missing:
        raise BadRequest(f"{name}:1: missing column(s) {', '.join(missing)}; the columns are {', '.join(COLUMNS)}")
    return cols


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BadRequest(f"{name}:{line}: not UTF-8 text (byte {exc.start})") from None


def parse_csv(raw: bytes, name: str, cfg: Config) -> list[dict[str, Any]]:
    """Every row of the file, checked; BadRequest naming FILE:LINE:COLUMN for the first errors (up to 10)."""
    reader = csv.reader(io.StringIO(_decode(raw, name), newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise BadRequest(f"{name}: the file is empty; the first line must name the columns {', '.join(COLUMNS)}")
        cols = _header(header, name)
        rows, errors = _parse_lines(reader, cols, name, cfg)
    except csv.Error as exc:
        raise BadRequest(f"{name}:{reader.line_num}: not valid CSV ({exc})") from None
    if errors:
        more = f" (and more: {len(errors) - MAX_ERRORS} not shown)" if len(errors) > MAX_ERRORS else ""
        raise BadRequest("nothing imported: " + "; ".join(errors[:MAX_ERRORS]) + more)
    return rows


def _parse_lines(reader: Any, cols: list[str], name: str, cfg: Config) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for values in reader:
        line = reader.line_num
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(cols):
            errors.append(f"{name}:{line}: {len(values)} columns, the header has {len(cols)}")
            continue
        try:
            row = _parse_row(dict(zip(cols, values, strict=True)), cfg)
        except _LineError as exc:
            errors.append(f"{name}:{line}:{cols.index(exc.column) + 1} ({exc.column}): {exc}")
            continue
        row["line"] = line
        rows.append(row)
    return rows, errors


def _with_ids(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    seen: dict[str, int] = {}
    now = time.time()
    for row in rows:
        content = "\x1f".join(
            str(row[c]) for c in ("day", "tenant", "model", "task", "requests", "prompt_tokens", "completion_tokens")
        )
        content += "\x1f" + row.pop("cost_raw")
        n = seen[content] = seen.get(content, 0) + 1
        row["id"] = "imp_" + hashlib.sha256(f"{content}\x1f{n}".encode()).hexdigest()[:32]
        row["source"] = source
        row["imported_at"] = now
    return rows


def import_usage_csv(store: Store, cfg: Config, path: Path) -> ImportResult:
    """Import a bill's CSV: all rows or none; rows already imported are skipped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    rows = _with_ids(parse_csv(raw, path.name, cfg), path.name)
    present = existing_import_ids(store, [r["id"] for r in rows])
    fresh = [r for r in rows if r["id"] not in present]
    if fresh:
        store.write_batch([("usage_imports", row, True) for row in fresh])
    return ImportResult(imported=len(fresh), skipped=len(rows) - len(fresh))
