"""The simulated vLLM's endpoints that generate nothing: embeddings, tokenize and detokenize, so the proxy's
passed-through endpoints can be tried against ``serve --simulate``; and the pooling endpoints a scoring model
answers on (``/classify``, ``/score``, ``/pooling``), in vLLM's shapes, for the cascade's verifier. Deterministic
(blake2b of the input), and, like the rest of the simulator, not a model: the vectors mean nothing, and the
"quality" it scores is a rule: an answer that apologises or refuses is bad (P(good) 0.1), any other good (0.9).

Each function takes the parsed body and the served model and returns the response JSON, or raises ValueError with
the message of a 400.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

from routeproxy.sim.content import WORDS

DIMENSIONS = 16
MAX_MODEL_LEN = 131072
_VOCABULARY = {word: index for index, word in enumerate(WORDS)}


def _token_ids(text: str) -> list[int]:
    """A word's id is its place in the simulator's vocabulary, else a hash above it."""
    ids = []
    for word in text.split():
        known = _VOCABULARY.get(word.lower())
        digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
        ids.append(known if known is not None else len(WORDS) + int.from_bytes(digest, "big") % 100_000)
    return ids


def _inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, int) for item in value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, (str, list)) for item in value):
        return list(value)
    raise ValueError("`input` must be a string, an array of strings, an array of token ids, or an array of those")


def _vector(item: str | list[int]) -> list[float]:
    digest = hashlib.blake2b(repr(item).encode(), digest_size=DIMENSIONS * 4).digest()
    raw = [int.from_bytes(digest[index : index + 4], "big") / 2**32 - 0.5 for index in range(0, len(digest), 4)]
    norm = sum(value * value for value in raw) ** 0.5 or 1.0
    return [round(value / norm, 6) for value in raw]


def embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    """vLLM's /v1/embeddings: one unit vector per input; ``encoding_format: base64`` as the OpenAI SDK asks it."""
    items = _inputs(body.get("input"))
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _vector(item)
        encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
        data.append({"index": index, "object": "embedding", "embedding": encoded})
    tokens = sum(len(item) if isinstance(item, list) else len(_token_ids(item)) for item in items)
    return {
        "id": "embd-" + hashlib.blake2b(repr(items).encode(), digest_size=16).hexdigest(),
        "object": "list",
        "created": 0,
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }


def tokenize(body: dict[str, Any], model: str) -> dict[str, Any]:
    """vLLM's /tokenize: ``prompt`` (or chat ``messages``) -> token ids."""
    prompt = body.get("prompt")
    if prompt is None and isinstance(body.get("messages"), list):
        prompt = " ".join(str(message.get("content", "")) for message in body["messages"] if isinstance(message, dict))
    if not isinstance(prompt, str):
        raise ValueError("`prompt` (a string) or `messages` is required")
    tokens = _token_ids(prompt)
    return {"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens, "token_strs": None}


def detokenize(body: dict[str, Any], model: str) -> dict[str, Any]:
    """vLLM's /detokenize: token ids -> text (ids outside the simulator's vocabulary read as <id>)."""
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(token, int) for token in tokens):
        raise ValueError("`tokens` must be an array of token ids")
    words = [WORDS[token] if 0 <= token < len(WORDS) else f"<{token}>" for token in tokens]
    return {"prompt": " ".join(words)}


GOOD, BAD = 0.9, 0.1
_WEAK = ("i'm sorry", "i am sorry", "i can't", "i cannot", "i apologize", "i don't know")


def _judged_text(body: dict[str, Any]) -> str:
    """The text whose quality is scored: the last message (the answer, in chat form), else the input's last item,
    else a score request's second text."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content") or "")
    for key in ("input", "text_2", "documents", "items", "data_2"):
        value = body.get(key)
        if isinstance(value, list) and value:
            value = value[-1]
        if isinstance(value, str):
            return value
    raise ValueError("expected `messages` or `input` (or, to score, `text_1` and `text_2`)")


def _good(body: dict[str, Any]) -> float:
    text = _judged_text(body).lower()
    return BAD if any(phrase in text for phrase in _WEAK) else GOOD


def _pooled(kind: str, body: dict[str, Any], model: str, data: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = len(_token_ids(_judged_text(body)))
    return {
        "id": f"{kind}-" + hashlib.blake2b(repr(sorted(body.items())).encode(), digest_size=16).hexdigest(),
        "object": "list",
        "created": 0,
        "model": model,
        "data": data,
        "usage": {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        },
    }


def classify(body: dict[str, Any], model: str) -> dict[str, Any]:
    """vLLM's /classify with a two-class quality classifier: probs [bad, good], the label of the likelier."""
    good = _good(body)
    item = {"index": 0, "label": "good" if good > 0.5 else "bad", "probs": [round(1 - good, 6), good], "num_classes": 2}
    return _pooled("classify", body, model, [item])


def score(body: dict[str, Any], model: str) -> dict[str, Any]:
    """vLLM's /score with a cross-encoder: the pair's score in 0..1 (vLLM names these ids embd-)."""
    if not any(key in body for key in ("text_2", "documents", "items", "data_2")):
        raise ValueError("expected text_1 and text_2 (or queries and documents)")
    return _pooled("embd", body, model, [{"index": 0, "object": "score", "score": _good(body)}])


def pool(body: dict[str, Any], model: str) -> dict[str, Any]:
    """vLLM's /pooling with a reward model: the sequence's reward, a list of one float (the logit of P(good))."""
    good = _good(body)
    reward = round(math.log(good / (1 - good)), 6)
    return _pooled("pool", body, model, [{"index": 0, "object": "pooling", "data": [reward]}])
