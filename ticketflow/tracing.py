"""OpenTelemetry traces of the main job: one span per stage for each message.

The flow itself uses only `opentelemetry-api`. With `[tracing] enabled = false`
(the default) the runner passes no `FlowTracer` to the flow, each stage checks
that once per batch, and no span object is created. With tracing on, every
message gets one trace:

- its parent is the W3C ``traceparent`` the record came with (the Kafka header of
  that name, which `ticketflow replay` sets), or, when the record has none or an
  invalid one, the ``parse`` span starts a new trace;
- the spans ``parse``, ``fan_out``, ``thread_join`` and ``store`` are children of
  that parent, so each of them names the producer's span as its parent. A message
  addressed to several tenants has one ``thread_join`` and one ``store`` span per
  tenant copy; a dead letter has ``parse`` and ``store`` only;
- every span has the attributes ``ticketflow.event_id`` (the correlation id, set
  once the message has parsed) and ``ticketflow.source``. The ``store`` span also
  has ``ticketflow.ticket_id`` when the message opened or joined a ticket.

The parent travels with the message as an attribute of the event (or of the
dead letter), never as a key, so the event's JSON stays as it is. The attribute
survives pickling, which Bytewax uses between processes and in snapshots, but a
plain ``dict(event)`` copy loses it, and the later stages of that copy are then
not traced.

The SDK and the OTLP exporter are the optional extra ``tracing``;
`open_flow_tracer` installs them when a run turns tracing on and no tracer
provider is passed in.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ticketflow.config import ConfigError, TracingSettings
from ticketflow.model import DeadLetter, Event, RawMessage
from ticketflow.outcome import Outcome

log = logging.getLogger(__name__)

TRACER_NAME = "ticketflow"
TRACEPARENT_HEADER = "traceparent"
EVENT_ID_ATTRIBUTE = "ticketflow.event_id"
SOURCE_ATTRIBUTE = "ticketflow.source"
TICKET_ID_ATTRIBUTE = "ticketflow.ticket_id"
TENANT_ATTRIBUTE = "ticketflow.tenant"

# The name of the attribute that carries the trace parent on an event or dead letter.
_CARRIED = "trace_parent"
_PROPAGATOR = TraceContextTextMapPropagator()
# The SDK provider this process installed, so a second run in the process reuses it.
_installed_provider: Any = None


class TracedEvent(dict[str, Any]):
    """An event that carries its trace parent as the attribute `trace_parent`, not as a key."""

    trace_parent: str | None = None


def new_traceparent() -> str:
    """Return a W3C traceparent for a new sampled trace, with random trace and span ids."""
    trace_id = secrets.randbits(128) or 1
    span_id = secrets.randbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def format_traceparent(context: trace.SpanContext) -> str:
    """Format a span context as a W3C traceparent header value."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_context(traceparent: str | None) -> Context | None:
    """Read a traceparent value into a context to start spans in; None when it is absent or invalid."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({TRACEPARENT_HEADER: traceparent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def carried_parent(item: Any) -> str | None:
    """Return the trace parent an event or dead letter carries, or None."""
    return cast(str | None, getattr(item, _CARRIED, None))


def carry_parent(item: Event | DeadLetter, traceparent: str) -> Event | DeadLetter:
    """Attach `traceparent` to an event or dead letter and return it.

    A plain dict event becomes a `TracedEvent` copy. An event that is already a
    dict subclass (`StampedEvent`) and a dead letter (a frozen dataclass) get the
    attribute in place, so the event keeps its exact ingest stamp.
    """
    if type(item) is dict:
        traced = TracedEvent(item)
        traced.trace_parent = traceparent
        return cast(Event, traced)
    # object.__setattr__ passes the frozen dataclass's guard, and the attribute
    # lives in __dict__, which pickling keeps.
    object.__setattr__(item, _CARRIED, traceparent)
    return item


class FlowTracer:
    """Start the stage spans of the main job with one OpenTelemetry tracer.

    The flow calls it only when tracing is on, so the off path builds no spans.
    """

    def __init__(self, tracer: trace.Tracer, provider: Any = None) -> None:
        self._tracer = tracer
        self._provider = provider

    @contextmanager
    def parse_span(self, record: RawMessage) -> Iterator[Span]:
        """Open the parse span of `record`, a child of its traceparent or the root of a new trace."""
        with self._tracer.start_as_current_span(
            "parse",
            context=parent_context(record.traceparent),
            kind=SpanKind.CONSUMER,
            attributes={SOURCE_ATTRIBUTE: record.source},
        ) as span:
            yield span

    def finish_parse(
        self, span: Span, record: RawMessage, item: Event | DeadLetter
    ) -> Event | DeadLetter:
        """Label the parse span with its result and return `item` carrying the message's trace parent.

        The parent of the later stages is the record's traceparent when it is
        valid, else this parse span.
        """
        if isinstance(item, DeadLetter):
            span.set_status(Status(StatusCode.ERROR, item.reason))
            span.set_attribute("ticketflow.dead_letter_reason", item.reason)
        else:
            span.set_attribute(EVENT_ID_ATTRIBUTE, item["event_id"])

        if parent_context(record.traceparent) is not None:
            parent = cast(str, record.traceparent)
        else:
            parent = format_traceparent(span.get_span_context())
        return carry_parent(item, parent)

    @contextmanager
    def event_span(self, stage: str, event: Event, tenant: str | None = None) -> Iterator[Span | None]:
        """Open the span of `stage` for one event; yield None when the event carries no parent."""
        context = parent_context(carried_parent(event))
        if context is None:
            yield None
            return
        attributes = {EVENT_ID_ATTRIBUTE: event["event_id"], SOURCE_ATTRIBUTE: event["source"]}
        if tenant is not None:
            attributes[TENANT_ATTRIBUTE] = tenant
        with self._tracer.start_as_current_span(stage, context=context, attributes=attributes) as span:
            yield span

    def start_store_spans(self, outcomes: Iterable[Outcome]) -> list[Span]:
        """Start one store span per traced outcome of a batch; `end_store_spans` ends them."""
        spans = []
        for outcome in outcomes:
            carrier: Any = outcome.dead_letter if outcome.copy is None else outcome.copy.event
            context = parent_context(carried_parent(carrier))
            if context is None:
                continue
            attributes: dict[str, Any] = {SOURCE_ATTRIBUTE: outcome.source, "ticketflow.outcome": outcome.kind}
            if outcome.copy is not None:
                attributes[EVENT_ID_ATTRIBUTE] = outcome.copy.event["event_id"]
            if outcome.tenant is not None:
                attributes[TENANT_ATTRIBUTE] = outcome.tenant
            if outcome.ticket_id is not None:
                attributes[TICKET_ID_ATTRIBUTE] = outcome.ticket_id
            spans.append(
                self._tracer.start_span("store", context=context, kind=SpanKind.PRODUCER, attributes=attributes)
            )
        return spans

    @staticmethod
    def end_store_spans(spans: list[Span], error: BaseException | None = None) -> None:
        """End the store spans of a batch, marked failed when the batch write raised `error`."""
        for span in spans:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()

    def flush(self) -> None:
        """Export the spans still buffered, when this tracer's provider can (the SDK's can)."""
        force_flush = getattr(self._provider, "force_flush", None)
        if force_flush is not None:
            force_flush()


def open_flow_tracer(settings: TracingSettings, provider: Any = None) -> FlowTracer | None:
    """Return the tracer of a run, or None when `[tracing] enabled` is false.

    `provider` is an OpenTelemetry tracer provider (a test passes one with an
    in-memory exporter). Without one, the first traced run of the process installs
    an SDK provider with the exporter `settings` names as the global provider.
    Raises `ConfigError` naming the extra to install when the SDK is missing.
    """
    if not settings.enabled:
        return None
    if provider is None:
        provider = install_sdk_provider(settings)
    return FlowTracer(provider.get_tracer(TRACER_NAME), provider)


def install_sdk_provider(settings: TracingSettings) -> Any:
    """Install an SDK tracer provider exporting to `settings.exporter`, once per process; return it."""
    global _installed_provider
    if _installed_provider is not None:
        return _installed_provider
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            "[tracing] enabled = true needs the OpenTelemetry SDK: "
            "pip install 'ticketflow[tracing]', or set enabled = false"
        ) from exc

    provider = TracerProvider(resource=Resource.create({"service.name": "ticketflow"}))
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    trace.set_tracer_provider(provider)
    _installed_provider = provider
    log.info("tracing on: exporting spans with %s to %s", settings.exporter, settings.endpoint or "the default")
    return provider


def _exporter(settings: TracingSettings) -> Any:
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(
            "[tracing] exporter = \"otlp\" needs opentelemetry-exporter-otlp-proto-http: "
            "pip install 'ticketflow[tracing]', or use exporter = \"console\""
        ) from exc
    # An empty endpoint leaves the choice to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    # the exporter's default, http://localhost:4318/v1/traces.
    return OTLPSpanExporter(endpoint=settings.endpoint or None)
