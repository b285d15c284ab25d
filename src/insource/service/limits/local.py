"""Budgets and rate limits in the worker (one process): the pure ledger and windows of `metering/budgets.py`."""

from __future__ import annotations

from insource.metering.budgets import Ledger, RateLimiter, Reservation


class LocalLimits:
    """In-process: no await between check and booking, so it is atomic on the event loop."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.rates = RateLimiter()

    async def check_rate(self, key_id: str, rpm: int | None, tpm: int | None, est_tokens: int) -> float | None:
        return self.rates.check(key_id, rpm, tpm, est_tokens)

    async def reserve(self, limits: list[tuple[str, float]], amount: float) -> Reservation:
        return self.ledger.reserve(limits, amount)

    def settle(self, reservation: Reservation, actual: float) -> None:
        self.ledger.settle(reservation, actual)

    def correct_tokens(self, key_id: str, delta: float) -> None:
        self.rates.correct_tokens(key_id, delta)

    async def seed(self, spent: dict[str, float]) -> None:
        self.ledger.sync_spent(spent)

    async def close(self) -> None:
        return None
