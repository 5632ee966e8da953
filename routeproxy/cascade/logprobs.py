"""Token log-probabilities of an answer, read from the shapes the upstreams send, and what the check takes from them.

Shapes (one ``choices[i].logprobs`` object, whole body or one stream chunk):
- OpenAI and vLLM chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``; vLLM writes
  ``-9999.0`` for a token whose probability underflows.
- TGI chat: ``{"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}`` (no ``bytes``); its
  end-of-sequence token has an entry too (in a stream, on the chunk whose content is empty).
- Legacy completions (vLLM, TGI, and providers behind the HF router that answer chat in this shape):
  ``{"tokens": [...], "token_logprobs": [...], "top_logprobs": [...], "text_offset": [...]}``; the first entry may
  be null.

Statistics follow Gupta et al., "Language Model Cascades: Token-Level Uncertainty and Beyond" (ICLR 2024): the mean
(what a length-normalised sequence score reads) and low quantiles (the few tokens the model was unsure of, which a
mean over a long answer hides).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

FLOOR = -30.0  # a logprob below this (vLLM's -9999.0, -inf) counts as this: one token must not swamp the mean


def token_logprobs(logprobs: Any) -> tuple[float, ...]:
    """The chosen tokens' log-probabilities in one ``logprobs`` object, in order; () when it has none."""
    if not isinstance(logprobs, Mapping):
        return ()
    content = logprobs.get("content")
    values: list[Any]
    if isinstance(content, list):
        values = [entry.get("logprob") for entry in content if isinstance(entry, Mapping)]
    else:
        legacy = logprobs.get("token_logprobs")
        if not isinstance(legacy, list):
            return ()
        values = legacy
    return tuple(
        max(FLOOR, min(0.0, float(value)))
        for value in values
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    )


def statistic(logprobs: Sequence[float], quantile: float | None) -> float:
    """The mean (``quantile`` None) or the ``quantile`` (0 = the minimum) of the values; the nearest rank below."""
    if quantile is None:
        return math.fsum(logprobs) / len(logprobs)
    ordered = sorted(logprobs)
    return ordered[int(quantile * (len(ordered) - 1))]
