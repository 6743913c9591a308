"""Phone numbers and WhatsApp jids, as Evolution API 2.3 turns one into the other (pure).

Why this module exists (issue 21, point 3): Evolution does not store a message under the
digits we send. `createJid` (src/utils/createJid.ts, tag 2.3.6) drops the 9th digit of a
Brazilian mobile when the area code (DDD) is 31 or more and the subscriber number starts
with 7, 8 or 9, and drops the 3rd digit of 13-digit Mexican (52) and Argentinian (54)
numbers; its `whatsappNumber` check may instead pick the form WhatsApp itself verified
(with or without that digit). `findMessages` matches `key.remoteJid` exactly, so asking for
`<our digits>@s.whatsapp.net` finds nothing for most of Brazil and the part is resent.

So: `create_jid` is a port of Evolution's function (checked against vectors computed by
running the TypeScript itself, tests/contract/evolution/createjid_vectors.json);
`number_forms` lists every digit string that may denote the same WhatsApp account, used to
reconcile an unanswered send and to match an inbound sender to a lead; `sender_digits`
reads the sender of an inbound message, `key.remoteJidAlt` first (WhatsApp's LID
addressing puts an opaque `…@lid` in `remoteJid` and the phone in `remoteJidAlt`).
"""

from __future__ import annotations

import re

USER_SERVER = "s.whatsapp.net"
USER_SUFFIX = "@" + USER_SERVER
LID_SUFFIX = "@lid"
GROUP_SUFFIX = "@g.us"
BROADCAST_SUFFIX = "@broadcast"

_NON_DIGITS = re.compile(r"[^0-9]")
_DEVICE = re.compile(r":[0-9]+")
_BR_13 = re.compile(r"^([0-9]{2})([0-9]{2})[0-9]([0-9]{8})$")
# A Brazilian mobile subscriber number (before the extra 9) starts with 6-9; a landline with
# 2-5. Only mobiles gained the 9th digit, so only they have two forms (assumption: Anatel's
# numbering plan; Evolution itself adds or drops the digit without looking).
_BR_MOBILE_FIRST = frozenset("6789")


def digits(text: str) -> str:
    """The ASCII digits of `text` (Evolution's `replace(/\\D/g, '')`; never other scripts' digits)."""
    return _NON_DIGITS.sub("", text)


def create_jid(number: str) -> str:
    """Evolution 2.3.6's `createJid`, for the inputs a campaign uses (users, groups, broadcast).

    Kept faithful, quirks included (it drops whatever digit sits in the rewritten position),
    because the point is to predict the jid the gateway stores, not to validate numbers.
    """
    number = _DEVICE.sub("", number, count=1)
    if any(part in number for part in (GROUP_SUFFIX, USER_SUFFIX, LID_SUFFIX, BROADCAST_SUFFIX)):
        return number
    for char in (" ", "\t", "\n", "\r", "\f", "\v", "+", "(", ")"):
        number = number.replace(char, "")
    number = number.split(":")[0].split("@")[0]
    if "-" in number and len(number) >= 24:
        return re.sub(r"[^0-9-]", "", number) + GROUP_SUFFIX
    number = digits(number)
    if len(number) >= 18:
        return number + GROUP_SUFFIX
    return _br_form(_mx_ar_form(number)) + USER_SUFFIX


def _mx_ar_form(number: str) -> str:
    if number[:2] in ("52", "54") and len(number) == 13:
        return number[:2] + number[3:]
    return number


def _br_form(number: str) -> str:
    match = _BR_13.match(number)
    if match is None or match.group(1) != "55":
        return number
    if int(match.group(3)[0]) < 7 or int(match.group(2)) < 31:
        return number
    return match.group(1) + match.group(2) + match.group(3)


def number_forms(phone: str) -> tuple[str, ...]:
    """Every digit string that may be the same WhatsApp account as `phone`, most likely first:
    Evolution's createJid form, then the number as given, then the other form WhatsApp may
    have verified (Brazil with/without the 9th digit, Mexico with/without the 1, Argentina
    with/without the 9). Empty when `phone` has no digits."""
    given = digits(phone)
    if not given:
        return ()
    forms = [create_jid(given).removesuffix(USER_SUFFIX), given]
    forms.extend(_alternative_forms(given))
    seen: dict[str, None] = {}
    for form in forms:
        if form.isdigit():
            seen.setdefault(form, None)
    return tuple(seen)


def _alternative_forms(number: str) -> list[str]:
    country, rest = number[:2], number[2:]
    if country == "55":
        if len(number) == 13 and rest[2] == "9" and rest[3] in _BR_MOBILE_FIRST:
            return [country + rest[:2] + rest[3:]]
        if len(number) == 12 and rest[2] in _BR_MOBILE_FIRST:
            return [country + rest[:2] + "9" + rest[2:]]
        return []
    marker = {"52": "1", "54": "9"}.get(country)
    if marker is None:
        return []
    if len(number) == 13 and rest[0] == marker:
        return [country + rest[1:]]
    if len(number) == 12:
        return [country + marker + rest]
    return []


def candidate_jids(phone: str) -> tuple[str, ...]:
    """The user jids a message to `phone` may be stored under (`number_forms`, as jids)."""
    return tuple(form + USER_SUFFIX for form in number_forms(phone))


def is_user_jid(jid: str) -> bool:
    return jid.endswith(USER_SUFFIX) and digits(jid.split("@", 1)[0]) != ""


def jid_user_digits(jid: str) -> str | None:
    """The phone digits of a user jid (`5531…:12@s.whatsapp.net` → `5531…`); None for groups,
    broadcasts, LIDs, newsletters and anything without digits (`status@broadcast`)."""
    if not isinstance(jid, str) or not jid.endswith(USER_SUFFIX):
        return None
    user = jid.split("@", 1)[0].split(":", 1)[0]
    found = digits(user)
    return found if found and found == user else None


def sender_digits(remote_jid: object, remote_jid_alt: object = None) -> str | None:
    """The phone digits of an inbound message's sender: `key.remoteJidAlt` first (under LID
    addressing `remoteJid` is an opaque `…@lid`), else `key.remoteJid`. None when neither is
    a user jid with digits (groups, `status@broadcast`, a LID with no alternative)."""
    for candidate in (remote_jid_alt, remote_jid):
        if isinstance(candidate, str):
            found = jid_user_digits(candidate)
            if found is not None:
                return found
    return None
