"""Dedupe: drop a second delivery of the same message to the same tenant.

Two deliveries are the same message when they go to the same tenant and carry the
same Message-ID (normalized) and the same content hash over From, Subject and the
decoded bodies. Transport headers (Received, Delivered-To, Return-Path, …) play no
part, because they differ between deliveries of one message.

A record that is merely re-read from the same source position (a restart reading
a file or a Kafka offset again) is not a duplicate: it passes, and the idempotent
store write makes it harmless.

Marks have two stages. `check` leaves a *pending* mark, so a second delivery in
the same batch is caught; `commit` turns it into a *committed* mark once the store
has written the message. Only committed marks belong in a snapshot, so a crash
between the check and the write cannot lose a message.

State is bounded: a committed mark expires once the newest event time seen is
`window` seconds past the delivery it remembers, and beyond `max_entries` the
oldest marks go first. Past the window, the store's own record of the message
still catches a repeat (see `ThreadIndex.replay_stored`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ticketflow.model import Event
from ticketflow.operators.html_text import html_text

Verdict = Literal["new", "reread", "duplicate"]


def content_hash(event: Event) -> str:
    """Hash From, Subject and the body text; equal for two deliveries of one message.

    The body is the text part, or the readable text of the HTML part when there
    is no text. The HTML itself is left out: attachment governance rewrites it
    (sanitizing, links to stored files), so it changes with `[attachments]`
    settings while the message stays the same.
    """
    envelope = event["envelope"]
    body = event["text"] if event["text"].strip() else html_text(event["html"])
    digest = hashlib.sha256()
    for part in (envelope["from"], envelope["subject"], body):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def dedupe_key(event: Event) -> str:
    """Return the identity of a message for dedupe: Message-ID and content hash.

    A message without a Message-ID gets one synthesized from its content by the
    parser, so the content hash alone decides for it.
    """
    return f"{event['envelope']['message_id']}|{content_hash(event)}"


@dataclass(slots=True)
class _Mark:
    source: str
    seen_at: float  # event time, seconds since the epoch
    committed: bool


class DedupeWindow:
    """Remembered deliveries per tenant, bounded in time and count.

    Safe to share between the worker threads of one process: every method holds
    a lock. The flow routes every delivery of a message to the same worker (they
    share the thread key), so one worker's check is never raced by another's.
    """

    def __init__(self, window_seconds: float, max_entries: int) -> None:
        self._window = window_seconds
        self._max_entries = max_entries
        self._marks: OrderedDict[tuple[str, str], _Mark] = OrderedDict()
        self._watermark = float("-inf")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._marks)

    def check(self, tenant: str, key: str, source: str, event_time: datetime) -> Verdict:
        """Classify a delivery and leave a pending mark for a new one."""
        seen_at = event_time.timestamp()
        with self._lock:
            self._advance(seen_at)

            mark = self._marks.get((tenant, key))
            if mark is not None and mark.committed and self._expired(mark):
                del self._marks[(tenant, key)]
                mark = None

            if mark is None:
                self._remember(tenant, key, _Mark(source, seen_at, committed=False))
                return "new"
            if mark.source == source:
                return "reread"
            return "duplicate"

    def commit(self, tenant: str, key: str) -> None:
        """Mark a delivery as written by the store; unknown keys are ignored."""
        with self._lock:
            mark = self._marks.get((tenant, key))
            if mark is not None:
                mark.committed = True

    def commit_many(self, marks: list[tuple[str, str]]) -> None:
        """Commit the marks of a written batch: (tenant, key) pairs."""
        for tenant, key in marks:
            self.commit(tenant, key)

    def forget(self, tenant: str, key: str) -> None:
        """Drop a pending mark whose message was never written, so a retry passes."""
        with self._lock:
            mark = self._marks.get((tenant, key))
            if mark is not None and not mark.committed:
                del self._marks[(tenant, key)]

    def snapshot(self) -> list[tuple[str, str, str, float]]:
        """Return the committed marks as plain tuples (tenant, key, source, seen_at)."""
        with self._lock:
            return [
                (tenant, key, mark.source, mark.seen_at)
                for (tenant, key), mark in self._marks.items()
                if mark.committed
            ]

    def restore(self, marks: list[tuple[str, str, str, float]]) -> None:
        """Load committed marks from a snapshot."""
        with self._lock:
            for tenant, key, source, seen_at in marks:
                self._advance(seen_at)
                self._remember(tenant, key, _Mark(source, seen_at, committed=True))

    def _expired(self, mark: _Mark) -> bool:
        return mark.seen_at < self._watermark - self._window

    def _advance(self, seen_at: float) -> None:
        if seen_at <= self._watermark:
            return
        self._watermark = seen_at
        self._evict_expired()

    def _evict_expired(self) -> None:
        # Marks are kept in arrival order, which follows event time closely; an
        # out-of-order old mark behind a newer one lives until the newer one goes,
        # or until `check` finds it expired. A pending mark never expires: its
        # message is in flight to the store, and a late message (older than the
        # window behind the newest one) must still catch its own second delivery.
        while self._marks:
            oldest_key = next(iter(self._marks))
            oldest = self._marks[oldest_key]
            if not oldest.committed or not self._expired(oldest):
                break
            del self._marks[oldest_key]

    def _remember(self, tenant: str, key: str, mark: _Mark) -> None:
        self._marks[(tenant, key)] = mark
        self._marks.move_to_end((tenant, key))
        while len(self._marks) > self._max_entries:
            self._marks.popitem(last=False)
