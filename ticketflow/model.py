"""The plain data that flows between steps: raw input, events, dead letters.

Events are plain dicts in the shape of the design's event contract (checked by
`schemas/event.schema.json`), so they serialize to JSON as they are and any step
can be tested without the engine. The `TypedDict`s below document that shape for
readers and type checkers; nothing enforces them at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict


class Defect(TypedDict):
    """Something wrong with the input that the parser recovered from."""

    code: str  # stable token, e.g. "charset_alias", "base64_padding"
    detail: str  # prose for a reader; may change between releases


# Addresses, subject and thread ids, decoded. "from" is a Python keyword, hence
# the functional form.
Envelope = TypedDict(
    "Envelope",
    {
        "from": str,
        "from_name": str,
        "to": list[str],
        "cc": list[str],
        "reply_to": list[str],
        "subject": str,
        "message_id": str,
        "in_reply_to": str | None,
        "references": list[str],
    },
)


class Attachment(TypedDict):
    """One non-body MIME part, described; the bytes travel apart from the event."""

    filename: str
    content_type: str
    size: int
    content_id: str | None
    disposition: str
    sha256: str
    download_url: str | None
    # Why attachment governance refused the file ("too_large", "type_denied:…"), or None.
    refused: NotRequired[str | None]
    # The malware signature clamd found, or None.
    quarantined: NotRequired[str | None]


class Event(TypedDict):
    """The parser's output: one message, normalized."""

    event_id: str
    received_at: str
    ingested_at: str
    source: str
    envelope: Envelope
    headers: dict[str, str]
    authentication: dict[str, str]
    spam: dict[str, Any]
    text: str
    html: str
    attachments: list[Attachment]
    defects: list[Defect]


@dataclass(frozen=True)
class RawMessage:
    """Bytes of one message as a source read them, and where they came from.

    `source` names the position precisely enough to find the bytes again: a file
    path with its index inside an mbox, or a Kafka topic, partition and offset.
    Reading the same position twice gives an equal `RawMessage`.
    """

    source: str
    raw: bytes
    ingested_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # What the value is, from a Kafka record header: "message/rfc822" or
    # "application/json"; None lets the parser detect it.
    content_type: str | None = None
    # W3C trace context carried with the record, if any.
    traceparent: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """Input that could not become a ticket, kept with the reason and its source.

    `headers` holds the message's header block when one could be found (so a
    `too_large` message can still be identified); `raw` holds the original bytes
    unless they exceed the size limit.
    """

    source: str
    reason: str
    detail: str
    headers: str = ""
    raw: bytes = b""


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC; the one clock production code uses."""
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with a `Z`, to the second."""
    utc = moment.astimezone(UTC)
    if utc.year < 1000:
        # What %Y writes for these years depends on the C library (glibc: no leading zeros).
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return utc.isoformat(timespec="seconds")[:19] + "Z"
