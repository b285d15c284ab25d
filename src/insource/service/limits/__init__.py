"""Where budgets and rate limits live: the three backends side by side, one protocol.

- `local.py`: in the worker (one process), over the pure ledger and windows of `metering/budgets.py`;
- `host.py`: shared by the workers of one `insource serve --workers N` without Redis (a private SQLite file,
  its SQL in `store/host_limits_file.py`);
- `redis.py`: shared by every worker of every host through Redis (`[server] redis_url`).

All give the same guarantee: the check and the booking are atomic, so concurrent requests never overshoot a
budget by more than one request's estimate error. `service/admission.py` is the one caller that books.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from insource.config import Config, resolve_secret
from insource.errors import ConfigError
from insource.metering.budgets import Reservation
from insource.service.limits.host import HOST_LIMITS_ENV, HostLimits
from insource.service.limits.local import LocalLimits
from insource.service.limits.redis import RedisLimits

__all__ = ["HOST_LIMITS_ENV", "HostLimits", "Limits", "LocalLimits", "RedisLimits", "make_limits", "redis_url"]


class Limits(Protocol):
    async def check_rate(self, key_id: str, rpm: int | None, tpm: int | None, est_tokens: int) -> float | None: ...

    async def reserve(self, limits: list[tuple[str, float]], amount: float) -> Reservation:
        """Book `amount` on every budget, or raise BudgetExceeded naming the one that would overshoot."""

    def settle(self, reservation: Reservation, actual: float) -> None: ...

    def correct_tokens(self, key_id: str, delta: float) -> None: ...

    async def seed(self, spent: dict[str, float]) -> None: ...

    async def close(self) -> None: ...


def redis_url(cfg: Config) -> str | None:
    """`[server] redis_url`, its `env::NAME` resolved (None: no Redis)."""
    url = cfg.server.redis_url
    if url is None:
        return None
    resolved = resolve_secret(url) if url.startswith("env::") else url
    if not resolved:
        raise ConfigError(f"[server] redis_url references {url}, which is not set")
    return resolved


def make_limits(cfg: Config) -> Limits:
    """Redis when `[server] redis_url` is set; else the host file `serve --workers N` named; else in the worker."""
    url = redis_url(cfg)
    if url is None:
        shared = os.environ.get(HOST_LIMITS_ENV)  # set by `serve --workers N` for its workers
        return HostLimits(Path(shared)) if shared else LocalLimits()
    return RedisLimits(url)
