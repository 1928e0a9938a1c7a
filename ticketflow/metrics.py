"""Prometheus metrics of the main job, and the HTTP server that serves them.

Each process of a run has its own `FlowMetrics` and `MetricsServer`: process i of
a cluster serves `[metrics] port` + i (`metrics_port_for`), and Prometheus scrapes
every process, so no state is shared between processes. The server serves:

- ``/metrics``: the Prometheus text format (OpenMetrics when the scraper asks);
- ``/healthz``: 200 while the process runs;
- ``/readyz``: 200 once the store is open and the source has listed its
  partitions (for Kafka that needs the broker's metadata), 503 before that and
  after the run ends.

What is exported, all prefixed ``ticketflow_``:

- ``stage_messages_in_total``, ``stage_messages_out_total``,
  ``stage_messages_errored_total`` {stage}: items entering and leaving parse,
  fan_out, thread_join and store. Errored is a dead letter in parse and an item
  of a failed batch in store.
- ``stage_seconds_total`` {stage}: time spent in the stage.
- ``outcomes_total`` {outcome, tenant}: the run summary's fields, exactly
  (`RunSummary.as_dict`). Dead letters have the tenant "".
- ``email_to_ticket_latency_seconds`` {tenant}: histogram of ingest to store
  write, for every created or threaded message.
- ``thread_matches_total`` {tenant, method}: created and threaded messages by
  `Outcome.method` ("none" for a new ticket).
- ``tickets_enriched_total`` {tenant, field}: created tickets whose tenant,
  component, environment or priority was resolved.
- ``suppressed_total`` {tenant, reason}: messages that opened nothing, and
  ``auto_replies_suppressed_total`` {tenant}: the automatic ones among them.
- ``review_reasons_total`` {tenant, reason}: created tickets held for review,
  once per reason.
- ``dead_letters_total`` {reason}.
- ``store_write_requests_total`` {sink, result}: "ok", or "error" after the
  retries; ``store_write_retries_total`` {sink}: attempts beyond the first;
  ``store_write_seconds`` {sink}: histogram of one write, retries included.
- ``kafka_consumer_lag`` {topic, partition}: high watermark minus next offset
  (`current_lag`), read at scrape time.
- ``ready``: 1 while /readyz returns 200.

The parse success ratio is ``stage_messages_out_total{stage="parse"}`` over
``stage_messages_in_total{stage="parse"}``; enrichment coverage is
``tickets_enriched_total`` over ``outcomes_total{outcome="tickets_created"}``.

Tenant labels are bounded: a tenant named in `[routing] known_tenants` is its own
label, every other tenant is "other". Reasons and methods come from fixed sets in
the code. Counting happens once per batch in the store sink (`record_stored`), so
the cost per message is a few dictionary updates.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ticketflow.config import RoutingSettings, Settings
from ticketflow.model import Event
from ticketflow.operators.enrich import DEFAULT_PRIORITY
from ticketflow.outcome import Outcome, RunSummary, TenantCopy

log = logging.getLogger(__name__)

# Leave out the `_created` series: they double the series count, and a counter's
# reset is visible in the counter itself. The switch is global to prometheus_client.
disable_created_metrics()

PREFIX = "ticketflow_"
STAGES = ("parse", "fan_out", "thread_join", "store")
OUTCOME_FIELDS = tuple(RunSummary().as_dict())
ENRICHED_FIELDS = ("tenant", "component", "environment", "priority")
# The label of every tenant not named in [routing] known_tenants.
OTHER_TENANT = "other"
# The store is the only sink so far; external ticket systems get their own value.
STORE_SINK = "store"

# Seconds from ingest to ticket. Fine steps below 1 s resolve a 50 ms flow, 30 is
# the SLO's bound, and the tail reaches past the default orphan wait of 300 s.
LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 120.0, 300.0, 600.0,
)
STORE_WRITE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

_KIND_FIELD = {
    "created": "tickets_created",
    "threaded": "replies_threaded",
    "duplicate": "duplicates",
    "suppressed": "suppressed",
    "dead_letter": "dead_letters",
}


# Results a delivery to an external sink is counted under.
SINK_RESULTS = ("delivered", "rejected", "rate_limited", "unavailable")


class TenantLabels:
    """Map tenant names onto a bounded set of label values: the known tenants and "other"."""

    def __init__(self, known_tenants: Iterable[str]) -> None:
        self._known = frozenset(known_tenants)

    def __call__(self, tenant: str | None) -> str:
        """Return the label of `tenant`; "" for no tenant (a dead letter)."""
        if tenant is None:
            return ""
        return tenant if tenant in self._known else OTHER_TENANT

    def values(self) -> tuple[str, ...]:
        """Return every label value a tenant can get."""
        return (*sorted(self._known), OTHER_TENANT)


class StageMeter:
    """The counters of one stage, bound to its label so the hot path skips label lookups."""

    def __init__(self, metrics: FlowMetrics, stage: str) -> None:
        self._received = metrics.stage_in.labels(stage)
        self._emitted = metrics.stage_out.labels(stage)
        self._errored = metrics.stage_errored.labels(stage)
        self._seconds = metrics.stage_seconds.labels(stage)

    def record(self, received: int, emitted: int, errored: int, seconds: float) -> None:
        """Count one batch of the stage."""
        self._received.inc(received)
        self._emitted.inc(emitted)
        if errored:
            self._errored.inc(errored)
        self._seconds.inc(seconds)


class Readiness:
    """The readiness of a process: its store is open and its source has listed its partitions."""

    def __init__(self) -> None:
        self._store_open = threading.Event()
        self._source_listed = threading.Event()
        self._finished = threading.Event()

    def store_opened(self) -> None:
        """Record that the run's store is open."""
        self._store_open.set()

    def source_listed(self) -> None:
        """Record that the source listed its partitions (Kafka: the broker returned metadata)."""
        self._source_listed.set()

    def run_finished(self) -> None:
        """Record that the run ended; the process is no longer ready."""
        self._finished.set()

    @property
    def ready(self) -> bool:
        """True between the source listing its partitions and the end of the run."""
        started = self._store_open.is_set() and self._source_listed.is_set()
        return started and not self._finished.is_set()


