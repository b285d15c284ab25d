"""Budgets and rate limits in Redis, shared by every worker (`[server] redis_url`): Lua scripts make each
check-and-book one atomic step."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from insource.errors import BudgetExceeded, ServiceUnavailable
from insource.metering.budgets import Reservation

log = logging.getLogger("insource.limits")


RESERVE = """
local n = #KEYS / 2
local amount = tonumber(ARGV[1])
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0') + tonumber(redis.call('GET', KEYS[n + i]) or '0')
  if used + amount > tonumber(ARGV[1 + i]) + 1e-12 then return i end
end
for i = 1, n do
  redis.call('INCRBYFLOAT', KEYS[n + i], ARGV[1])
  redis.call('EXPIRE', KEYS[n + i], 3000000)
end
return 0
"""

SETTLE = """
local n = #KEYS / 2
for i = 1, n do
  redis.call('INCRBYFLOAT', KEYS[n + i], -tonumber(ARGV[1]))
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[2])
  redis.call('EXPIRE', KEYS[i], 3000000)
end
return 1
"""

RATE = """
local rpm, tpm, est = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rpm >= 0 and tonumber(redis.call('GET', KEYS[1]) or '0') + 1 > rpm then return 1 end
if tpm >= 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + est > tpm then return 2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 120)
if tpm >= 0 then
  redis.call('INCRBY', KEYS[2], est)
  redis.call('EXPIRE', KEYS[2], 120)
end
return 0
"""


class RedisLimits:
    """Shared by every worker: Lua scripts make check-and-book one atomic step in Redis."""

    def __init__(self, url: str, prefix: str = "insource") -> None:
        import redis.asyncio as aioredis

        self.client: Any = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix
        self._reserve = self.client.register_script(RESERVE)
        self._settle = self.client.register_script(SETTLE)
        self._rate = self.client.register_script(RATE)
        self._pending: set[asyncio.Task[None]] = set()

    def _month(self) -> str:
        return time.strftime("%Y-%m", time.gmtime())

    def _keys(self, scopes: list[str]) -> list[str]:
        month = self._month()
        spent = [f"{self.prefix}:spent:{month}:{s}" for s in scopes]
        return spent + [f"{self.prefix}:reserved:{month}:{s}" for s in scopes]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except Exception as exc:  # any Redis failure: fail closed, clearly
            log.error("redis limits unavailable: %s", type(exc).__name__)
            raise ServiceUnavailable("The shared limits store (Redis) is unavailable; try again shortly.") from None

    async def check_rate(self, key_id: str, rpm: int | None, tpm: int | None, est_tokens: int) -> float | None:
        if rpm is None and tpm is None:
            return None
        minute = int(time.time() // 60)
        keys = [f"{self.prefix}:rpm:{key_id}:{minute}", f"{self.prefix}:tpm:{key_id}:{minute}"]
        verdict = await self._call(
            self._rate, keys, [rpm if rpm is not None else -1, tpm if tpm is not None else -1, est_tokens]
        )
        return None if int(verdict) == 0 else max(1.0, 60.0 - time.time() % 60)

    async def reserve(self, limits: list[tuple[str, float]], amount: float) -> Reservation:
        scopes = [scope for scope, _ in limits]
        refused = int(await self._call(self._reserve, self._keys(scopes), [amount, *[limit for _, limit in limits]]))
        if refused:  # the 1-based index of the budget that would overshoot
            raise BudgetExceeded.of(*limits[refused - 1])
        return Reservation(tuple(scopes), amount)

    def settle(self, reservation: Reservation, actual: float) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        task = asyncio.get_running_loop().create_task(self._settle_async(reservation, actual))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_async(self, reservation: Reservation, actual: float) -> None:
        try:
            await self._settle(keys=self._keys(list(reservation.scopes)), args=[reservation.amount, actual])
        except Exception:  # the spend is in the usage record; the next seed corrects Redis
            log.exception("redis settle failed")

    def correct_tokens(self, key_id: str, delta: float) -> None:
        return None  # fixed one-minute windows: the estimate stands

    async def seed(self, spent: dict[str, float]) -> None:
        """Start month-to-date spend from the store when Redis has none (first start, or Redis restarted)."""
        month = self._month()
        for scope, value in spent.items():
            await self.client.set(f"{self.prefix}:spent:{month}:{scope}", value, nx=True, ex=3000000)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.client.aclose()
