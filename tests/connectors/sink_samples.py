"""Sample tickets and messages for the sink tests, in the shapes of `ticketflow.connectors.sink`.

Each test file states what it needs on top (`message(…, html="…")`); the
defaults are one ordinary ticket of tenant acme with its first message.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ticketflow.connectors.sink import SinkAttachment, SinkMessage, SinkTicket


def sample_message(event_id: str = "evt_first", **changes: Any) -> SinkMessage:
    """Return a first message from Alice; `changes` replace any field."""
    fields: dict[str, Any] = {
        "dedupe_key": f"acme:{event_id}",
        "event_id": event_id,
        "message_id": f"<{event_id}@mail.example.com>",
        "sender": "alice@bluefin.example.com",
        "sender_name": "Alice Moreau",
        "sent_at": "2026-04-30T12:00:00Z",
        "received_at": "2026-04-30T12:00:05Z",
        "kind": "original",
        "text": "POST /charges times out after 30 s since this morning.",
        "html": "",
        "authentication": {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
        "attachments": (),
    }
    fields.update(changes)
    return SinkMessage(**fields)


def sample_ticket(first_message: SinkMessage | None = None, **changes: Any) -> SinkTicket:
    """Return an open P1 payments ticket of tenant acme; `changes` replace any field."""
    fields: dict[str, Any] = {
        "external_id": "tkt_0f3a9c",
        "key": "ACME-17",
        "tenant": "acme",
        "subject": "API timeout on POST /charges",
        "requester": "alice@bluefin.example.com",
        "requester_name": "Alice Moreau",
        "participants": ("alice@bluefin.example.com",),
        "priority": "P1",
        "component": "payments",
        "environment": "prod-us-west-2",
        "tier": None,
        "status": "open",
        "review_reasons": (),
        "reply_address": "acme-support+t-0f3a9c@support.example.com",
        "first_message": first_message or sample_message(),
    }
    fields.update(changes)
    return SinkTicket(**fields)


def stored(name: str, data: bytes, **changes: Any) -> SinkAttachment:
    """Return an attachment kept in the attachment store as `name`, with a download link."""
    fields: dict[str, Any] = {
        "filename": name,
        "content_type": "application/json",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "download_url": f"https://files.example.com/{name}",
    }
    fields.update(changes)
    return SinkAttachment(**fields)
