"""The seed scenario's cascade variant: the same query mix through the same proxy and simulators, in classify
mode (at the seed's balanced ratio) and in cascade mode, whole and streamed; average latency, cost, share
escalated, and what the hold costs streamed clients in time to first byte. Then agent traffic in cascade mode:
tool calls and JSON answers (``response_format``), those the simulated 3B answers soundly apart from those it
answers weakly (its refusal), to show that sound structured answers are not escalated and weak ones are."""

from __future__ import annotations

from typing import Any

import httpx

from routeproxy.bench.loadgen import percentile, run_async, run_load
from routeproxy.bench.run import Target
from routeproxy.bench.scenario import SMALL_WEAK_SHARE, read_until, scenario_mix, scenario_proxy
from routeproxy.bench.session import Session
from routeproxy.bench.table import Table
from routeproxy.sim.simulator import weak_prompt

CLASSIFY_RATIO = 0.5  # the seed's "balanced" ratio
SHORT_HOLD_TOKENS = 32  # a second cascade proxy with a shorter hold: what it saves in time to first byte
# (label, runtime config, the proxy's extra environment, streamed passes)
MODES: tuple[tuple[str, dict[str, Any], dict[str, str], tuple[bool, ...]], ...] = (
    (f"classify {CLASSIFY_RATIO:g}", {"routing_mode": "classify", "ab_test_ratio": CLASSIFY_RATIO}, {}, (False, True)),
    ("cascade", {"routing_mode": "cascade"}, {}, (False, True)),
    (
        f"cascade, hold {SHORT_HOLD_TOKENS}",
        {"routing_mode": "cascade"},
        {"ROUTEPROXY_CASCADE_HOLD_TOKENS": str(SHORT_HOLD_TOKENS)},
        (True,),
    ),
)


def workload_cascade(session: Session) -> Table:
    requests, duration = session.cap(200, 120.0)
    speed = session.options.speed
    mix = scenario_mix(min(requests, 1000))
    columns = (
        "mode",
        "stream",
        "answered",
        "3B answered %",
        "escalated %",
        "weak sent %",
        "avg ms",
        "client avg",
        "TTFB p50",
        "TTFB p95",
        "cost vs all-8B %",
        "added p50",
        "added p95",
    )
    table = Table(f"scenario: classify vs cascade mode, simulators at speed x{speed:g}", columns)
    runs: list[dict[str, Any]] = []
    with httpx.Client(trust_env=False, timeout=10) as client:
        for label, mode, env, passes in MODES:
            proxy = scenario_proxy(session, **env)
            base = f"http://127.0.0.1:{proxy.port}/v1/model-routing"
            target = Target("proxy", "127.0.0.1", proxy.port, "/v1/chat/completions", "auto", proxy)
            for stream in passes:
                change = {**mode, "enable_model_routing": True}
                client.put(f"{base}/config", json=change).raise_for_status()
                client.post(f"{base}/reset").raise_for_status()
                read_until(client, f"{base}/config", lambda answer: answer == {**answer, **change})  # noqa: B023
                sent = [target.request({**body, "stream": stream}, {}) for _, body in mix]
                result = run_async(
                    run_load(
                        "127.0.0.1",
                        proxy.port,
                        sent,
                        concurrency=50,
                        max_requests=len(sent),
                        max_duration=duration,
                        keep_body=True,
                    )
                )
                answered = len(result.samples)
                stats = read_until(client, f"{base}/stats", lambda answer: answer["total_requests"] >= answered)  # noqa: B023
                cascade = stats["cascade"]
                ttfb = [sample.ttfb_s * 1000 * speed for sample in result.samples]
                client_avg = sum(sample.total_s for sample in result.samples) / max(1, answered) * 1000 * speed
                escalating = mode["routing_mode"] == "cascade"
                # The simulated weak answer is the only text with an apostrophe (filler words have none).
                weak = sum(b"can't" in sample.body for sample in result.samples) / max(1, answered) * 100
                table.rows.append(
                    (
                        label,
                        "yes" if stream else "no",
                        answered,
                        cascade["answered_by_small_pct"],
                        cascade["escalated_pct"] * cascade["checked"] / max(1, stats["total_requests"])
                        if escalating
                        else None,
                        weak,
                        stats["average_latency_ms"] * speed,
                        client_avg,
                        percentile(ttfb, 50) if stream else None,
                        percentile(ttfb, 95) if stream else None,
                        round(100 - stats["estimated_cost_savings_pct"], 1),
                        cascade["added_latency_ms"]["p50"] * speed if escalating else None,
                        cascade["added_latency_ms"]["p95"] * speed if escalating else None,
                    )
                )
                runs.append(
                    {
                        "mode": label,
                        "stream": stream,
                        "sent": result.sent,
                        "answered": answered,
                        "ok": result.ok,
                        "failures": result.failures,
                        "client_avg_ms": client_avg,
                        "weak_answers_sent_pct": weak,
                        "ttfb_ms": {"p50": percentile(ttfb, 50), "p95": percentile(ttfb, 95)} if stream else None,
                        "stats": stats,
                    }
                )
        runs += _agent_runs(session, client, table, duration)
    table.notes += [
        f"the mixed query load ({len(mix)} queries) at ratio {CLASSIFY_RATIO:g} in classify mode; the simulated"
        f" 3B answers {SMALL_WEAK_SHARE:.0%} of prompts (by hash) with a short refusal, which the check escalates",
        "weak sent % = answers the client got that are the simulated 3B's refusal;"
        " escalated % = escalated / all requests; cost vs all-8B % = 100 - estimated_cost_savings_pct, where an"
        " escalated request costs a 3B and an 8B request (relative costs 0.375 and 1)",
        f"times at the simulated tiers' real pace (measured at speed x{speed:g}, multiplied back); TTFB = the"
        " client's first body byte; added = request start to the 8B request sent, for escalated requests",
        "the simulated answers are 110 tokens, under the default hold of 128: a streamed cascade answer is held"
        f" to its end, so its TTFB is the 3B answer's whole time; with a hold of {SHORT_HOLD_TOKENS} tokens it is"
        " released after them",
    ]
    failures = sum(run["failures"] + run["answered"] - run["ok"] for run in runs)
    if failures:
        table.notes.append(f"{failures} requests failed")
    table.notes.append(
        "agent rows: tool calls (a weather tool with a parameters schema) and JSON answers (json_object and"
        " json_schema), split by whether the simulated 3B answers them soundly or with its refusal; escalated % is"
        " of those requests"
    )
    table.data = {"speed": speed, "weak_share": SMALL_WEAK_SHARE, "runs": runs}
    return table


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
FLOCK = {
    "type": "json_schema",
    "json_schema": {
        "name": "flock",
        "schema": {
            "type": "object",
            "properties": {"house": {"type": "string"}, "birds": {"type": "integer", "minimum": 0}},
            "required": ["house", "birds"],
        },
    },
}
_CITIES = ("Oslo", "Lyon", "Utrecht", "Porto", "Gdansk", "Kyoto", "Austin", "Leeds", "Turku", "Graz")


