"""JSON events from a parsing service, validated and normalized to the event shape.

A parsing service upstream may deliver events that already have the design's
shape. They skip the MIME step but not the contract: message ids are put in
`<...>` form, addresses are reduced to bare lowercased addresses, missing
fields are filled with their empty value, fields of the wrong type or unknown
to the schema are dropped, and each fix is a defect on the event. The event
keeps its own `event_id` when it has one; `source` and `ingested_at` are always
the ones of the record that carried it, so a re-read is recognized by position.

A document without an "envelope" object is no usable event and raises
`InvalidEvent`.
"""

from __future__ import annotations

import math

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ticketflow.model import Event, format_timestamp
from ticketflow.operators.mime_address import (
    message_ids,
    own_message_id,
    parse_address_list,
    synthetic_message_id,
    thread_references,
)
from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_headers import MAX_HEADER_CHARS, MAX_HEADERS, clean_text
from ticketflow.operators.mime_params import normalize_content_id
from ticketflow.operators.mime_verdicts import AUTH_METHODS, AUTH_RESULTS

EVENT_FIELDS = (
    "event_id",
    "received_at",
    "ingested_at",
    "source",
    "envelope",
    "headers",
    "authentication",
    "spam",
    "text",
    "html",
    "attachments",
    "defects",
)
# Fields a JSON event should carry; one that is missing is filled and noted.
_FILLED_FIELDS = (
    "received_at",
    "headers",
    "authentication",
    "spam",
    "text",
    "html",
    "attachments",
    "defects",
)
_ENVELOPE_FIELDS = (
    "from",
    "from_name",
    "to",
    "cc",
    "reply_to",
    "subject",
    "message_id",
    "in_reply_to",
    "references",
)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# An attachment's download_url: an absolute http(s) URL without spaces or control characters.
_HTTP_URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f]+$", re.IGNORECASE)
_DEFECT_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
_WHITESPACE = re.compile(r"\s+")
# Upper bounds that keep a hostile JSON event as small as a parsed one.
_MAX_ATTACHMENTS = 1000
_MAX_ADDRESSES = 1000


class InvalidEvent(ValueError):
    """A JSON document that cannot be normalized into an event; the message describes why."""


def _text(value: Any, name: str, defects: DefectLog) -> str:
    if value is None:
        return ""  # an absent field is noted once by _note_missing
    if not isinstance(value, str):
        defects.add("invalid_field", f"{name} is no string; set to empty")
        return ""
    return clean_text(value, defects, name)


def _addresses(value: Any, name: str, defects: DefectLog) -> list[str]:
    if value is None:
        defects.add("missing_field", f"envelope.{name} missing; set to []")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        defects.add("invalid_field", f"envelope.{name} is no list; set to []")
        return []
    addresses: list[str] = []
    for item in items[:_MAX_ADDRESSES]:
        if not isinstance(item, str):
            defects.add("invalid_field", f"envelope.{name}: a non-string address dropped")
            continue
        mailboxes = parse_address_list(item, defects, f"envelope.{name}")
        bare = [mailbox.address for mailbox in mailboxes]
        if bare != [item]:
            defects.add("address_normalized", f"envelope.{name}: address reduced to its bare form")
        addresses.extend(bare)
    return addresses


def _sender(envelope: dict[str, Any], defects: DefectLog) -> tuple[str, str]:
    raw_from = _text(envelope.get("from"), "envelope.from", defects)
    mailboxes = parse_address_list(raw_from, defects, "envelope.from") if raw_from else []
    address = mailboxes[0].address if mailboxes else ""
    if raw_from and address != raw_from:
        defects.add("address_normalized", "envelope.from: address reduced to its bare form")
    name_value = envelope.get("from_name")
    if name_value is None and mailboxes:
        return address, mailboxes[0].name
    return address, _text(name_value, "envelope.from_name", defects)


def _message_id(value: Any, defects: DefectLog) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    normalized = own_message_id(value, defects)
    if normalized is not None and normalized != value:
        defects.add("message_id_brackets", "envelope.message_id put in <...> form")
    return normalized


def _references(value: Any, max_references: int, defects: DefectLog) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        defects.add("invalid_field", "envelope.references is no list of strings; set to []")
        return []
    joined = " ".join(item if "<" in item else f"<{item.strip()}>" for item in items)
    references = thread_references(joined, max_references, defects)
    if references != items:
        defects.add("message_id_brackets", "envelope.references normalized")
    return references


