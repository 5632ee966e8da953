"""Starting tasks so that they cannot vanish mid-run.

The event loop keeps only a weak reference to a task, so a task that nobody else holds can be garbage-collected
before it finishes (the warning under ``asyncio.create_task`` in Python's docs). ``spawn`` holds every task it
starts until the task is done; the caller may keep the task too, to await or cancel it. ruff bans a bare
``asyncio.create_task`` and ``asyncio.ensure_future`` (TID251, pyproject.toml): start tasks here, or in an
``asyncio.TaskGroup`` when a block owns them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Process-wide on purpose: it only holds running tasks, which belong to the event loop, not to a configuration.
_running: set[asyncio.Task[Any]] = set()


def spawn(coroutine: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """Run ``coroutine`` as a task on the running loop, held until it is done."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
