"""Who is asking: the admin token may act, the read token may only look.

Pure functions so the rules are unit-tested without a server. A browser session cookie
never holds a token: it holds the role and an HMAC keyed by that role's token, so a stolen
cookie dies when the token is rotated, and the CSRF token is an HMAC of the cookie (a page
of another origin can neither read the cookie nor compute it).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "read"]
ADMIN: Role = "admin"
READ: Role = "read"
COOKIE_NAME = "campaignq_console"
CSRF_HEADER = "X-CSRF-Token"
_SESSION_CONTEXT = b"campaignq-console-session:"
_CSRF_CONTEXT = b"campaignq-console-csrf:"


@dataclass(frozen=True)
class Tokens:
    """The configured secrets; either may be missing."""

    admin: str | None = None
    read: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.admin or self.read)

    def role_of_token(self, presented: str) -> Role | None:
        """The role a presented token grants (constant-time comparison), or None."""
        if self.admin and hmac.compare_digest(presented.encode(), self.admin.encode()):
            return ADMIN
        if self.read and hmac.compare_digest(presented.encode(), self.read.encode()):
            return READ
        return None

    def token_of(self, role: Role) -> str | None:
        return self.admin if role == ADMIN else self.read


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def session_cookie(tokens: Tokens, role: Role) -> str:
    token = tokens.token_of(role)
    if not token:
        raise ValueError(f"no {role} token is configured")
    return f"{role}.{_mac(token, _SESSION_CONTEXT + role.encode())}"


def role_of_cookie(tokens: Tokens, cookie: str | None) -> Role | None:
    if not cookie:
        return None
    role_text, _, mac = cookie.partition(".")
    role: Role
    if role_text == ADMIN:
        role = ADMIN
    elif role_text == READ:
        role = READ
    else:
        return None
    token = tokens.token_of(role)
    if not token:
        return None
    expected = _mac(token, _SESSION_CONTEXT + role.encode())
    return role if hmac.compare_digest(mac.encode(), expected.encode()) else None


def csrf_token(cookie: str) -> str:
    """The value a page echoes in ``X-CSRF-Token`` with a cookie-authenticated action."""
    return _mac(cookie, _CSRF_CONTEXT)


def csrf_ok(cookie: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(cookie).encode(), (presented or "").encode())


def may_bind(host: str, tokens: Tokens) -> bool:
    """Without any token, only loopback: anyone who can reach the port could read the data."""
    return tokens.any or is_loopback(host)


def is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "::1", "localhost"} or host.startswith("127.")


def _mac(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
