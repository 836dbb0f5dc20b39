"""Blocking calls (a store's reads and writes) run on threads of their own, away from the event
loop, where they can be waited for: an application must not be closed while such a call is
still using its store (a SQLite connection closed under a running query crashes the process),
and a cancelled coroutine does not stop the thread it was waiting on."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

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
