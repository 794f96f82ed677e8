"""Credentials in URIs (tracking stores, Optuna storages): found, and kept out of what is
printed or stored. A password may sit in the authority (``postgresql://u:pw@db/x``) or, for
libpq and some drivers, in the query (``...?password=pw``)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_PASSWORD_KEYS = frozenset({"password", "passwd", "pwd"})


def password_in(uri: str) -> bool:
    """Whether ``uri`` carries a password."""
    parts = urlsplit(uri)
    return bool(parts.password) or any(
        k.lower() in _PASSWORD_KEYS for k, _ in parse_qsl(parts.query, keep_blank_values=True)
    )


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, for messages and stored records."""
    if not password_in(uri):
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in _PASSWORD_KEYS for k, _ in pairs):
        query = urlencode(
            [(k, "***" if k.lower() in _PASSWORD_KEYS else v) for k, v in pairs], safe="*"
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def secrets_in(uri: str) -> list[str]:
    """The passwords ``uri`` carries (authority and query), for :func:`scrub`."""
    parts = urlsplit(uri)
    found = [parts.password] if parts.password else []
    found += [
        v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in _PASSWORD_KEYS
    ]
    return [f for f in found if f]


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***`` (an error message, a traceback:
    a library's message may quote the URI it was given, password and all)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


__all__ = ["password_in", "redact", "scrub", "secrets_in"]
