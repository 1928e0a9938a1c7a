"""Micro-benchmarks of each stage of the flow, with the stdlib parser beside ours.

Run by `make bench` (pytest-benchmark); `make test` never collects them, because
pytest's testpaths is `tests`. Every benchmark handles the same messages per
round and records their number in `extra_info["messages"]`.
"""

from __future__ import annotations

import email
from email import policy

import pytest
from baseline import parse_to_event
from conftest import INGESTED, STAGE_MESSAGES

from ticketflow.connectors.store import SqliteStore
from ticketflow.flows.main import _event_time, tenant_copies
from ticketflow.operators.dedupe import DedupeWindow, dedupe_key
from ticketflow.operators.enrich import enrich, tenants_for
from ticketflow.operators.gate import gate
from ticketflow.operators.parse import parse_message
from ticketflow.operators.thread import ThreadIndex

ROUNDS = 5 if STAGE_MESSAGES < 1000 else 10


@pytest.fixture(autouse=True)
def count_messages(benchmark):
    benchmark.extra_info["messages"] = STAGE_MESSAGES


def test_parse(benchmark, raws):
    def parse_all():
        for number, raw in enumerate(raws):
            parse_message(raw, f"synth#{number}", INGESTED)

    benchmark.pedantic(parse_all, rounds=ROUNDS, warmup_rounds=1)


def test_parse_stdlib_policy_default(benchmark, raws):
    """The baseline's parse: `email` with `policy.default`, bodies and attachments read."""

    def parse_all():
        for raw in raws:
            parse_to_event(raw)

    benchmark.pedantic(parse_all, rounds=max(2, ROUNDS // 3), warmup_rounds=0)


def test_parse_stdlib_compat32_headers_only(benchmark, raws):
    """A floor: the stdlib reading the message tree with compat32, nothing decoded."""

    def parse_all():
        for raw in raws:
            email.message_from_bytes(raw, policy=policy.compat32)

    benchmark.pedantic(parse_all, rounds=ROUNDS, warmup_rounds=1)


def test_enrich(benchmark, events, settings):
    def enrich_all():
        for event in events:
            tenants_for(event, settings.routing)
            enrich(event, settings.routing)

    benchmark.pedantic(enrich_all, rounds=ROUNDS, warmup_rounds=1)


def test_gate(benchmark, events, settings):
    def gate_all():
        for event in events:
            gate(event, settings.routing, settings.threading, settings.gate)

    benchmark.pedantic(gate_all, rounds=ROUNDS, warmup_rounds=1)


def test_fan_out(benchmark, events, settings):
    """Tenant copies with enrichment and the gate's classification: the flow's fan_out step."""

    def fan_out_all():
        for event in events:
            tenant_copies(event, settings)

    benchmark.pedantic(fan_out_all, rounds=ROUNDS, warmup_rounds=1)


def test_dedupe(benchmark, copies):
    """Check and commit every copy in a fresh 24 h window."""

    def dedupe_all():
        window = DedupeWindow(24 * 3600.0, 1_000_000)
        for copy in copies:
            key = dedupe_key(copy.event)
            window.check(copy.tenant, key, copy.event["source"], _event_time(copy.event))
            window.commit(copy.tenant, key)

    benchmark.pedantic(dedupe_all, rounds=ROUNDS, warmup_rounds=1)


def test_thread_join(benchmark, copies, settings):
    """Decide every copy's ticket in a fresh in-memory index."""

    def thread_all():
        index = ThreadIndex(settings)
        for copy in copies:
            index.decide(copy, dedupe_key(copy.event), allow_open=True)

    benchmark.pedantic(thread_all, rounds=ROUNDS, warmup_rounds=1)


def test_store_write(benchmark, outcomes, tmp_path_factory):
    """Write every outcome to a fresh SQLite store in batches of 500, as the sink does."""
    folder = tmp_path_factory.mktemp("store")
    stores = []

    def fresh_store():
        store = SqliteStore(folder / f"bench-{len(stores)}.db")
        stores.append(store)
        return (store,), {}

    def write_all(store):
        for start in range(0, len(outcomes), 500):
            store.write(outcomes[start : start + 500])

    try:
        benchmark.pedantic(write_all, setup=fresh_store, rounds=ROUNDS, warmup_rounds=1)
    finally:
        for store in stores:
            store.close()
