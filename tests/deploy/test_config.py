from __future__ import annotations

import re
from pathlib import Path

import pytest

from routeproxy.errors import ConfigError
from routeproxy.settings import (
    SETTINGS,
    StickyKey,
    Tier,
    UpstreamKind,
    load_settings,
)
from routeproxy.settings.tier_config import is_hugging_face

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_seeds() -> None:
    settings = load_settings(environ={})
    assert settings.routing.enabled is False
    assert settings.routing.ab_test_ratio == 0.5
    assert settings.server.port == 8001
    assert settings.tiers[Tier.SMALL].model == "meta-llama/Llama-3.2-3B-Instruct"
    assert settings.tiers[Tier.LARGE].model == "meta-llama/Llama-3.1-8B-Instruct"
    assert settings.tiers[Tier.LARGE].kind is UpstreamKind.HF
    assert settings.counters.redis_url is None
    assert settings.counters.baseline_latency_ms is None  # measured from the large tier, not the design's 4500


def test_shipped_yaml_matches_declared_defaults() -> None:
    """config/routeproxy.yaml documents the defaults; it must not quietly differ from them."""
    from_file = load_settings(ROOT / "config" / "routeproxy.yaml", environ={})
    for setting in SETTINGS:
        declared = setting.convert(setting.default)
        assert from_file.values[setting.key] == declared, setting.key


def test_seed_environment_variables_keep_their_meaning() -> None:
    settings = load_settings(
        environ={
            "ENABLE_MODEL_ROUTING": "true",
            "MODEL_3B_NAME": "small-model",
            "MODEL_8B_NAME": "large-model",
            "AB_TEST_RATIO": "0.3",
            "MODEL_3B_BASE_URL": "http://127.0.0.1:9001/v1/",
            "MODEL_8B_KIND": "tgi",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        }
    )
    assert settings.routing.enabled is True
    assert settings.routing.ab_test_ratio == 0.3
    assert settings.tiers[Tier.SMALL].model == "small-model"
    assert settings.tiers[Tier.SMALL].base_url == "http://127.0.0.1:9001/v1"
    assert settings.tiers[Tier.LARGE].upstream_model == "tgi"
    assert settings.tiers[Tier.LARGE].model == "large-model"
    assert settings.counters.redis_url == "redis://127.0.0.1:6379/0"


def test_api_key_can_name_an_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("tiers:\n  small:\n    api_key: ${MY_TOKEN}\n  large:\n    api_key: literal-key\n")
    settings = load_settings(config, environ={"MY_TOKEN": "hf_abc"})
    assert settings.tiers[Tier.SMALL].api_key == "hf_abc"
    assert settings.tiers[Tier.LARGE].api_key == "literal-key"
    unset = load_settings(config, environ={})
    assert unset.tiers[Tier.SMALL].api_key is None
    assert unset.tiers[Tier.SMALL].api_key_env == "MY_TOKEN"


def test_precedence_overrides_then_environment_then_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routing:\n  ab_test_ratio: 0.1\n")
    assert load_settings(config, environ={}).routing.ab_test_ratio == 0.1
    assert load_settings(config, environ={"AB_TEST_RATIO": "0.2"}).routing.ab_test_ratio == 0.2
    assert (
        load_settings(
            config, environ={"AB_TEST_RATIO": "0.2"}, overrides={"routing.ab_test_ratio": 0.7}
        ).routing.ab_test_ratio
        == 0.7
    )


def test_routeproxy_config_variable_selects_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routing:\n  sticky_key: user\n")
    settings = load_settings(environ={"ROUTEPROXY_CONFIG": str(config)})
    assert settings.routing.sticky_key is StickyKey.USER
    assert settings.source == str(config)


