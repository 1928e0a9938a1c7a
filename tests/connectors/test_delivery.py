"""The delivery engine: each ticket and comment reaches the sink once, whatever goes wrong.

Runs against both stores. The sink is `MemorySink`, which follows the sink
contract in memory; the real sinks are tested over HTTP in their own files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.connectors.memory_sink import MemorySink
from tests.factories import make_copy, make_event
from ticketflow.config import Settings, load_settings, settings_from_mapping
from ticketflow.connectors.delivery import Delivery
from ticketflow.connectors.sink import RateLimited, SinkRejected, SinkUnavailable
from ticketflow.outcome import Outcome
from ticketflow.runner import run_corpus

SAMPLE = Path(__file__).resolve().parents[2] / "corpus" / "sample"


class FakeClock:
    """Seconds that pass only when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def sample_settings(**sink: object) -> Settings:
    settings = load_settings(SAMPLE / "ticketflow.toml")
    table = {"backoff": 0.001, "drain_timeout": 30.0, **sink}
    return settings_from_mapping({"sink": table, "routing": {
        "inbound_domains": list(settings.routing.inbound_domains),
        "known_tenants": list(settings.routing.known_tenants),
    }})


def stored_message_count(store) -> int:
    return sum(len(ticket["messages"]) for ticket in store.tickets())


def test_sample_corpus_delivered_once(store):
    sink = MemorySink()
    summary = run_corpus(SAMPLE, load_settings(SAMPLE / "ticketflow.toml"), store, sink=sink)

    tickets = store.tickets()
    assert len(sink.tickets) == len(tickets) == summary.tickets_created
    assert len(sink.tickets) + sink.comment_count() == stored_message_count(store)
    assert all(ticket["external"] == {"memory": sink.by_external_id(ticket["ticket_id"]).ref}
               for ticket in tickets)
    assert summary.deliveries["pending"] == 0
    assert summary.deliveries["rejected"] == 0


def test_second_run_sends_nothing(store):
    sink = MemorySink()
    settings = load_settings(SAMPLE / "ticketflow.toml")
    run_corpus(SAMPLE, settings, store, sink=sink)
    calls = len(sink.calls)

    run_corpus(SAMPLE, settings, store, sink=sink)

    assert len(sink.calls) == calls


def test_replay_into_new_store_repeats_nothing(backend):
    sink = MemorySink()
    settings = load_settings(SAMPLE / "ticketflow.toml")
    run_corpus(SAMPLE, settings, backend.open(), sink=sink)
    before = sink.summary()

    run_corpus(SAMPLE, settings, backend.open(), sink=sink)

    assert sink.summary() == before
    assert sink.calls.count("create_ticket") == len(before)


def test_rate_limit_pauses_delivery_not_the_flow(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(), clock=clock, sleep=clock.sleep)
    sink.fail("create_ticket", RateLimited("memory", 7.0))
    store.write([created("<a@x>", "tkt_a"), created("<b@x>", "tkt_b")])

    assert delivery.deliver_due() == 0
    assert delivery.deliver_due() == 0
    assert clock.slept == []
    assert store.delivery_counts("memory") == {"pending": 2}

    clock.now += 7.0
    assert delivery.deliver_due() == 2
    assert len(sink.tickets) == 2


def test_backlog_over_the_limit_waits_for_the_sink(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(max_backlog=1), clock=clock, sleep=clock.sleep)
    sink.fail("create_ticket", RateLimited("memory", 3.0))
    store.write([created("<a@x>", "tkt_a"), created("<b@x>", "tkt_b")])
    delivery.deliver_due()

    delivery.deliver_due()

    assert clock.slept == [3.0]
    assert len(sink.tickets) == 2


def test_drain_waits_out_retry_after(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(), clock=clock, sleep=clock.sleep)
    sink.fail("create_ticket", RateLimited("memory", 2.0), RateLimited("memory", 2.0))
    store.write([created("<a@x>", "tkt_a")])

    counts = delivery.drain()

    assert counts == {"done": 1}
    assert sum(clock.slept) == 4.0


