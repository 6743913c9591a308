"""Is an inbound WhatsApp reply a request to stop messages? (pure; for the gateway webhook)

The webhook that receives replies (the console's, or any application in front of the
gateway) calls `is_opt_out_reply(text)` and, when it is true, records the opt-out through
the one ingestion path, the SQL function ``campaignq_record_opt_out(instance, phone,
reason)`` (db/migrations/0006 and 0009): the lead's pending and queued messages end
`skipped` (`opted_out`) at once, a consumer skips any other before its AI call, and one
already being sent stops before its next part (0015).

Deliberately narrow: only a short reply that *is* a stop keyword (in English, Portuguese or
Spanish, any case, accents and punctuation ignored) counts, so "don't stop, this is great"
is not an opt-out. Anything ambiguous is for a human (or a classifier the operator trusts).
"""

from __future__ import annotations

import re
import unicodedata

MAX_WORDS = 4
"""Longer replies are conversation, not a keyword."""

STOP_PHRASES: frozenset[str] = frozenset(
    {
        # English (the carriers' standard keywords) and common variants
        "stop",
        "stopall",
        "stop all",
        "unsubscribe",
        "cancel",
        "end",
        "quit",
        "optout",
        "opt out",
        "stop please",
        "please stop",
        "remove me",
        "no more",
        "no more messages",
        # Portuguese
        "parar",
        "pare",
        "para",
        "sair",
        "cancelar",
        "descadastrar",
        "remover",
        "nao quero",
        "nao quero mais",
        "nao envie mais",
        "para de mandar",
        "pare de mandar",
        # Spanish
        "baja",
        "darme de baja",
        "alto",
        "detener",
        "no mas",
        "no mas mensajes",
        "no quiero",
        "cancelar suscripcion",
    }
)


def normalize_reply(text: str) -> str:
    """Lower case, accents removed, punctuation and emoji dropped, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    words = re.sub(r"[^a-z0-9]+", " ", ascii_only).split()
    return " ".join(words)


def is_opt_out_reply(text: str | None) -> bool:
    """True when the reply, as a whole, is a stop keyword or phrase."""
    if not text:
        return False
    normalized = normalize_reply(text)
    if not normalized or len(normalized.split()) > MAX_WORDS:
        return False
    return normalized in STOP_PHRASES
