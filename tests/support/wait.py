"""Polling instead of sleeping: wait for a condition with a bounded number of tries, never for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from support import http

T = TypeVar("T")


def eventually(check: Callable[[], T], *, tries: int = 200, interval: float = 0.025, what: str = "") -> T:
    """The first truthy result of ``check()``; AssertionError after ``tries`` falsy ones (``interval`` apart)."""
    for _ in range(tries):
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what or getattr(check, '__name__', 'condition')} did not hold after {tries} tries")


async def eventually_async(
    check: Callable[[], Awaitable[T]], *, tries: int = 200, interval: float = 0.025, what: str = ""
) -> T:
    """``eventually`` for a coroutine check, without blocking the event loop between tries."""
    for _ in range(tries):
        result = await check()
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"{what or getattr(check, '__name__', 'condition')} did not hold after {tries} tries")


def answers(url: str) -> bool:
    """Whether ``GET url`` answers 200 now (a server still starting refuses the connection)."""
    try:
        return http.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
