"""Build small valid events for tests that must not depend on the parser."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from ticketflow.config import Settings
from ticketflow.flows.main import FlowContext, ThreadJoinLogic, routing_key
from ticketflow.model import Event
from ticketflow.outcome import Outcome, TenantCopy


def make_event(
    message_id: str,
    *,
    sender: str = "alice@example.com",
    subject: str = "API timeout",
    received_at: str = "2026-04-30T12:00:00Z",
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    to: tuple[str, ...] = ("acme-support@support.example.com",),
    cc: tuple[str, ...] = (),
    text: str = "It times out.",
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> Event:
    """Return an event in the design's shape with the given thread facts."""
    return {
        "event_id": "evt_" + hashlib.sha256(f"{message_id}{source}".encode()).hexdigest()[:24],
        "received_at": received_at,
        "ingested_at": received_at,
        "source": source or f"/corpus/{message_id.strip('<>')}.eml",
        "envelope": {
            "from": sender,
            "from_name": "",
            "to": list(to),
            "cc": list(cc),
            "reply_to": [],
            "subject": subject,
            "message_id": message_id,
            "in_reply_to": in_reply_to,
            "references": list(references),
        },
        "headers": dict(headers or {}),
        "authentication": {},
        "spam": {"score": None, "is_spam": False},
        "text": text,
        "html": "",
        "attachments": [],
        "defects": [],
    }


def make_copy(event: Event, tenant: str = "acme", **changes: Any) -> TenantCopy:
    """Wrap an event as one tenant's copy, as the fan-out step would."""
    fields: dict[str, Any] = {
        "tenant": tenant,
        "event": event,
        "first_copy": True,
        "enrichment": {"priority": "P3", "component": None, "environment": None, "tier": None},
        "mailbox": f"{tenant}-support@support.example.com",
    }
    fields.update(changes)
    return TenantCopy(**fields)


# Settings that `join_all` uses when a test passes none; a fixture may point it
# at a Redis-backed configuration to run the same scenarios on shared state.
default_settings: Any = Settings


def join_all(copies: list[TenantCopy], settings: Settings | None = None, store: Any = None) -> list[Outcome]:
    """Run copies through one thread-join logic per routing key, in order, then end the input.

    This is what the engine does with one worker, minus the engine; with a store,
    each outcome is written right after it is decided, as the sink would.
    """
    context = FlowContext(
        settings=settings or default_settings(), store=store, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC)
    )
    logics: dict[str, ThreadJoinLogic] = {}
    outcomes: list[Outcome] = []

    def emit(emitted: Any) -> None:
        for outcome in emitted:
            outcomes.append(outcome)
            if store is not None:
                store.write([outcome])

    for copy in copies:
        key = routing_key(copy)
        logic = logics.setdefault(key, ThreadJoinLogic(context))
        emitted, discard = logic.on_batch([copy])
        emit(emitted)
        if discard:
            del logics[key]
    for logic in logics.values():
        emitted, _ = logic.on_eof()
        emit(emitted)
    return outcomes


def tickets_of(outcomes: list[Outcome]) -> dict[str, set[str]]:
    """Group message ids by their final ticket id, following merges."""
    aliases = {old: outcome.ticket_id for outcome in outcomes for old in outcome.merged_from}

    def resolve(ticket_id: str) -> str:
        while ticket_id in aliases:
            ticket_id = aliases[ticket_id]
        return ticket_id

    tickets: dict[str, set[str]] = {}
    for outcome in outcomes:
        if outcome.ticket_id and outcome.copy is not None:
            message_id = outcome.copy.event["envelope"]["message_id"]
            tickets.setdefault(resolve(outcome.ticket_id), set()).add(message_id)
    return tickets
