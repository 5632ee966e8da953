"""What `serve` writes, read as an operator reads it: one format for every line (uvicorn's included, each said once),
a start-up summary that names the mode, the rollout controller and a redacted Redis URL, the upstream's answer id
in each request's line, and a quiet `routeproxy stats`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
from support.ports import refused_port
from support.processes import Served, serve
from support.wait import eventually

from routeproxy.api.startup import summary, summary_lines
from routeproxy.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the text as JSON: fails on any line that is not one JSON object."""
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [orjson.loads(line) for line in lines]
    assert all(isinstance(line, dict) for line in parsed)
    return parsed


def test_every_line_is_json_and_uvicorn_says_start_and_shutdown_once(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500")
    served.append(proxy)
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="any", max_retries=0) as client:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    logged = json_lines(served.pop().stop())
    said = [line["event"] for line in logged if line.get("logger", "").startswith("uvicorn")]
    for message in ("Started server process", "Application startup complete.", "Shutting down", "Finished server"):
        assert sum(event.startswith(message) for event in said) == 1, (message, said)
    assert all({"event", "level", "timestamp"} <= set(line) for line in logged)


def test_console_lines_carry_no_plain_uvicorn_prefix(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500", env={"ROUTEPROXY_LOG_FORMAT": "console"})
    served.append(proxy)
    logged = served.pop().stop()
    assert "Started server process" in logged and "Shutting down" in logged
    assert not [line for line in logged.splitlines() if line.startswith(("INFO:", "WARNING:", "ERROR:"))]
    assert logged.count("Shutting down") == 1


def test_the_request_line_names_the_answer_id_the_client_got(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500", env={"ROUTEPROXY_ENABLE_MODEL_ROUTING": "true"})
    served.append(proxy)
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="any", max_retries=0) as client:
        whole = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        stream = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Write a haiku about rain"}], stream=True
        )
        streamed_ids = {chunk.id for chunk in stream}
    routes = [line for line in json_lines(served.pop().stop()) if line["event"] == "route"]
    assert [line["upstream_id"] for line in routes] == [whole.id, *streamed_ids]
    assert whole.id.startswith("chatcmpl-")


def stats(*args: str) -> subprocess.CompletedProcess[str]:
    """``routeproxy stats *args`` with JSON logs and no Redis URL from this machine's environment."""
    environ = {key: value for key, value in os.environ.items() if "REDIS_URL" not in key}
    return subprocess.run(
        [sys.executable, "-m", "routeproxy", "stats", *args],
        env={**environ, "ROUTEPROXY_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_stats_prints_the_table_and_nothing_on_stderr(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500")
    served.append(proxy)
    result = stats("--proxy", proxy.url)
    assert result.returncode == 0
    assert "tier" in result.stdout and "requests" in result.stdout
    assert result.stderr == ""


def test_an_unreachable_redis_is_named_without_its_passwords(served: list[Served]) -> None:
    url = f"redis://app:hunter2@127.0.0.1:{refused_port()}/0?password=hunter3&db=0"
    proxy = serve("--simulate", "--speed", "500", "--redis-url", url)
    served.append(proxy)

    def unreachable() -> bool:  # readyz says so right after the warning is written
        checks = httpx.get(f"{proxy.url}/readyz", timeout=5).json()["checks"]
        return "unreachable" in checks["counters"]

    eventually(unreachable, tries=200, interval=0.05, what="the proxy noticing its Redis does not answer")
    logged = served.pop().stop()
    lines = json_lines(logged)
    shown = url.replace("hunter2", "***").replace("hunter3", "***")
    (startup,) = [line for line in lines if line["event"] == "startup"]
    assert startup["counters"] == f"redis {shown}"
    unavailable = [line for line in lines if line["event"] == "counters.redis_unavailable"]
    assert unavailable and unavailable[0]["redis"] == shown
    assert "hunter" not in logged


def test_the_summary_names_the_mode_and_what_the_rollout_controller_sets() -> None:
    settings = load_settings(
        environ={
            "ROUTEPROXY_ENABLE_MODEL_ROUTING": "true",
            "ROUTEPROXY_ROUTING_MODE": "cascade",
            "ROUTEPROXY_ROLLOUT": "true",
            "ROUTEPROXY_AB_TEST_RATIO": "0.5",
        }
    )
    fields = summary(settings, simulate=True)
    assert (fields["mode"], fields["cascade_rules"], fields["upstreams"]) == ("cascade", "general", "simulated")
    assert fields["rollout"] == {
        "controller": "on",
        "schedule": [0.1, 0.3, 0.5, 0.8],
        "first_ratio": 0.1,
        "resumes_stored_step": False,
    }
    lines = summary_lines(fields)
    assert (
        "  routing on; the rollout controller sets ab_test_ratio: 0.1 first, then along 0.1, 0.3, 0.5, 0.8 "
        "(the configured 0.5 is not used while it drives)"
    ) in lines
    assert "  mode cascade, rules general, answer check general" in lines
    with_redis = summary(
        load_settings(environ={"ROUTEPROXY_ROLLOUT": "true", "REDIS_URL": "redis://r:6379"}), simulate=False
    )
    assert with_redis["rollout"]["resumes_stored_step"] is True


def test_stats_names_an_unreachable_redis_without_its_passwords() -> None:
    url = f"redis://app:hunter2@127.0.0.1:{refused_port()}/0?password=hunter3"
    result = stats("--redis-url", url)
    assert result.returncode == 1
    shown = url.replace("hunter2", "***").replace("hunter3", "***")
    assert f"routeproxy stats: cannot read {shown}: " in result.stderr
    assert "hunter" not in result.stderr + result.stdout
