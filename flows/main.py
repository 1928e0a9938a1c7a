"""The main job: raw mail in, threaded and enriched tickets out.

```
read → parse ─┬─ fan out per tenant → classify (enrich, gate) → key by (tenant, thread root)
              │      → dedupe + thread join (stateful, holds orphans) ─┐
              └─ dead letters ─────────────────────────────────────────┴→ store
```

Enrichment and the gate's classification run before the thread join, because the
join needs to know whether a message may open a ticket (automatic mail never
does). Every step is a plain function or class from `ticketflow.operators`; this
module only wires them to Bytewax.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from time import perf_counter
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from ticketflow.config import Settings, state_redis_url
from ticketflow.connectors.attachment_store import attachment_governor
from ticketflow.connectors.retry import retry_transient
from ticketflow.connectors.store import store_error_is_transient
from ticketflow.metrics import FlowMetrics, StageMeter, stamp_ingest_time
from ticketflow.model import DeadLetter, Event, RawMessage
from ticketflow.operators.attachments import AttachmentGovernor
from ticketflow.operators.dedupe import DedupeWindow, dedupe_key
from ticketflow.operators.enrich import enrich, header_map, tenants_for
from ticketflow.operators.gate import AutoReplyLimiter, gate
from ticketflow.operators.parse import UnparseableMessage, decode_record, header_block
from ticketflow.operators.thread import ThreadIndex, sent_at, thread_root
from ticketflow.outcome import Outcome, RunSummary, TenantCopy
from ticketflow.tracing import FlowTracer

log = logging.getLogger(__name__)

_KAFKA_POSITION = re.compile(r"#(\d+)@(\d+)$")

# How often a held orphan looks again for a parent that arrived on another key.
ORPHAN_RECHECK = timedelta(seconds=1)


@dataclass
class FlowContext:
    """Everything the steps of one run share inside a process.

    The dedupe window, thread index and summary are shared by the worker threads
    of a process; each is safe to use from several threads.
    """

    settings: Settings
    store: Any
    summary: RunSummary = field(default_factory=RunSummary)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Where dead letters of a Kafka run also go (`<topic>.dlq`); None for a corpus.
    dead_letter_topic: Any = None
    # Counts of the run for Prometheus; None runs without metrics.
    metrics: FlowMetrics | None = None
    # Starts a span per stage for each message; None (tracing off) creates no spans.
    tracer: FlowTracer | None = None
    # Set when SIGTERM stops a run: held orphans then stay held (and in the
    # snapshot) instead of being released as if the input had ended.
    stopping: threading.Event = field(default_factory=threading.Event)
    # Sends stored tickets to the external sink (`ticketflow.connectors.delivery.Delivery`)
    # after each store write, from worker 0 only; None when this process sends nothing.
    delivery: Any = None
    # Governs each message's attachments and html in the parse step. None builds one
    # from `[attachments]`, with a local store and clamd when they are set.
    governor: AttachmentGovernor | None = None
    dedupe: DedupeWindow = field(init=False)
    index: ThreadIndex = field(init=False)
    limiter: AutoReplyLimiter = field(init=False)

    def __post_init__(self) -> None:
        if self.governor is None:
            self.governor = attachment_governor(self.settings.attachments)
        if self.settings.state.redis_url or self.settings.state.redis_url_env:
            self._use_redis()
        else:
            self.dedupe = DedupeWindow(self.settings.dedupe.window, self.settings.dedupe.max_entries)
            self.index = ThreadIndex(self.settings, self.store)
        self.limiter = AutoReplyLimiter(
            self.settings.gate.auto_reply_limit, self.settings.gate.auto_reply_window
        )

    def _use_redis(self) -> None:
        from ticketflow.connectors.redis_state import RedisThreadState, connect

        state = self.settings.state
        client = connect(state_redis_url(state))
        # Redis state belongs to one store: two stores sharing a namespace would
        # see each other's messages as duplicates.
        store_id = self.store.store_id() if self.store is not None else "no-store"
        namespace = f"{state.namespace}:{store_id}"
        # Messages in flight are caught by this process's own window; the shared
        # outcome records in Redis catch deliveries that other processes decided.
        self.dedupe = DedupeWindow(self.settings.dedupe.window, self.settings.dedupe.max_entries)
        ttl = max(self.settings.threading.index_ttl, self.settings.dedupe.window)
        self.index = ThreadIndex(self.settings, self.store, RedisThreadState(client, namespace, ttl))


# -- parse ---------------------------------------------------------------------


def parse_record(
    record: RawMessage, settings: Settings, governor: AttachmentGovernor | None = None
) -> Event | DeadLetter:
    """Parse one raw record into an event, or a dead letter saying why not.

    With a `governor`, the event's attachments and html come out governed.
    """
    limit = settings.limits.max_message_bytes
    if len(record.raw) > limit:
        return DeadLetter(
            source=record.source,
            reason="too_large",
            detail=f"{len(record.raw)} bytes, over limits.max_message_bytes = {limit}",
            headers=header_block(record.raw),
        )

    try:
        return decode_record(
            record.raw,
            record.source,
            record.ingested_at,
            content_type=record.content_type,
            authserv_ids=settings.trust.authserv_ids,
            max_references=settings.threading.max_references,
            governor=governor,
        )
    except UnparseableMessage as exc:
        return DeadLetter(record.source, exc.reason, exc.detail, header_block(record.raw), record.raw)
    except Exception as exc:  # a parser bug must cost one message, not the run
        log.exception("parser failed on %s", record.source, extra={"source": record.source})
        return DeadLetter(
            record.source, "parser_error", f"{type(exc).__name__}: {exc}",
            header_block(record.raw), record.raw,
        )


def parse_batch(
    records: list[RawMessage],
    settings: Settings,
    metrics: FlowMetrics | None,
    tracer: FlowTracer | None = None,
    governor: AttachmentGovernor | None = None,
) -> list[Event | DeadLetter]:
    """Parse a batch of records; with metrics, count it and stamp each event's exact ingest time.

    With a tracer, each record gets a parse span and each item its trace parent.
    With a governor, attachments and html are governed (see `parse_record`).
    """
    if tracer is not None:
        return _traced_parse_batch(records, settings, metrics, tracer, governor)
    if metrics is None:
        return [parse_record(record, settings, governor) for record in records]

    started = perf_counter()
    items: list[Event | DeadLetter] = []
    dead = 0
    for record in records:
        item = parse_record(record, settings, governor)
        if isinstance(item, DeadLetter):
            dead += 1
            items.append(item)
        else:
            metrics.record_attachments(item)
            items.append(stamp_ingest_time(item, record.ingested_at))
    seconds = perf_counter() - started
    metrics.stages["parse"].record(len(records), len(records) - dead, dead, seconds)
    return items


def _traced_parse_batch(
    records: list[RawMessage],
    settings: Settings,
    metrics: FlowMetrics | None,
    tracer: FlowTracer,
    governor: AttachmentGovernor | None = None,
) -> list[Event | DeadLetter]:
    started = perf_counter()
    items: list[Event | DeadLetter] = []
    dead = 0
    for record in records:
        with tracer.parse_span(record) as span:
            item = parse_record(record, settings, governor)
            if isinstance(item, DeadLetter):
                dead += 1
            elif metrics is not None:
                metrics.record_attachments(item)
                item = stamp_ingest_time(item, record.ingested_at)
            items.append(tracer.finish_parse(span, record, item))
    if metrics is not None:
        metrics.stages["parse"].record(len(records), len(records) - dead, dead, perf_counter() - started)
    return items


# -- fan out and classify --------------------------------------------------------


def tenant_copies(event: Event, settings: Settings) -> list[TenantCopy]:
    """Make one classified copy of an event per tenant it is addressed to."""
    # One casefolded header map serves every header rule of the event; it is local
    # to this call, so worker threads never share it.
    headers = header_map(event)
    tenants = tenants_for(event, settings.routing, headers=headers)
    enrichment = enrich(event, settings.routing, headers=headers)
    decision = gate(event, settings.routing, settings.threading, settings.gate, headers=headers)

    sent = sent_at(event, headers)
    copies = []
    for position, tenant in enumerate(tenants):
        copies.append(
            TenantCopy(
                tenant=tenant,
                event=event,
                first_copy=position == 0,
                enrichment=enrichment,
                automatic=decision.automatic,
                bulk=decision.bulk,
                bulk_suppressed=decision.suppress,
                review_reasons=tuple(decision.review_reasons),
                mailbox=_mailbox_for(event, tenant, settings),
                sent_at=sent,
            )
        )
    return copies


def fan_out_batch(
    events: list[Event],
    settings: Settings,
    metrics: FlowMetrics | None,
    tracer: FlowTracer | None = None,
) -> list[TenantCopy]:
    """Make the tenant copies of a batch of events, counted when metrics are on, traced with a tracer."""
    started = perf_counter()
    if tracer is None:
        copies = [copy for event in events for copy in tenant_copies(event, settings)]
    else:
        copies = []
        for event in events:
            with tracer.event_span("fan_out", event) as span:
                event_copies = tenant_copies(event, settings)
                if span is not None:
                    span.set_attribute("ticketflow.tenant_copies", len(event_copies))
            copies.extend(event_copies)
    if metrics is not None:
        metrics.stages["fan_out"].record(len(events), len(copies), 0, perf_counter() - started)
    return copies


def _mailbox_for(event: Event, tenant: str, settings: Settings) -> str:
    """Return the inbound address this tenant's copy came in on, for reply addresses."""
    domains = settings.routing.inbound_domains
    envelope = event["envelope"]
    for address in (*envelope["to"], *envelope["cc"]):
        local, _, domain = address.rpartition("@")
        if domain in domains and _local_tenant(local) == tenant:
            return address
    domain = domains[0] if domains else "invalid"
    return f"{tenant}@{domain}"


