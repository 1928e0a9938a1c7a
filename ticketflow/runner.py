"""Run the main job on a source and return its summary; used by the CLI and the tests.

One process runs `run_flow`; `ticketflow.cluster` starts several processes that
each run it with their `process_id` and the cluster's address list.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax._bytewax import cli_main
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir

from ticketflow.config import Settings
from ticketflow.connectors.corpus import CorpusSource
from ticketflow.connectors.store import SqliteStore, open_store
from ticketflow.flows.main import FlowContext, build_flow
from ticketflow.metrics import FlowMetrics
from ticketflow.model import RawMessage
from ticketflow.outcome import RunSummary
from ticketflow.tracing import open_flow_tracer

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """An input the run cannot read; the message names it and says what is accepted."""


class StopSignal:
    """Set once SIGTERM or SIGINT asks the run to stop after the current batch."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        """Route SIGTERM and SIGINT here; only possible from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._handle)

    def _handle(self, number: int, _frame: Any) -> None:
        log.warning("received %s: stopping after the current batch", signal.Signals(number).name)
        self.event.set()


class _StoppablePartition(StatefulSourcePartition[RawMessage, Any]):
    def __init__(self, inner: StatefulSourcePartition[RawMessage, Any], stop: threading.Event) -> None:
        self._inner = inner
        self._stop = stop

    def next_batch(self) -> list[RawMessage]:
        if self._stop.is_set():
            raise StopIteration()
        return self._inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class StoppableSource(FixedPartitionedSource[RawMessage, Any]):
    """Wrap a partitioned source so every partition ends when a stop is requested.

    Partition state passes through unchanged, so a resumed run continues from
    where the stopped one left off. `on_listed` is called each time the inner
    source has listed its partitions (for Kafka, once the broker returned its metadata).
    """

    def __init__(
        self,
        inner: FixedPartitionedSource[RawMessage, Any],
        stop: threading.Event,
        on_listed: Callable[[], None] | None = None,
    ) -> None:
        self._inner = inner
        self._stop = stop
        self._on_listed = on_listed

    def list_parts(self) -> list[str]:
        parts = self._inner.list_parts()
        if self._on_listed is not None:
            self._on_listed()
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(self._inner.build_part(step_id, for_part, resume_state), self._stop)


def build_source(
    input_name: str, settings: Settings, *, drain: bool, batch_size: int = 500
) -> FixedPartitionedSource[RawMessage, Any]:
    """Open the source an `--input` value names: a corpus path or `kafka://HOST:PORT/TOPIC`."""
    if input_name.startswith("kafka://"):
        from ticketflow.connectors.kafka import KafkaSource, parse_kafka_url

        address = parse_kafka_url(input_name)
        return KafkaSource(
            address.bootstrap,
            address.topic,
            settings=settings.kafka.client_settings(),
            drain=drain,
            batch_size=batch_size,
            max_message_bytes=settings.limits.max_message_bytes,
        )
    if "://" in input_name:
        raise SourceError(
            f"input {input_name!r}: unknown scheme; give a file, a folder of messages, "
            "an mbox, a Maildir or kafka://HOST:PORT/TOPIC"
        )
    return CorpusSource(Path(input_name), batch_size=batch_size)


def prepare_recovery(recovery_dir: Path, partitions: int) -> RecoveryConfig:
    """Create the recovery partitions on first use, and return the config that reads them."""
    recovery_dir.mkdir(parents=True, exist_ok=True)
    if not any(recovery_dir.iterdir()):
        init_db_dir(recovery_dir, partitions)
        log.info("recovery store created: %s with %d partitions", recovery_dir, partitions)
    return RecoveryConfig(recovery_dir)


def run_flow(
    input_name: str | Path,
    settings: Settings,
    store: SqliteStore | str,
    *,
    workers: int = 1,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    recovery_dir: Path | None = None,
    snapshot_interval: float = 10.0,
    drain: bool = True,
    dead_letter_topic_name: str | None = None,
    batch_size: int = 500,
    source: FixedPartitionedSource[RawMessage, Any] | None = None,
    stop: StopSignal | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    metrics: FlowMetrics | None = None,
    tracer_provider: Any = None,
    sink: Any = None,
) -> RunSummary:
    """Run the main job until its source ends (or a stop is requested); return the counts.

    `source` replaces the source `input_name` names, which then only labels the run.
    `metrics` counts the run and tracks its readiness. The caller serves it
    (`ticketflow.metrics.start_metrics_server` does both). With `[tracing] enabled`,
    spans go to `tracer_provider`, or to the SDK provider `ticketflow.tracing`
    installs from the settings; they are flushed when the run ends. `sink`
    replaces the external sink `[sink] kind` names (a `TicketSink`).
    """
    tracer = open_flow_tracer(settings.tracing, tracer_provider)
    owns_store = isinstance(store, str)
    ticket_store = open_store(store) if isinstance(store, str) else store
    readiness = metrics.readiness if metrics is not None else None
    if readiness is not None:
        readiness.store_opened()
    stop = stop or StopSignal()
    stop.install()
    dead_letter_topic = open_dead_letter_topic(str(input_name), settings, dead_letter_topic_name)
    delivery = _open_delivery(settings, ticket_store, process_id, sink, metrics)
    try:
        context = FlowContext(
            settings=settings, store=ticket_store, clock=clock, stopping=stop.event,
            dead_letter_topic=dead_letter_topic, metrics=metrics, tracer=tracer,
            delivery=delivery,
        )
        inner = source or build_source(str(input_name), settings, drain=drain, batch_size=batch_size)
        on_listed = readiness.source_listed if readiness is not None else None
        flow = build_flow(
            StoppableSource(inner, stop.event, on_listed), context,
            kill_after_batches=_fault_kill_after_batches(process_id),
        )
        recovery = RecoveryConfig(recovery_dir) if recovery_dir is not None else None

        log.info("run started: input=%s workers=%d process=%s", input_name, workers, process_id)
        cli_main(
            flow,
            workers_per_process=workers,
            process_id=process_id,
            addresses=addresses,
            epoch_interval=timedelta(seconds=snapshot_interval),
            recovery_config=recovery,
        )
        if delivery is not None and addresses is None:
            context.summary.deliveries = drain_deliveries(delivery, stop.event)
        elif delivery is not None:
            # A cluster's parent drains once every process is done, and adds up these counts.
            context.summary.deliveries = {"sink": delivery.sink.name, **delivery.counts.as_dict()}
        log.info("run finished: %s", context.summary.as_dict())
        return context.summary
    finally:
        if delivery is not None:
            delivery.close()
        if tracer is not None:
            tracer.flush()
        if readiness is not None:
            readiness.run_finished()
        if dead_letter_topic is not None:
            dead_letter_topic.close()
        if owns_store:
            ticket_store.close()


