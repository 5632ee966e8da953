"""`check-config` as the last word before a deploy: it refuses what `serve` only warns about, and `--probe` asks
each tier's upstream whether it serves the configured model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ports import refused_port
from support.processes import Served, serve

from routeproxy.sim.profile import SimProfile
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
SMALL, LARGE = "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The test machine's own routeproxy variables stay out: each case sets what it means.
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("ROUTEPROXY_", "MODEL_"))}
    environ.pop("HF_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "routeproxy", *args],
        env={**environ, "ROUTEPROXY_LOG_FORMAT": "json", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture
def upstreams() -> Iterator[dict[str, ThreadedServer]]:
    """A simulator serving the small model, one serving another id, one that wants a key."""
    servers = {
        "small": ThreadedServer(create_simulator_app(SimProfile(SMALL, speed=1000.0))).start(),
        "other": ThreadedServer(create_simulator_app(SimProfile("my-8b", speed=1000.0))).start(),
        "keyed": ThreadedServer(create_simulator_app(SimProfile(LARGE, speed=1000.0, api_key="sk-upstream"))).start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


def tiers(small: str, large: str, **extra: str) -> dict[str, str]:
    return {
        "ROUTEPROXY_SMALL_BASE_URL": f"{small}/v1",
        "ROUTEPROXY_LARGE_BASE_URL": f"{large}/v1",
        "ROUTEPROXY_SMALL_KIND": "vllm",
        "ROUTEPROXY_LARGE_KIND": "vllm",
        **extra,
    }


def test_a_misspelt_variable_is_a_warning_for_serve_and_an_error_for_check_config(served: list[Served]) -> None:
    env = {"ENABLE_MODEL_ROUTNG": "true"}
    checked = run_cli("check-config", "--simulate", env=env)
    assert checked.returncode == 2
    assert checked.stderr.strip() == (
        "routeproxy: configuration error: variable ENABLE_MODEL_ROUTNG is not a setting; did you mean "
        "ENABLE_MODEL_ROUTING? (serve would start, with this warning)"
    )
    proxy = serve("--simulate", "--speed", "500", env=env)
    served.append(proxy)
    logged = served.pop().stop()
    assert (
        '"problem":"variable ENABLE_MODEL_ROUTNG is not a setting; did you mean ENABLE_MODEL_ROUTING?",'
        '"event":"config_warning","level":"warning"' in logged
    )


def test_check_config_lists_every_warning_it_refuses() -> None:
    checked = run_cli("check-config", "--simulate", env={"ROUTEPROXY_RULE": "poultry", "REDIS_URI": "redis://x"})
    assert checked.returncode == 2
    assert checked.stderr.splitlines() == [
        "routeproxy: configuration error: 2 problems (serve would start, with a warning for each):",
        "  - variable REDIS_URI is not a setting; did you mean REDIS_URL?",
        "  - unknown variable ROUTEPROXY_RULE (did you mean ROUTEPROXY_RULES?)",
    ]


def test_probe_says_each_tier_serves_its_model(upstreams: dict[str, ThreadedServer]) -> None:
    env = tiers(upstreams["small"].url, upstreams["keyed"].url, ROUTEPROXY_LARGE_API_KEY="sk-upstream")
    result = run_cli("check-config", "--probe", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok 3b: GET {upstreams['small'].url}/v1/models: serves {SMALL}" in result.stdout.splitlines()
    assert f"ok 8b: GET {upstreams['keyed'].url}/v1/models: serves {LARGE}" in result.stdout.splitlines()


def test_probe_names_the_served_id_when_the_configured_one_is_not(upstreams: dict[str, ThreadedServer]) -> None:
    result = run_cli("check-config", "--probe", env=tiers(upstreams["small"].url, upstreams["other"].url))
    assert result.returncode == 1
    assert (
        f"FAILED 8b: GET {upstreams['other'].url}/v1/models: does not serve '{LARGE}'; it serves my-8b. "
        "Set tiers.large.model (ROUTEPROXY_LARGE_MODEL) to the served name (vLLM: --served-model-name)"
    ) in result.stdout.splitlines()
    assert f"ok 3b: GET {upstreams['small'].url}/v1/models: serves {SMALL}" in result.stdout.splitlines()


def test_probe_reports_a_missing_key_and_a_port_with_nothing(upstreams: dict[str, ThreadedServer]) -> None:
    nothing = f"http://127.0.0.1:{refused_port()}"
    result = run_cli("check-config", "--probe", env=tiers(nothing, upstreams["keyed"].url))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"FAILED 3b: GET {nothing}/v1/models: could not connect") for line in lines), lines
    assert (
        f"FAILED 8b: GET {upstreams['keyed'].url}/v1/models: HTTP 401: the upstream wants a key "
        "(tiers.large.api_key is unset)"
    ) in lines
    wrong_key = tiers(upstreams["small"].url, upstreams["keyed"].url, ROUTEPROXY_LARGE_API_KEY="sk-wrong")
    refused = run_cli("check-config", "--probe", env=wrong_key)
    assert "HTTP 401: the upstream refused tiers.large.api_key" in refused.stdout


def test_probe_has_nothing_to_ask_with_simulated_upstreams() -> None:
    result = run_cli("check-config", "--probe", "--simulate")
    assert result.returncode == 2
    assert "--probe asks the configured upstreams; --simulate has none" in result.stderr
