"""Blocking calls (a store's reads and writes) run on threads of their own, away from the event
loop, where they can be waited for: an application must not be closed while such a call is
still using its store (a SQLite connection closed under a running query crashes the process),
and a cancelled coroutine does not stop the thread it was waiting on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Offload:
    """A small pool of threads for one component's blocking calls."""

    def __init__(self, name: str, workers: int = 4) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def drain(self) -> None:
        """Wait until every call already started has finished; none may start after."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)


class Periodic:
    """A blocking job (a store's housekeeping) run every so often on a thread, until stopped.
    A failed run is logged and tried again next time; stop() waits for a run in progress."""

    def __init__(self, name: str, job: Callable[[], object], every_seconds: float) -> None:
        self.name = name
        self.job = job
        self.every_seconds = every_seconds
        self._offload = Offload(name, workers=1)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._offload.drain()

    async def _run(self) -> None:
        while True:
            try:
                await self._offload(self.job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; trying again", self.name)
            await asyncio.sleep(self.every_seconds)
