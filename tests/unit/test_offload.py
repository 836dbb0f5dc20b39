"""Blocking calls on threads that can be waited for, even after the coroutine awaiting one was
cancelled: what keeps an application from being closed under a running store call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.common.offload import Offload


def test_drain_waits_for_a_call_whose_awaiting_task_was_cancelled() -> None:
    started, finished = threading.Event(), threading.Event()

    def slow_save() -> None:
        started.set()
        time.sleep(0.3)
        finished.set()

    async def main() -> None:
        offload = Offload("test")
        task = asyncio.create_task(offload(slow_save))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not finished.is_set()  # the thread runs on after its awaiter is gone

        await offload.drain()

        assert finished.is_set()

    asyncio.run(main())


def test_a_call_returns_its_result_and_raises_its_error() -> None:
    def fail() -> None:
        raise ValueError("no")

    async def main() -> None:
        offload = Offload("test")
        assert await offload(sum, [1, 2, 3]) == 6
        with pytest.raises(ValueError, match="no"):
            await offload(fail)
        await offload.drain()

    asyncio.run(main())
