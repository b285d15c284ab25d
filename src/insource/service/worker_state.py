"""The gateway's per-worker state and lifecycle: config, store, writer, providers, ledgers, caches."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from insource.capture.assigned import AssignedTemplates
from insource.capture.record import CaptureRaw
from insource.capture.redact import check_redactors
from insource.config import Config
from insource.errors import BadRequest, ModelNotFound
from insource.metering.prices import ModelPrice, resolve_prices
from insource.metering.usage import cost_usd
from insource.providers import build_providers
from insource.routing.policy import RoutePolicy
from insource.service.access_log import access_enabled, log_request
from insource.service.insourcing import InsourcingRouter
from insource.service.keys import KeyCache, KeyInfo, server_secret
from insource.service.limits import Limits, LocalLimits, make_limits, redis_url
from insource.service.request import NOT_ADMITTED, Admission, Outcome, RequestFacts, usage_row
from insource.service.response_cache import CacheBackend, make_cache
from insource.service.spend import month_start, month_to_date
from insource.service.tracing import make_tracing
from insource.service.upstream import Upstreams
from insource.store import open_store
from insource.store.journal import Journal
from insource.store.opportunities import assignments
from insource.store.writer import BatchWriter

log = logging.getLogger("insource.gateway")
T = TypeVar("T")
REFRESH_S = 0.5  # how often a worker looks whether keys, template assignments or routes changed in the store
REREAD_S = 10.0  # ... and re-reads them at least this often even when the store says nothing changed


def _try(load: Callable[[], T], what: str) -> T | None:
    """`load()`, or None when it raised: logged as `what`, so one kind's failure does not stop the others."""
    try:
        return load()
    except Exception:  # keep serving with the last good copy; the error is logged
        log.exception(what)
        return None