def agent_mix(size: int = 120) -> list[dict[str, Any]]:
    """Chat bodies an agent sends: a third tool calls, a third json_object, a third json_schema answers."""
    bodies: list[dict[str, Any]] = []
    for index in range(size):
        city, days = _CITIES[index % len(_CITIES)], 1 + index % 7
        kind = index % 3
        if kind == 0:
            text = f"What is the weather in '{city}' for {days} days?"
            bodies.append({"messages": [{"role": "user", "content": text}], "tools": [WEATHER]})
        elif kind == 1:
            text = f"Give the 'house' and 'birds' of flock {index} as JSON."
            bodies.append({"messages": [{"role": "user", "content": text}], "response_format": {"type": "json_object"}})
        else:
            text = f"House 'H{index}' holds {1000 + index} birds: answer as JSON."
            bodies.append({"messages": [{"role": "user", "content": text}], "response_format": FLOCK})
    return bodies


def _agent_runs(session: Session, client: httpx.Client, table: Table, duration: float) -> list[dict[str, Any]]:
    proxy = scenario_proxy(session)
    base = f"http://127.0.0.1:{proxy.port}/v1/model-routing"
    target = Target("proxy", "127.0.0.1", proxy.port, "/v1/chat/completions", "auto", proxy)
    change = {"routing_mode": "cascade", "enable_model_routing": True}
    client.put(f"{base}/config", json=change).raise_for_status()
    bodies = agent_mix()
    runs = []
    for label, weak in (("agent, sound 3B answers", False), ("agent, weak 3B answers", True)):
        chosen = [body for body in bodies if weak_prompt(body["messages"], SMALL_WEAK_SHARE) is weak]
        for stream in (False, True):
            client.post(f"{base}/reset").raise_for_status()
            sent = [target.request({**body, "stream": stream}, {}) for body in chosen]
            result = run_async(
                run_load("127.0.0.1", proxy.port, sent, concurrency=20, max_requests=len(sent),
                         max_duration=duration, keep_body=True)
            )  # fmt: skip
            answered = len(result.samples)
            stats = read_until(client, f"{base}/stats", lambda answer: answer["total_requests"] >= answered)  # noqa: B023
            cascade = stats["cascade"]
            refused = sum(b"can't" in sample.body for sample in result.samples) / max(1, answered) * 100
            escalated = cascade["escalated"] / max(1, cascade["checked"]) * 100
            table.rows.append(
                (f"cascade, {label}", "yes" if stream else "no", answered, cascade["answered_by_small_pct"], escalated,
                 refused, stats["average_latency_ms"] * session.options.speed, None, None, None,
                 round(100 - stats["estimated_cost_savings_pct"], 1), None, None)
            )  # fmt: skip
            runs.append({"mode": f"cascade, {label}", "stream": stream, "sent": result.sent, "answered": answered,
                         "ok": result.ok, "failures": result.failures, "escalated_pct": escalated,
                         "weak_answers_sent_pct": refused, "stats": stats})  # fmt: skip
    return runs
