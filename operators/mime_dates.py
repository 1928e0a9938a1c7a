"""Dates in Date and Received fields (RFC 5322 section 3.3), read leniently.

`email.utils.parsedate_tz` already accepts the obsolete forms (two-digit
years, named zones, missing weekday). A date without a zone is read as UTC, and
an ISO 8601 date, which some relays write into Received, is accepted too.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_tz

# Dates outside these years are treated as unreadable: RFC 3339 needs four
# digits, and no mail was sent before 1970.
_FIRST_YEAR = 1970
_LAST_YEAR = 9999

# The form nearly every mailer writes, "Tue, 28 Apr 2026 10:00:00 +0200",
# read without `parsedate_tz`. Whatever follows the zone after whitespace, such
# as "(UTC)", is ignored, as `parsedate_tz` ignores all but its first five
# words. For these strings both readings give the same instant; any other
# string goes to `parsedate_tz`.
_COMMON_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?([0-9]{1,2}) ([A-Z][a-z]{2}) ([1-9][0-9]{3}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})(?:\s.*)?",
    re.DOTALL,
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}


def parse_mail_date(text: str) -> datetime | None:
    """Return the instant a date-time names, timezone-aware UTC, or None when unreadable."""
    text = text.strip()
    if not text:
        return None
    moment = _parse_rfc5322(text) or _parse_iso8601(text)
    if moment is None or not _FIRST_YEAR <= moment.year <= _LAST_YEAR:
        return None
    return moment


def _parse_rfc5322(text: str) -> datetime | None:
    found = _COMMON_DATE.fullmatch(text)
    if found is not None and found.group(2) in _MONTHS:
        return _common_date_moment(found)
    return _parse_with_parsedate_tz(text)


def _common_date_moment(found: re.Match[str]) -> datetime | None:
    """Return the instant a `_COMMON_DATE` match names, or None when it is no valid date."""
    day, month_name, year, hour, minute, second, sign, zone_hours, zone_minutes = found.groups()
    offset = int(zone_hours) * 3600 + int(zone_minutes) * 60
    month = _MONTHS[month_name]
    try:
        local = datetime(
            int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
        return local - timedelta(seconds=-offset if sign == "-" else offset)
    except (ValueError, OverflowError):
        return None


def _parse_with_parsedate_tz(text: str) -> datetime | None:
    try:
        parts = parsedate_tz(text)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    if parts is None:
        return None
    offset = parts[9] or 0
    try:
        local = datetime(*parts[:6], tzinfo=UTC)
        return local - timedelta(seconds=offset)
    except (ValueError, OverflowError):
        return None


def _parse_iso8601(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def received_field_date(value: str) -> str:
    """Return the date-time of a Received field: the text after its last ";"."""
    _, semicolon, date = value.rpartition(";")
    return date if semicolon else ""
