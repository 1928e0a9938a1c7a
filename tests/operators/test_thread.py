"""Thread join scenarios, run through the flow's stateful logic without the engine."""

import itertools
import re
from datetime import UTC, datetime, timedelta

import pytest

from ticketflow.config import Settings, settings_from_mapping
from ticketflow.operators.thread import (
    MemoryThreadState,
    ThreadIndex,
    TicketInfo,
    plus_tokens,
    reply_address,
    subject_keys,
    thread_parents,
    thread_root,
    ticket_id_for,
)
from tests import factories
from tests.factories import join_all, make_copy, make_event, tickets_of


@pytest.fixture(autouse=True, params=["memory", "redis"])
def state_backend(request, monkeypatch):
    """Run every scenario on the in-process state and on Redis."""
    if request.param == "redis":
        settings = request.getfixturevalue("redis_settings")
        monkeypatch.setattr(factories, "default_settings", lambda: settings)
    return request.param

T = "2026-04-30T12:{:02d}:00Z"


def chain():
    return [
        make_event("<p@x>", received_at=T.format(0)),
        make_event("<r1@x>", received_at=T.format(1), sender="bob@example.com",
                   in_reply_to="<p@x>", references=("<p@x>",)),
        make_event("<r2@x>", received_at=T.format(2), in_reply_to="<r1@x>"),
    ]


def test_reply_by_in_reply_to_joins_parent():
    parent = make_event("<p@x>", received_at=T.format(0))
    reply = make_event("<r@x>", received_at=T.format(1), in_reply_to="<p@x>")
    outcomes = join_all([make_copy(parent), make_copy(reply)])
    assert [o.kind for o in outcomes] == ["created", "threaded"]
    assert outcomes[1].method == "in_reply_to"
    assert outcomes[0].ticket_id == outcomes[1].ticket_id


def test_reply_by_references_only_joins_parent():
    parent = make_event("<p@x>", received_at=T.format(0))
    reply = make_event("<r@x>", subject="RE: API timeout", received_at=T.format(1), references=("<p@x>",))
    outcomes = join_all([make_copy(parent), make_copy(reply)])
    assert outcomes[1].kind == "threaded"
    assert outcomes[1].method == "references"


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_chain_gives_same_ticket_in_any_order(order):
    events = chain()
    outcomes = join_all([make_copy(events[i]) for i in order])
    tickets = tickets_of(outcomes)
    assert tickets == {ticket_id_for("acme", "<p@x>"): {"<p@x>", "<r1@x>", "<r2@x>"}}


@pytest.mark.parametrize("order", list(itertools.permutations(range(2))))
def test_rootless_chain_any_order(order):
    events = chain()[1:]
    outcomes = join_all([make_copy(events[i]) for i in order])
    tickets = tickets_of(outcomes)
    assert tickets == {ticket_id_for("acme", "<r1@x>"): {"<r1@x>", "<r2@x>"}}


def test_reply_before_parent_waits_then_joins():
    parent = make_event("<p@x>", received_at=T.format(0))
    reply = make_event("<r@x>", received_at=T.format(1), in_reply_to="<p@x>", references=("<p@x>",))
    outcomes = join_all([make_copy(reply), make_copy(parent)])
    assert sorted(o.kind for o in outcomes) == ["created", "threaded"]
    assert len(tickets_of(outcomes)) == 1


def test_orphan_opens_ticket_at_eof():
    reply = make_event("<r@x>", received_at=T.format(1), in_reply_to="<gone@x>")
    outcomes = join_all([make_copy(reply)])
    assert [o.kind for o in outcomes] == ["created"]


def test_shared_ancestor_only_still_threads():
    root = make_event("<root@x>", received_at=T.format(0))
    late = make_event("<late@x>", received_at=T.format(5), references=("<root@x>", "<missing@x>"),
                      in_reply_to="<missing@x>")
    outcomes = join_all([make_copy(root), make_copy(late)])
    assert outcomes[1].kind == "threaded"


def test_two_tickets_merge_when_a_message_links_them():
    first = make_event("<a@x>", received_at=T.format(0))
    second = make_event("<b@x>", received_at=T.format(1), sender="bob@example.com", subject="Other")
    bridge = make_event("<c@x>", received_at=T.format(2), references=("<a@x>", "<b@x>"))
    outcomes = join_all([make_copy(first), make_copy(second), make_copy(bridge)])
    assert outcomes[2].merged_from == (outcomes[1].ticket_id,)
    assert tickets_of(outcomes) == {outcomes[0].ticket_id: {"<a@x>", "<b@x>", "<c@x>"}}