def _local_tenant(local: str) -> str:
    for separator in ("-", "+"):
        local = local.split(separator, 1)[0]
    return local.lower()


def routing_key(copy: TenantCopy) -> str:
    """Key a copy by (tenant, thread root), so a thread's messages meet on one worker."""
    return f"{copy.tenant}\x1f{thread_root(copy.event)}"


# -- dedupe and thread join --------------------------------------------------------


@dataclass
class _HeldOrphan:
    copy: TenantCopy
    dedupe_key: str
    deadline: datetime


class ThreadJoinLogic(StatefulBatchLogic[TenantCopy, Outcome, list[Any]]):
    """Dedupe and thread the copies of one (tenant, thread root) key.

    A copy whose parent is unknown is held until the parent arrives (checked on
    every batch and every `ORPHAN_RECHECK`), `threading.orphan_wait` passes, or
    the input ends; held copies are released earliest first, so a finite corpus
    gives the same tickets in any order. The logic is discarded once it holds
    nothing; the shared index keeps what the thread join knows.
    """

    def __init__(self, context: FlowContext, resume_state: list[Any] | None = None) -> None:
        self._context = context
        self._held: list[_HeldOrphan] = [
            _HeldOrphan(copy, key, deadline) for copy, key, deadline in resume_state or []
        ]

    def on_batch(self, values: list[TenantCopy]) -> tuple[Iterable[Outcome], bool]:
        outcomes: list[Outcome] = []
        tracer = self._context.tracer
        admit = self._admit if tracer is None else partial(self._traced_admit, tracer)
        for copy in values:
            outcome = admit(copy)
            if outcome is not None:
                outcomes.append(outcome)
        outcomes.extend(self._release(force=False))
        return outcomes, self._done()

    def on_notify(self) -> tuple[Iterable[Outcome], bool]:
        return self._release(force=False), self._done()

    def on_eof(self) -> tuple[Iterable[Outcome], bool]:
        if self._context.stopping.is_set():
            return self._release(force=False), self._done()
        return self._release(force=True), self._done()

    def notify_at(self) -> datetime | None:
        if not self._held:
            return None
        earliest = min(held.deadline for held in self._held)
        return min(earliest, self._context.clock() + ORPHAN_RECHECK)

    def snapshot(self) -> list[Any]:
        # Held orphans were read before the snapshot's source position, so a
        # resumed run would not read them again: they must travel in the snapshot.
        return [(held.copy, held.dedupe_key, held.deadline) for held in self._held]

    def _done(self) -> bool:
        return StatefulBatchLogic.DISCARD if not self._held else StatefulBatchLogic.RETAIN

    def _traced_admit(self, tracer: FlowTracer, copy: TenantCopy) -> Outcome | None:
        # A held orphan's span ends here, marked held; its later release adds no span.
        with tracer.event_span("thread_join", copy.event, copy.tenant) as span:
            outcome = self._admit(copy)
            if span is not None:
                span.set_attribute("ticketflow.held", outcome is None)
                if outcome is not None:
                    span.set_attribute("ticketflow.outcome", outcome.kind)
            return outcome

    def _admit(self, copy: TenantCopy) -> Outcome | None:
        context = self._context
        key = dedupe_key(copy.event)
        received = _event_time(copy.event)

        verdict = context.dedupe.check(copy.tenant, key, copy.event["source"], received)
        if verdict == "duplicate":
            return _duplicate(copy, key)

        stored = context.index.replay_stored(copy, key)
        if stored == "duplicate":
            return _duplicate(copy, key)
        if isinstance(stored, Outcome):
            return stored

        if copy.automatic is not None and not context.limiter.allow(copy.event["envelope"]["from"], received):
            return Outcome(
                kind="suppressed", source=copy.event["source"], first_copy=copy.first_copy,
                tenant=copy.tenant, copy=copy, dedupe_key=key, reason="auto_reply_rate",
            )

        outcome = context.index.decide(copy, key, allow_open=False)
        if outcome is None:
            deadline = context.clock() + timedelta(seconds=context.settings.threading.orphan_wait)
            self._held.append(_HeldOrphan(copy, key, deadline))
        return outcome

    def _release(self, force: bool) -> list[Outcome]:
        if not self._held:
            return []
        now = self._context.clock()
        self._held.sort(key=lambda held: held.copy.thread_order)

        outcomes: list[Outcome] = []
        still_held: list[_HeldOrphan] = []
        for held in self._held:
            expired = force or held.deadline <= now
            outcome = self._context.index.decide(held.copy, held.dedupe_key, allow_open=expired)
            if outcome is None:
                still_held.append(held)
            else:
                outcomes.append(outcome)
        self._held = still_held
        return outcomes