def _open_delivery(
    settings: Settings, store: Any, process_id: int | None, sink: Any, metrics: FlowMetrics | None
) -> Any:
    """Queue deliveries for the sink in every process; send them from process 0 only."""
    if sink is None and settings.sink.kind == "none":
        return None
    store.deliver_to((sink.name if sink is not None else settings.sink.kind,))
    if process_id not in (None, 0):
        return None
    from ticketflow.connectors.attachment_store import open_attachment_store
    from ticketflow.connectors.delivery import Delivery
    from ticketflow.connectors.sink import open_sink

    sink = sink or open_sink(settings)
    return Delivery(sink, store, settings, attachments=open_attachment_store(settings.attachments), metrics=metrics)


# Seconds a stopped (SIGTERM) run still spends sending its backlog.
STOPPING_DRAIN_SECONDS = 5.0


def drain_deliveries(delivery: Any, stop: threading.Event | None = None) -> dict[str, Any]:
    """Send what is still pending at the end of a run; return the sink's counts for the summary.

    A run stopped by SIGTERM sends for at most `STOPPING_DRAIN_SECONDS`, and a
    SIGTERM during the drain ends it; what is left waits in the store.
    """
    stop = stop or threading.Event()
    timeout = min(STOPPING_DRAIN_SECONDS, delivery.drain_timeout) if stop.is_set() else None
    counts = delivery.drain(timeout, stopping=lambda: stop.is_set() and timeout is None)
    return {"sink": delivery.sink.name, **delivery.counts.as_dict(),
            "pending": int(counts.get("pending", 0))}


FAULT_KILL_VARIABLE = "TICKETFLOW_FAULT_KILL_AFTER_BATCHES"


def _fault_kill_after_batches(process_id: int | None) -> int | None:
    """Read the crash-test hook: SIGKILL this process right after its Nth store write.

    `N` applies to every process, `N@P` only to the process with id P. Tests use
    it to stop a process between a store write and the snapshot that follows it;
    it is unset in normal runs.
    """
    value = os.environ.get(FAULT_KILL_VARIABLE)
    if not value:
        return None
    batches, _, target = value.partition("@")
    if not batches.isdigit() or int(batches) < 1 or (target and not target.isdigit()):
        raise ValueError(
            f"{FAULT_KILL_VARIABLE}={value!r}: use a positive number of batches, "
            "optionally followed by @PROCESS_ID"
        )
    if target and int(target) != (process_id or 0):
        return None
    return int(batches)


def open_dead_letter_topic(input_name: str, settings: Settings, name: str | None) -> Any:
    """Open the dead-letter topic of a Kafka run (`<topic>.dlq` unless named); None otherwise.

    Raises the connector's `TopicNotFoundError` at start when the topic does not
    exist, rather than failing on the first dead letter.
    """
    if not input_name.startswith("kafka://"):
        return None
    from ticketflow.connectors.kafka import DeadLetterTopic, parse_kafka_url, topic_partitions

    address = parse_kafka_url(input_name)
    topic = name or f"{address.topic}.dlq"
    client_settings = settings.kafka.client_settings()
    topic_partitions(address.bootstrap, address.topic, client_settings)
    topic_partitions(address.bootstrap, topic, client_settings)
    return DeadLetterTopic(
        address.bootstrap, topic, client_settings, max_message_bytes=settings.limits.max_message_bytes
    )


def run_corpus(
    input_path: str | Path,
    settings: Settings,
    store: SqliteStore | str,
    *,
    workers: int = 1,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sink: Any = None,
) -> RunSummary:
    """Run the main job over a corpus (file, folder, mbox or Maildir) until it is drained."""
    return run_flow(input_path, settings, store, workers=workers, clock=clock, sink=sink)
