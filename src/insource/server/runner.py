"""uvicorn's `Server` with a slower heartbeat, for a one-worker `insource serve`.

uvicorn's main loop wakes the event loop every 0.1 s to refresh the `date` header (it changes once a second) and
to see whether a stop signal arrived. Idle, or at one request at a time, those ten wake-ups a second are a
visible share of the gateway's CPU (issue 15: CPU per request at concurrency 1, where each request already
costs two sleeps and wake-ups of the loop). `QuietServer` ticks once a second, and a stop signal wakes it at once,
so stopping is as prompt as before. Several workers run uvicorn's own supervisor and `Server` unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

TICK_S = 1.0


class QuietServer(uvicorn.Server):
    """A `uvicorn.Server` whose main loop ticks every `TICK_S` and is woken by `handle_exit` at once."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nap: asyncio.Future[None] | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # uvicorn refreshes the date header on every 10th of its ticks
            self._nap = self._loop.create_future()
            timer = self._loop.call_later(TICK_S, _wake, self._nap)
            await self._nap
            timer.cancel()
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop, nap = self._loop, self._nap
        if loop is not None and nap is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing to wake
                loop.call_soon_threadsafe(_wake, nap)


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


def run_one_worker(app: Any, **options: Any) -> None:
    """`uvicorn.run(app, **options)` for one worker, with `QuietServer` (the same exit status on a failed start)."""
    server = QuietServer(uvicorn.Config(app, **options))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
