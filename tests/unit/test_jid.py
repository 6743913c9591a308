"""consumer/core/jid: Evolution's createJid, the forms a number may take, inbound senders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.core import jid

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "contract" / "evolution" / "createjid_vectors.json").read_text(
        encoding="utf-8"
    )
)


@pytest.mark.parametrize(("given", "expected"), [(v["input"], v["jid"]) for v in VECTORS["vectors"]])
def test_create_jid_matches_evolution(given: str, expected: str) -> None:
    assert jid.create_jid(given) == expected


@pytest.mark.parametrize(
    ("phone", "forms"),
    [
        # Brazil, DDD >= 31, subscriber 8xxx: Evolution stores without the 9
        ("+5531980000006", ("553180000006", "5531980000006")),
        ("553180000006", ("553180000006", "5531980000006")),
        # DDD < 31: createJid keeps the 9, WhatsApp may still know the old 8-digit form
        ("+55 11 98000-0006", ("5511980000006", "551180000006")),
        # subscriber 6xxx: createJid keeps it (joker < 7), both forms are the same mobile
        ("5531960000006", ("5531960000006", "553160000006")),
        # a landline has one form
        ("551132345678", ("551132345678",)),
        # Mexico and Argentina
        ("+52 1 55 1234 5678", ("525512345678", "5215512345678")),
        ("525512345678", ("525512345678", "5215512345678")),
        ("5491123456789", ("541123456789", "5491123456789")),
        ("541123456789", ("541123456789", "5491123456789")),
        # elsewhere: as given
        ("+1 415 555 0123", ("14155550123",)),
        ("", ()),
        ("no digits", ()),
    ],
)
def test_number_forms(phone: str, forms: tuple[str, ...]) -> None:
    assert jid.number_forms(phone) == forms


def test_candidate_jids_start_with_the_create_jid_form() -> None:
    assert jid.candidate_jids("+5531980000006") == (
        "553180000006@s.whatsapp.net",
        "5531980000006@s.whatsapp.net",
    )


@pytest.mark.parametrize(
    ("remote", "alt", "expected"),
    [
        ("553180000006@s.whatsapp.net", None, "553180000006"),
        ("5531980000006:12@s.whatsapp.net", None, "5531980000006"),
        ("123456789012345@lid", "5531980000006@s.whatsapp.net", "5531980000006"),
        ("5531980000006@s.whatsapp.net", "123456789012345@lid", "5531980000006"),
        ("123456789012345@lid", None, None),
        ("status@broadcast", None, None),
        ("120363025555555555@g.us", None, None),
        ("@s.whatsapp.net", None, None),
        ("abc@s.whatsapp.net", None, None),
        (None, None, None),
        (42, ["x"], None),
    ],
)
def test_sender_digits(remote: object, alt: object, expected: str | None) -> None:
    assert jid.sender_digits(remote, alt) == expected


def test_every_form_of_an_inbound_sender_reaches_the_stored_lead() -> None:
    """Issue 21: a reply from 553180000006@s.whatsapp.net is the lead stored as +5531980000006."""
    sender = jid.sender_digits("553180000006@s.whatsapp.net")
    assert sender is not None
    assert jid.digits("+5531980000006") in jid.number_forms(sender)
