"""The `routeproxy` command as a user runs it: real processes, real ports, the real SDK."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from support import http
from support.devdata import dev_data
from support.ports import free_port
from support.processes import Served, serve
from support.wait import answers, eventually

ROOT = Path(__file__).resolve().parents[2]


def log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(orjson.loads(line))
    return lines


def test_quick_start_serves_the_sdk_with_simulated_upstreams(served: list[Served]) -> None:
    proxy = serve(
        "--simulate", "--speed", "200", env={"ENABLE_MODEL_ROUTING": "true", "ROUTEPROXY_LOG_PREVIEW_CHARS": "12"}
    )
    served.append(proxy)
    question = "Compare the sales of apples versus pears in a detailed table"
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="any") as client:
        completion = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": question}])
        stream = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Write a haiku about rain"}], stream=True
        )
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert completion.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert completion.choices[0].message.content
    assert streamed
    logs = log_lines(served.pop().stop())
    routes = [line for line in logs if line.get("event") == "route"]
    assert [line["tier"] for line in routes] == ["8b", "3b"]
    assert routes[0]["complexity"] == "complex"
    assert routes[0]["query"] == "Compare the…"  # the preview is limited to 12 characters
    assert all(line["status"] == 200 and line["latency_ms"] > 0 for line in routes)
    simulated = [line for line in logs if line.get("event") == "simulated_upstream"]
    assert {line["tier"] for line in simulated} == {"3b", "8b"}
    assert all("simulator" in line["note"] for line in simulated)


def test_preview_length_zero_keeps_prompts_out_of_logs(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500", env={"ROUTEPROXY_LOG_PREVIEW_CHARS": "0"})
    served.append(proxy)
    secret = "my-very-private-prompt-text"
    http.post(
        f"{proxy.url}/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": secret}]}
    )
    text = served.pop().stop()
    assert '"event":"route"' in text
    assert secret not in text


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "routeproxy", *args],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_several_workers_without_redis_are_refused_with_what_to_do() -> None:
    """Each worker would keep its own counters and runtime config and answer differently."""
    result = run_cli("serve", "--simulate", "--workers", "2", "--port", str(free_port()), env={"REDIS_URL": ""})
    assert result.returncode == 2
    assert "--workers 2 needs a shared Redis" in result.stderr and "ROUTEPROXY_REDIS_URL" in result.stderr


def test_serve_without_simulator_needs_the_hf_token() -> None:
    result = run_cli("serve", "--port", str(free_port()))
    assert result.returncode == 2
    assert "HF_TOKEN" in result.stderr and "--simulate" in result.stderr


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"AB_TEST_RATIO": "1.7"}, "routing.ab_test_ratio = '1.7' (from environment variable AB_TEST_RATIO)"),
        ({"MODEL_8B_KIND": "openai"}, "tiers.large.kind"),
        ({"ROUTEPROXY_RULES": "no-such-rules"}, "no-such-rules"),
    ],
)
def test_bad_config_fails_at_start_naming_key_and_value(env: dict[str, str], fragment: str) -> None:
    result = run_cli("serve", "--simulate", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_accepts_the_shipped_configs() -> None:
    for path in [ROOT / "config" / "routeproxy.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml"))]:
        result = run_cli("check-config", "--config", str(path), env={"HF_TOKEN": "hf_test_token"})
        assert result.returncode == 0, result.stderr
        assert "config OK" in result.stdout


def test_explain_prints_the_decision_as_json() -> None:
    result = run_cli(
        "explain",
        "What is the weight of Ross 308 at 21 days?",
        "--query-type",
        "genetics_performance",
        "--entities",
        '{"breed": "Ross 308", "age_days": 21}',
        "--enable-routing",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    decision = orjson.loads(result.stdout)
    assert decision["tier"] == "small"
    assert decision["complexity"] == "simple"
    assert decision["model"] == "meta-llama/Llama-3.2-3B-Instruct"
    assert decision["signals"]


def test_eval_reports_router_metrics_against_random(tmp_path: Path) -> None:
    data = dev_data("routing-dev.jsonl")
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(data.read_text().splitlines(keepends=True)[:600]))
    result = run_cli("eval", str(sample), "--json", "--random-draws", "50")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    overall = report["overall"]
    assert {"apgr", "cpt50", "cpt80", "random_apgr_low", "random_apgr_high", "share_large"} <= set(overall)


def simulator(*flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """``routeproxy simulate`` on a port the OS picks, and its base URL, read from its first line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "routeproxy", "simulate", "--port", "0", "--speed", "1000", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stderr is not None
    first = process.stderr.readline().decode()  # printed once the port is bound; empty if the process died
    named = re.search(r"on (http://127\.0\.0\.1:(\d+))/v1$", first.strip())
    if named is None or int(named.group(2)) == 0:
        process.kill()
        raise AssertionError(f"routeproxy simulate did not name its address: {first!r}")
    return process, named.group(1)


@pytest.mark.parametrize(("dialect", "done_line"), [("tgi-legacy", b"data:[DONE]"), ("vllm", b"data: [DONE]")])
def test_simulate_command_serves_the_chosen_dialect(dialect: str, done_line: bytes) -> None:
    process, base = simulator("--dialect", dialect)
    try:
        eventually(lambda: answers(f"{base}/health"), tries=400, interval=0.05, what="simulator up")
        body = {
            "model": "meta-llama/Llama-3.2-3B-Instruct",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        response = http.post(f"{base}/v1/chat/completions", json=body, timeout=10)
        assert response.headers["x-simulator"] == "routeproxy"
        assert response.content.rstrip().endswith(done_line)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)


def test_simulate_flags_shape_the_simulated_upstream() -> None:
    process, base = simulator("--tokens", "3", "--api-key", "sim-key", "--ttft", "0", "--tokens-per-second", "1000")
    try:
        eventually(lambda: answers(f"{base}/health"), tries=400, interval=0.05, what="simulator up")
        url = f"{base}/v1/chat/completions"
        body = {"model": "meta-llama/Llama-3.2-3B-Instruct", "messages": [{"role": "user", "content": "hi"}]}
        assert http.post(url, json=body, timeout=10).status_code == 401  # --api-key: the key is required
        answer = http.post(url, json=body, headers={"authorization": "Bearer sim-key"}, timeout=10).json()
        assert answer["usage"]["completion_tokens"] == 3  # --tokens
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)
