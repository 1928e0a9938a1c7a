"""Dates in Date and Received fields (RFC 5322 section 3.3), read leniently.

`email.utils.parsedate_tz` already accepts the obsolete forms (two-digit
years, named zones, missing weekday). A date without a zone is read as UTC, and
an ISO 8601 date, which some relays write into Received, is accepted too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_tz

# Dates outside these years are treated as unreadable: RFC 3339 needs four
# digits, and no mail was sent before 1970.
_FIRST_YEAR = 1970
_LAST_YEAR = 9999


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
