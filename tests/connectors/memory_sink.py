"""A ticket system kept in memory, for testing the delivery engine without HTTP.

It follows the sink contract of `ticketflow.connectors.sink`: tickets are found
by external id, comments carry their marker, and `verify=True` skips a comment
already there. `fail` queues errors for the next calls of an operation, and
`lose_answer` makes the next create happen and then fail as if its response
was lost, so tests can show what a retry does. The real sinks are tested against
HTTP servers that follow each API (tests/connectors/*_api.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ticketflow.connectors.sink import (
    SinkAttachment,
    SinkRejected,
    SinkMessage,
    SinkTicket,
    SinkUnavailable,
    comment_marker,
)


@dataclass
class MemoryTicket:
    ref: str
    ticket: SinkTicket
    comments: list[str] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)
    updates: int = 0
    links: list[str] = field(default_factory=list)


class MemorySink:
    """An external ticket system in memory; see the module docstring."""

    def __init__(self, name: str = "memory", keys_are_human: bool = False, prefix: str = "EXT") -> None:
        self.name = name
        self.keys_are_human = keys_are_human
        self.tickets: dict[str, MemoryTicket] = {}
        self.calls: list[str] = []
        self._prefix = prefix
        self._failures: dict[str, list[Exception]] = {}
        self._lose_next_answer = False

    def fail(self, operation: str, *errors: Exception) -> None:
        """Raise these errors, one per call, from the next calls of `operation`."""
        self._failures.setdefault(operation, []).extend(errors)

    def lose_answer(self) -> None:
        """Make the next create happen, then raise as if its response never arrived."""
        self._lose_next_answer = True

    def by_external_id(self, external_id: str) -> MemoryTicket | None:
        return next((t for t in self.tickets.values() if t.ticket.external_id == external_id), None)

    def _enter(self, operation: str) -> None:
        self.calls.append(operation)
        queued = self._failures.get(operation)
        if queued:
            raise queued.pop(0)

    def find_ticket(self, ticket: SinkTicket) -> str | None:
        self._enter("find_ticket")
        found = self.by_external_id(ticket.external_id)
        return found.ref if found else None

    def create_ticket(self, ticket: SinkTicket) -> str:
        self._enter("create_ticket")
        ref = f"{self._prefix}-{len(self.tickets) + 1}"
        self.tickets[ref] = MemoryTicket(ref, ticket)
        if self._lose_next_answer:
            self._lose_next_answer = False
            raise SinkUnavailable(self.name, "POST /tickets timed out after 10s")
        return ref

    def add_comment(self, ref: str, ticket: SinkTicket, message: SinkMessage, verify: bool) -> None:
        self._enter("add_comment")
        comments = self.tickets[ref].comments
        marker = comment_marker(message)
        if verify and any(marker in comment for comment in comments):
            return
        comments.append(f"{message.sender}: {message.text}\n{marker}")

    def attach_files(
        self, ref: str, ticket: SinkTicket, message: SinkMessage, files: list[tuple[SinkAttachment, bytes]]
    ) -> None:
        self._enter("attach_files")
        self.tickets[ref].files.extend((attachment.filename, data) for attachment, data in files)

    def update_ticket(self, ref: str, ticket: SinkTicket) -> None:
        self._enter("update_ticket")
        self.tickets[ref].ticket = ticket
        self.tickets[ref].updates += 1

    def link_tickets(self, ref: str, merged_ref: str, ticket: SinkTicket) -> None:
        self._enter("link_tickets")
        self.tickets[ref].links.append(merged_ref)
        self.tickets[merged_ref].links.append(ref)

    def close(self) -> None:
        pass

    def comment_count(self) -> int:
        return sum(len(ticket.comments) for ticket in self.tickets.values())

    def summary(self) -> dict[str, Any]:
        """Each external id with its comment texts, to compare two runs."""
        return {t.ticket.external_id: sorted(t.comments) for t in self.tickets.values()}


class BatchingMemorySink(MemorySink):
    """A `MemorySink` that also finds and creates tickets in bulk, like Jira's bulk API.

    `reject_in_bulk` names external ids whose bulk create fails with a 400 of its
    own; `lose_bulk_answer` makes the next bulk create happen, then raise as if
    its response never arrived.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.reject_in_bulk: set[str] = set()
        self._lose_bulk_answer = False

    def lose_bulk_answer(self) -> None:
        self._lose_bulk_answer = True

    def find_tickets(self, tickets: list[SinkTicket]) -> dict[str, str]:
        self._enter("find_tickets")
        found = {ticket.external_id: self.by_external_id(ticket.external_id) for ticket in tickets}
        return {external_id: entry.ref for external_id, entry in found.items() if entry is not None}

    def create_tickets(self, tickets: list[SinkTicket]) -> list[str | SinkRejected]:
        self._enter("create_tickets")
        results: list[str | SinkRejected] = []
        for ticket in tickets:
            if ticket.external_id in self.reject_in_bulk:
                results.append(SinkRejected(self.name, 400, f"{ticket.external_id}: invalid issue type"))
                continue
            ref = f"{self._prefix}-{len(self.tickets) + 1}"
            self.tickets[ref] = MemoryTicket(ref, ticket)
            results.append(ref)
        if self._lose_bulk_answer:
            self._lose_bulk_answer = False
            raise SinkUnavailable(self.name, "POST /bulk timed out after 10s")
        return results
