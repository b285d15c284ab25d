"""Budgets and rate limits shared by the workers of one `insource serve --workers N` without Redis.

The workers of one host share a small SQLite file (`store/host_limits_file.py` holds its SQL): each
check-and-book is one transaction, atomic across processes, exactly like the Redis scripts. Calls run on one
thread per worker so the event loop never waits on the file lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from insource.errors import BudgetExceeded, ServiceUnavailable
from insource.metering.budgets import Reservation
from insource.store import host_limits_file
from insource.store.host_limits_file import HostLimitsFile

log = logging.getLogger("insource.limits")
T = TypeVar("T")
HOST_LIMITS_ENV = "INSOURCE_HOST_LIMITS"  # the shared file, set by `insource serve --workers N`


class HostLimits:
    """The `Limits` protocol over a host-local SQLite file shared by every worker."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="insource-limits")
        self._file = HostLimitsFile(path)
        self._pending: set[asyncio.Future[None]] = set()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except host_limits_file.Error as exc:
            log.error("host limits file unavailable: %s", exc)
            raise ServiceUnavailable("The shared limits file is unavailable; try again shortly.") from None

    async def check_rate(self, key_id: str, rpm: int | None, tpm: int | None, est_tokens: int) -> float | None:
        if rpm is None and tpm is None:
            return None
        admitted = await self._run(self._file.book_rate, key_id, rpm, tpm, est_tokens)
        return None if admitted else max(1.0, 60.0 - time.time() % 60)

    async def reserve(self, limits: list[tuple[str, float]], amount: float) -> Reservation:
        refused = await self._run(self._file.reserve, limits, amount)
        if refused is not None:
            raise BudgetExceeded.of(*refused)
        return Reservation(tuple(scope for scope, _ in limits), amount)

    def settle(self, reservation: Reservation, actual: float) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, self._file.settle, reservation.scopes, reservation.amount, actual
        )
        self._pending.add(future)
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[None]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:  # the usage record still has the spend
            log.error("host limits settle failed: %s", future.exception())

    def correct_tokens(self, key_id: str, delta: float) -> None:
        return None  # fixed one-minute windows: the estimate stands

    async def seed(self, spent: dict[str, float]) -> None:
        await self._run(self._file.seed, spent)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        self._pool.shutdown(wait=True)
        self._file.close()
