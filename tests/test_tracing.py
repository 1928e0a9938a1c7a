"""Traces of the main job: one connected trace per message, from the Kafka record to the store."""

from __future__ import annotations

import json
import pickle
import random
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.mailgen import thread_corpus
from ticketflow.config import settings_from_mapping
from ticketflow.connectors.kafka_produce import produce_records
from ticketflow.connectors.records import RecordsSource
from ticketflow.metrics import stamp_ingest_time
from ticketflow.model import DeadLetter, RawMessage
from ticketflow.replay import RatePace, replay
from ticketflow.runner import run_flow
from ticketflow.tracing import carried_parent, carry_parent, open_flow_tracer

STAGES = {"parse", "fan_out", "thread_join", "store"}
NOT_A_MAIL = b"\x00\x01 not a mail at all"


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def producer_traceparents(count: int, seed: int = 11) -> list[tuple[int, int, str]]:
    """Return (trace id, span id, header value) of `count` producer spans, as a producer would make them."""
    rng = random.Random(seed)
    parents = []
    for _ in range(count):
        trace_id, span_id = rng.getrandbits(128) | 1, rng.getrandbits(64) | 1
        parents.append((trace_id, span_id, f"00-{trace_id:032x}-{span_id:016x}-01"))
    return parents


def spans_by_trace(exporter: InMemorySpanExporter) -> dict[int, list]:
    traces = defaultdict(list)
    for span in exporter.get_finished_spans():
        traces[span.context.trace_id].append(span)
    return traces


def test_kafka_message_traces_chain_to_producer(
    tansu, new_topic, tmp_path, exporter, provider
):
    topic = new_topic(partitions=2)
    tansu.create_topic(f"{topic}.dlq", 1)
    raws = thread_corpus(4) + [NOT_A_MAIL]
    parents = producer_traceparents(len(raws))
    records = [(raw, {"traceparent": header}) for raw, (_, _, header) in zip(raws, parents, strict=True)]
    produce_records(tansu.bootstrap, topic, records, partitions=2)

    settings = settings_from_mapping({"tracing": {"enabled": True}})
    summary = run_flow(f"kafka://{tansu.bootstrap}/{topic}", settings, f"sqlite:///{tmp_path / 't.db'}",
                       workers=2, tracer_provider=provider)

    assert summary.read == len(raws)
    traces = spans_by_trace(exporter)
    assert set(traces) == {trace_id for trace_id, _, _ in parents}
    producer_span = {trace_id: span_id for trace_id, span_id, _ in parents}
    event_ids = set()
    for trace_id, spans in traces.items():
        assert {span.parent.span_id for span in spans} == {producer_span[trace_id]}
        assert all(span.parent.is_remote for span in spans)
        names = sorted(span.name for span in spans)
        sources = {span.attributes["ticketflow.source"] for span in spans}
        assert len(sources) == 1, f"one message per trace, found {sources}"
        if "fan_out" not in names:
            # The record that is not a mail: parse fails, the dead letter is stored.
            assert names == ["parse", "store"]
            continue
        assert set(names) == STAGES
        assert names.count("parse") == names.count("fan_out") == 1
        assert names.count("thread_join") == names.count("store")
        ids = {span.attributes["ticketflow.event_id"] for span in spans}
        assert len(ids) == 1
        event_ids |= ids
    assert len(event_ids) == len(raws) - 1

    stored = [span for spans in traces.values() for span in spans if span.name == "store"]
    ticketed = [span for span in stored if span.attributes["ticketflow.outcome"] in ("created", "threaded")]
    assert len(ticketed) == summary.tickets_created + summary.replies_threaded
    assert all(span.attributes["ticketflow.ticket_id"] for span in ticketed)


def test_untraced_record_roots_trace_at_parse(tmp_path, exporter, provider):
    records = [RawMessage(source=f"mem://{n}", raw=raw) for n, raw in enumerate(thread_corpus(2))]
    settings = settings_from_mapping({"tracing": {"enabled": True}})

    run_flow("mem", settings, f"sqlite:///{tmp_path / 't.db'}", source=RecordsSource(records),
             tracer_provider=provider)

    traces = spans_by_trace(exporter)
    assert len(traces) == len(records)
    for spans in traces.values():
        (root,) = [span for span in spans if span.parent is None]
        assert root.name == "parse"
        others = [span for span in spans if span is not root]
        assert {span.name for span in others} == STAGES - {"parse"}
        assert {span.parent.span_id for span in others} == {root.context.span_id}


def test_tracing_off_records_no_spans(tmp_path, exporter, provider):
    _, _, header = producer_traceparents(1)[0]
    records = [
        RawMessage(source=f"mem://{n}", raw=raw, traceparent=header)
        for n, raw in enumerate(thread_corpus(2))
    ]
    settings = settings_from_mapping({})

    summary = run_flow("mem", settings, f"sqlite:///{tmp_path / 't.db'}", source=RecordsSource(records),
                       tracer_provider=provider)

    assert summary.read == len(records)
    assert exporter.get_finished_spans() == ()
    assert open_flow_tracer(settings.tracing, provider) is None


@pytest.mark.parametrize("stamped", [False, True], ids=["plain_event", "stamped_event"])
def test_carried_parent_survives_pickling(stamped):
    event = {"event_id": "e-1", "source": "mem://1", "subject": "Printer on fire"}
    if stamped:
        event = stamp_ingest_time(event, datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC))
    _, _, header = producer_traceparents(1)[0]

    traced = carry_parent(event, header)
    restored = pickle.loads(pickle.dumps(traced))

    assert carried_parent(restored) == header
    assert json.dumps(restored, sort_keys=True) == json.dumps(event, sort_keys=True)
    if stamped:
        assert restored.ingested == event.ingested


def test_dead_letter_parent_survives_pickling():
    letter = DeadLetter(source="mem://9", reason="not_a_message", detail="no header section")
    _, _, header = producer_traceparents(1)[0]

    restored = pickle.loads(pickle.dumps(carry_parent(letter, header)))

    assert carried_parent(restored) == header
    assert restored == letter


def test_replayed_records_carry_a_traceparent_each(tansu, new_topic, tmp_path, exporter, provider):
    topic = new_topic()
    tansu.create_topic(f"{topic}.dlq", 1)
    raws = thread_corpus(2)
    replay(iter(raws), tansu.bootstrap, topic, RatePace(5000))

    settings = settings_from_mapping({"tracing": {"enabled": True}})
    run_flow(f"kafka://{tansu.bootstrap}/{topic}", settings, f"sqlite:///{tmp_path / 't.db'}",
             tracer_provider=provider)

    traces = spans_by_trace(exporter)
    assert len(traces) == len(raws)
    for spans in traces.values():
        assert all(span.parent is not None and span.parent.is_remote for span in spans)
        assert len({span.parent.span_id for span in spans}) == 1