class KafkaLagCollector:
    """Report `current_lag()` at scrape time, so reading Kafka costs nothing per record."""

    def collect(self) -> Iterator[Metric]:
        """Yield the lag gauge with one sample per open partition."""
        family = GaugeMetricFamily(
            f"{PREFIX}kafka_consumer_lag",
            "Records between a partition's next offset and its high watermark at its last batch.",
            labels=["topic", "partition"],
        )
        # A run that never imported the Kafka connector has no partition open.
        kafka = sys.modules.get("ticketflow.connectors.kafka")
        if kafka is not None:
            for (topic, partition), lag in sorted(kafka.current_lag().items()):
                family.add_metric([topic, str(partition)], lag)
        yield family


class FlowMetrics:
    """Every metric of one process's run, in a registry of its own.

    A fresh registry per instance lets tests run flows side by side in one
    process; `MetricsServer` serves `registry`. Known tenants and every stage get
    their series at zero up front, so `rate()` includes the first increase.
    """

    def __init__(self, routing: RoutingSettings, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.tenants = TenantLabels(routing.known_tenants)
        self.readiness = Readiness()
        self._default_tenant = routing.default_tenant
        self._define_stage_metrics()
        self._define_outcome_metrics()
        self._define_store_metrics()
        self._define_sink_metrics()
        self._define_attachment_metrics()

        self.registry.register(KafkaLagCollector())
        ProcessCollector(registry=self.registry)
        ready = Gauge(f"{PREFIX}ready", "1 while the process is ready to take work (/readyz).",
                      registry=self.registry)
        ready.set_function(lambda: 1.0 if self.readiness.ready else 0.0)
        self.stages = {stage: StageMeter(self, stage) for stage in STAGES}

    def _define_stage_metrics(self) -> None:
        registry = self.registry
        self.stage_in = Counter(f"{PREFIX}stage_messages_in", "Items that entered a stage.",
                                ["stage"], registry=registry)
        self.stage_out = Counter(f"{PREFIX}stage_messages_out", "Items a stage emitted.",
                                 ["stage"], registry=registry)
        self.stage_errored = Counter(
            f"{PREFIX}stage_messages_errored",
            "Items a stage failed on: dead letters in parse, items of failed batches in store.",
            ["stage"], registry=registry,
        )
        self.stage_seconds = Counter(f"{PREFIX}stage_seconds", "Seconds spent in a stage.",
                                     ["stage"], registry=registry)

    def _define_outcome_metrics(self) -> None:
        registry = self.registry
        self.outcomes = Counter(
            f"{PREFIX}outcomes",
            "The run summary's counts: read, fanned_out, tickets_created, replies_threaded, "
            "duplicates, suppressed, dead_letters, review.",
            ["outcome", "tenant"], registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}email_to_ticket_latency_seconds",
            "Seconds from ingest (or the Kafka timestamp) to the store write of a created or "
            "threaded message.",
            ["tenant"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.thread_matches = Counter(
            f"{PREFIX}thread_matches", "Created and threaded messages by thread join method.",
            ["tenant", "method"], registry=registry,
        )
        self.enriched = Counter(
            f"{PREFIX}tickets_enriched", "Created tickets with a field resolved (not the default).",
            ["tenant", "field"], registry=registry,
        )
        self.suppressed = Counter(f"{PREFIX}suppressed", "Messages that opened nothing, by reason.",
                                  ["tenant", "reason"], registry=registry)
        self.auto_replies = Counter(
            f"{PREFIX}auto_replies_suppressed",
            "Automatic messages (RFC 3834) that opened nothing.",
            ["tenant"], registry=registry,
        )
        self.review_reasons = Counter(
            f"{PREFIX}review_reasons", "Created tickets held for review, counted once per reason.",
            ["tenant", "reason"], registry=registry,
        )
        self.dead_letters = Counter(f"{PREFIX}dead_letters", "Dead letters by reason.",
                                    ["reason"], registry=registry)
        self._create_tenant_series()

    def _create_tenant_series(self) -> None:
        for tenant in self.tenants.values():
            self.latency.labels(tenant)
            for name in OUTCOME_FIELDS:
                if name != "dead_letters":
                    self.outcomes.labels(name, tenant)
        self.outcomes.labels("read", "")
        self.outcomes.labels("dead_letters", "")

    def _define_store_metrics(self) -> None:
        registry = self.registry
        self.store_requests = Counter(f"{PREFIX}store_write_requests", "Store writes by result.",
                                      ["sink", "result"], registry=registry)
        self.store_retries = Counter(f"{PREFIX}store_write_retries",
                                     "Store write attempts beyond the first.",
                                     ["sink"], registry=registry)
        self.store_seconds = Histogram(
            f"{PREFIX}store_write_seconds", "Seconds one store write took, retries included.",
            ["sink"], buckets=STORE_WRITE_BUCKETS, registry=registry,
        )
        for result in ("ok", "error"):
            self.store_requests.labels(STORE_SINK, result)
        self.store_retries.labels(STORE_SINK)
        self.store_seconds.labels(STORE_SINK)

    def _define_sink_metrics(self) -> None:
        self.sink_deliveries = Counter(
            f"{PREFIX}sink_deliveries",
            "Deliveries to the external ticket system by result: delivered, rejected, "
            "rate_limited, unavailable.",
            ["sink", "result"], registry=self.registry,
        )
        self.sink_backlog = Gauge(
            f"{PREFIX}sink_backlog", "Deliveries waiting in the store for the external ticket system.",
            ["sink"], registry=self.registry,
        )

    def _define_attachment_metrics(self) -> None:
        self.attachments = Counter(
            f"{PREFIX}attachments",
            "Attachments of parsed mail by governance result: accepted, refused, quarantined.",
            ["result"], registry=self.registry,
        )
        self.attachments_refused = Counter(
            f"{PREFIX}attachments_refused", "Refused attachments by reason (too_large, type_denied, …).",
            ["reason"], registry=self.registry,
        )
        for result in ("accepted", "refused", "quarantined"):
            self.attachments.labels(result)

    def record_attachments(self, event: Event) -> None:
        """Count the governance result of each attachment of a parsed event."""
        for attachment in event["attachments"]:
            refused = attachment.get("refused")
            if attachment.get("quarantined"):
                self.attachments.labels("quarantined").inc()
            elif refused:
                self.attachments.labels("refused").inc()
                self.attachments_refused.labels(refused.partition(":")[0]).inc()
            else:
                self.attachments.labels("accepted").inc()

    def sink_opened(self, sink: str) -> None:
        """Create the series of a sink at zero, so `rate()` counts its first deliveries."""
        for result in SINK_RESULTS:
            self.sink_deliveries.labels(sink, result)
        self.sink_backlog.labels(sink)

    def record_store_write(self, attempts: int, seconds: float, ok: bool) -> None:
        """Count one store write request of `attempts` tries that took `seconds`."""
        self.store_requests.labels(STORE_SINK, "ok" if ok else "error").inc()
        if attempts > 1:
            self.store_retries.labels(STORE_SINK).inc(attempts - 1)
        self.store_seconds.labels(STORE_SINK).observe(seconds)

    def record_stored(self, outcomes: list[Outcome], written_at: datetime) -> None:
        """Count a batch of outcomes the store has just written at `written_at`.

        Tallies the batch in plain dictionaries first, then increments each
        labelled series once, so a batch of 500 costs a handful of metric updates.
        """
        tally: Tally[tuple[Counter, tuple[str, ...]]] = Tally()
        latencies: dict[str, list[float]] = {}
        now = written_at.timestamp()
        for outcome in outcomes:
            self._tally_outcome(outcome, tally, latencies, now)

        for (counter, labels), count in tally.items():
            counter.labels(*labels).inc(count)
        for tenant, seconds in latencies.items():
            histogram = self.latency.labels(tenant)
            for value in seconds:
                histogram.observe(value)

    def _tally_outcome(
        self, outcome: Outcome, tally: Tally[Any], latencies: dict[str, list[float]], now: float
    ) -> None:
        tenant = self.tenants(outcome.tenant)
        tally[self.outcomes, ("read" if outcome.first_copy else "fanned_out", tenant)] += 1
        field = _KIND_FIELD[outcome.kind]
        tally[self.outcomes, (field, tenant)] += 1

        copy = outcome.copy
        if outcome.kind == "dead_letter":
            tally[self.dead_letters, (outcome.reason or "unknown",)] += 1
            return
        if copy is None:
            return
        if outcome.kind == "suppressed":
            tally[self.suppressed, (tenant, outcome.reason or "unknown")] += 1
            if copy.automatic is not None:
                tally[self.auto_replies, (tenant,)] += 1
            return
        if outcome.kind == "duplicate":
            return

        tally[self.thread_matches, (tenant, outcome.method)] += 1
        latencies.setdefault(tenant, []).append(max(0.0, now - ingested_timestamp(copy.event)))
        if outcome.kind == "created":
            self._tally_ticket(copy, tenant, tally)

    def _tally_ticket(self, copy: TenantCopy, tenant: str, tally: Tally[Any]) -> None:
        if copy.review_reasons:
            tally[self.outcomes, ("review", tenant)] += 1
            for reason in copy.review_reasons:
                tally[self.review_reasons, (tenant, reason)] += 1
        for field in self._resolved_fields(copy.tenant, copy.enrichment):
            tally[self.enriched, (tenant, field)] += 1

    def _resolved_fields(self, tenant: str, enrichment: dict[str, Any]) -> Iterator[str]:
        if tenant != self._default_tenant:
            yield "tenant"
        if enrichment.get("component"):
            yield "component"
        if enrichment.get("environment"):
            yield "environment"
        # NOTE: an explicit P3 (X-Priority: 3) is indistinguishable from the default
        # here, so it counts as unresolved.
        if enrichment.get("priority") not in (None, DEFAULT_PRIORITY):
            yield "priority"


# -- the exact ingest time -----------------------------------------------------------


class StampedEvent(dict[str, Any]):
    """An event that also carries its exact ingest time as POSIX seconds.

    The event's `ingested_at` is RFC 3339 to the second, too coarse for a
    latency histogram that resolves 50 ms. The stamp is an attribute, not a
    key, so the event's JSON and schema stay as they are. It survives pickling
    (Bytewax's exchange between processes and its snapshots). A copy of the
    dict loses it, and `ingested_timestamp` then falls back to `ingested_at`.
    """

    ingested: float = 0.0


def stamp_ingest_time(event: Event, ingested_at: datetime) -> Event:
    """Return a copy of `event` (a `StampedEvent`) carrying `ingested_at` to the microsecond."""
    stamped = StampedEvent(event)
    stamped.ingested = ingested_at.timestamp()
    return cast(Event, stamped)


def ingested_timestamp(event: Event) -> float:
    """Return when ticketflow first saw `event`, as POSIX seconds.

    The exact stamp when the event has one, else its `ingested_at` (to the
    second), else its `received_at`; 0.0 when neither reads as a time.
    """
    stamp = getattr(event, "ingested", 0.0)
    if stamp:
        return float(stamp)
    for key in ("ingested_at", "received_at"):
        # A malformed event may lack the key.
        value = cast(dict[str, Any], event).get(key)
        try:
            moment = datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            continue
        return moment.timestamp()
    return 0.0


# -- the HTTP server -----------------------------------------------------------------


def metrics_port_for(base_port: int, process_id: int | None) -> int:
    """Return the port process `process_id` of a run serves: `base_port` + its id; 0 stays off.

    Raises `ValueError` when the sum leaves the port range.
    """
    if base_port == 0:
        return 0
    port = base_port + (process_id or 0)
    if port > 65535:
        raise ValueError(
            f"metrics port {base_port} + process id {process_id} = {port} is above 65535; "
            "choose a lower [metrics] port or --metrics-port"
        )
    return port


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        path = urlsplit(self.path).path
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(self.server.metrics.registry), content_type)
        elif path == "/healthz":
            self._reply(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            ready = self.server.metrics.readiness.ready
            self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n",
                        "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n",
                        "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
        log.debug("metrics request from %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: FlowMetrics) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.metrics = metrics
        super().__init__(address, _Handler)


class MetricsServer:
    """Serve /metrics, /healthz and /readyz for `metrics` from a daemon thread.

    Port 0 here lets the system choose a free port, which `port` returns. The
    config's port 0, which turns the server off, is handled by `start_metrics_server`.
    Raises `OSError` naming the address when it cannot bind.
    """

    def __init__(self, metrics: FlowMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        try:
            self._server = _Server((host, port), metrics)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot serve metrics on {host}:{port}: {exc.strerror}; choose another "
                "[metrics] port or --metrics-port (0 turns the server off)",
            ) from exc
        # A short poll interval lets `close` return quickly; it costs a wake-up per poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name="metrics-server", daemon=True,
        )
        self._thread.start()
        log.info("serving metrics on %s", self.url)

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The URL of /metrics."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(
    settings: Settings, *, port: int | None = None, process_id: int | None = None
) -> MetricsServer | None:
    """Start the metrics server of one process of a run; None when metrics are off.

    `port` overrides `[metrics] port` (the CLI's `--metrics-port`); process i of
    a cluster serves that port + i. A port already in use is logged as an error
    that names the setting to change, and the run goes on without metrics,
    because the tickets matter more than their counts.
    """
    base = settings.metrics.port if port is None else port
    chosen = metrics_port_for(base, process_id)
    if chosen == 0:
        return None
    metrics = FlowMetrics(settings.routing)
    try:
        return MetricsServer(metrics, settings.metrics.host, chosen)
    except OSError as exc:
        log.error("%s; running without metrics", exc.strerror or exc)
        return None
