"""Mistakes in a configuration get a clear message: misspelt and unknown variables, old and new names set to
different values, every YAML problem in one run with its line, and upstream base URLs that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from routeproxy.errors import ConfigError
from routeproxy.settings import SETTINGS, Tier, load_settings
from routeproxy.settings.checks import environment_notes
from routeproxy.settings.upstream_url import upstream_url


def strict_notes(environ: dict[str, str]) -> list[str]:
    return [note.message for note in load_settings(environ=environ).notes if note.strict]


def test_every_variable_is_named_routeproxy_and_old_names_are_aliases() -> None:
    for setting in SETTINGS:
        assert setting.env is not None and setting.env.startswith("ROUTEPROXY_"), setting.key
        assert not any(alias.startswith("ROUTEPROXY_") for alias in setting.aliases), setting.key
    aliases = {alias: setting.env for setting in SETTINGS for alias in setting.aliases}
    assert aliases["ENABLE_MODEL_ROUTING"] == "ROUTEPROXY_ENABLE_MODEL_ROUTING"
    assert aliases["AB_TEST_RATIO"] == "ROUTEPROXY_AB_TEST_RATIO"
    assert aliases["MODEL_3B_NAME"] == "ROUTEPROXY_SMALL_MODEL"
    assert aliases["MODEL_8B_NAME"] == "ROUTEPROXY_LARGE_MODEL"
    assert aliases["MODEL_3B_BASE_URL"] == "ROUTEPROXY_SMALL_BASE_URL"
    assert aliases["REDIS_URL"] == "ROUTEPROXY_REDIS_URL"


def test_the_new_names_work_and_win_over_the_old_ones() -> None:
    settings = load_settings(
        environ={
            "ROUTEPROXY_REDIS_URL": "redis://127.0.0.1:6379/0",
            "ROUTEPROXY_ENABLE_MODEL_ROUTING": "true",
            "ROUTEPROXY_SMALL_MODEL": "small-new",
            "MODEL_3B_NAME": "small-old",
            "AB_TEST_RATIO": "0.2",
        }
    )
    assert settings.counters.redis_url == "redis://127.0.0.1:6379/0"  # it used to leave the counters in memory
    assert settings.routing.enabled is True
    assert settings.routing.ab_test_ratio == 0.2
    assert settings.tiers[Tier.SMALL].model == "small-new"
    assert strict_notes({"ROUTEPROXY_SMALL_MODEL": "a", "MODEL_3B_NAME": "b"}) == [
        "ROUTEPROXY_SMALL_MODEL and MODEL_3B_NAME are both set, to different values: ROUTEPROXY_SMALL_MODEL is used"
    ]
    # The same value written two ways is no conflict.
    assert strict_notes({"ROUTEPROXY_ENABLE_MODEL_ROUTING": "1", "ENABLE_MODEL_ROUTING": "true"}) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ENABLE_MODEL_ROUTNG", "variable ENABLE_MODEL_ROUTNG is not a setting; did you mean ENABLE_MODEL_ROUTING?"),
        ("ROUTEPROXY_RULE", "unknown variable ROUTEPROXY_RULE (did you mean ROUTEPROXY_RULES?)"),
        ("AB_TEST_RATE", "variable AB_TEST_RATE is not a setting; did you mean AB_TEST_RATIO?"),
        ("REDIS_URI", "variable REDIS_URI is not a setting; did you mean REDIS_URL?"),
        ("ROUTPROXY_RULES", "variable ROUTPROXY_RULES is not a setting; did you mean ROUTEPROXY_RULES?"),
        ("MODEL_3B", "unknown variable MODEL_3B (did you mean ROUTEPROXY_SMALL_MODEL?)"),
        (
            "ROUTEPROXY_MODEL_8B_NAME",
            "unknown variable ROUTEPROXY_MODEL_8B_NAME (did you mean ROUTEPROXY_LARGE_MODEL?)",
        ),
        ("MODEL_3B_BASEURL", "unknown variable MODEL_3B_BASEURL (did you mean MODEL_3B_BASE_URL?)"),
        ("ROUTEPROXY_COLOUR", "unknown variable ROUTEPROXY_COLOUR"),
        ("routeproxy_rules", "variable routeproxy_rules: variable names are upper case (ROUTEPROXY_RULES)"),
    ],
)
def test_an_unknown_or_misspelt_variable_is_named_with_the_nearest_real_one(name: str, message: str) -> None:
    assert strict_notes({name: "poultry"}) == [message]


def test_the_environment_of_a_machine_or_a_pod_is_not_reported() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/app",
        "HOSTNAME": "routeproxy-7d9f",
        "HF_TOKEN": "hf_x",
        "HF_HOME": "/cache",
        "OPENAI_API_KEY": "sk-x",
        "REDIS_HOST": "redis",
        "REDIS_PASSWORD": "x",
        "PYTHONUNBUFFERED": "1",
        "ROUTEPROXY_CONFIG": "/etc/routeproxy/routeproxy.yaml",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_PORT": "tcp://10.96.0.1:443",
        # A Service named redis in the namespace: its links look like our names but are not ours.
        "REDIS_SERVICE_HOST": "10.96.0.9",
        "REDIS_PORT": "tcp://10.96.0.9:6379",
    }
    assert environment_notes(SETTINGS, environ) == []


def test_kubernetes_service_links_are_neither_settings_nor_mistakes() -> None:
    """A Service named routeproxy puts ROUTEPROXY_PORT=tcp://... in every pod: it must not become the port."""
    environ = {
        "ROUTEPROXY_SERVICE_HOST": "10.96.0.7",
        "ROUTEPROXY_SERVICE_PORT": "8001",
        "ROUTEPROXY_SERVICE_PORT_HTTP": "8001",
        "ROUTEPROXY_PORT": "tcp://10.96.0.7:8001",
        "ROUTEPROXY_PORT_8001_TCP": "tcp://10.96.0.7:8001",
        "ROUTEPROXY_PORT_8001_TCP_PROTO": "tcp",
        "ROUTEPROXY_PORT_8001_TCP_PORT": "8001",
        "ROUTEPROXY_PORT_8001_TCP_ADDR": "10.96.0.7",
        "ROUTEPROXY_REDIS_SERVICE_HOST": "10.96.0.8",
        "ROUTEPROXY_REDIS_PORT": "tcp://10.96.0.8:6379",
        "ROUTEPROXY_REDIS_PORT_6379_TCP": "tcp://10.96.0.8:6379",
    }
    settings = load_settings(environ=environ)
    assert settings.server.port == 8001
    (note,) = settings.notes
    assert not note.strict
    assert "Kubernetes service link" in note.message and "enableServiceLinks: false" in note.message
    # A real port in the variable is still the port.
    assert load_settings(environ={**environ, "ROUTEPROXY_PORT": "9001"}).server.port == 9001


