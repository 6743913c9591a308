"""Is an inbound WhatsApp reply an opt-out? A deliberately small, pure classifier.

Only a short reply that is nothing but an opt-out word counts ("STOP", "pare", "sair!",
"unsubscribe please" does not): a false positive silences a lead for good, a false negative
is corrected by the next, clearer reply. Accents, case and punctuation are ignored.
"""

from __future__ import annotations

import re
import unicodedata

OPT_OUT_WORDS = frozenset(
    {
        # English
        "stop",
        "stopall",
        "unsubscribe",
        "cancel",
        "end",
        "quit",
        "optout",
        "opt out",
        "remove me",
        # Portuguese
        "pare",
        "parar",
        "sair",
        "cancelar",
        "descadastrar",
        "remover",
        "nao quero",
        # Spanish
        "baja",
        "alto",
        "detener",
        "cancelar suscripcion",
    }
)
_NOT_LETTERS = re.compile(r"[^a-z ]+")


def normalise(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    letters = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(_NOT_LETTERS.sub(" ", letters).split())


def is_opt_out(text: str | None) -> bool:
    """True for a reply that is only an opt-out word or phrase."""
    if not text or len(text) > 60:
        return False
    return normalise(text) in OPT_OUT_WORDS
