"""CPU work whose cost grows with its input, kept off the event loop.

Every request shares one event loop: while a handler computes, no other request is read, answered or relayed,
and ``/healthz`` does not answer either. Work that is cheap at its usual size but grows with what a client
sends (parsing and checking a large body, the answer check on a long answer) runs inline below a size and on
a small pool of threads above it. Python code in a thread gives the loop the interpreter back every few
milliseconds (``sys.getswitchinterval``); a single C call (one ``orjson.loads``) does not, which is why the
inputs themselves are bounded too (``parse.MAX_JSON_TOKENS``, ``check.MAX_CHECKED_CHARS``). The pool's size is
the admission control: at most ``THREADS`` such jobs run at once, the rest wait their turn without holding the
loop, and every caller already holds a concurrency slot.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

THREADS = 2


class Offload:
    def __init__(self, threads: int = THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="routeproxy-cpu")  # threads start on first use

    async def run(self, inline: bool, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(*args, **kwargs)``: here when ``inline`` (the caller's size check said it is small), else on the
        pool. A caller that is cancelled (its client left) stops waiting; the work itself runs to its end."""
        if inline:
            return work(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(work, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