def test_drain_timeout_leaves_items_pending(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(drain_timeout=5.0), clock=clock, sleep=clock.sleep)
    sink.fail("create_ticket", RateLimited("memory", 60.0))
    store.write([created("<a@x>", "tkt_a")])

    counts = delivery.drain()

    assert counts == {"pending": 1}
    assert sink.tickets == {}


def test_rejection_becomes_dead_letter(store):
    sink = MemorySink()
    delivery = Delivery(sink, store, sample_settings())
    answer = 'POST /tickets: {"errors": {"project": "project is required"}}'
    sink.fail("create_ticket", SinkRejected("memory", 400, answer))
    store.write([created("<a@x>", "tkt_a"), created("<b@x>", "tkt_b")])

    delivery.deliver_due()

    letters = store.dead_letters()
    assert [(letter["reason"], letter["source"]) for letter in letters] == [("sink_rejected", "/corpus/a@x.eml")]
    assert "project is required" in letters[0]["detail"]
    assert "HTTP 400" in letters[0]["detail"]
    assert store.delivery_counts("memory") == {"rejected": 1, "done": 1}
    assert delivery.counts.rejected == 1


def test_retry_rejected_sends_a_refused_message_again(store):
    sink = MemorySink()
    delivery = Delivery(sink, store, sample_settings())
    sink.fail("create_ticket", SinkRejected("memory", 400, "no such project"))
    store.write([created("<a@x>", "tkt_a")])
    delivery.deliver_due()

    assert store.retry_rejected("memory") == 1
    delivery.drain()

    assert [t.ticket.external_id for t in sink.tickets.values()] == ["tkt_a"]


def test_create_whose_answer_was_lost_is_not_repeated(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(), clock=clock, sleep=clock.sleep)
    sink.lose_answer()
    store.write([created("<a@x>", "tkt_a")])

    delivery.deliver_due()
    clock.now += 60
    delivery.deliver_due()

    assert len(sink.tickets) == 1
    assert store.ticket("tkt_a")["external"] == {"memory": "EXT-1"}


def test_comment_after_an_unknown_outcome_is_verified(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(), clock=clock, sleep=clock.sleep)
    store.write([created("<a@x>", "tkt_a")])
    delivery.deliver_due()
    store.write([threaded("<b@x>", "tkt_a", parent="<a@x>")])
    sink.fail("update_ticket", SinkUnavailable("memory", "HTTP 503"))

    delivery.deliver_due()   # the comment is added, then the update fails: outcome unknown
    clock.now += 60
    delivery.deliver_due()

    assert sink.comment_count() == 1
    assert store.delivery_counts("memory") == {"done": 2}


def test_unavailable_sink_backs_off_more_each_time(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(backoff=1.0), clock=clock, sleep=clock.sleep)
    sink.fail("find_ticket", *[SinkUnavailable("memory", "HTTP 502")] * 3)
    store.write([created("<a@x>", "tkt_a")])

    pauses = []
    for _ in range(3):
        delivery.deliver_due()
        pauses.append(delivery._paused_until - clock.now)
        clock.now = delivery._paused_until
    delivery.deliver_due()

    assert pauses == [1.0, 2.0, 4.0]
    assert len(sink.tickets) == 1


def test_human_keys_become_ticket_keys(store):
    sink = MemorySink(name="jira", keys_are_human=True, prefix="SUP")
    delivery = Delivery(sink, store, sample_settings())
    store.write([created("<a@x>", "tkt_a")])

    delivery.deliver_due()

    assert store.ticket("tkt_a")["key"] == "SUP-1"
    assert store.ticket_for_ref("acme", "SUP-1") == "tkt_a"
    assert store.ticket_for_ref("acme", "ACME-1") == "tkt_a"