def test_subject_key_joins_colleague_from_same_domain():
    first = make_event("<a@x>", subject="[SUP-42] Login broken", received_at=T.format(0),
                       sender="alice@customer.example")
    colleague = make_event("<b@x>", subject="Re: [SUP-42] still broken", received_at=T.format(3),
                           sender="carol@customer.example")
    outcomes = join_all([make_copy(first), make_copy(colleague)])
    assert outcomes[0].external_refs == ("SUP-42@customer.example",)
    assert outcomes[1].kind == "threaded"
    assert outcomes[1].method == "subject_key"


def test_subject_key_from_stranger_opens_new_ticket():
    first = make_event("<a@x>", subject="[SUP-42] Login broken", received_at=T.format(0),
                       sender="alice@customer.example")
    stranger = make_event("<b@x>", subject="[SUP-42] give me access", received_at=T.format(3),
                          sender="mallory@attacker.example")
    outcomes = join_all([make_copy(first), make_copy(stranger)])
    assert [o.kind for o in outcomes] == ["created", "created"]
    assert outcomes[0].ticket_id != outcomes[1].ticket_id


def test_subject_key_free_mail_stranger():
    first = make_event("<a@x>", subject="[SUP-7] Refund", received_at=T.format(0), sender="ann@gmail.com")
    other = make_event("<b@x>", subject="[SUP-7] Refund too", received_at=T.format(3), sender="eve@gmail.com")
    outcomes = join_all([make_copy(first), make_copy(other)])
    assert [o.kind for o in outcomes] == ["created", "created"]


def test_plus_address_joins_ticket():
    first = make_event("<a@x>", received_at=T.format(0))
    opened = join_all([make_copy(first)])[0]
    address = reply_address("acme-support@support.example.com", opened.ticket_id)
    reply = make_event("<b@x>", subject="thanks", received_at=T.format(4), to=(address,),
                       sender="someone@elsewhere.example")
    outcomes = join_all([make_copy(first), make_copy(reply)])
    assert outcomes[1].kind == "threaded"
    assert outcomes[1].method == "plus_address"


def test_subject_heuristic_joins_same_requester():
    first = make_event("<a@x>", subject="Help", received_at=T.format(0))
    again = make_event("<b@x>", subject="Re: Help", received_at=T.format(2))
    outcomes = join_all([make_copy(first), make_copy(again)])
    assert outcomes[1].kind == "threaded"
    assert outcomes[1].method == "subject"


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_subject_heuristic_never_merges_requesters(order):
    events = [
        make_event("<a@x>", subject="Help", received_at=T.format(0), sender="ann@one.example"),
        make_event("<b@x>", subject="Re: Help", received_at=T.format(2), sender="bob@two.example"),
    ]
    outcomes = join_all([make_copy(events[i]) for i in order])
    assert [o.kind for o in outcomes] == ["created", "created"]


def test_subject_heuristic_never_merges_tenants():
    first = make_event("<a@x>", subject="Help", received_at=T.format(0))
    again = make_event("<b@x>", subject="Re: Help", received_at=T.format(2))
    outcomes = join_all([make_copy(first, tenant="acme"), make_copy(again, tenant="globex")])
    assert [o.kind for o in outcomes] == ["created", "created"]


def test_same_message_to_two_tenants_opens_two_tickets():
    event = make_event("<a@x>", received_at=T.format(0))
    outcomes = join_all([make_copy(event, tenant="acme"), make_copy(event, tenant="globex", first_copy=False)])
    assert [o.kind for o in outcomes] == ["created", "created"]
    assert outcomes[0].ticket_id != outcomes[1].ticket_id


def test_second_delivery_is_duplicate():
    first = make_event("<a@x>", received_at=T.format(0), source="/1.eml")
    again = make_event("<a@x>", received_at=T.format(0), source="/2.eml")
    outcomes = join_all([make_copy(first), make_copy(again)])
    assert [o.kind for o in outcomes] == ["created", "duplicate"]


