"""Calling upstream targets: ordered fallback, retries with backoff before the first byte, breakers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from insource.errors import InsourceError, ServiceUnavailable, UpstreamError
from insource.providers import Provider
from insource.routing.resilience import CircuitBreaker, RetryBudget, backoff_s
from insource.service.request import Attempt, RequestFacts

T = TypeVar("T")
SERVED_BY = "X-Insource-Served-By"
NO_CLIENT_RETRY = {"x-should-retry": "false"}  # honoured by the OpenAI SDKs, which retry 5xx twice by default
Operation = Callable[[Provider, str], Awaitable[T]]
log = logging.getLogger("insource.upstream")


@dataclass(slots=True)
class CallTrail:
    """What one call of a model's targets did so far: filled in as it goes, because a failure (or a
    cancellation) must still be metered with who was asked and how often. Owned by the caller of
    `Upstreams.call`, which reads it into the request's `Outcome`."""

    attempts: int = 0
    served_by: str | None = None  # "provider:model" of the target asked last
    provider: str | None = None  # set once a target answered
    upstream_model: str | None = None
    spans: list[Attempt] | None = None  # each attempt's times, kept only when traces are on


def warn_upstream(facts: RequestFacts, trail: CallTrail, pname: str, umodel: str, exc: UpstreamError) -> None:
    """An upstream failure (auth, rate limit, timeout, 5xx) as a warning; a relayed client error is not one."""
    if exc.relay is None:
        fields: dict[str, object] = {"request_id": facts.trace_id, "provider": pname}
        fields.update(upstream_model=umodel, status=exc.status, error_code=exc.code, attempt=trail.attempts)
        log.warning("upstream failed: %s", exc.message, extra={"fields": fields})


def _record_failure(breaker: CircuitBreaker, pname: str) -> None:
    was_open = breaker.opened_at is not None
    breaker.record_failure()
    if breaker.opened_at is not None and not was_open:
        fields = {"provider": pname, "failures": breaker.consecutive, "reset_s": breaker.reset_s}
        log.warning("circuit opened: upstream '%s' is skipped until a probe succeeds", pname, extra={"fields": fields})


@dataclass
class Upstreams:
    """Providers with their per-provider breaker and retry budget, and each model's ordered targets."""

    providers: dict[str, Provider]
    targets: dict[str, list[tuple[str, str]]]
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    budgets: dict[str, RetryBudget] = field(default_factory=dict)
    trace: bool = False  # keep each attempt on the request's context (traces are on)

    def __post_init__(self) -> None:
        for name, provider in self.providers.items():
            cfg = provider.config
            self.breakers.setdefault(name, CircuitBreaker(cfg.circuit_failures, cfg.circuit_reset_s))
            self.budgets.setdefault(name, RetryBudget())

    async def call(self, facts: RequestFacts, trail: CallTrail, alias: str, op: Operation[T]) -> T:
        """Try each target in order; returns the first success. Raises the last error otherwise. `trail` says
        who was asked and how often, whichever way the call ends."""
        targets = self.targets[alias]
        if self.trace and trail.spans is None:
            trail.spans = []
        last: InsourceError = ServiceUnavailable(f"no upstream available for model '{alias}'")
        for pname, umodel in targets:
            breaker = self.breakers[pname]
            if not breaker.allow():
                last = ServiceUnavailable(f"upstream '{pname}' is failing (circuit open); try again shortly")
                continue
            trial = breaker.opened_at is not None  # allowed while open: this request is the half-open probe
            trail.served_by = target = f"{pname}:{umodel}"  # the usage record says who was asked, even if it fails
            try:
                result = await self._call_target(facts, trail, pname, umodel, op)
            except UpstreamError as exc:
                exc.headers.setdefault(SERVED_BY, target)  # an error a target answered says which
                if not exc.retryable:
                    exc.headers.update(NO_CLIENT_RETRY)  # the same request fails again
                    raise
                last = exc
                continue
            finally:
                if trial:
                    breaker.end_trial()  # a probe that was cancelled or raised oddly must not hold the breaker
            trail.provider, trail.upstream_model = pname, umodel
            return result
        if trail.attempts > 1:  # insource already retried or fell back: a client's retries would multiply its attempts
            last.headers.update(NO_CLIENT_RETRY)
        raise last

    async def _call_target(self, facts: RequestFacts, trail: CallTrail, pname: str, umodel: str, op: Operation[T]) -> T:
        provider = self.providers[pname]
        breaker = self.breakers[pname]
        budget = self.budgets[pname]
        attempt = 0
        budget.active_requests += 1
        try:
            while True:
                trail.attempts += 1
                started = time.perf_counter() if trail.spans is not None else 0.0
                try:
                    result = await op(provider, umodel)
                except UpstreamError as exc:
                    if trail.spans is not None:
                        trail.spans.append(Attempt(pname, umodel, started, time.perf_counter(), exc.status, exc.code))
                    warn_upstream(facts, trail, pname, umodel, exc)
                    if not exc.retryable:
                        breaker.record_success()  # the upstream is healthy; the request was refused
                        raise
                    if exc.status == 429:
                        breaker.record_success()  # rate limited, not broken: the upstream answered
                    else:
                        _record_failure(breaker, pname)
                    if exc.status == 429 or attempt >= provider.config.max_retries or not budget.can_retry():
                        raise
                    if not breaker.allow():
                        raise
                    attempt += 1
                    budget.active_retries += 1
                    try:
                        await asyncio.sleep(backoff_s(attempt))
                    finally:
                        budget.active_retries -= 1
                    continue
                if trail.spans is not None:
                    trail.spans.append(Attempt(pname, umodel, started, time.perf_counter()))
                breaker.record_success()
                return result
        finally:
            budget.active_requests -= 1