@pytest.mark.parametrize(
    ("yaml_text", "environ", "fragment"),
    [
        ("routing:\n  ab_test_ratio: 1.5\n", {}, "routing.ab_test_ratio = 1.5"),
        ("", {"AB_TEST_RATIO": "half"}, "AB_TEST_RATIO"),
        ("", {"ENABLE_MODEL_ROUTING": "maybe"}, "routing.enabled = 'maybe'"),
        ("tiers:\n  small:\n    kind: openai\n", {}, "expected one of: vllm, tgi, hf"),
        ("tiers:\n  large:\n    base_url: ftp://x\n", {}, "tiers.large.base_url"),
        ("server:\n  port: 70000\n", {}, "server.port = 70000"),
        ("routing:\n  ab_tset_ratio: 0.2\n", {}, "unknown setting 'routing.ab_tset_ratio'"),
        ("counters:\n  redis_url: http://x\n", {}, "counters.redis_url"),
        ("tiers:\n  small:\n    model: same\n  large:\n    model: same\n", {}, "both 'same'"),
        ("", {"MODEL_3B_LABEL": "8b"}, "tiers.small.label and tiers.large.label are both '8b'"),
        ("tiers:\n  small:\n    label: 3b small\n", {}, "tiers.small.label = '3b small'"),
        ("- a list\n", {}, "mapping at the top level"),
        ("routing: [\n", {}, "not valid YAML"),
    ],
)
def test_bad_config_names_the_key_and_value(
    tmp_path: Path, yaml_text: str, environ: dict[str, str], fragment: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ=environ)
    assert fragment in str(caught.value)


def test_every_setting_has_help_and_an_environment_variable() -> None:
    for setting in SETTINGS:
        assert setting.help and setting.env, setting.key
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", setting.env), setting.env


def test_example_configs_load() -> None:
    for path in sorted((ROOT / "config" / "examples").glob("*.yaml")):
        settings = load_settings(path, environ={})
        assert settings.routing.enabled, path


@pytest.mark.parametrize("key", ["hf_abc\r\nx-injected: 1", "hf_a\nbc", "hf_\u00e9t\u00e9"])
def test_an_api_key_that_would_break_a_header_line_is_refused(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"MODEL_3B_API_KEY": key})
    assert "tiers.small.api_key" in str(caught.value)
    assert key not in str(caught.value)  # the secret itself is not echoed
    with pytest.raises(ConfigError, match="environment variable HF_TOKEN"):
        load_settings(environ={"HF_TOKEN": key})


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("routing.enabeld", "routing.enabled"),
        ("tiers.small.modle", "tiers.small.model"),
        ("server.prot", "server.port"),
    ],
)
def test_an_unknown_key_names_the_nearest_setting(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"(did you mean {suggestion!r}?)")):
        load_settings(environ={}, overrides={key: "x"})


def test_an_unknown_key_far_from_any_setting_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, overrides={"colour": "blue"})
    assert "did you mean" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("http://app.example, https://b.example:8443/", ("http://app.example", "https://b.example:8443")),
        ("*", ("*",)),
        ("", ()),
    ],
)
def test_cors_origins_are_read_from_a_list(value: str, origins: tuple[str, ...]) -> None:
    settings = load_settings(environ={"ROUTEPROXY_CORS_ORIGINS": value, "HF_TOKEN": "hf_x"})
    assert settings.server.cors_origins == origins


@pytest.mark.parametrize("value", ["app.example", "http://app.example/path", "ftp://x"])
def test_a_cors_origin_that_is_not_an_origin_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("server.cors_origins")):
        load_settings(environ={"ROUTEPROXY_CORS_ORIGINS": value})


@pytest.mark.parametrize(
    ("url", "hugging_face"),
    [
        ("https://router.huggingface.co/v1", True),
        ("https://abc.us-east-1.aws.endpoints.huggingface.cloud/v1", True),
        ("http://127.0.0.1:8000/v1", False),
        ("https://huggingface.co.evil.example/v1", False),
        ("https://nothuggingface.co/v1", False),
    ],
)
def test_hugging_face_hosts(url: str, hugging_face: bool) -> None:
    assert is_hugging_face(url) is hugging_face
