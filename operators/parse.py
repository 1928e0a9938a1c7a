"""The parse step: raw RFC 5322/MIME bytes (or a JSON event) to a normalized event.

`parse_message` never raises for mail that is broken, truncated or mislabeled:
everything it had to repair is listed in the event's `defects`. It raises
`UnparseableMessage` only for input that is no email at all. Work and memory
are linear in the input and bounded per header, per part and per nesting level,
so hostile input (ten thousand header lines, a multipart nested 200 deep, a
25 MB body) costs what its size costs.

Two MIME walks produce the same event. The fast one uses fast-mail-parser's
Rust tree; when it rejects a message or would mangle it (see `mime_fast`), the
tolerant one uses the stdlib's `email` package, and the event gets a
"fast_parser_rejected" defect saying why. Headers, addresses, dates and
charsets are decoded by the same code on both walks.

The event's shape is the `Event` of `ticketflow.model`, checked by
`ticketflow/schemas/event.schema.json`. Deterministic: the same bytes give the
same event, apart from `ingested_at` and `source`.

Limitations: guessing the charset of unlabeled East Asian text chooses among
GB18030, cp932, cp949 and cp950 by a plausibility score, which can pick the
wrong one for a short string; `headers` keeps only the topmost occurrence of
each field; a second text/plain body of the main message (text after an inline
image, as Apple Mail writes it) is listed as an attachment without a filename,
not appended to `text`.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from ticketflow.model import Event, format_timestamp
from ticketflow.operators.mime_address import (
    Mailbox,
    message_ids,
    own_message_id,
    parse_address_list,
    synthetic_message_id,
    thread_references,
)
from ticketflow.operators.mime_charset import REPAIR_ERRORS
from ticketflow.operators.mime_dates import parse_mail_date, received_field_date
from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_event import InvalidEvent, normalize_event
from ticketflow.operators.mime_fast import FastPathRejected, walk_fast
from ticketflow.operators.mime_headers import (
    HeaderSection,
    decode_header_value,
    header_start,
    headers_for_event,
    split_header_section,
)
from ticketflow.operators.mime_parts import Bodies, MimePart, assemble_bodies
from ticketflow.operators.mime_tolerant import walk_tolerant
from ticketflow.operators.mime_verdicts import authentication_verdicts, spam_verdict
from ticketflow.operators.mime_words import decode_header_bytes

if TYPE_CHECKING:
    from ticketflow.operators.attachments import AttachmentGovernor

__all__ = ["UnparseableMessage", "decode_record", "header_block", "parse_message"]

# Addresses kept per address field; more are dropped with an "address_limit" defect.
MAX_ADDRESSES = 1000
# Raw bytes of an address or id field that are read; the rest is ignored.
_MAX_ADDRESS_FIELD_BYTES = 256 * 1024
# Raw bytes of the Subject that are decoded; a longer one is junk, not a subject.
_MAX_SUBJECT_BYTES = 64 * 1024
_WHITESPACE = re.compile(r"\s+")

WalkPath = Literal["auto", "fast", "tolerant"]


class UnparseableMessage(Exception):
    """Input that is no email at all, so it becomes a dead letter instead of an event.

    `reason` is a stable token for the dead letter: "empty" (no bytes, or only
    whitespace), "not_email" (the first line is no header field), or
    "invalid_event" (a JSON record that is no usable event). `detail` describes what
    was found.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_message(
    raw: bytes,
    source: str,
    ingested_at: datetime,
    *,
    authserv_ids: tuple[str, ...] = (),
    max_references: int = 200,
    governor: AttachmentGovernor | None = None,
) -> Event:
    """Parse one message's raw bytes into an event; broken mail is salvaged with defects.

    `source` names where the bytes came from and is copied into the event.
    `ingested_at` is when ticketflow first saw them (a naive datetime is read
    as UTC). `authserv_ids` are the trusted Authentication-Results servers
    (empty: the topmost field counts). `max_references` bounds the References
    ids kept. With a `governor`, the attachments and the html body are governed
    (sizes, types, names, malware, storage, sanitizing) as
    `ticketflow.operators.attachments` describes. Raises `UnparseableMessage`
    ("empty", "not_email") only.
    """
    return _parse_message(
        raw,
        source,
        ingested_at,
        authserv_ids=authserv_ids,
        max_references=max_references,
        path="auto",
        governor=governor,
    )


