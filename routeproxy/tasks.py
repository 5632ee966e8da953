"""Starting tasks so that they cannot vanish mid-run.

The event loop keeps only a weak reference to a task, so a task that nobody else holds can be garbage-collected
before it finishes (the warning under ``asyncio.create_task`` in Python's docs). ``spawn`` holds every task it
starts until the task is done; the caller may keep the task too, to await or cancel it. ruff bans a bare
``asyncio.create_task`` and ``asyncio.ensure_future`` (TID251, pyproject.toml): start tasks here, or in an
``asyncio.TaskGroup`` when a block owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Process-wide on purpose: it only holds running tasks, which belong to the event loop, not to a configuration.
_running: set[asyncio.Task[Any]] = set()


def spawn(coroutine: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """Run ``coroutine`` as a task on the running loop, held until it is done."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


class Repeating:
    """Awaits ``step()`` every ``interval`` seconds in a task of its own, from ``start()`` until ``stop()``.

    A step that raises is logged as ``<name>.crashed`` and the loop goes on: a bug in one step must not end the
    background work (a flush, a controller) for the life of the process. ``stop`` lets a running step finish.
    """

    def __init__(self, step: Callable[[], Awaitable[object]], interval: float, name: str) -> None:
        self.step = step
        self.interval = interval
        self.name = name
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, *, at_once: bool = False) -> None:
        """Start the loop; with ``at_once`` the first step runs now rather than after one interval."""
        if self._task is None:
            self._stopping.clear()
            self._task = spawn(self._run(at_once), name=self.name)

    async def _run(self, at_once: bool) -> None:
        if not at_once:
            await self._wait()
        while not self._stopping.is_set():
            try:
                await self.step()
            except Exception:
                log.exception(f"{self.name}.crashed")
            await self._wait()

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
