"""Send windows in the lead's local time, and which time zone is the lead's.

Pure (``now`` passed in). Campaign tools people trust (Braze quiet hours, Pinpoint
QuietTime, Twilio's send windows) only message recipients inside their local hours; a
message due outside its window waits in the queue until the window opens.

A window ``[start, end)`` may wrap midnight (22:00-06:00). ``start == end`` means the whole
day. Both NULL means any time.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_UNKNOWN_ZONE = "Etc/Unknown"


@lru_cache(maxsize=1024)
def zone_named(name: str | None) -> ZoneInfo | None:
    """The IANA zone `name`, or None when it is empty or unknown (a typo must not stop sends)."""
    if not name or not name.strip():
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=65536)
def zone_of_phone(phone: str | None) -> ZoneInfo | None:
    """The zone of a phone number when its prefix maps to exactly one zone (phonenumbers'
    data: one zone for most countries, by area code for some multi-zone ones), else None."""
    digits = "".join(ch for ch in phone or "" if ch.isdigit())
    if not digits:
        return None
    # Imported on first use (issue 15): only leads without a zone of their own, in a campaign
    # with a send window, need the phone's; the rest of the consumer never loads its data.
    import phonenumbers
    from phonenumbers import timezone as phone_timezones

    try:
        number = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return None
    zones = phone_timezones.time_zones_for_number(number)
    if len(zones) != 1 or zones[0] == _UNKNOWN_ZONE:
        return None
    return zone_named(zones[0])


def lead_zone(*, lead_timezone: str | None, phone: str | None, config_timezone: str | None) -> tzinfo:
    """The lead's zone: its own, else its phone's (one zone only), else the campaign's, else UTC."""
    return zone_named(lead_timezone) or zone_of_phone(phone) or zone_named(config_timezone) or UTC


def is_open(local: time, start: time | None, end: time | None) -> bool:
    """Is local time of day `local` inside ``[start, end)``?"""
    if start is None or end is None or start == end:
        return True
    if start < end:
        return start <= local < end
    return local >= start or local < end  # wraps midnight


def _at(day: date, moment: time, zone: tzinfo) -> datetime:
    return datetime.combine(day, moment.replace(tzinfo=None), tzinfo=zone)


def next_opening(now: datetime, start: time | None, end: time | None, zone: tzinfo) -> datetime | None:
    """None when the window is open at `now`; else the next instant (UTC) it opens.

    On a day whose `start` does not exist (spring-forward gap) zoneinfo maps it to the
    instant one gap later, which is the first moment the wall clock reads past `start`.
    """
    local = now.astimezone(zone)
    if start is None or is_open(local.time().replace(tzinfo=None), start, end):
        return None
    opening = _at(local.date(), start, zone)
    if opening.astimezone(UTC) <= now.astimezone(UTC):
        opening = _at(local.date() + timedelta(days=1), start, zone)
    return opening.astimezone(UTC)