class _MeasuredThreadJoin(ThreadJoinLogic):
    """The thread join, counting the copies that enter it, the outcomes it emits and its time."""

    def __init__(
        self, context: FlowContext, resume_state: list[Any] | None, meter: StageMeter
    ) -> None:
        super().__init__(context, resume_state)
        self._meter = meter

    def on_batch(self, values: list[TenantCopy]) -> tuple[Iterable[Outcome], bool]:
        return self._measure(len(values), partial(super().on_batch, values))

    def on_notify(self) -> tuple[Iterable[Outcome], bool]:
        return self._measure(0, super().on_notify)

    def on_eof(self) -> tuple[Iterable[Outcome], bool]:
        return self._measure(0, super().on_eof)

    def _measure(
        self, received: int, step: Callable[[], tuple[Iterable[Outcome], bool]]
    ) -> tuple[Iterable[Outcome], bool]:
        started = perf_counter()
        try:
            outcomes, done = step()
        except Exception:
            self._meter.record(received, 0, received, perf_counter() - started)
            raise
        emitted = list(outcomes)
        self._meter.record(received, len(emitted), 0, perf_counter() - started)
        return emitted, done


def _thread_join_logic(context: FlowContext, resume_state: list[Any] | None) -> ThreadJoinLogic:
    if context.metrics is None:
        return ThreadJoinLogic(context, resume_state)
    return _MeasuredThreadJoin(context, resume_state, context.metrics.stages["thread_join"])


