"""The simulated vLLM's endpoints that generate nothing: embeddings, tokenize and detokenize, so the proxy's
passed-through endpoints can be tried against ``serve --simulate``. Deterministic (blake2b of the input), and, like
the rest of the simulator, not a model: the vectors mean nothing.

Each function takes the parsed body and the served model and returns the response JSON, or raises ValueError with
the message of a 400.
"""

from __future__ import annotations

import base64
import hashlib
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