def _envelope(
    document: dict[str, Any], text: str, html: str, max_references: int, defects: DefectLog
) -> dict[str, Any]:
    envelope = document.get("envelope")
    if not isinstance(envelope, dict):
        raise InvalidEvent('a JSON event needs an "envelope" object')
    sender, sender_name = _sender(envelope, defects)
    subject = _WHITESPACE.sub(
        " ", _text(envelope.get("subject"), "envelope.subject", defects)
    ).strip()

    message_id = _message_id(envelope.get("message_id"), defects)
    if message_id is None:
        message_id = synthetic_message_id(sender, subject, text, html)
        defects.add("missing_message_id", f"no message_id; synthesized {message_id}")
    parent = envelope.get("in_reply_to")
    parents = (
        message_ids(parent, defects, "envelope.in_reply_to") if isinstance(parent, str) else []
    )
    if parent is not None and not parents:
        defects.add("invalid_field", "envelope.in_reply_to holds no message id; set to null")
    return {
        "from": sender,
        "from_name": sender_name,
        "to": _addresses(envelope.get("to", []), "to", defects),
        "cc": _addresses(envelope.get("cc", []), "cc", defects),
        "reply_to": _addresses(envelope.get("reply_to", []), "reply_to", defects),
        "subject": subject,
        "message_id": message_id,
        "in_reply_to": parents[0] if parents else None,
        "references": _references(envelope.get("references"), max_references, defects),
    }


def _string_map(value: Any, name: str, defects: DefectLog) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        defects.add("invalid_field", f"{name} is no object; set to {{}}")
        return {}
    result: dict[str, str] = {}
    for key, item in value.items():
        if len(result) >= MAX_HEADERS:
            defects.add(
                "header_limit", f"{name}: more than {MAX_HEADERS} entries; the rest dropped"
            )
            break
        if not isinstance(item, str):
            defects.add("invalid_field", f"{name}.{key}: non-string value dropped")
            continue
        if len(item) > MAX_HEADER_CHARS:
            defects.add("header_limit", f"{name}.{key}: value cut to {MAX_HEADER_CHARS} characters")
        result[str(key)] = clean_text(item[:MAX_HEADER_CHARS], defects, name)
    return result


def _authentication(value: Any, defects: DefectLog) -> dict[str, str]:
    raw = value if isinstance(value, dict) else {}
    if value is not None and not isinstance(value, dict):
        defects.add("invalid_field", "authentication is no object; set to {}")
    verdicts: dict[str, str] = {}
    for method, result in raw.items():
        normalized = result.lower() if isinstance(result, str) else ""
        if method in AUTH_METHODS and normalized in AUTH_RESULTS:
            verdicts[method] = normalized
        else:
            defects.add("invalid_field", f"authentication.{method}: {result!r} dropped")
    return verdicts


def _spam(value: Any, defects: DefectLog) -> dict[str, Any]:
    raw = value if isinstance(value, dict) else {}
    if value is not None and not isinstance(value, dict):
        defects.add("invalid_field", "spam is no object; set to no verdict")
    score = raw.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float, type(None))):
        defects.add("invalid_field", "spam.score is no number; set to null")
        score = None
    elif score is not None and not math.isfinite(score):
        defects.add("invalid_field", "spam.score is not a finite number; set to null")
        score = None
    is_spam = raw.get("is_spam", False)
    if not isinstance(is_spam, bool):
        defects.add("invalid_field", "spam.is_spam is no boolean; set to false")
        is_spam = False
    return {"score": None if score is None else float(score), "is_spam": is_spam}


def _attachment(item: Any, defects: DefectLog) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        defects.add("invalid_field", "attachments: a non-object entry dropped")
        return None
    size = item.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        defects.add("invalid_field", "attachments: size is no count of bytes; set to 0")
        size = 0
    sha256 = item.get("sha256")
    if not (isinstance(sha256, str) and _SHA256_HEX.match(sha256.lower())):
        defects.add("invalid_field", "attachments: sha256 missing or invalid; set to empty")
        sha256 = ""
    disposition = item.get("disposition")
    if disposition not in ("attachment", "inline"):
        disposition = "attachment"
    content_id = item.get("content_id")
    return {
        "filename": _text(item.get("filename", ""), "attachments.filename", defects),
        "content_type": _media_type(item.get("content_type", "application/octet-stream"), defects),
        "size": size,
        "content_id": normalize_content_id(content_id) if isinstance(content_id, str) else None,
        "disposition": disposition,
        "sha256": sha256.lower(),
        "download_url": _download_url(item.get("download_url"), defects),
        "refused": _optional_text(item.get("refused"), "attachments.refused", defects),
        "quarantined": _optional_text(item.get("quarantined"), "attachments.quarantined", defects),
    }


