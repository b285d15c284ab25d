"""Budgets and rate limits: admission by reservation, reconciled with real usage.

`Ledger` is an in-process, single-event-loop ledger: `reserve` checks and books atomically (no await
inside), so concurrent requests never overshoot a budget by more than one request's estimate error.
Month-to-date spend from other workers is folded in by `sync_spent` (called periodically).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from insource.errors import BudgetExceeded

Scope = str  # "key:ID" or "tenant:NAME"


@dataclass(slots=True)
class Reservation:
    scopes: tuple[Scope, ...]
    amount: float
    settled: bool = False


@dataclass
class Ledger:
    spent: dict[Scope, float] = field(default_factory=dict)  # month-to-date, settled
    reserved: dict[Scope, float] = field(default_factory=dict)

    def reserve(self, limits: list[tuple[Scope, float]], amount: float) -> Reservation:
        """Book `amount` on every scope if each stays within its limit; else BudgetExceeded naming the first
        scope that would overshoot (nothing booked)."""
        for scope, limit in limits:
            used = self.spent.get(scope, 0.0) + self.reserved.get(scope, 0.0)
            if used + amount > limit + 1e-12:
                raise BudgetExceeded.of(scope, limit)
        scopes = tuple(scope for scope, _ in limits)
        for scope in scopes:
            self.reserved[scope] = self.reserved.get(scope, 0.0) + amount
        return Reservation(scopes, amount)

    def settle(self, reservation: Reservation, actual: float) -> None:
        """Release the reservation and book the real cost (idempotent)."""
        if reservation.settled:
            return
        reservation.settled = True
        for scope in reservation.scopes:
            self.reserved[scope] = max(0.0, self.reserved.get(scope, 0.0) - reservation.amount)
            self.spent[scope] = self.spent.get(scope, 0.0) + actual

    def sync_spent(self, stored: dict[Scope, float]) -> None:
        """Replace settled spend by the store's month-to-date figures (written by every worker)."""
        self.spent = dict(stored)


WINDOW_S = 60.0
BUCKET_S = 1.0  # events closer than this share one bucket: a window holds at most ~61, whatever the rate


class RateWindow:
    """Sliding one-minute window for RPM/TPM limits, in buckets of `BUCKET_S` (memory bounded at any rate).

    A bucket expires a minute after its *last* event, so an event counts for 60 to 61 seconds: the limit is never
    exceeded, and a client is refused at most a second longer than an exact window would."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[list[float]] = deque()  # [first event, last event, amount]
        self.total = 0.0

    def _trim(self, now: float) -> None:
        cutoff = now - WINDOW_S
        events = self.events
        while events and events[0][1] <= cutoff:
            self.total -= events.popleft()[2]
        if not events:
            self.total = 0.0  # no float drift left behind

    def would_exceed(self, amount: float, limit: float, now: float | None = None) -> bool:
        self._trim(time.monotonic() if now is None else now)
        return self.total + amount > limit

    def add(self, amount: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._trim(now)
        events = self.events
        if events and now - events[-1][0] < BUCKET_S:
            last = events[-1]
            last[1] = max(last[1], now)
            last[2] += amount
        else:
            events.append([now, now, amount])
        self.total += amount

    def retry_after(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return max(1.0, WINDOW_S - (now - self.events[0][1])) if self.events else 1.0


@dataclass
class RateLimiter:
    requests: dict[str, RateWindow] = field(default_factory=dict)
    tokens: dict[str, RateWindow] = field(default_factory=dict)

    def check(self, key_id: str, rpm: int | None, tpm: int | None, est_tokens: int) -> float | None:
        """Admit (and count) one request; returns None when admitted, else seconds to retry after."""
        now = time.monotonic()
        rw = self.requests.get(key_id) or self.requests.setdefault(key_id, RateWindow())
        tw = self.tokens.get(key_id) or self.tokens.setdefault(key_id, RateWindow())
        if rpm is not None and rw.would_exceed(1, rpm, now):
            return rw.retry_after(now)
        if tpm is not None and tw.would_exceed(est_tokens, tpm, now):
            return tw.retry_after(now)
        if rpm is not None:  # a window nobody reads would only grow
            rw.add(1, now)
        if tpm is not None:
            tw.add(est_tokens, now)
        return None

    def correct_tokens(self, key_id: str, delta: float) -> None:
        """Reconcile a TPM estimate with real usage."""
        if delta and key_id in self.tokens:
            self.tokens[key_id].add(delta)