def test_merged_tickets_are_linked_in_the_sink(store):
    sink = MemorySink()
    delivery = Delivery(sink, store, sample_settings())
    store.write([created("<a@x>", "tkt_a"), created("<b@x>", "tkt_b")])
    delivery.deliver_due()

    store.write([threaded("<c@x>", "tkt_a", parent="<a@x>", merged_from=("tkt_b",))])
    delivery.deliver_due()

    ref_a = sink.by_external_id("tkt_a").ref
    ref_b = sink.by_external_id("tkt_b").ref
    assert sink.tickets[ref_a].links == [ref_b]
    assert sink.tickets[ref_b].links == [ref_a]
    assert store.delivery_counts("memory") == {"done": 4}


def test_review_status_change_updates_the_ticket(store):
    sink = MemorySink()
    delivery = Delivery(sink, store, sample_settings())
    store.write([created("<b@x>", "tkt_a", sent="2026-04-30T12:05:00Z")])
    delivery.deliver_due()
    updates = sink.tickets["EXT-1"].updates

    # An earlier message held for review becomes the ticket's first one.
    early = created("<a@x>", "tkt_a", sent="2026-04-30T11:00:00Z", review=("dmarc_fail",))
    store.write([early])
    delivery.deliver_due()

    assert sink.tickets["EXT-1"].updates == updates + 1
    assert sink.tickets["EXT-1"].ticket.status == "review"


def test_mapping_rules_reach_the_sink(store):
    sink = MemorySink()
    rules = [{"when": {"tenant": ["acme"]}, "labels": ["acme"], "priority_name": "Blocker"},
             {"labels": ["all", "acme"]}]
    delivery = Delivery(sink, store, sample_settings(kind="jira", jira={"url": "https://jira.test"},
                                                     rules=rules))
    store.write([created("<a@x>", "tkt_a")])

    delivery.deliver_due()

    mapped = sink.tickets["EXT-1"].ticket.mapped
    assert (mapped.labels, mapped.priority_name) == (("acme", "all"), "Blocker")


# -- outcomes written straight to the store ------------------------------------------


def created(message_id: str, ticket_id: str, *, sent: str = "2026-04-30T12:00:00Z",
            review: tuple[str, ...] = ()) -> Outcome:
    event = make_event(message_id, received_at=sent)
    copy = make_copy(event, sent_at=sent, review_reasons=review)
    return Outcome(kind="created", source=event["source"], tenant="acme", copy=copy,
                   ticket_id=ticket_id, dedupe_key=f"dk:{message_id}")


def threaded(message_id: str, ticket_id: str, *, parent: str,
             merged_from: tuple[str, ...] = ()) -> Outcome:
    event = make_event(message_id, in_reply_to=parent, received_at="2026-04-30T13:00:00Z",
                       text=f"reply {message_id}")
    copy = make_copy(event, sent_at="2026-04-30T13:00:00Z")
    return Outcome(kind="threaded", source=event["source"], tenant="acme", copy=copy,
                   ticket_id=ticket_id, dedupe_key=f"dk:{message_id}", merged_from=merged_from,
                   method="in_reply_to")


def test_metrics_count_each_result_and_the_backlog(store):
    from ticketflow.metrics import FlowMetrics

    metrics = FlowMetrics(Settings().routing)
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(), metrics=metrics, clock=clock, sleep=clock.sleep)
    sink.fail("create_ticket", RateLimited("memory", 1.0), SinkRejected("memory", 422, "invalid"))
    store.write([created("<a@x>", "tkt_a"), created("<b@x>", "tkt_b")])

    delivery.deliver_due()
    assert metrics.sink_backlog.labels("memory")._value.get() == 2
    delivery.drain()

    def value(result: str) -> float:
        return metrics.registry.get_sample_value(
            "ticketflow_sink_deliveries_total", {"sink": "memory", "result": result})

    assert (value("rate_limited"), value("rejected"), value("delivered")) == (1, 1, 1)
    assert metrics.sink_backlog.labels("memory")._value.get() == 0


def test_retry_after_zero_does_not_end_the_drain(store):
    sink = MemorySink()
    delivery = Delivery(sink, store, sample_settings())
    sink.fail("create_ticket", RateLimited("memory", 0.0), RateLimited("memory", 0.0))
    store.write([created("<a@x>", "tkt_a")])

    counts = delivery.drain()

    assert counts == {"done": 1}
    assert len(sink.tickets) == 1