def _duplicate(copy: TenantCopy, key: str) -> Outcome:
    return Outcome(
        kind="duplicate", source=copy.event["source"], first_copy=copy.first_copy,
        tenant=copy.tenant, copy=copy, dedupe_key=key, reason="duplicate",
    )


def _event_time(event: Event) -> datetime:
    """Return the message's event time for the dedupe window: received_at, at most ingested_at.

    The cap keeps a forged future Date from moving the window ahead and
    forgetting every delivery seen so far.
    """
    received = _utc_time(event["received_at"])
    ingested = _utc_time(event.get("ingested_at", ""))
    if received is None:
        return ingested or datetime.now(UTC)
    return min(received, ingested) if ingested is not None else received


def _utc_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


# -- the store sink ------------------------------------------------------------------


class _StorePartition(StatelessSinkPartition[Outcome]):
    def __init__(
        self, context: FlowContext, kill_after_batches: int | None = None, delivers: bool = False
    ) -> None:
        self._context = context
        self._kill_after_batches = kill_after_batches
        self._batches = 0
        self._delivery = context.delivery if delivers else None

    def write_batch(self, items: list[Outcome]) -> None:
        context = self._context
        started = perf_counter()
        if context.tracer is None:
            self._write_store(items)
        else:
            self._traced_write_store(context.tracer, items)
        if context.dead_letter_topic is not None:
            self._send_dead_letters(items)
        context.dedupe.commit_many(
            [
                (outcome.tenant, outcome.dedupe_key)
                for outcome in items
                if outcome.dedupe_key is not None and outcome.tenant is not None
            ]
        )
        for outcome in items:
            context.summary.add(outcome)
        if context.metrics is not None:
            context.metrics.record_stored(items, context.clock())
            seconds = perf_counter() - started
            context.metrics.stages["store"].record(len(items), len(items), 0, seconds)
        if log.isEnabledFor(logging.DEBUG):
            _log_outcomes(items)
        if self._delivery is not None:
            self._delivery.deliver_due()

        self._batches += 1
        if self._kill_after_batches is not None and self._batches >= self._kill_after_batches:
            log.warning("fault injection: killing this process after store write %d", self._batches)
            os.kill(os.getpid(), signal.SIGKILL)


    def _traced_write_store(self, tracer: FlowTracer, items: list[Outcome]) -> None:
        """Write the batch inside one store span per message, each covering the whole batch write."""
        spans = tracer.start_store_spans(items)
        try:
            self._write_store(items)
        except Exception as exc:
            tracer.end_store_spans(spans, exc)
            raise
        tracer.end_store_spans(spans)

    def _write_store(self, items: list[Outcome]) -> None:
        """Write the batch to the store, retrying transient errors; count the request.

        A store that stays unavailable raises after the retries: the process
        stops, and a restart re-reads from the last snapshot (at least once).
        """
        context = self._context
        attempts = 0

        def write() -> None:
            nonlocal attempts
            attempts += 1
            context.store.write(items)

        started = perf_counter()
        try:
            retry_transient(write, is_transient=store_error_is_transient, what="store write")
        except Exception:
            if context.metrics is not None:
                seconds = perf_counter() - started
                context.metrics.record_store_write(attempts, seconds, ok=False)
                context.metrics.stages["store"].record(len(items), 0, len(items), seconds)
            raise
        if context.metrics is not None:
            context.metrics.record_store_write(attempts, perf_counter() - started, ok=True)

    def _send_dead_letters(self, items: list[Outcome]) -> None:
        topic = self._context.dead_letter_topic
        letters = [outcome.dead_letter for outcome in items if outcome.dead_letter is not None]
        for letter in letters:
            partition, offset = kafka_position(letter.source)
            topic.send(letter, partition, offset)
        if letters:
            topic.flush()


