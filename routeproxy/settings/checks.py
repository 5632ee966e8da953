"""Reading a setting from the environment, and what the environment says that is probably a mistake.

Every variable is named ``ROUTEPROXY_*``; some settings also answer to an older name (``Setting.aliases``: the
design report's ``ENABLE_MODEL_ROUTING``, ``AB_TEST_RATIO``, ``MODEL_3B_NAME`` ..., and ``REDIS_URL``). The
canonical name wins when both are set.

A mistake in a variable's *name* cannot fail a conversion, so it would pass silently: ``ConfigNote`` reports it.
A strict note (``serve`` warns at start, ``check-config`` refuses) is an unknown ``ROUTEPROXY_*`` or
``MODEL_3B_*``/``MODEL_8B_*`` variable, any variable within a typo of a known name, a known name in the wrong
case, or a name and its alias set to different values. A plain note fails neither.

Kubernetes puts service links in every pod: a Service named ``routeproxy`` gives ``ROUTEPROXY_SERVICE_HOST``,
``ROUTEPROXY_PORT=tcp://10.0.0.7:8001`` and more. They are never reported as unknown, and a link's value in
``ROUTEPROXY_PORT`` is not taken for the port (it would stop the proxy at start).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from routeproxy.settings.declaration import Setting

# Variables routeproxy reads that are not settings: the config file, and the test suite's browser.
OTHER_VARIABLES = frozenset({"ROUTEPROXY_CONFIG", "ROUTEPROXY_CHROMIUM", "HF_TOKEN"})
# Names that always belong to routeproxy: an unknown one is a mistake, whatever its distance to a known one.
_OWN_PREFIXES = ("ROUTEPROXY_", "MODEL_3B_", "MODEL_8B_")
_OWN_NAMES = frozenset({"MODEL_3B", "MODEL_8B"})
_TYPO_CUTOFF = 0.85  # for other variables: close enough to a known name to be a typo of it (REDIS_URI, not REDIS_HOST)
_SUGGEST_CUTOFF = 0.8
_SERVICE_LINK = re.compile(
    r"^(?P<service>[A-Z][A-Z0-9_]*?)_(?P<kind>SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_\d+_(?:TCP|UDP|SCTP)"
    r"(?:_PROTO|_PORT|_ADDR)?)?)$"
)
_LINK_VALUE = re.compile(r"^(?:tcp|udp|sctp)://[^\s/]+:\d+$")


@dataclass(frozen=True, slots=True)
class ConfigNote:
    """Something about the configuration worth saying that does not stop ``serve``."""

    message: str
    strict: bool = True  # a likely mistake: `check-config` fails on it


def service_link(name: str, value: str, environ: Mapping[str, str]) -> bool:
    """Whether the variable is one of the service links Kubernetes adds for a Service in the same namespace."""
    match = _SERVICE_LINK.match(name)
    if match is None or f"{match['service']}_SERVICE_HOST" not in environ:
        return False
    # <SERVICE>_PORT is also a setting's name (ROUTEPROXY_PORT): a link only when it holds a link's value.
    return match["kind"] != "PORT" or bool(_LINK_VALUE.match(value))


def from_environment(setting: Setting, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(value, variable) of the setting's variable, else of its first alias that is set; a Kubernetes service link
    is not a value."""
    for name in (setting.env, *setting.aliases):
        if name is not None and name in environ and not service_link(name, environ[name], environ):
            return environ[name], name
    return None


def environment_notes(settings: Sequence[Setting], environ: Mapping[str, str]) -> list[ConfigNote]:
    """What the environment's variable names say that is probably a mistake, and the service links set aside."""
    canonical = {setting.env: setting for setting in settings if setting.env}
    alias_of = {alias: setting for setting in settings for alias in setting.aliases}
    known = {*canonical, *alias_of, *OTHER_VARIABLES}
    notes: list[ConfigNote] = []
    for name in sorted(environ):
        value = environ[name]
        if name in known:
            if name in canonical and service_link(name, value, environ):
                notes.append(
                    ConfigNote(
                        f"{name}={value} is a Kubernetes service link (a Service named "
                        f"{name.rpartition('_')[0].lower().replace('_', '-')} in this namespace), not a setting: it "
                        "is ignored. Set enableServiceLinks: false in the pod spec to keep such variables out",
                        strict=False,
                    )
                )
            continue
        if service_link(name, value, environ):
            continue
        upper = name.upper()
        if upper in known:
            notes.append(ConfigNote(f"variable {name}: variable names are upper case ({upper})"))
        elif upper.startswith(_OWN_PREFIXES) or upper in _OWN_NAMES:
            notes.append(ConfigNote(f"unknown variable {name}{_suggestion(upper, known, alias_of)}"))
        elif near := difflib.get_close_matches(upper, known, n=1, cutoff=_TYPO_CUTOFF):
            notes.append(ConfigNote(f"variable {name} is not a setting; did you mean {near[0]}?"))
    for alias, setting in alias_of.items():
        env = setting.env
        if env is not None and env in environ and alias in environ and not _same(setting, environ[env], environ[alias]):
            notes.append(ConfigNote(f"{env} and {alias} are both set, to different values: {env} is used"))
    return notes


def _same(setting: Setting, one: str, other: str) -> bool:
    """Whether two values of a setting mean the same (``1`` and ``true`` do); the values are never shown, they
    may be secrets."""
    if one == other:
        return True
    try:
        return bool(setting.convert(one) == setting.convert(other))
    except ValueError:
        return False


def _suggestion(name: str, known: set[str], alias_of: Mapping[str, Setting]) -> str:
    """ " (did you mean X?)" for an unknown name of ours: the canonical name of ROUTEPROXY_<alias> or of
    <alias without _NAME> (MODEL_3B -> ROUTEPROXY_SMALL_MODEL), else the nearest names and the names it begins."""
    for alias in (name.removeprefix("ROUTEPROXY_"), f"{name}_NAME"):
        if alias in alias_of and alias_of[alias].env:
            return f" (did you mean {alias_of[alias].env}?)"
    # Compared without the prefix they share, which would make any two ROUTEPROXY_ names look alike.
    prefix = "ROUTEPROXY_" if name.startswith("ROUTEPROXY_") else ""
    bare = {other.removeprefix(prefix): other for other in known if other.startswith(prefix)}
    near = [
        bare[match] for match in difflib.get_close_matches(name.removeprefix(prefix), bare, n=1, cutoff=_SUGGEST_CUTOFF)
    ]
    near += sorted(other for other in known if other.startswith(name + "_") and other not in near)[:1]
    return f" (did you mean {' or '.join(near)}?)" if near else ""
