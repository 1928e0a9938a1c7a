"""Records that leave the processing steps: one outcome per tenant copy of an input.

Every input ends in exactly one outcome per tenant copy, and the summary counts
add up (`read + fanned_out = tickets_created + replies_threaded + duplicates +
suppressed + dead_letters`): `RunSummary.add` is the only place they are counted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from ticketflow.model import DeadLetter, Event

OutcomeKind = Literal["created", "threaded", "duplicate", "suppressed", "dead_letter"]
MessageKind = Literal["original", "reply", "auto_reply"]


@dataclass(frozen=True)
class TenantCopy:
    """One tenant's copy of a parsed message, classified before the thread join.

    `first_copy` is true for exactly one copy of each input, so the summary
    counts the input once in `read` and every other copy in `fanned_out`.
    """

    tenant: str
    event: Event
    first_copy: bool
    enrichment: dict[str, Any]
    # Why the message is automatic ("auto_submitted", "bounce", "echo", …), or None.
    automatic: str | None = None
    # Why the message is list or bulk mail ("list", "bulk"), or None.
    bulk: str | None = None
    # True when the bulk policy says such mail opens nothing.
    bulk_suppressed: bool = False
    review_reasons: tuple[str, ...] = ()
    # The mailbox address this tenant's copy arrived on, used to build reply addresses.
    mailbox: str = ""
    # When the author sent it (Date header, else received_at), RFC 3339 UTC. It orders
    # a thread's messages: unlike received_at it is the same for every delivery.
    sent_at: str = ""

    @property
    def thread_order(self) -> tuple[str, str]:
        """Sort key of this message inside its thread: send time, then Message-ID."""
        return (self.sent_at or self.event["received_at"], self.event["envelope"]["message_id"])


@dataclass(frozen=True)
class Outcome:
    """What happened to one tenant copy (or to an input that became a dead letter)."""

    kind: OutcomeKind
    source: str
    first_copy: bool = True
    tenant: str | None = None
    copy: TenantCopy | None = None
    ticket_id: str | None = None
    # Tickets folded into `ticket_id` by this message: merged threads, or the
    # ticket's previous id when this message is earlier than its first one.
    merged_from: tuple[str, ...] = ()
    # How the thread join found the ticket: "in_reply_to", "references",
    # "subject_key", "plus_address", "subject", or "none" for a new ticket.
    method: str = "none"
    # Ticket keys from the subject that the ledger did not know; kept on the ticket.
    external_refs: tuple[str, ...] = ()
    reply_address: str | None = None
    dedupe_key: str | None = None
    # Why a message was suppressed or counted a duplicate.
    reason: str | None = None
    dead_letter: DeadLetter | None = None


@dataclass
class RunSummary:
    """Counts of one run, shared by the worker threads of one process."""

    read: int = 0
    fanned_out: int = 0
    tickets_created: int = 0
    replies_threaded: int = 0
    duplicates: int = 0
    suppressed: int = 0
    dead_letters: int = 0
    review: int = 0
    # What the external sink got by the end of the run (`runner.drain_deliveries`);
    # None without a sink. Kept apart from the counts above, which count inputs.
    deliveries: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, outcome: Outcome) -> None:
        """Count one outcome."""
        with self._lock:
            if outcome.first_copy:
                self.read += 1
            else:
                self.fanned_out += 1

            if outcome.kind == "created":
                self.tickets_created += 1
                if outcome.copy is not None and outcome.copy.review_reasons:
                    self.review += 1
            elif outcome.kind == "threaded":
                self.replies_threaded += 1
            elif outcome.kind == "duplicate":
                self.duplicates += 1
            elif outcome.kind == "suppressed":
                self.suppressed += 1
            else:
                self.dead_letters += 1

    def as_dict(self) -> dict[str, int]:
        """Return the counts in the order the design lists them."""
        return {
            "read": self.read,
            "fanned_out": self.fanned_out,
            "tickets_created": self.tickets_created,
            "replies_threaded": self.replies_threaded,
            "duplicates": self.duplicates,
            "suppressed": self.suppressed,
            "dead_letters": self.dead_letters,
            "review": self.review,
        }

    def balanced(self) -> bool:
        """Check the design's equation: every input accounted for exactly once."""
        return self.read + self.fanned_out == (
            self.tickets_created
            + self.replies_threaded
            + self.duplicates
            + self.suppressed
            + self.dead_letters
        )