def test_a_yaml_file_with_three_mistakes_reports_all_three_in_one_run(tmp_path: Path) -> None:
    config = tmp_path / "typos.yaml"
    config.write_text(
        "routing:\n"
        "  enabeld: true\n"
        "  ab_test_ratio: 1.5\n"
        "tiers:\n"
        "  small:\n"
        "    modle: my-3b\n"
        "    base_url: http://vllm-3b:8000\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    lines = str(caught.value).splitlines()
    assert lines[0] == "4 problems:"
    assert lines[1:] == [
        f"  - {config} line 2: unknown setting 'routing.enabeld' (did you mean 'routing.enabled'?)",
        f"  - {config} line 6: unknown setting 'tiers.small.modle' (did you mean 'tiers.small.model'?)",
        f"  - routing.ab_test_ratio = 1.5 (from {config} line 3): expected a number from 0.0 to 1.0",
        f"  - tiers.small.base_url = 'http://vllm-3b:8000' (from {config} line 7): has no path: vLLM, TGI and the "
        "Hugging Face router serve under /v1 ('http://vllm-3b:8000/v1')",
    ]


def test_a_key_written_twice_is_reported_instead_of_the_last_one_winning(tmp_path: Path) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text("routing:\n  enabled: true\nserver:\n  port: 9000\nrouting:\n  ab_test_ratio: 0.3\n")
    with pytest.raises(ConfigError, match=r"line 5: 'routing' is written twice \(also line 1\)"):
        load_settings(config, environ={})


def test_problems_of_the_file_and_the_environment_come_together(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  prot: 9000\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={"AB_TEST_RATIO": "half", "ROUTEPROXY_RULE": "poultry"})
    message = str(caught.value)
    assert message.startswith("3 problems:")
    assert "unknown setting 'server.prot' (did you mean 'server.port'?)" in message
    assert "routing.ab_test_ratio = 'half' (from environment variable AB_TEST_RATIO)" in message
    assert "unknown variable ROUTEPROXY_RULE (did you mean ROUTEPROXY_RULES?)" in message


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (
            "http://vllm:8000",
            "has no path: vLLM, TGI and the Hugging Face router serve under /v1 ('http://vllm:8000/v1')",
        ),
        ("http://vllm:8000/v1/chat/completions", "names the endpoint /chat/completions: give the base URL up to /v1"),
        ("http://vllm:8000/v1/completions", "names the endpoint /completions"),
        ("http://vllm:8000/v1 /", "has white space in it"),
        ("http://my vllm:8000/v1", "has white space in it"),
        ("http://vllm:99999/v1", "has the port '99999': expected a number from 1 to 65535"),
        ("http://vllm:0/v1", "has the port '0'"),
        ("http://vllm:80a/v1", "has the port '80a'"),
        ("ftp://vllm/v1", "has the scheme 'ftp': expected http:// or https://"),
        ("vllm:8000/v1", "has no scheme: expected http:// or https://, such as 'http://vllm:8000/v1'"),
        ("http:/vllm/v1", "needs two slashes after http: ('http://vllm/v1')"),
        ("http:///v1", "has no host"),
        ("http://vllm:8000/v1#models", "has a #fragment, which is never sent"),
    ],
)
def test_an_upstream_url_that_cannot_work_is_refused_with_what_to_write(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"ROUTEPROXY_SMALL_BASE_URL": url})
    message = str(caught.value)
    assert message.startswith("tiers.small.base_url = ")
    assert fragment in message


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
        ("HTTPS://Router.HuggingFace.co/v1", "https://Router.HuggingFace.co/v1"),
        ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
        (" http://vllm-3b.llm.svc.cluster.local:8000/v1 ", "http://vllm-3b.llm.svc.cluster.local:8000/v1"),
        (
            "https://x.example.com/openai/v1?api-version=2024-10-21",
            "https://x.example.com/openai/v1?api-version=2024-10-21",
        ),
    ],
)
def test_a_good_upstream_url_is_kept_normalised(url: str, kept: str) -> None:
    assert upstream_url(url) == kept


def test_a_base_path_other_than_v1_is_accepted_and_explained() -> None:
    settings = load_settings(environ={"ROUTEPROXY_SMALL_BASE_URL": "https://api.example.com/v1beta/openai/"})
    assert settings.tiers[Tier.SMALL].base_url == "https://api.example.com/v1beta/openai"
    (note,) = settings.notes
    assert not note.strict
    assert "does not end in /v1" in note.message and "/v1beta/openai/chat/completions" in note.message


def test_a_refused_url_is_shown_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"REDIS_URL": "http://app:hunter2@redis:6379/0?password=hunter3"})
    message = str(caught.value)
    assert "counters.redis_url = 'http://app:***@redis:6379/0?password=***'" in message
    assert "hunter" not in message
