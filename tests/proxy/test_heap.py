"""The serving process settles its heap once the app is built (routeproxy/api/heap.py): both ways a proxy starts
(``serve`` in one process, and the factory ``--workers N`` processes call) leave the collector frozen past the
start-up objects and with the raised young-generation threshold. Run in child processes: the collector's state is
process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from routeproxy.api.heap import THRESHOLDS

_ENV = {
    **os.environ,
    "MODEL_3B_BASE_URL": "http://127.0.0.1:9/v1",
    "MODEL_8B_BASE_URL": "http://127.0.0.1:9/v1",
    "MODEL_3B_KIND": "vllm",
    "MODEL_8B_KIND": "vllm",
}

# uvicorn's Server.run replaced by a probe of the collector's state at the moment the server would start.
_SERVE = """
import gc, json, sys, uvicorn
def run(server, sockets=None):
    print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))
    server.started = True
uvicorn.Server.run = run
from routeproxy.cli import main
sys.exit(main(["serve", "--port", "0"]))
"""
_FACTORY = """
import gc, json
from routeproxy.api.app import app_from_environment
app_from_environment()
print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))
"""


def _collector_state(script: str) -> tuple[tuple[int, ...], int]:
    done = subprocess.run([sys.executable, "-c", script], env=_ENV, capture_output=True, timeout=120, check=True)
    threshold, frozen = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return tuple(threshold), frozen


def test_serve_freezes_the_start_up_heap_and_raises_the_threshold() -> None:
    threshold, frozen = _collector_state(_SERVE)
    assert threshold == THRESHOLDS != (700, 10, 10)
    assert frozen > 10_000  # the modules, rule sets and clients built at start-up


def test_the_workers_factory_does_the_same() -> None:
    threshold, frozen = _collector_state(_FACTORY)
    assert threshold == THRESHOLDS
    assert frozen > 10_000