def test_automatic_mail_unthreaded_is_suppressed():
    auto = make_event("<a@x>", subject="Out of office", received_at=T.format(0))
    outcomes = join_all([make_copy(auto, automatic="auto_submitted")])
    assert [(o.kind, o.reason) for o in outcomes] == [("suppressed", "auto_submitted")]


def test_automatic_mail_threaded_is_kept():
    parent = make_event("<p@x>", received_at=T.format(0))
    auto = make_event("<a@x>", subject="Out of office", received_at=T.format(1), in_reply_to="<p@x>")
    outcomes = join_all([make_copy(parent), make_copy(auto, automatic="auto_submitted")])
    assert outcomes[1].kind == "threaded"


def test_bulk_suppressed_by_policy():
    news = make_event("<n@x>", subject="Newsletter", received_at=T.format(0))
    outcomes = join_all([make_copy(news, bulk="list", bulk_suppressed=True)])
    assert [(o.kind, o.reason) for o in outcomes] == [("suppressed", "list")]


def test_thread_parents_puts_in_reply_to_first():
    event = make_event("<c@x>", in_reply_to="<b@x>", references=("<a@x>", "<b@x>"))
    assert thread_parents(event) == ["<b@x>", "<a@x>"]
    assert thread_root(event) == "<a@x>"


def test_subject_keys_ignore_other_systems_tags():
    pattern = re.compile(Settings().threading.key_pattern)
    assert subject_keys("[Ticket#123] [SUP-42] color [#ff0000]", pattern) == ["SUP-42"]


def test_key_pattern_is_configurable():
    settings = settings_from_mapping({"threading": {"key_pattern": r"#(HD\d+)"}})
    first = make_event("<a@x>", subject="#HD7 printer", received_at=T.format(0), sender="a@corp.example")
    second = make_event("<b@x>", subject="about #HD7", received_at=T.format(1), sender="b@corp.example")
    outcomes = join_all([make_copy(first), make_copy(second)], settings)
    assert outcomes[1].method == "subject_key"


def test_plus_tokens_only_on_inbound_domains():
    event = make_event("<a@x>", to=("acme-support+t-0123456789ab@support.example.com",
                                    "x+t-ffffffffffff@elsewhere.example"))
    assert plus_tokens(event, ["support.example.com"]) == ["0123456789ab"]