def decode_record(
    value: bytes,
    source: str,
    ingested_at: datetime,
    *,
    content_type: str | None = None,
    authserv_ids: tuple[str, ...] = (),
    max_references: int = 200,
    governor: AttachmentGovernor | None = None,
) -> Event:
    """Turn one record (raw mail or a JSON event) into an event.

    A record is a JSON event when `content_type` is application/json (or a
    `+json` type), or, without a content type, when it starts with "{" and
    parses as JSON. A JSON event is validated and normalized (see
    `mime_event`); one that is unusable, such as an object without an
    "envelope" key, raises `UnparseableMessage("invalid_event", ...)`. Anything
    else is parsed as mail with `parse_message`. A `governor` governs either
    kind. A JSON event carries no attachment bytes, so only what its entries
    list is checked (`AttachmentGovernor.govern_listed`).
    """
    value = bytes(value)
    document = _json_event_document(value, content_type)
    if document is None:
        return parse_message(
            value,
            source,
            ingested_at,
            authserv_ids=authserv_ids,
            max_references=max_references,
            governor=governor,
        )
    try:
        event = normalize_event(
            document, value, source, _aware(ingested_at), max_references=max_references
        )
    except InvalidEvent as error:
        raise UnparseableMessage("invalid_event", str(error)) from error
    return event if governor is None else governor.govern_event(event)


def header_block(raw: bytes, max_bytes: int = 65536) -> str:
    """Return the header section of a message as text, at most `max_bytes` of it.

    For dead letters of mail too large to parse: only the first `max_bytes`
    are read, the cut falls on a line end, and bytes that are not UTF-8 are
    read as windows-1252. Returns "" when there is no header section.
    """
    head = bytes(raw[: max(0, max_bytes)])
    section = split_header_section(head, DefectLog())
    if not section.fields:
        return ""
    end = section.body_offset
    if end >= len(head) and len(raw) > len(head):
        end = head.rfind(b"\n") + 1  # cut at the last whole line
    return head[:end].decode("utf-8", errors=REPAIR_ERRORS)


def _json_event_document(value: bytes, content_type: str | None) -> Any | None:
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            return None
        try:
            return json.loads(value)
        except (ValueError, RecursionError) as error:
            raise UnparseableMessage("invalid_event", f"invalid JSON in record: {error}") from error
    if not value.lstrip()[:1] == b"{":
        return None
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        return None  # not JSON after all: read as mail
    if isinstance(document, dict) and "envelope" not in document:
        raise UnparseableMessage("invalid_event", 'JSON object without an "envelope" key')
    return document


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _with_line_feeds(raw: bytes, defects: DefectLog) -> bytes:
    """Turn bare CR line endings (old Mac mailers) into CRLF, so header lines split."""
    # `find` with an end searches the first 64 KiB without copying them.
    if raw.find(b"\n", 0, 65536) != -1 or raw.find(b"\r", 0, 65536) == -1:
        return raw
    defects.add("bare_cr_line_endings", "lines end in CR alone; read as CRLF")
    return raw.replace(b"\r", b"\r\n")


def _parse_message(
    raw: bytes,
    source: str,
    ingested_at: datetime,
    *,
    authserv_ids: tuple[str, ...],
    max_references: int,
    path: WalkPath,
    governor: AttachmentGovernor | None = None,
) -> Event:
    """Parse with a chosen MIME walk; "fast" raises `FastPathRejected` instead of falling back."""
    raw = bytes(raw)
    if not raw or raw.isspace():  # the test of `not raw.strip()`, without copying the message
        raise UnparseableMessage("empty", f"{len(raw)} bytes and no header")
    defects = DefectLog()
    raw = _with_line_feeds(raw, defects)
    section = split_header_section(raw, defects)
    start = header_start(raw)
    if not section.fields:
        first_line = raw[start:].split(b"\n", 1)[0][:60]
        raise UnparseableMessage("not_email", f"first line is not a header field: {first_line!r}")

    parts = _walk_mime(raw[start:] if start else raw, section, defects, path)
    bodies = assemble_bodies(parts, defects, governor)
    ingested = _aware(ingested_at)

    envelope = _envelope(section, bodies, defects, max_references)
    return {
        "event_id": "evt_" + hashlib.sha256(raw).hexdigest()[:24],
        "received_at": format_timestamp(_received_at(section, ingested, defects)),
        "ingested_at": format_timestamp(ingested),
        "source": source,
        "envelope": envelope,  # type: ignore[typeddict-item]
        "headers": headers_for_event(section, defects),
        "authentication": authentication_verdicts(section, authserv_ids, defects),
        "spam": spam_verdict(section, defects),
        "text": bodies.text,
        "html": bodies.html,
        "attachments": bodies.attachments,
        "defects": defects.as_list(),
    }


