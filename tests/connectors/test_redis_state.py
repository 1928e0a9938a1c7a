import redis
import pytest

from ticketflow.config import Settings
from ticketflow.connectors.redis_state import (
    RedisThreadState,
    RedisUnavailable,
    connect,
    retrying,
)
from ticketflow.operators.thread import ThreadIndex, ticket_id_for
from tests.conftest import REDIS_URL
from tests.factories import make_copy, make_event
from datetime import UTC, datetime

T0 = datetime(2026, 4, 30, 12, tzinfo=UTC)


class StaleReads(RedisThreadState):
    """A state whose first id lookup misses, as when another process writes just after it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stale = True

    def tickets_for_ids(self, tenant, message_ids):
        if self.stale:
            self.stale = False
            return {}
        return super().tickets_for_ids(tenant, message_ids)


def test_concurrent_open_turns_into_a_join(redis_namespace):
    client = connect(REDIS_URL)
    settings = Settings()
    process_a = ThreadIndex(settings, state=RedisThreadState(client, redis_namespace, 3600))
    process_b = ThreadIndex(settings, state=StaleReads(client, redis_namespace, 3600))

    parent = make_event("<p@x>", received_at="2026-04-30T12:00:00Z")
    reply = make_event("<r@x>", received_at="2026-04-30T12:01:00Z", in_reply_to="<p@x>")
    opened = process_a.decide(make_copy(parent), "k-parent", allow_open=True)
    joined = process_b.decide(make_copy(reply), "k-reply", allow_open=True)

    assert opened.kind == "created"
    assert joined.kind == "threaded"
    assert joined.ticket_id == ticket_id_for("acme", "<p@x>")


def test_second_delivery_is_duplicate_in_another_process(redis_namespace):
    client = connect(REDIS_URL)
    process_a = ThreadIndex(Settings(), state=RedisThreadState(client, redis_namespace, 3600))
    process_b = ThreadIndex(Settings(), state=RedisThreadState(client, redis_namespace, 3600))
    first = make_copy(make_event("<m@x>", source="/a.eml"))
    again = make_copy(make_event("<m@x>", source="/b.eml"))

    assert process_a.replay_stored(first, "k") is None
    assert process_a.decide(first, "k", allow_open=True).kind == "created"
    assert process_b.replay_stored(again, "k") == "duplicate"
    assert process_b.replay_stored(first, "k").kind == "created"


def test_merge_seen_by_another_process_at_once(redis_namespace):
    client = connect(REDIS_URL)
    state_a = RedisThreadState(client, redis_namespace, 3600)
    state_b = RedisThreadState(client, redis_namespace, 3600)
    state_a.claim_ids("acme", ["<a@x>"], "tkt_old")
    state_a.set_alias("tkt_old", "tkt_new")
    state_a.flush()
    assert state_b.tickets_for_ids("acme", ["<a@x>"]) == {"<a@x>": "tkt_new"}


def test_entries_carry_the_ttl(redis_namespace):
    client = connect(REDIS_URL)
    state = RedisThreadState(client, redis_namespace, 120)
    state.claim_ids("acme", ["<a@x>"], "tkt_1")
    key = next(client.scan_iter(f"{redis_namespace}:id:*"))
    assert 0 < client.ttl(key) <= 120


def test_unreachable_redis_names_the_url():
    with pytest.raises(RedisUnavailable, match=r"cannot use Redis at 'redis://127.0.0.1:1/0' \(\[state\] redis_url\)"):
        connect("redis://127.0.0.1:1/0")


def test_retrying_waits_out_an_outage():
    attempts = []
    sleeps = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 4:
            raise redis.ConnectionError("connection refused")
        return "ok"

    assert retrying(flaky, "test", sleep=sleeps.append) == "ok"
    assert len(attempts) == 4
    assert len(sleeps) == 3
    assert sleeps[2] > sleeps[0]  # the backoff grows
