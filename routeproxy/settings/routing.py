"""Settings of routing: mode, stickiness, fallback, the staged rollout, and cascade mode's answer check."""

from __future__ import annotations

from routeproxy.settings.declaration import (
    RoutingMode,
    Setting,
    StickyKey,
    Tier,
    _bool,
    _choice,
    _int_in,
    _one_of,
    _positive,
    _ratio,
    _schedule,
    _text,
)

ROUTING_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "routing.enabled",
        "ROUTEPROXY_ENABLE_MODEL_ROUTING",
        False,
        _bool,
        "Route `auto` requests by complexity; when false every `auto` request goes to the large tier.",
        aliases=("ENABLE_MODEL_ROUTING",),
    ),
    Setting(
        "routing.ab_test_ratio",
        "ROUTEPROXY_AB_TEST_RATIO",
        0.5,
        _ratio,
        "Share of MEDIUM queries sent to the small tier (0.0 = all large, 1.0 = all small).",
        aliases=("AB_TEST_RATIO",),
    ),
    Setting(
        "routing.mode",
        "ROUTEPROXY_ROUTING_MODE",
        RoutingMode.CLASSIFY,
        _choice(RoutingMode),
        "classify: the prompt picks the tier. cascade: all but COMPLEX and pinned go to the small tier first and "
        "a weak answer (see cascade.*) is re-asked on the large tier.",
    ),
    Setting(
        "routing.sticky_key",
        "ROUTEPROXY_STICKY_KEY",
        StickyKey.QUERY,
        _choice(StickyKey),
        "What the MEDIUM A/B draw hashes: the query text, the OpenAI `user` field, or a header.",
    ),
    Setting(
        "routing.sticky_header",
        "ROUTEPROXY_STICKY_HEADER",
        "x-routeproxy-session",
        _text,
        "Header hashed when sticky_key is `header`.",
    ),
    Setting(
        "routing.rules",
        "ROUTEPROXY_RULES",
        "general",
        _text,
        "Classifier rule set: a built-in name (general, poultry) or a path to a rules YAML file.",
    ),
    Setting(
        "routing.auto_model",
        "ROUTEPROXY_AUTO_MODEL",
        "auto",
        _text,
        "The model name clients send to ask for routing.",
    ),
    Setting(
        "routing.log_preview_chars",
        "ROUTEPROXY_LOG_PREVIEW_CHARS",
        60,
        _int_in(0, 10_000),
        "Characters of the query shown in logs (0 = none).",
    ),
    Setting(
        "routing.fallback_small_to_large",
        "ROUTEPROXY_FALLBACK_SMALL_TO_LARGE",
        True,
        _bool,
        "Retry on the large tier when the small one refuses, times out connecting, or answers 502/503/504.",
    ),
    Setting(
        "routing.fallback_large_to_small",
        "ROUTEPROXY_FALLBACK_LARGE_TO_SMALL",
        False,
        _bool,
        "Retry on the small tier when the large one fails the same way.",
    ),
    Setting(
        "routing.rollout.enabled",
        "ROUTEPROXY_ROLLOUT",
        False,
        _bool,
        "Let the rollout controller set ab_test_ratio from the A/B verdict, following routing.rollout.schedule.",
    ),
    Setting(
        "routing.rollout.schedule",
        "ROUTEPROXY_ROLLOUT_SCHEDULE",
        "0.1,0.3,0.5,0.8",
        _schedule,
        "The rollout's steps of ab_test_ratio, rising (by default one a week: routing.rollout.min_hold_s).",
    ),
    Setting(
        "routing.rollout.min_hold_s",
        "ROUTEPROXY_ROLLOUT_MIN_HOLD_S",
        604800.0,
        _positive,
        "Seconds a step is held at least before a pass moves it up (default one week).",
    ),
    Setting(
        "routing.rollout.min_feedback",
        "ROUTEPROXY_ROLLOUT_MIN_FEEDBACK",
        200,
        _int_in(1, 10_000_000),
        "Feedback events on MEDIUM queries (both tiers) a step needs before the controller moves it.",
    ),
    Setting(
        "routing.rollout.rollback_to",
        "ROUTEPROXY_ROLLOUT_ROLLBACK_TO",
        "previous",
        _one_of("previous", "zero"),
        "Where a rollback verdict goes: the previous step, or ratio 0 (which pauses the controller).",
    ),
    Setting(
        "routing.rollout.interval_s",
        "ROUTEPROXY_ROLLOUT_INTERVAL_S",
        5.0,
        _positive,
        "Seconds between two looks of the controller at the shared totals.",
    ),
    Setting(
        "routing.passthrough_tier",
        "ROUTEPROXY_PASSTHROUGH_TIER",
        Tier.LARGE,
        _choice(Tier),
        "Tier that serves the passed-through endpoints (embeddings, responses, tokenize...) unless one names a "
        "tier's model.",
    ),
)

CASCADE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "cascade.rules",
        "ROUTEPROXY_CASCADE_RULES",
        "general",
        _text,
        "Answer-check rule set of cascade mode: a built-in name (config/checks/<name>.yaml) or a path.",
    ),
    Setting(
        "cascade.hold_tokens",
        "ROUTEPROXY_CASCADE_HOLD_TOKENS",
        128,
        _int_in(1, 100_000),
        "Cascade streams: content tokens of the small answer held back before the check decides.",
    ),
    Setting(
        "cascade.hold_ms",
        "ROUTEPROXY_CASCADE_HOLD_MS",
        3000,
        _int_in(1, 600_000),
        "Cascade streams: the longest hold in ms; then the check decides on the part that has arrived.",
    ),
    Setting(
        "cascade.request_logprobs",
        "ROUTEPROXY_CASCADE_REQUEST_LOGPROBS",
        False,
        _bool,
        "Cascade: ask the small tier for token logprobs for the check (removed again when the client did not ask).",
    ),
)