def test_rejected_credentials_keep_every_item_pending(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(), clock=clock, sleep=clock.sleep)
    sink.fail("find_ticket", SinkRejected("memory", 401, "authentication failed"))
    store.write([created("<a@x>", "tkt_a"), created("<b@x>", "tkt_b")])

    delivery.deliver_due()

    assert sink.calls == ["find_ticket"]
    assert store.delivery_counts("memory") == {"pending": 2}
    assert store.dead_letters() == []
    clock.now += 60
    delivery.deliver_due()
    assert len(sink.tickets) == 2


def test_drain_ends_when_asked_to_stop(store):
    sink = MemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(), clock=clock, sleep=clock.sleep)
    sink.fail("create_ticket", RateLimited("memory", 50.0))
    store.write([created("<a@x>", "tkt_a")])

    counts = delivery.drain(timeout=100.0, stopping=lambda: clock.now >= 1003.0)

    assert counts == {"pending": 1}
    assert sum(clock.slept) == 3.0


def test_sink_rejections_stay_until_queued_again(store):
    sink = MemorySink()
    delivery = Delivery(sink, store, sample_settings())
    sink.fail("create_ticket", SinkRejected("memory", 400, "no such project"))
    outcome = created("<a@x>", "tkt_a")
    store.write([outcome])
    delivery.deliver_due()

    # The same mail again (a duplicate) does not hide the rejection.
    store.write([Outcome(kind="duplicate", source=outcome.source, tenant="acme", copy=outcome.copy)])
    assert [letter["reason"] for letter in store.dead_letters()] == ["sink_rejected"]

    store.retry_rejected("memory")
    assert store.dead_letters() == []
    delivery.drain()
    assert store.dead_letters() == []
    assert len(sink.tickets) == 1


def test_titles_lose_control_and_bidi_characters():
    from ticketflow.connectors.delivery import plain_title

    assert plain_title("Invoice \u202eexe.fdp\r\nnext\x00") == "Invoice exe.fdp next"


# -- sinks that open tickets in bulk -------------------------------------------------


def test_new_tickets_are_opened_in_one_bulk_request(store):
    from tests.connectors.memory_sink import BatchingMemorySink

    sink = BatchingMemorySink()
    delivery = Delivery(sink, store, sample_settings())
    store.write([created(f"<{n}@x>", f"tkt_{n}") for n in range(5)])
    store.write([threaded("<r@x>", "tkt_0", parent="<0@x>")])

    delivery.deliver_due()

    assert sink.calls.count("create_tickets") == 1
    assert sink.calls.count("create_ticket") == 0
    assert len(sink.tickets) == 5
    assert sink.comment_count() == 1
    assert store.delivery_counts("memory") == {"done": 6}


def test_bulk_rejection_retried_alone(store):
    from tests.connectors.memory_sink import BatchingMemorySink

    sink = BatchingMemorySink()
    sink.reject_in_bulk = {"tkt_1"}
    sink.fail("create_ticket", SinkRejected("memory", 400, "invalid issue type"))
    delivery = Delivery(sink, store, sample_settings())
    store.write([created(f"<{n}@x>", f"tkt_{n}") for n in range(3)])

    delivery.deliver_due()

    assert sorted(t.ticket.external_id for t in sink.tickets.values()) == ["tkt_0", "tkt_2"]
    assert [letter["reason"] for letter in store.dead_letters()] == ["sink_rejected"]
    assert "invalid issue type" in store.dead_letters()[0]["detail"]


def test_lost_bulk_create_found_later(store):
    from tests.connectors.memory_sink import BatchingMemorySink

    sink = BatchingMemorySink()
    clock = FakeClock()
    delivery = Delivery(sink, store, sample_settings(), clock=clock, sleep=clock.sleep)
    sink.lose_bulk_answer()
    store.write([created(f"<{n}@x>", f"tkt_{n}") for n in range(3)])

    delivery.deliver_due()
    clock.now += 60
    delivery.deliver_due()

    assert len(sink.tickets) == 3
    assert store.delivery_counts("memory") == {"done": 3}