def _log_outcomes(items: list[Outcome]) -> None:
    for outcome in items:
        event = outcome.copy.event if outcome.copy is not None else None
        if event is None:
            continue
        log.debug(
            "stored %s for tenant %s: message %s from %s; ticket %s, thread match %s",
            outcome.kind, outcome.tenant,
            event["envelope"]["message_id"], event["envelope"]["from"],
            outcome.ticket_id or "-", outcome.method,
            extra={
                "event_id": event["event_id"],
                "ticket_id": outcome.ticket_id,
                "source": outcome.source,
            },
        )


def kafka_position(source: str) -> tuple[int | None, int | None]:
    """Read partition and offset from a Kafka source (`kafka://…/topic#2@1834`)."""
    match = _KAFKA_POSITION.search(source)
    if match is None:
        return None, None
    return int(match.group(1)), int(match.group(2))


class StoreSink(DynamicSink[Outcome]):
    """Write outcomes to the store in batches, then commit their dedupe marks.

    With an external sink, worker 0 then sends what the store queued for it
    (`FlowContext.delivery`); a rate-limited or unavailable sink pauses the
    sending, not the flow, until its backlog passes `[sink] max_backlog`.

    `kill_after_batches` is a crash-test hook: the process kills itself with
    SIGKILL right after that many store writes, before the next snapshot.
    """

    def __init__(self, context: FlowContext, kill_after_batches: int | None = None) -> None:
        self._context = context
        self._kill_after_batches = kill_after_batches

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        # One worker sends to the external sink, so items go out in order and once.
        return _StorePartition(self._context, self._kill_after_batches, delivers=worker_index == 0)


