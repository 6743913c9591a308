"""Who is asking: the admin token may act, the read token may only look.

Pure functions so the rules are unit-tested without a server. A browser session cookie
never holds a token: it holds a random session id (the database keeps only its hash, with
the role, the last request's time and a fingerprint of the role's token), so a session ends
at logout, after `console_session_idle_s` without a request, and when the token rotates.
The CSRF token is an HMAC keyed by the session id: a page of another origin can neither
read the cookie nor compute it, and it dies with the session.

Issue 22 also put here: tokens shorter than `MIN_TOKEN_CHARS` are refused at start, the
loopback test is `ipaddress`'s (not a prefix: `127.evil.example` is a name), the `Host`
header a tokenless console answers must be loopback (DNS rebinding), and failed logins are
throttled per client address (`LoginThrottle`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["admin", "read"]
ADMIN: Role = "admin"
READ: Role = "read"
COOKIE_NAME = "campaignq_console"
CSRF_HEADER = "X-CSRF-Token"
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


MIN_TOKEN_CHARS = 16
SESSION_ID_BYTES = 32
_FINGERPRINT_CONTEXT = b"campaignq-console-token-fingerprint:"


def token_problem(tokens: Tokens) -> str | None:
    """A sentence when a configured token is too short to resist guessing, else None."""
    named = (("CAMPAIGNQ_CONSOLE_TOKEN", tokens.admin), ("CAMPAIGNQ_CONSOLE_READ_TOKEN", tokens.read))
    for name, token in named:
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            return (
                f"{name} is {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                "(e.g. openssl rand -hex 24)"
            )
    return None


def new_session_id() -> str:
    """A fresh session id for the cookie: 256 random bits, never stored as such."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def session_hash(session_id: str) -> str:
    """What the database keeps of a session id: a leaked table cannot be replayed as a cookie."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def token_fingerprint(tokens: Tokens, role: Role) -> str:
    """Names the role's current token without revealing it: a session whose fingerprint no
    longer matches was opened with a token since rotated, and is over."""
    token = tokens.token_of(role)
    if not token:
        raise ValueError(f"no {role} token is configured")
    return _mac(token, _FINGERPRINT_CONTEXT + role.encode())


def session_role(tokens: Tokens, role_text: str | None, fingerprint: str | None) -> Role | None:
    """The role of a stored session, or None when its role has no token now or the token rotated."""
    role: Role
    if role_text == ADMIN:
        role = ADMIN
    elif role_text == READ:
        role = READ
    else:
        return None
    if not tokens.token_of(role) or fingerprint is None:
        return None
    expected = token_fingerprint(tokens, role)
    return role if hmac.compare_digest(fingerprint.encode(), expected.encode()) else None


def csrf_token(session_id: str) -> str:
    """The value a page echoes in ``X-CSRF-Token`` with a cookie-authenticated action."""
    return _mac(session_id, _CSRF_CONTEXT)


def csrf_ok(session_id: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(
        csrf_token(session_id).encode(), (presented or "").encode("utf-8", "surrogatepass")
    )


def may_bind(host: str, tokens: Tokens) -> bool:
    """Without any token, only loopback: anyone who can reach the port could read the data."""
    return tokens.any or is_loopback(host)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1, also IPv4-mapped); a name such as
    `127.evil.example` is not, whatever it starts with."""
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def host_header_name(host_header: str) -> str:
    """The name or address of a ``Host`` header, without its port (`[::1]:8900` -> `::1`)."""
    value = host_header.strip()
    if value.startswith("["):
        closing = value.find("]")
        return value[1:closing] if closing > 0 else value
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def loopback_host_header(host_header: str | None) -> bool:
    """Whether a request names this console by a loopback name. A tokenless console answers
    only those: a DNS-rebinding page (`Host: rebind.evil.example`) reaches the port through
    the victim's browser, but cannot make its requests say `localhost`."""
    return bool(host_header) and is_loopback(host_header_name(host_header or ""))


@dataclass
class _Failures:
    count: int = 0
    blocked_until: float = 0.0


@dataclass
class LoginThrottle:
    """Failed logins per client address: `free_failures` are answered at once, then each one
    blocks the address for a doubling delay (capped); an attempt while blocked is refused
    (429, Retry-After) without looking at the token. A success forgets the address. Bounded
    memory: the oldest addresses are forgotten first. `now` is passed in (tests never sleep)."""

    free_failures: int = 5
    first_delay_s: float = 1.0
    max_delay_s: float = 300.0
    max_clients: int = 10_000
    _clients: dict[str, _Failures] = field(default_factory=dict)

    def retry_after_s(self, client: str, now: float) -> float | None:
        """Seconds until `client` may try again, or None when it may try now."""
        failures = self._clients.get(client)
        if failures is None or failures.blocked_until <= now:
            return None
        return failures.blocked_until - now

    def failed(self, client: str, now: float) -> int:
        """Record a failed login; returns the address's failure count."""
        failures = self._clients.pop(client, None) or _Failures()
        self._clients[client] = failures  # most recent last
        failures.count += 1
        beyond = failures.count - self.free_failures
        if beyond > 0:
            delay_s = min(self.max_delay_s, self.first_delay_s * 2 ** min(beyond - 1, 30))
            failures.blocked_until = now + delay_s
        while len(self._clients) > self.max_clients:
            del self._clients[next(iter(self._clients))]
        return failures.count

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def _mac(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
