"""The cascade benchmark's agent traffic: the simulated 3B's sound tool calls and JSON answers are kept by the
answer check, its weak answers to the same requests escalated (`routeproxy bench --workload cascade` measures
the same through the proxy)."""

from __future__ import annotations

from routeproxy.bench.cascade import agent_mix
from routeproxy.bench.scenario import SMALL_WEAK_SHARE
from routeproxy.cascade.check import AnswerView, check_answer, load_check_rules
from routeproxy.sim.content import chosen_tool, json_text, prompt_values, seeded, tool_call
from routeproxy.sim.simulator import WEAK_ANSWER, weak_prompt

RULES = load_check_rules("general")


def test_sound_agent_answers_are_kept_and_weak_ones_escalated() -> None:
    bodies = agent_mix()
    assert {("tools" in body, str(body.get("response_format", {}).get("type"))) for body in bodies} == {
        (True, "None"), (False, "json_object"), (False, "json_schema"),
    }  # fmt: skip
    weak = [body for body in bodies if weak_prompt(body["messages"], SMALL_WEAK_SHARE)]
    assert 0 < len(weak) < len(bodies)
    for body in bodies:
        rng = seeded(body["messages"])  # what the simulator answers, decided as it decides it
        function = chosen_tool(body)
        if function is not None:
            call = tool_call(function, rng, "call_0", prompt_values(body))
            made = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            sound = AnswerView("", complete=True, finish_reason="tool_calls", tool_calls=(made,))
        else:
            text = json_text(body["response_format"], rng, prompt_values(body))
            assert text is not None
            sound = AnswerView(text, complete=True, finish_reason="stop")
        assert check_answer(body, sound, RULES).reasons == (), body
        refusal = check_answer(body, AnswerView(WEAK_ANSWER, complete=True, finish_reason="stop"), RULES)
        assert refusal.escalate, body