class WorkerState:
    """One worker process's state: config, store, writer, providers, limits, key cache, router, counters."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.prices: dict[str, ModelPrice] = resolve_prices(cfg)
        check_redactors(cfg.capture.redactors)
        self.store = open_store(cfg)
        self.secret = server_secret(cfg, self.store)
        self.keys = KeyCache(self.store, self.secret)
        self.keys.refresh()
        self.assigned = AssignedTemplates.from_rows(assignments(self.store))  # `insource tasks assign`
        spool = (cfg.sqlite_path() or cfg.resolve_path("insource.db")).parent / "spool"
        journal = Journal(spool.parent / "journal", fsync=cfg.store.fsync)
        self.writer = BatchWriter(self.store, spool, max_queue=cfg.capture.queue_size, journal=journal)
        self.upstreams = Upstreams(
            build_providers(cfg),
            {alias: [tuple(t.split(":", 1)) for t in m.targets] for alias, m in cfg.models.items()},  # type: ignore[misc]
        )
        self.limits: Limits = make_limits(cfg)
        self.tracing = make_tracing(cfg, {name: p.kind for name, p in cfg.providers.items()})  # None: traces off
        self.upstreams.trace = self.tracing is not None
        self.cache: CacheBackend | None = make_cache(cfg, redis_url(cfg))
        self.max_body = int(cfg.server.max_body_mb * 1024 * 1024)
        self.multi_worker = int(os.environ.get("INSOURCE_WORKERS", "1")) > 1
        self._month = month_start(time.time())
        self._tasks: list[asyncio.Task[None]] = []
        self.counts: dict[tuple[str, str, str, int], list[float]] = {}  # (tenant, model, served_by, status)
        self.router = InsourcingRouter(cfg, self.store, self.writer)  # who answers each routed task
        self._capture_fn: Any = None
        self.access_log = access_enabled()  # checked once: the line is built only when it is written

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        # Startup objects go to the permanent generation, so full collections stop re-scanning them (each
        # took ~40 ms CPU, a stall for every request in flight); request garbage is freed by refcount, so
        # gen-0 collections can be rarer (measured in bench/gateway_bench.py: -0.05 ms CPU per request).
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        await self.limits.seed(await asyncio.to_thread(month_to_date, self.store, time.time()))
        self._tasks.append(asyncio.create_task(self._refresh_loop()))
        self._tasks.append(asyncio.create_task(self._sync_spend_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.router.close()
        for provider in self.upstreams.providers.values():
            await provider.close()
        await self.limits.close()
        if self.cache is not None:
            await self.cache.close()
        await asyncio.to_thread(self.writer.close)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.close)

    async def _refresh_loop(self) -> None:
        """What the CLI and other workers change in the store reaches this worker within a second: keys (`insource
        keys`), template assignments (`insource tasks assign`) and routes (`insource route`, rollbacks), reloaded
        in one trip to a thread (one wake-up and one hop instead of one per kind: idle, ~190 futex calls per 10 s
        instead of ~2,500). Every `REFRESH_S` it asks the store whether anything was committed since the last
        reload (`Store.data_version`, SQLite: ~2 µs on the loop) and reloads only then, or after `REREAD_S` in any
        case (an idle worker no longer re-reads everything twice a second). A reload that fails keeps the last good
        copy of that kind; it is logged."""
        seen: int | None = None
        read_at = 0.0
        while True:
            await asyncio.sleep(REFRESH_S)
            version, now = self.store.data_version(), time.monotonic()
            if version is not None and version == seen and now - read_at < REREAD_S:
                continue
            seen, read_at = version, now  # read before the reload: a commit during it is seen next time
            keys, assigned, routes = await asyncio.to_thread(self._reload)
            if keys is not None:
                self.keys.refresh(keys)
            if assigned is not None:
                self.assigned = assigned
            if routes is not None:
                _try(partial(self.router.apply, routes), "route refresh failed")

    def _reload(self) -> tuple[dict[str, KeyInfo] | None, AssignedTemplates | None, dict[str, RoutePolicy] | None]:
        """(keys, template assignments, routes) from the store, each None when its read failed (logged)."""
        return (
            _try(self.keys.load_all, "key refresh failed"),
            _try(lambda: AssignedTemplates.from_rows(assignments(self.store)), "template assignment refresh failed"),
            _try(self.router.load, "route refresh failed"),
        )

    async def _sync_spend_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0 if self.multi_worker else 30.0)
            month = month_start(time.time())
            if not isinstance(self.limits, LocalLimits) or (not self.multi_worker and month == self._month):
                continue
            self._month = month
            try:
                await asyncio.to_thread(self.writer.flush, 5.0)
                stored = await asyncio.to_thread(month_to_date, self.store, time.time())
                self.limits.ledger.sync_spent(stored)
            except Exception:  # stale figures until the next sync; logged
                log.exception("spend sync failed")

    # -- helpers used by the use cases -------------------------------------------------------
    def model_for(self, key: KeyInfo, alias: Any) -> ModelPrice:
        if alias is None:
            raise BadRequest("You must provide a model parameter.", param="model")
        if not isinstance(alias, str) or alias not in self.prices:
            raise ModelNotFound(f"The model '{alias}' does not exist or you do not have access to it.", param="model")
        if key.models is not None and alias not in key.models:
            raise ModelNotFound(f"The model '{alias}' does not exist or you do not have access to it.", param="model")
        return self.prices[alias]

    def visible_models(self, key: KeyInfo) -> list[str]:
        return [m for m in self.prices if key.models is None or m in key.models]

    def budget_limits(self, key: KeyInfo) -> list[tuple[str, float]]:
        limits: list[tuple[str, float]] = []
        if key.budget_usd is not None:
            limits.append((f"key:{key.id}", key.budget_usd))
        tenant = self.cfg.tenants.get(key.tenant)
        if tenant is not None and tenant.budget_usd is not None:
            limits.append((f"tenant:{key.tenant}", tenant.budget_usd))
        return limits

    def capture_policy(self, key: KeyInfo) -> tuple[bool, bool]:
        """(consent, redact) for a key: key setting, else tenant setting, else the global default."""
        tenant = self.cfg.capture.tenants.get(key.tenant)
        consent = key.capture if key.capture is not None else (tenant.enabled if tenant else self.cfg.capture.enabled)
        return consent, (tenant.redact if tenant else True)

    def finish(
        self,
        facts: RequestFacts,
        outcome: Outcome,
        admission: Admission = NOT_ADMITTED,
        capture: CaptureRaw | None = None,
    ) -> None:
        """Settle the budget with the real cost and queue the request's one usage record (and its capture)."""
        price = self.prices.get(facts.model or "")
        cost = outcome.cost_usd  # a student prices itself
        if price is not None and outcome.provider is not None:  # an upstream target answered
            cost = cost_usd(outcome.usage, price)
        if admission.reservation is not None:
            self.limits.settle(admission.reservation, cost)
        if admission.est_tokens:
            self.limits.correct_tokens(facts.key.id, outcome.usage.total - admission.est_tokens)
        row = usage_row(facts, outcome, cost)
        deferred = None
        if capture is not None:
            capture.cost_usd = cost
            deferred = partial(self._process_capture(), capture)
        self.writer.submit_durable("usage", row, capture=deferred)  # on disk before the answer ends
        if self.tracing is not None:
            self.tracing.record(facts, outcome, cost, time.perf_counter(), capture)
        if self.access_log:
            log_request(row)
        self._count(facts, outcome, cost)

    def _count(self, facts: RequestFacts, outcome: Outcome, cost: float) -> None:
        """The Prometheus counters of `/metrics`."""
        model = facts.model if facts.model in self.prices else "(unknown)"  # client-chosen names are no labels
        label = (facts.key.tenant, model, outcome.served_by or "", outcome.status)
        slot = self.counts.get(label)
        if slot is None:
            slot = self.counts[label] = [0, 0.0, 0.0]
        slot[0] += 1
        slot[1] += cost
        slot[2] += outcome.cost_avoided_usd

    def _process_capture(self) -> Any:
        if self._capture_fn is None:
            from insource.capture.process import process_capture

            self._capture_fn = process_capture
        return self._capture_fn
