"""LangChain's standard chat-model integration suite, with ChatOpenAI pointed at a routeproxy.

Not collected by routeproxy's own suite: tests/ecosystem/test_langchain.py copies it next to a pytest.ini of its
own and runs it in a subprocess (the suite brings its own pytest plugins and expectations), against proxies it
serves on loopback in front of the built-in simulator, one per simulated dialect. ROUTEPROXY_BASE_URL_<DIALECT>
names each proxy (ROUTEPROXY_BASE_URL_VLLM, ..._TGI, ..._TGI_LEGACY, ..._HF).

``langchain_skips.SKIPS`` is the whole skip list, each with its reason (applied by the runner's conftest: the
suite forbids overriding its tests); every other test of the suite must pass.
"""

from __future__ import annotations

import os
from typing import Any

from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests


class _ThroughRouteproxy(ChatModelIntegrationTests):
    """The suite with ChatOpenAI pointed at a proxy whose tiers speak ``dialect`` (not collected: no Test prefix)."""

    dialect = "vllm"

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": "auto",
            "base_url": os.environ[f"ROUTEPROXY_BASE_URL_{self.dialect.upper().replace('-', '_')}"],
            "api_key": "unused",
            # With a base_url of its own ChatOpenAI leaves usage out of streams unless asked (README, LangChain).
            "stream_usage": True,
            "max_retries": 0,
            "timeout": 30,
        }

    @property
    def model_override_value(self) -> str:
        return "meta-llama/Llama-3.2-3B-Instruct"  # a tier's model id pins the request to that tier

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # The proxy passes every content part through untouched; these run, or are skipped only for the reason above.
    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def supports_pdf_inputs(self) -> bool:
        return True

    @property
    def supports_pdf_tool_message(self) -> bool:
        return True

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True


class TestThroughRouteproxyToVllm(_ThroughRouteproxy):
    dialect = "vllm"


class TestThroughRouteproxyToTgi(_ThroughRouteproxy):
    dialect = "tgi"


class TestThroughRouteproxyToTgiLegacy(_ThroughRouteproxy):
    dialect = "tgi-legacy"


class TestThroughRouteproxyToHfRouter(_ThroughRouteproxy):
    dialect = "hf"