def _media_type(value: Any, defects: DefectLog) -> str:
    """Return an attachment's declared type lowercased and without parameters ("; name=x")."""
    text = _text(value, "attachments.content_type", defects)
    return text.partition(";")[0].strip().lower()


def _download_url(value: Any, defects: DefectLog) -> str | None:
    """Return an attachment's link when it is an http(s) URL, else None (javascript:, file:)."""
    if value is None:
        return None
    if isinstance(value, str) and _HTTP_URL.match(value):
        return value
    excerpt = value[:80] if isinstance(value, str) else type(value).__name__
    defects.add(
        "invalid_field", f"attachments.download_url {excerpt!r} is no http(s) URL; set to null"
    )
    return None


def _optional_text(value: Any, name: str, defects: DefectLog) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        defects.add("invalid_field", f"{name} is no string; set to null")
        return None
    return clean_text(value, defects, name)


def _list_of(
    value: Any, name: str, convert: Callable[[Any, DefectLog], Any], defects: DefectLog
) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        defects.add("invalid_field", f"{name} is no list; set to []")
        return []
    converted = (convert(item, defects) for item in value[:_MAX_ATTACHMENTS])
    return [item for item in converted if item is not None]


def _own_defect(item: Any, defects: DefectLog) -> dict[str, str] | None:
    if (
        isinstance(item, dict)
        and isinstance(item.get("code"), str)
        and _DEFECT_CODE.match(item["code"])
        and isinstance(item.get("detail", ""), str)
    ):
        return {"code": item["code"], "detail": item.get("detail", "")}
    defects.add("invalid_field", "defects: an entry without a snake_case code dropped")
    return None


def _timestamp(value: Any, fallback: datetime, defects: DefectLog) -> str:
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None:
            return format_timestamp(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    defects.add("bad_date", f"received_at {str(value)[:40]!r} unreadable; ingest time used")
    return format_timestamp(fallback)


def _note_missing(
    document: dict[str, Any], names: tuple[str, ...], prefix: str, defects: DefectLog
) -> None:
    for name in names:
        if name not in document:
            defects.add("missing_field", f"{prefix}{name} missing; filled with its empty value")


def normalize_event(
    document: Any, value: bytes, source: str, ingested_at: datetime, *, max_references: int
) -> Event:
    """Validate a decoded JSON event and return it in the event shape, with defects for fixes."""
    if not isinstance(document, dict):
        raise InvalidEvent("a JSON event must be an object")
    defects = DefectLog()
    for own in _list_of(document.get("defects"), "defects", _own_defect, DefectLog()):
        defects.add(own["code"], own["detail"])
    _note_missing(document, _FILLED_FIELDS, "", defects)
    if isinstance(document.get("envelope"), dict):
        _note_missing(document["envelope"], _ENVELOPE_FIELDS, "envelope.", defects)
    for key in document:
        if key not in EVENT_FIELDS:
            defects.add(
                "unknown_field", f"field {str(key)[:40]!r} is not in the event schema; dropped"
            )

    text = _text(document.get("text", ""), "text", defects)
    html = _text(document.get("html", ""), "html", defects)
    envelope = _envelope(document, text, html, max_references, defects)
    event_id = document.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        event_id = "evt_" + hashlib.sha256(value).hexdigest()[:24]
        defects.add("missing_field", "event_id missing; derived from the record's bytes")

    return {
        "event_id": event_id.strip(),
        "received_at": _timestamp(document.get("received_at"), ingested_at, defects),
        "ingested_at": format_timestamp(ingested_at),
        "source": source,
        "envelope": envelope,  # type: ignore[typeddict-item]
        "headers": _string_map(document.get("headers"), "headers", defects),
        "authentication": _authentication(document.get("authentication"), defects),
        "spam": _spam(document.get("spam"), defects),
        "text": text,
        "html": html,
        "attachments": _list_of(document.get("attachments"), "attachments", _attachment, defects),
        "defects": defects.as_list(),
    }
