"""Delivery: the store's tickets mirrored into an external sink, once each, at the sink's pace.

The store is the outbox. When a sink is configured, the transaction that stores
a message also queues a pending delivery of it for the sink, and a merge of two
tickets queues a "merge:<old id>" delivery. `Delivery` sends what is pending,
oldest first, and marks each item done or rejected in the store. So:

- **Nothing is lost.** A crash between the store write and the sink call leaves
  the item pending; the next run sends it. A message stored again (a replay,
  a restart from a snapshot) is never queued twice.
- **Nothing is made twice.** Before creating a ticket, the sink is asked for one
  with the same external id (ticketflow's ticket id), so a replay into a new
  store, or a create whose response was lost, finds the ticket instead. A comment
  whose earlier try had an unknown outcome, or on a ticket found rather than
  created, is checked against the sink's comments (`verify=True`) first.
- **The flow does not sleep on a sink.** `deliver_due` runs after each store
  write. HTTP 429 pauses delivery for the Retry-After delay and an unavailable
  sink for a growing backoff; meanwhile the store keeps taking mail and the
  backlog waits in it. Only when the backlog passes `[sink] max_backlog` does
  `deliver_due` wait for the sink, which holds the source back (backpressure).
- **Refusals become dead letters.** A permanent refusal (4xx) marks the item
  rejected and stores a dead letter `sink_rejected` with the sink's response and
  the message's source; `ticketflow deliver --retry-rejected` queues them again
  once the cause is fixed.

A ticket's reference in the sink (`external` in the ticket document) is
recorded when it is created; a sink whose references are human keys (Jira)
also gives the ticket its key, so mail quoting `[SUP-42]` threads onto it.
When a ticket's review status, reasons, priority or subject change, the sink
gets `update_ticket`.

One `Delivery` per run sends for the whole run (worker 0 of process 0), so
items are sent in order and never by two workers at once.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ticketflow.config import Settings
from ticketflow.connectors.sink import (
    RateLimited,
    SinkAttachment,
    SinkMessage,
    SinkRejected,
    SinkTicket,
    SinkUnavailable,
    TicketSink,
    open_sink,
)
from ticketflow.model import DeadLetter
from ticketflow.operators.mapping import mapped_fields
from ticketflow.outcome import Outcome

log = logging.getLogger(__name__)

# Maximum pause after repeated unavailability, in seconds.
MAX_UNAVAILABLE_PAUSE = 60.0
# Minimum seconds between two counts of the backlog for the metrics gauge.
BACKLOG_GAUGE_INTERVAL = 5.0
# Minimum pause after a 429, so "Retry-After: 0" does not make a busy loop.
MIN_RATE_LIMIT_PAUSE = 0.1
# Statuses meaning the credentials are wrong: no message is at fault, so every
# item stays pending (and the account is not locked by one failed login per item).
CREDENTIAL_STATUSES = frozenset({401, 407})


@dataclass
class DeliveryCounts:
    """Counts of what one `Delivery` did in this process, reported at the end of a run."""

    delivered: int = 0
    rejected: int = 0
    rate_limited: int = 0
    unavailable: int = 0
    metrics: Any = None
    sink: str = ""

    def add(self, result: str) -> None:
        """Count one delivery `result` ("delivered", "rejected", …), in the metrics too."""
        setattr(self, result, getattr(self, result) + 1)
        if self.metrics is not None:
            self.metrics.sink_deliveries.labels(self.sink, result).inc()

    def as_dict(self) -> dict[str, int]:
        return {"delivered": self.delivered, "rejected": self.rejected,
                "rate_limited": self.rate_limited, "unavailable": self.unavailable}


class Delivery:
    """Send a store's pending deliveries to one sink; see the module docstring.

    `attachments` reads stored files by SHA-256 (an `AttachmentStore`), or is None
    when no attachment store is configured. `clock` and `sleep` are injected so
    tests control pauses.
    """

    def __init__(
        self,
        sink: TicketSink,
        store: Any,
        settings: Settings,
        *,
        attachments: Any = None,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sink = sink
        self.store = store
        self.counts = DeliveryCounts(metrics=metrics, sink=sink.name)
        self._metrics = metrics
        self._backlog_counted_at = float("-inf")
        self._settings = settings
        self._attachments = attachments
        self._clock = clock
        self._sleep = sleep
        self._paused_until = 0.0
        self._unavailable_pause = settings.sink.backoff
        store.deliver_to((sink.name,))
        if metrics is not None:
            metrics.sink_opened(sink.name)

    # -- when to send ------------------------------------------------------------

    def deliver_due(self) -> int:
        """Send up to `[sink] batch_size` pending items unless paused; return how many were sent.

        While paused it returns at once, unless the backlog has passed
        `[sink] max_backlog`: then it waits out the pause, holding the flow back.
        """
        self._update_backlog_gauge()
        wait = self._paused_until - self._clock()
        if wait > 0:
            if self._backlog() <= self._settings.sink.max_backlog:
                return 0
            log.warning("%s backlog over sink.max_backlog = %d; waiting %.1fs for the sink",
                        self.sink.name, self._settings.sink.max_backlog, wait)
            self._sleep(wait)
        return self._send_batch()

    def drain(
        self, timeout: float | None = None, stopping: Callable[[], bool] = lambda: False
    ) -> dict[str, int]:
        """Send until nothing is pending, `timeout` seconds pass, or `stopping()` turns true.

        `timeout` defaults to `[sink] drain_timeout`. Used at the end of a finite
        run and by `ticketflow deliver`; here waiting for the sink is the point.
        Returns the store's counts by state.
        """
        timeout = self._settings.sink.drain_timeout if timeout is None else timeout
        deadline = self._clock() + timeout
        while self._backlog() > 0 and not stopping():
            wait = self._paused_until - self._clock()
            if wait > 0:
                if self._clock() + wait > deadline:
                    break
                self._sleep_unless(wait, stopping)
                continue
            self._send_batch()
            if self._clock() >= deadline:
                break
        counts = self.store.delivery_counts(self.sink.name)
        if self._metrics is not None:
            self._metrics.sink_backlog.labels(self.sink.name).set(counts.get("pending", 0))
        if counts.get("pending"):
            log.warning("%s: %d deliveries still pending; `ticketflow deliver` sends them later",
                        self.sink.name, counts["pending"])
        return counts

    def _sleep_unless(self, seconds: float, stopping: Callable[[], bool]) -> None:
        """Sleep `seconds`, in steps of at most one second, until `stopping()` turns true."""
        end = self._clock() + seconds
        while not stopping():
            left = end - self._clock()
            if left <= 0:
                return
            self._sleep(min(left, 1.0))

    @property
    def drain_timeout(self) -> float:
        return self._settings.sink.drain_timeout

    def close(self) -> None:
        self.sink.close()

    def _backlog(self) -> int:
        return int(self.store.delivery_counts(self.sink.name).get("pending", 0))

    def _update_backlog_gauge(self) -> None:
        if self._metrics is None or self._clock() - self._backlog_counted_at < BACKLOG_GAUGE_INTERVAL:
            return
        self._backlog_counted_at = self._clock()
        self._metrics.sink_backlog.labels(self.sink.name).set(self._backlog())

    # -- one batch ---------------------------------------------------------------

    def _send_batch(self) -> int:
        pending = self.store.pending_deliveries(self.sink.name, self._settings.sink.batch_size)
        if not self._opened_in_bulk(pending):
            return 0
        sent = 0
        for item in pending:
            try:
                self._send(item)
            except RateLimited as exc:
                self.counts.add("rate_limited")
                self._paused_until = self._clock() + max(exc.retry_after, MIN_RATE_LIMIT_PAUSE)
                log.warning("%s; %d deliveries are waiting in the store", exc, len(pending) - sent)
                break
            except SinkUnavailable as exc:
                self.counts.add("unavailable")
                self.store.count_attempt(self.sink.name, item.tenant, item.item)
                self._pause_unavailable(exc)
                break
            except SinkRejected as exc:
                if exc.status in CREDENTIAL_STATUSES:
                    self.counts.add("unavailable")
                    log.error("%s rejected ticketflow's credentials (HTTP %d); deliveries wait in the "
                              "store until the %s settings and secret are fixed", self.sink.name,
                              exc.status, f"[sink.{self.sink.name}]")
                    self._pause_unavailable(SinkUnavailable(self.sink.name, str(exc)))
                    break
                self._reject(item, exc)
            except Exception as exc:  # noqa: BLE001 - a bug in a sink must not stop the flow
                log.exception("%s failed on %s of tenant %s", self.sink.name, item.item, item.tenant)
                self.counts.add("unavailable")
                self.store.count_attempt(self.sink.name, item.tenant, item.item)
                self._pause_unavailable(SinkUnavailable(self.sink.name, f"{type(exc).__name__}: {exc}"))
                break
            else:
                self.counts.add("delivered")
                self._unavailable_pause = self._settings.sink.backoff
            sent += 1
        return sent

    def _opened_in_bulk(self, pending: list[Any]) -> bool:
        """Open the tickets `pending` needs in a few requests, when the sink can batch.

        Returns False when the sink asked for a pause (429, unavailable). The
        bulk step only saves requests: a ticket it could not open is opened, or
        rejected with its reason, by the item's own delivery that follows.
        """
        if not hasattr(self.sink, "create_tickets") or len(pending) < 2:
            return True
        try:
            self._open_tickets_in_bulk(pending)
        except RateLimited as exc:
            self.counts.add("rate_limited")
            self._paused_until = self._clock() + max(exc.retry_after, MIN_RATE_LIMIT_PAUSE)
            log.warning("%s; %d deliveries are waiting in the store", exc, len(pending))
            return False
        except SinkUnavailable as exc:
            self.counts.add("unavailable")
            self._pause_unavailable(exc)
            return False
        except Exception:  # noqa: BLE001 - the per-item path below still sends everything
            log.exception("%s: opening tickets in bulk failed; opening them one by one", self.sink.name)
        return True

    def _open_tickets_in_bulk(self, pending: list[Any]) -> None:
        documents: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        for item in pending:
            if item.message is None or item.ticket_id is None or item.ticket_id in seen:
                continue
            seen.add(item.ticket_id)
            document = self.store.ticket(item.ticket_id)
            if document is None or self.sink.name in document["external"]:
                continue
            documents.setdefault(document["ticket_id"], document)
        if len(documents) < 2:
            return

        tickets = {ticket_id: sink_ticket(document, self._settings) for ticket_id, document in documents.items()}
        found = self.sink.find_tickets(list(tickets.values()))
        missing = [ticket for ticket in tickets.values() if ticket.external_id not in found]
        created = dict(zip([t.external_id for t in missing], self.sink.create_tickets(missing) if missing else []))
        log.info("%s: %d tickets found, %d created in bulk", self.sink.name, len(found),
                 sum(isinstance(ref, str) for ref in created.values()))

        for ticket_id, ticket in tickets.items():
            ref = found.get(ticket_id) or created.get(ticket_id)
            if not isinstance(ref, str):
                continue
            document = documents[ticket_id]
            self.store.record_external(ticket_id, self.sink.name, ref, self.sink.keys_are_human)
            self._remember(document, ticket.first_message.event_id, _fingerprint(document),
                           found=ticket_id in found)
            if ticket_id not in found:
                self._attach(ref, ticket, ticket.first_message)

    def _pause_unavailable(self, exc: SinkUnavailable) -> None:
        pause = max(self._unavailable_pause, 0.001)
        self._paused_until = self._clock() + pause
        self._unavailable_pause = min(pause * 2, MAX_UNAVAILABLE_PAUSE)
        log.warning("%s; trying again in %.1fs", exc, pause)

    def _send(self, item: Any) -> None:
        if item.merged is not None:
            self._send_merge(item)
        else:
            self._send_message(item)
        self.store.record_delivery(self.sink.name, item.tenant, item.item, "done")

    def _reject(self, item: Any, exc: SinkRejected) -> None:
        self.counts.add("rejected")
        reason = str(exc)
        self.store.record_delivery(self.sink.name, item.tenant, item.item, "rejected", reason)
        log.error("%s rejected %s of tenant %s: %s", self.sink.name, item.item, item.tenant, reason)
        if item.message is None:
            return
        source = item.message["source"]
        letter = DeadLetter(
            source=source,
            reason="sink_rejected",
            detail=reason,
            raw=json.dumps(item.message["event"], ensure_ascii=False).encode(),
        )
        self.store.write([Outcome(kind="dead_letter", source=source, dead_letter=letter)])

    # -- messages ----------------------------------------------------------------

    def _send_message(self, item: Any) -> None:
        document = self.store.ticket(item.ticket_id) if item.ticket_id else None
        if document is None:
            log.warning("%s: message %s has no ticket any more; nothing to send", self.sink.name, item.item)
            return
        ticket = sink_ticket(document, self._settings)
        message = sink_message(item.message)
        ref = document["external"].get(self.sink.name)

        if ref is None:
            # The create sends the current fields and remembers them, so no update follows.
            ref, found = self._open_ticket(document, ticket)
            if ticket.first_message.event_id == message.event_id:
                self._attach(ref, ticket, message)
            else:
                self._attach(ref, ticket, ticket.first_message)
                self._comment(ref, ticket, message, verify=found or item.attempts > 0)
            return

        remembered = self._remembered(document)
        if remembered.get("description") != message.event_id:
            # A ticket found rather than created may contain this comment already (a replay).
            verify = item.attempts > 0 or bool(remembered.get("found"))
            self._comment(ref, ticket, message, verify=verify)
        self._sync_fields(ref, document, ticket, remembered)

    def _comment(self, ref: str, ticket: SinkTicket, message: SinkMessage, verify: bool) -> None:
        self.sink.add_comment(ref, ticket, message, verify)
        self._attach(ref, ticket, message)

    def _open_ticket(self, document: dict[str, Any], ticket: SinkTicket) -> tuple[str, bool]:
        """Find or create the ticket in the sink and record its reference; return (ref, found)."""
        ref = self.sink.find_ticket(ticket)
        found = ref is not None
        if ref is None:
            ref = self.sink.create_ticket(ticket)
            log.info("%s ticket %s created for %s (%s)", self.sink.name, ref, document["key"],
                     document["ticket_id"])
        else:
            log.info("%s ticket %s found for %s; not created again", self.sink.name, ref, document["key"])
        self.store.record_external(document["ticket_id"], self.sink.name, ref, self.sink.keys_are_human)
        self._remember(document, ticket.first_message.event_id, _fingerprint(document), found=found)
        return ref, found

    def _attach(self, ref: str, ticket: SinkTicket, message: SinkMessage) -> None:
        if self._attachments is None:
            return
        files = []
        for attachment in message.attachments:
            if attachment.download_url is None or attachment.quarantined or attachment.refused:
                continue
            data = self._attachments.get(attachment.sha256)
            if data is None:
                log.warning("attachment %s of %s is not in the attachment store; not uploaded",
                            attachment.sha256[:12], message.event_id)
                continue
            files.append((attachment, data))
        if files:
            self.sink.attach_files(ref, ticket, message, files)

    # -- ticket fields and merges -------------------------------------------------

    def _sync_fields(
        self, ref: str, document: dict[str, Any], ticket: SinkTicket, remembered: dict[str, Any]
    ) -> None:
        """Send `update_ticket` when status, reasons, priority or subject changed since last sent."""
        fingerprint = _fingerprint(document)
        if remembered.get("fields") == fingerprint:
            return
        self.sink.update_ticket(ref, ticket)
        self._remember(document, remembered.get("description", ""), fingerprint,
                       found=bool(remembered.get("found")))

    def _send_merge(self, item: Any) -> None:
        merged = item.merged
        old_ref = merged["old_external"].get(self.sink.name)
        document = self.store.ticket(merged["old_id"])
        if old_ref is None or document is None:
            return
        ticket = sink_ticket(document, self._settings)
        ref = document["external"].get(self.sink.name)
        if ref is None:
            # The surviving ticket was never sent, so the old ticket in the sink continues it.
            self.store.record_external(document["ticket_id"], self.sink.name, old_ref, self.sink.keys_are_human)
            self._remember(document, "", "", found=True)
            log.info("%s ticket %s now represents %s", self.sink.name, old_ref, document["key"])
            return
        if ref != old_ref:
            self.sink.link_tickets(ref, old_ref, ticket)
            log.info("%s ticket %s linked to %s (one thread)", self.sink.name, old_ref, ref)

    def _remembered(self, document: dict[str, Any]) -> dict[str, Any]:
        detail = self.store.delivery_detail(self.sink.name, document["tenant"], f"ticket:{document['ticket_id']}")
        return json.loads(detail) if detail else {}

    def _remember(self, document: dict[str, Any], description: str, fingerprint: str, *, found: bool) -> None:
        """Record the ticket's description message, the fields last sent, and `found`.

        `found` is true when the ticket was found in the sink rather than created;
        later comments on it are then checked before they are added.
        """
        detail = json.dumps({"description": description, "fields": fingerprint, "found": found})
        self.store.record_delivery(self.sink.name, document["tenant"], f"ticket:{document['ticket_id']}",
                                   "done", detail)


def _fingerprint(document: dict[str, Any]) -> str:
    return json.dumps([document["status"], document["review_reasons"], document["priority"],
                       document["subject"]])


# -- from ledger documents to the sink's shapes ------------------------------------


def sink_ticket(document: dict[str, Any], settings: Settings) -> SinkTicket:
    """Build the `SinkTicket` of a ticket document, with the mapping rules applied."""
    first = _first_person_message(document)
    return SinkTicket(
        external_id=document["ticket_id"],
        key=document["key"],
        tenant=document["tenant"],
        subject=plain_title(document["subject"]),
        requester=document["requester"],
        requester_name=first.sender_name if first.sender == document["requester"] else "",
        participants=tuple(document["participants"]),
        priority=document["priority"],
        component=document["component"],
        environment=document["environment"],
        tier=document["tier"],
        status=document["status"],
        review_reasons=tuple(document["review_reasons"]),
        reply_address=document["reply_address"],
        first_message=first,
        mapped=mapped_fields(settings.sink.rules, document),
    )


# Control, format and bidi characters: a title holding U+202E can show "pdf.exe" as "exe.fdp".
_TITLE_HAZARDS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def plain_title(subject: str) -> str:
    """Return a subject safe to show as a title: no control or bidi characters, one line."""
    return " ".join(_TITLE_HAZARDS.sub(" ", subject).split())


def _first_person_message(document: dict[str, Any]) -> SinkMessage:
    messages = document["messages"]
    people = [message for message in messages if message["kind"] != "auto_reply"] or messages
    return _message_from_document(people[0])


def _message_from_document(message: dict[str, Any]) -> SinkMessage:
    return SinkMessage(
        dedupe_key="",
        event_id=message["event_id"],
        message_id=message["message_id"],
        sender=message["from"],
        sender_name=message.get("from_name", ""),
        sent_at=message.get("sent_at", message["received_at"]),
        received_at=message["received_at"],
        kind=message["kind"],
        text=message["text"],
        html=message["html"],
        authentication=message["authentication"],
        attachments=tuple(sink_attachment(item) for item in message["attachments"]),
    )


def sink_message(stored: dict[str, Any]) -> SinkMessage:
    """Build the `SinkMessage` of a pending delivery's message."""
    event = stored["event"]
    envelope = event["envelope"]
    return SinkMessage(
        dedupe_key="",
        event_id=stored["event_id"],
        message_id=stored["message_id"],
        sender=stored["from"],
        sender_name=envelope.get("from_name", ""),
        sent_at=stored["sent_at"],
        received_at=stored["received_at"],
        kind="auto_reply" if stored["automatic"] else "reply",
        text=event["text"],
        html=event["html"],
        authentication=event["authentication"],
        attachments=tuple(sink_attachment(item) for item in event["attachments"]),
    )


def sink_attachment(item: dict[str, Any]) -> SinkAttachment:
    return SinkAttachment(
        filename=item.get("filename") or "attachment",
        content_type=item.get("content_type") or "application/octet-stream",
        size=int(item.get("size") or 0),
        sha256=item.get("sha256") or "",
        download_url=item.get("download_url"),
        quarantined=item.get("quarantined"),
        refused=item.get("refused"),
    )


def open_delivery(settings: Settings, store: Any, attachments: Any = None) -> Delivery | None:
    """Build the delivery to the sink `[sink] kind` names, or None when there is none."""
    sink = open_sink(settings)
    if sink is None:
        return None
    return Delivery(sink, store, settings, attachments=attachments)