# -- the dataflow --------------------------------------------------------------------


def build_flow(
    source: Source[RawMessage],
    context: FlowContext,
    flow_id: str = "ticketflow",
    kill_after_batches: int | None = None,
) -> Dataflow:
    """Build the main job's dataflow over a source of raw records."""
    settings = context.settings
    flow = Dataflow(flow_id)

    records = op.input("read", flow, source)
    metrics = context.metrics
    tracer = context.tracer
    parsed = op.flat_map_batch(
        "parse",
        records,
        lambda batch: parse_batch(batch, settings, metrics, tracer, context.governor),
    )
    split = op.branch("split_dead_letters", parsed, lambda item: not isinstance(item, DeadLetter))

    copies = op.flat_map_batch(
        "fan_out", split.trues, lambda events: fan_out_batch(events, settings, metrics, tracer)
    )
    keyed = op.key_on("key_by_thread", copies, routing_key)
    joined = op.stateful_batch(
        "thread_join", keyed, lambda resume: _thread_join_logic(context, resume)
    )
    outcomes = op.key_rm("unkey", joined)

    dead = op.map("dead_letter", split.falses, _dead_letter_outcome)
    merged: Stream[Outcome] = op.merge("outcomes", outcomes, dead)
    op.output("store", merged, StoreSink(context, kill_after_batches))
    return flow


def _dead_letter_outcome(letter: DeadLetter) -> Outcome:
    log.warning("dead letter from %s: %s (%s)", letter.source, letter.reason, letter.detail,
                extra={"source": letter.source})
    return Outcome(kind="dead_letter", source=letter.source, reason=letter.reason, dead_letter=letter)