def test_held_orphan_survives_a_snapshot():
    import pickle
    from datetime import UTC, datetime

    from ticketflow.flows.main import FlowContext, ThreadJoinLogic

    context = FlowContext(settings=factories.default_settings(), store=None,
                          clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    logic = ThreadJoinLogic(context)
    reply = make_event("<r@x>", received_at=T.format(1), in_reply_to="<gone@x>")
    emitted, discard = logic.on_batch([make_copy(reply)])
    assert list(emitted) == []
    assert discard is False

    resumed = ThreadJoinLogic(context, pickle.loads(pickle.dumps(logic.snapshot())))
    released, _ = resumed.on_eof()
    assert [o.kind for o in released] == ["created"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_foreign_key_is_kept_per_organization(order):
    events = [
        make_event("<a@x>", subject="[SUP-42] Export stuck", received_at=T.format(0), sender="priya@kestrel.example"),
        make_event("<b@x>", subject="RE: [SUP-42] Export stuck", received_at=T.format(1), sender="tomas@kestrel.example"),
        make_event("<c@x>", subject="[SUP-42] Export 504", received_at=T.format(2), sender="marta@lumen.example"),
    ]
    outcomes = join_all([make_copy(events[i]) for i in order])
    tickets = sorted(tickets_of(outcomes).values(), key=sorted)
    assert tickets == [{"<a@x>", "<b@x>"}, {"<c@x>"}]


def test_stranger_cannot_merge_tickets_by_references():
    first = make_event("<a@x>", received_at=T.format(0), sender="ann@one.example")
    second = make_event("<b@x>", received_at=T.format(1), sender="bob@two.example", subject="Other")
    probe = make_event("<c@x>", received_at=T.format(2), sender="eve@evil.example",
                       references=("<a@x>", "<b@x>"))
    outcomes = join_all([make_copy(first), make_copy(second), make_copy(probe)])
    assert outcomes[2].merged_from == ()
    assert len(tickets_of(outcomes)) == 2


def test_stranger_reply_joins_parent():
    first = make_event("<a@x>", received_at=T.format(0), sender="ann@one.example")
    second = make_event("<b@x>", received_at=T.format(1), sender="bob@two.example", subject="Other")
    reply = make_event("<c@x>", received_at=T.format(2), sender="new@three.example",
                       in_reply_to="<b@x>", references=("<a@x>", "<b@x>"))
    outcomes = join_all([make_copy(first), make_copy(second), make_copy(reply)])
    assert outcomes[2].ticket_id == outcomes[1].ticket_id
    assert outcomes[2].merged_from == ()


def test_reused_message_id_does_not_join_the_victim():
    victim = make_event("<same@x>", received_at=T.format(0), sender="eve@one.example", text="real")
    injected = make_event("<same@x>", received_at=T.format(1), sender="mallory@two.example", text="fake",
                          source="/other.eml")
    outcomes = join_all([make_copy(victim), make_copy(injected)])
    assert [o.kind for o in outcomes] == ["created", "created"]
    event = outcomes[1].copy.event
    assert event["envelope"]["message_id"].endswith("@reused.ticketflow.invalid>")
    assert [d["code"] for d in event["defects"]] == ["message_id_reused"]


class TestMemoryIndexExpiry:
    """In-memory thread state entries expire by event time; the ledger finds older ones."""

    @pytest.fixture(autouse=True)
    def state_backend(self):
        """Replace the module's memory/Redis parameters: these tests are about the memory state."""
        return "memory"

    HOUR = 3600.0

    @staticmethod
    def settings(index_ttl=3600.0, dedupe_window=600.0):
        return settings_from_mapping(
            {"threading": {"index_ttl": index_ttl}, "dedupe": {"window": dedupe_window}}
        )

    @staticmethod
    def parent_and_reply(reply_at):
        parent = make_event("<p@x>", received_at="2026-04-30T12:00:00Z")
        reply = make_event("<r@x>", received_at=reply_at, in_reply_to="<p@x>",
                           references=("<p@x>",))
        return [make_copy(parent), make_copy(reply)]

    def test_entry_lives_until_ttl_passes(self):
        state = MemoryThreadState(self.HOUR)
        state.advance_to(0.0)
        state.claim_ids("acme", ["<p@x>"], "tkt_a")

        state.advance_to(self.HOUR)
        assert state.tickets_for_ids("acme", ["<p@x>"]) == {"<p@x>": "tkt_a"}
        state.advance_to(self.HOUR + 1)
        assert state.tickets_for_ids("acme", ["<p@x>"]) == {}

    def test_expired_entries_are_dropped(self):
        state = MemoryThreadState(self.HOUR)
        state.advance_to(0.0)
        state.claim_ids("acme", ["<a@x>", "<b@x>"], "tkt_a")
        state.set_outcome("acme", "k1", "tkt_a", "created", "/a.eml")
        state.advance_to(self.HOUR / 2)
        state.claim_ids("acme", ["<c@x>"], "tkt_c")
        assert len(state) == 4

        state.advance_to(self.HOUR + 1)
        assert len(state) == 1

    def test_event_time_never_goes_back(self):
        state = MemoryThreadState(self.HOUR)
        state.advance_to(2 * self.HOUR)
        state.claim_ref("acme", "SUP-1", "tkt_a")

        state.advance_to(0.0)
        state.claim_ref("acme", "SUP-2", "tkt_b")
        state.advance_to(3 * self.HOUR)
        assert state.ref("acme", "SUP-1") == "tkt_a"
        assert state.ref("acme", "SUP-2") == "tkt_b"

    def test_claim_keeps_stamp_put_refreshes(self):
        state = MemoryThreadState(self.HOUR)
        state.advance_to(0.0)
        state.claim_ids("acme", ["<p@x>"], "tkt_a")
        state.put_ticket(TicketInfo("tkt_a", "acme", "2026-04-30T12:00:00Z", "<p@x>", "a@x"))

        state.advance_to(self.HOUR / 2)
        assert state.claim_ids("acme", ["<p@x>"], "tkt_b") == {"<p@x>": "tkt_a"}
        state.put_ticket(TicketInfo("tkt_a", "acme", "2026-04-30T12:00:00Z", "<p@x>", "a@x"))

        state.advance_to(self.HOUR + 1)
        assert state.tickets_for_ids("acme", ["<p@x>"]) == {}
        assert state.ticket("tkt_a") is not None

    def test_expired_id_can_be_claimed_again(self):
        state = MemoryThreadState(self.HOUR)
        state.advance_to(0.0)
        state.claim_message("acme", "<p@x>", "key-1")

        state.advance_to(self.HOUR + 1)
        assert state.claim_message("acme", "<p@x>", "key-2") == "key-2"

    def test_without_ttl_nothing_expires(self):
        state = MemoryThreadState()
        state.advance_to(0.0)
        state.claim_ref("acme", "SUP-1", "tkt_a")
        state.advance_to(1e12)
        assert state.ref("acme", "SUP-1") == "tkt_a"

    def test_negative_ttl_is_rejected(self):
        expected = r"invalid thread index TTL -1.*\[threading\] index_ttl"
        with pytest.raises(ValueError, match=expected):
            MemoryThreadState(-1)

    def test_reply_inside_ttl_threads_from_memory(self):
        outcomes = join_all(self.parent_and_reply("2026-04-30T12:59:00Z"), self.settings())
        assert [o.kind for o in outcomes] == ["created", "threaded"]

    def test_reply_after_ttl_misses_memory_without_ledger(self):
        outcomes = join_all(self.parent_and_reply("2026-04-30T14:00:00Z"), self.settings())
        assert [o.kind for o in outcomes] == ["created", "created"]

    def test_reply_after_ttl_threads_through_ledger(self, tmp_path):
        from ticketflow.connectors.store import SqliteStore

        store = SqliteStore(tmp_path / "tickets.db")
        try:
            copies = self.parent_and_reply("2026-04-30T14:00:00Z")
            outcomes = join_all(copies, self.settings(), store)
        finally:
            store.close()
        assert [o.kind for o in outcomes] == ["created", "threaded"]
        assert outcomes[1].method == "in_reply_to"
        assert outcomes[1].ticket_id == outcomes[0].ticket_id

    def test_ttl_is_at_least_dedupe_window(self):
        # index_ttl 1 h but a 3 h dedupe window: the index keeps 3 h, as the Redis state does.
        settings = self.settings(index_ttl=3600.0, dedupe_window=3 * 3600.0)
        outcomes = join_all(self.parent_and_reply("2026-04-30T14:00:00Z"), settings)
        assert [o.kind for o in outcomes] == ["created", "threaded"]

    def test_future_received_at_does_not_expire_index(self):
        parent = make_event("<p@x>", received_at="2026-04-30T12:00:00Z")
        forged = make_event("<f@x>", received_at="2099-01-01T00:00:00Z", sender="eve@evil.example",
                            subject="Other")
        forged["ingested_at"] = "2026-04-30T12:01:00Z"
        reply = make_event("<r@x>", received_at="2026-04-30T12:02:00Z", in_reply_to="<p@x>")
        copies = [make_copy(parent), make_copy(forged), make_copy(reply)]
        outcomes = join_all(copies, self.settings())
        assert [o.kind for o in outcomes] == ["created", "created", "threaded"]

    def test_state_stays_bounded_over_many_ttls(self):
        state = MemoryThreadState(self.HOUR)
        index = ThreadIndex(self.settings(), state=state)
        start = datetime(2026, 4, 30, tzinfo=UTC)
        per_ttl = 60  # one thread of two messages per minute of event time

        sizes = []
        for number in range(10 * per_ttl):
            at = (start + timedelta(minutes=number)).strftime("%Y-%m-%dT%H:%M:%SZ")
            parent = make_event(f"<p{number}@x>", received_at=at, subject=f"Export {number}")
            reply = make_event(f"<r{number}@x>", received_at=at, subject=f"Re: Export {number}",
                               in_reply_to=f"<p{number}@x>")
            for copy in (make_copy(parent), make_copy(reply)):
                key = copy.event["envelope"]["message_id"]
                assert index.decide(copy, key, allow_open=True) is not None
            sizes.append(len(state))

        # Each thread writes 9 entries: 2 outcomes, 2 message holders, 2 ids, its
        # ticket, the ticket's reply token and one subject entry that both messages
        # share. An entry lives for the TTL inclusive: 61 threads of event time.
        assert max(sizes) == 9 * (per_ttl + 1)
        assert sizes[-1] == sizes[2 * per_ttl]
