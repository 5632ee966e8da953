"""Where the feedback fit's rows come from (Redis, or a file exported earlier), what it prints, and the rules file
it writes for review (routeproxy.evaluate.feedback_fit does the fitting)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from routeproxy.cascade.rules import END_FAULTS, LOGPROB_PREFIX
from routeproxy.evaluate.feedback_fit import Band, FeedbackFit, FeedbackRow, FeedbackRowError, row_from

SCAN_BATCH = 500


def rows_from_redis(url: str, namespace: str) -> Iterator[FeedbackRow]:
    """Every decision in Redis with a check record and a rating (``decision:<id>``: ``check``, ``score``, ``at``).
    Decisions expire after ``quality.decision_ttl_s``: export them (``--export``) to fit on a longer period."""
    import redis  # the client only for this mode

    client = redis.Redis.from_url(url, decode_responses=True)
    prefix = "{" + namespace + "}:decision:"
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=SCAN_BATCH))
        for start in range(0, len(keys), SCAN_BATCH):
            batch = keys[start : start + SCAN_BATCH]
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, "check", "score", "at")
            for key, (check, score, at) in zip(batch, pipe.execute(), strict=True):
                if check is None or score is None or at is None:
                    continue
                try:
                    yield row_from(key[len(prefix) :], float(at), int(score) / 1000, orjson.loads(check))
                except (orjson.JSONDecodeError, ValueError) as exc:
                    raise FeedbackRowError(f"{key}: {exc}") from None
    finally:
        client.close()


def export_rows(rows: list[FeedbackRow], path: str) -> None:
    with Path(path).open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(orjson.dumps(row.as_json()).decode() + "\n")


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _range(band: Band) -> str:
    return f"{_number(band.low)} to {_number(band.high)}"


def format_fit(fit: FeedbackFit) -> str:
    first, holdout_from, last = fit.period
    lines = [
        f"check rules {fit.rules}: {fit.rows} rated decisions from {_when(first)} to {_when(last)} (UTC); "
        f"held out: the {fit.holdout_rows} from {_when(holdout_from)} on",
        f"small answers rated: {fit.rated_train} to fit, {fit.rated_holdout} held out; explored {fit.explored}; "
        f"covers {fit.covers}; the large tier's answers counted at their mean rating, {fit.large_mean:.3f}",
        f"cross-validated APGR on the fitting part: rule set {_number(fit.cv_before)}, fitted {_number(fit.cv_after)}"
        + ("" if fit.accepted else " (not better: the rule set's weights are kept)"),
        "held out | APGR | 2.5-97.5 % | escalated",
        "--- | --- | --- | ---",
        f"rule set | {_number(fit.before.value)} | {_range(fit.before)} | {fit.share_before:.1%}",
        f"fitted | {_number(fit.after.value)} | {_range(fit.after)} | {fit.share_after:.1%}",
        f"difference | {_number(fit.difference.value)} | {_range(fit.difference)} | -",
    ]
    changed = ", ".join(f"{name} {old:g} -> {new:g}" for name, (old, new) in sorted(fit.changed.items())) or "none"
    lines.append(f"weights changed: {changed}; threshold {fit.threshold:g}")
    return "\n".join(lines)


def fit_as_dict(fit: FeedbackFit) -> dict[str, Any]:
    def band(value: Band) -> dict[str, float]:
        return {"value": value.value, "low": value.low, "high": value.high}

    return {
        "rules": fit.rules,
        "rows": fit.rows,
        "train_rows": fit.train_rows,
        "holdout_rows": fit.holdout_rows,
        "rated_train": fit.rated_train,
        "rated_holdout": fit.rated_holdout,
        "explored": fit.explored,
        "covers": fit.covers,
        "large_mean": fit.large_mean,
        "cv": {"before": fit.cv_before, "after": fit.cv_after, "accepted": fit.accepted},
        "holdout": {
            "before": band(fit.before),
            "after": band(fit.after),
            "difference": band(fit.difference),
            "share_before": fit.share_before,
            "share_after": fit.share_after,
        },
        "threshold": fit.threshold,
        "weights": dict(fit.weights),
        "changed": {name: list(pair) for name, pair in fit.changed.items()},
        "period": {"from": fit.period[0], "holdout_from": fit.period[1], "to": fit.period[2]},
    }


def fitted_rules(source: str, fit: FeedbackFit) -> str:
    """The rule set ``source`` with the fitted weights and threshold, as YAML (its comments are not kept: the
    shipped file explains each key), under a header saying where the figures come from."""
    tree = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    for name, (old, new) in fit.changed.items():
        _set_weight(tree, name, old, new)
    tree["threshold"] = fit.threshold
    header = [
        f"# Fitted by `routeproxy eval --cascade --feedback` from {source} on {fit.rows} rated decisions",
        f"# ({_when(fit.period[0])} to {_when(fit.period[2])} UTC). Held out from {_when(fit.period[1])}: APGR "
        f"{_number(fit.before.value)} -> {_number(fit.after.value)}",
        f"# (difference {_number(fit.difference.value)}, 2.5-97.5 % {_number(fit.difference.low)} to "
        f"{_number(fit.difference.high)}); covers {fit.covers}. Review before use: cascade.rules = this file.",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def _set_weight(tree: dict[str, Any], name: str, old: float, new: float) -> None:
    """Where each signal's weight lives in a rule set (routeproxy.cascade.rules reads them back)."""
    simple = {
        "short": ("length", "weight"),
        "short_of_request": ("length", "short_of_request", "weight"),
        "narrow_vocabulary": ("vocabulary", "weight"),
        "wrong_arithmetic": ("arithmetic", "weight"),
        "verifier": ("verifier", "weight"),
        **{fault: ("answer_end", fault) for fault in END_FAULTS},
    }
    if name in simple:
        *parents, key = simple[name]
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = new
    elif name.startswith(LOGPROB_PREFIX):
        tree["logprobs"]["terms"][name[len(LOGPROB_PREFIX) :]]["weight"] = new
    elif name == "repetitive":
        _scale_levels(tree["repetition"], old, new)
    elif name in tree.get("cues", {}):
        cue = tree["cues"][name]
        if "levels" in cue:
            _scale_levels(cue, old, new)
        else:
            cue["weight"] = new


def _scale_levels(node: dict[str, Any], old: float, new: float) -> None:
    levels: Mapping[Any, float] = node["levels"]
    node["levels"] = {count: round(weight * new / old, 4) if old else new for count, weight in levels.items()}
