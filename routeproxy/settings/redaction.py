"""URLs as they may be shown (start-up summary, warnings, log lines, command output): never a password.

A Redis URL can carry its password twice over: in the user info (``redis://user:secret@host``) and, since redis-py
passes unknown query parameters on as connection options, in the query (``?password=secret``). Both are replaced
by ``***``, as is any query value whose name looks like a secret.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlsplit

_SECRET_WORDS = ("pass", "pwd", "secret", "token", "auth", "key", "credential")


def redacted_url(url: str) -> str:
    """The URL with the password of its user info and every secret-looking query value replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else netloc
    shown = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else url.partition("?")[0].partition("#")[0]
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        shown += "?" + "&".join(
            f"{quote(name, safe='')}={'***' if _secret(name) else quote(value, safe='')}" for name, value in pairs
        )
    return shown


def _secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)