def _walk_mime(
    mime_input: bytes, section: HeaderSection, defects: DefectLog, path: WalkPath
) -> list[MimePart]:
    if path == "tolerant":
        return walk_tolerant(mime_input, section, defects)
    if section.ended_by_body_line:
        reason = "header section ended by a line that is no header field"
        if path == "fast":
            raise FastPathRejected(reason)
    else:
        scratch = DefectLog()
        try:
            parts = walk_fast(mime_input, section, scratch)
        except FastPathRejected as rejection:
            if path == "fast":
                raise
            reason = rejection.reason
        else:
            defects.extend(scratch)
            return parts
    defects.add("fast_parser_rejected", reason)
    return walk_tolerant(mime_input, section, defects)


def _address_field(section: HeaderSection, name: str, defects: DefectLog) -> list[Mailbox]:
    raw = section.first(name)
    if raw is None:
        return []
    text = decode_header_bytes(raw[:_MAX_ADDRESS_FIELD_BYTES], defects, name)
    mailboxes = parse_address_list(text, defects, name)
    if len(mailboxes) > MAX_ADDRESSES:
        defects.add("address_limit", f"{name}: {len(mailboxes)} addresses cut to {MAX_ADDRESSES}")
        mailboxes = mailboxes[:MAX_ADDRESSES]
    return mailboxes


def _field_text(section: HeaderSection, name: str, defects: DefectLog) -> str | None:
    raw = section.first(name)
    return None if raw is None else decode_header_bytes(raw, defects, name)


def _envelope(
    section: HeaderSection, bodies: Bodies, defects: DefectLog, max_references: int
) -> dict[str, Any]:
    senders = _address_field(section, "From", defects)
    if not senders:
        defects.add("missing_from", "no From address")
    sender = senders[0] if senders else Mailbox("", "")

    subject_raw = section.first("Subject")
    subject = (
        ""
        if subject_raw is None
        else decode_header_value(subject_raw[:_MAX_SUBJECT_BYTES], defects, "Subject")
    )
    subject = _WHITESPACE.sub(" ", subject).strip()

    id_text = _field_text(section, "Message-ID", defects)
    message_id = own_message_id(id_text, defects) if id_text is not None else None
    if message_id is None:
        message_id = synthetic_message_id(sender.address, subject, bodies.text, bodies.html)
        defects.add("missing_message_id", f"no Message-ID; synthesized {message_id}")

    reply_text = _field_text(section, "In-Reply-To", defects)
    parents = message_ids(reply_text, defects, "In-Reply-To") if reply_text else []
    references_raw = section.first("References")
    references = (
        thread_references(
            decode_header_bytes(references_raw, defects, "References"), max_references, defects
        )
        if references_raw is not None
        else []
    )
    return {
        "from": sender.address,
        "from_name": sender.name,
        "to": [mailbox.address for mailbox in _address_field(section, "To", defects)],
        "cc": [mailbox.address for mailbox in _address_field(section, "Cc", defects)],
        "reply_to": [mailbox.address for mailbox in _address_field(section, "Reply-To", defects)],
        "subject": subject,
        "message_id": message_id,
        "in_reply_to": parents[0] if parents else None,
        "references": references,
    }


def _received_at(section: HeaderSection, ingested_at: datetime, defects: DefectLog) -> datetime:
    """Return the topmost Received date, else the Date field, else the ingest time."""
    received_moment = None
    received = _field_text(section, "Received", defects)
    if received is not None:
        date_text = received_field_date(received)
        received_moment = parse_mail_date(date_text)
        if received_moment is None:
            defects.add("bad_date", f"Received: unreadable date {date_text.strip()[:60]!r}")

    date_moment = None
    date_text = _field_text(section, "Date", defects)
    if date_text is None:
        defects.add("missing_date", "no Date field")
    else:
        date_moment = parse_mail_date(date_text)
        if date_moment is None:
            defects.add("bad_date", f"Date: unreadable date {date_text.strip()[:60]!r}")
    return received_moment or date_moment or ingested_at
