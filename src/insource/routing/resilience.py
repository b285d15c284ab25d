"""Resilience policies for upstream targets: circuit breaker, retry budget, backoff. Pure state machines."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    """Opens after `failures` consecutive failures; half-open (one trial) after `reset_s`."""

    failures: int = 5
    reset_s: float = 10.0
    consecutive: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    def allow(self, now: float | None = None) -> bool:
        if self.opened_at is None:
            return True
        now = time.monotonic() if now is None else now
        if now - self.opened_at >= self.reset_s and not self.trial_in_flight:
            self.trial_in_flight = True  # half-open: let one request probe the upstream
            return True
        return False

    def record_success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.trial_in_flight = False

    def record_failure(self, now: float | None = None) -> None:
        self.consecutive += 1
        self.trial_in_flight = False
        if self.consecutive >= self.failures:
            self.opened_at = time.monotonic() if now is None else now

    def end_trial(self) -> None:
        """The half-open probe ended without a verdict (cancelled): the next request after `reset_s` may probe."""
        self.trial_in_flight = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.trial_in_flight else "open"


@dataclass
class RetryBudget:
    """Envoy-style: retries in flight may not exceed `ratio` of requests in flight (at least `minimum`)."""

    ratio: float = 0.2
    minimum: int = 3
    active_requests: int = 0
    active_retries: int = 0

    def can_retry(self) -> bool:
        return self.active_retries < max(self.minimum, int(self.active_requests * self.ratio))


def backoff_s(attempt: int, base: float = 0.1, cap: float = 2.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter for retry `attempt` (1-based)."""
    r = rng.random() if rng is not None else random.random()
    return r * min(cap, base * (2 ** (attempt - 1)))
