"""Start-up as a new user meets it: the summary, the serve flags, --version, check-config agreeing with serve,
the HF token staying with Hugging Face, clear errors from eval and classify, and quiet simulated faults."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import http
from support.ports import free_port
from support.processes import Served, serve
from support.upstreams import SMALL_MODEL, ScriptedUpstream

from routeproxy.settings import Tier, load_settings
from routeproxy.settings.redaction import redacted_url
from routeproxy.sim.threadserver import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
Scripted = Callable[..., tuple[ScriptedUpstream, ThreadedServer]]
KEYLESS = {"MODEL_3B_BASE_URL": "http://127.0.0.1:9/v1", "MODEL_8B_BASE_URL": "http://127.0.0.1:9/v1"}


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "routeproxy", *args],
        env={**environ, "ROUTEPROXY_LOG_FORMAT": "json", **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def events(text: str, name: str) -> list[dict[str, Any]]:
    found = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [event for event in found if event.get("event") == name]


def test_version_is_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"routeproxy {version('routeproxy')}"


def test_serve_help_shows_each_flag_with_its_default_and_variable() -> None:
    text = " ".join(run_cli("serve", "--help").stdout.split())
    for flag, default, env in [
        ("--enable-routing", "False", "ROUTEPROXY_ENABLE_MODEL_ROUTING (or ENABLE_MODEL_ROUTING)"),
        ("--ratio", "0.5", "ROUTEPROXY_AB_TEST_RATIO (or AB_TEST_RATIO)"),
        ("--rules", "general", "ROUTEPROXY_RULES"),
        ("--redis-url", "unset", "ROUTEPROXY_REDIS_URL (or REDIS_URL)"),
        ("--log-level", "info", "ROUTEPROXY_LOG_LEVEL"),
    ]:
        assert flag in text
        assert f"Default: {default}; env {env}." in text


def test_speed_without_simulate_is_refused() -> None:
    result = run_cli("serve", "--speed", "10", "--port", str(free_port()))
    assert result.returncode == 2
    assert "--speed applies only with --simulate" in result.stderr


def _typo_config(tmp_path: Path) -> str:
    path = tmp_path / "typo.yaml"
    path.write_text("routing:\n  enabeld: true\n")
    return str(path)


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        ((), {}, "HF_TOKEN, which is not set"),
        (("--rules", "nosuch"), KEYLESS, "unknown rule set 'nosuch': the built-in ones are general, poultry"),
        (("--ratio", "1.7"), KEYLESS, "routing.ab_test_ratio = 1.7 (from command line)"),
        (("--config", "TYPO"), KEYLESS, "unknown setting 'routing.enabeld' (did you mean 'routing.enabled'?)"),
        (("--redis-url", "http://nope"), KEYLESS, "counters.redis_url"),
        (("--workers", "2"), KEYLESS, "--workers 2 needs a shared Redis"),
    ],
)
def test_check_config_fails_exactly_when_serve_does(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], fragment: str
) -> None:
    args = tuple(_typo_config(tmp_path) if arg == "TYPO" else arg for arg in args)
    served = run_cli("serve", "--port", str(free_port()), *args, env=env)
    checked = run_cli("check-config", *args, env=env)
    assert served.returncode == checked.returncode == 2
    assert fragment in served.stderr
    assert checked.stderr.strip() == served.stderr.strip().splitlines()[-1]
    assert "Traceback" not in served.stderr + checked.stderr


def test_check_config_passes_with_the_serve_flags_and_prints_the_summary() -> None:
    result = run_cli(
        "check-config", "--enable-routing", "--ratio", "0.3", "--rules", "poultry", "--port", "9123", env=KEYLESS
    )
    assert result.returncode == 0, result.stderr
    assert "routing on, ab_test_ratio 0.3" in result.stdout
    assert "mode classify, rules poultry" in result.stdout
    assert "on http://127.0.0.1:9123" in result.stdout
    assert "3b: meta-llama/Llama-3.2-3B-Instruct via hf at http://127.0.0.1:9/v1 (api key none)" in result.stdout


def test_hf_token_applies_to_hugging_face_hosts_only() -> None:
    environ = {"HF_TOKEN": "hf_secret", "MODEL_3B_BASE_URL": "http://127.0.0.1:8000/v1"}
    settings = load_settings(environ=environ)
    assert settings.tiers[Tier.SMALL].api_key is None
    assert settings.tiers[Tier.LARGE].api_key == "hf_secret"
    endpoint = {"HF_TOKEN": "hf_secret", "MODEL_3B_BASE_URL": "https://x1.us-east-1.aws.endpoints.huggingface.cloud/v1"}
    assert load_settings(environ=endpoint).tiers[Tier.SMALL].api_key == "hf_secret"
    other_key = {"MY_KEY": "sk-local", "MODEL_3B_BASE_URL": "http://127.0.0.1:8000/v1", "MODEL_3B_API_KEY": "${MY_KEY}"}
    assert load_settings(environ=other_key).tiers[Tier.SMALL].api_key == "sk-local"


def test_serve_summarises_its_start_and_never_sends_the_hf_token_elsewhere(
    scripted: Scripted, served: list[Served]
) -> None:
    answer = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})
    local, server = scripted([(0.0, answer)], content_type=b"application/json")
    proxy = serve(
        "--enable-routing",
        "--ratio",
        "0.2",
        "--rules",
        "poultry",
        env={"HF_TOKEN": "hf_never_leaves", "MODEL_3B_BASE_URL": f"{server.url}/v1", "MODEL_3B_KIND": "vllm"},
    )
    served.append(proxy)
    response = http.post(
        f"{proxy.url}/v1/chat/completions", json={"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 200
    logged = served.pop().stop()
    assert b"hf_never_leaves" not in b"".join(name + value for name, value in local.requests[0]["headers"].items())
    assert "hf_never_leaves" not in logged
    (startup,) = events(logged, "startup")
    assert startup["routing_enabled"] is True and startup["ab_test_ratio"] == 0.2 and startup["rules"] == "poultry"
    assert (startup["mode"], startup["upstreams"], startup["rollout"]) == (
        "classify",
        "configured",
        {"controller": "off"},
    )
    assert startup["listen"] == proxy.url
    assert startup["counters"].startswith("in-memory")
    assert startup["tiers"]["3b"] == {
        "model": SMALL_MODEL,
        "kind": "vllm",
        "url": f"{server.url}/v1",
        "api_key": "none",
    }
    assert startup["tiers"]["8b"]["url"] == "https://router.huggingface.co/v1"
    assert startup["tiers"]["8b"]["api_key"] == "set"


def test_simulated_faults_do_not_log_as_errors(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500")
    served.append(proxy)
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    for fault in ({"x-sim-die-after": "2"}, {"x-sim-status": "503"}):
        assert http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=fault).status_code in (502, 503)
    logged = served.pop().stop()
    assert "simulated fault: the response was dropped on purpose" in logged
    assert "ERROR" not in logged
    assert not [line for line in logged.splitlines() if '"level":"error"' in line]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read"),
        ("not json\n", "line 1: not JSON"),
        ('{"id": 1, "prompt": "hi"}\n', "line 1: missing subset, weak_norm, strong_norm"),
        ('{"id": 1, "subset": "a", "prompt": "hi", "weak_norm": "x", "strong_norm": 1}\n', "must be numbers"),
        ("\n", "has no labelled prompts"),
    ],
)
def test_eval_explains_a_bad_file(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "labelled.jsonl"
    if content is not None:
        path.write_text(content)
    result = run_cli("eval", str(path))
    assert result.returncode == 1
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_classify_explains_a_missing_file_and_bad_lines(tmp_path: Path) -> None:
    missing = run_cli("classify", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('[1]\n{"id": "ok", "messages": [{"role": "user", "content": "hi"}]}\n{"messages": 5}\n')
    result = run_cli("classify", str(mixed))
    assert result.returncode == 1
    assert "line 1: each line must be a JSON object" in result.stderr
    assert "line 3: 'messages' must be an array" in result.stderr
    assert [orjson.loads(line)["id"] for line in result.stdout.splitlines()] == ["ok"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@redis:6379/0", "redis://user:***@redis:6379/0"),
        ("rediss://:s3cret@redis:6380", "rediss://:***@redis:6380"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("redis://redis:6379/0?password=s3cret&db=1", "redis://redis:6379/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        (
            "rediss://u:p@h:6380?ssl_keyfile_password=s3cret&socket_timeout=5",
            "rediss://u:***@h:6380?ssl_keyfile_password=***&socket_timeout=5",
        ),
    ],
)
def test_the_summary_never_shows_a_redis_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
