"""The store's behaviour, the same for SQLite and PostgreSQL: each test runs against both.

The `backend` and `store` fixtures (see conftest.py) give each test a fresh
SQLite file or a fresh PostgreSQL schema, dropped afterwards.
"""

import itertools

import pytest

from tests.factories import join_all, make_copy, make_event
from ticketflow.connectors.store import StoreError, key_prefix, open_store
from ticketflow.model import DeadLetter
from ticketflow.operators.subject import normalize_subject
from ticketflow.outcome import Outcome

T = "2026-04-30T12:{:02d}:00Z"


def thread_events():
    return [
        make_event("<p@x>", subject="[P1] API timeout", received_at=T.format(0)),
        make_event("<r1@x>", subject="Re: [P1] API timeout", received_at=T.format(1),
                   sender="bob@example.com", in_reply_to="<p@x>", references=("<p@x>",)),
        make_event("<r2@x>", subject="Re: API timeout", received_at=T.format(2), in_reply_to="<r1@x>"),
    ]


def comparable(tickets):
    """Drop the fields that depend on arrival order (the human key, timestamps)."""
    return [{k: v for k, v in ticket.items() if k != "key"} for ticket in tickets]


def test_thread_is_stored_as_one_ticket(store):
    join_all([make_copy(e) for e in thread_events()], store=store)
    tickets = store.tickets()
    assert len(tickets) == 1
    ticket = tickets[0]
    assert ticket["key"] == "ACME-1"
    assert ticket["requester"] == "alice@example.com"
    assert ticket["participants"] == ["alice@example.com", "bob@example.com"]
    assert [m["kind"] for m in ticket["messages"]] == ["original", "reply", "reply"]
    assert ticket["reply_address"].startswith("acme-support+t-")


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_stored_tickets_do_not_depend_on_order(backend, order):
    reference = backend.open()
    join_all([make_copy(e) for e in thread_events()], store=reference)
    shuffled = backend.open()
    events = thread_events()
    join_all([make_copy(events[i]) for i in order], store=shuffled)
    assert comparable(shuffled.tickets()) == comparable(reference.tickets())
    assert len(shuffled.tickets()) == 1


def test_rerun_changes_nothing(store):
    copies = [make_copy(e) for e in thread_events()]
    first = join_all(copies, store=store)
    before = store.tickets()
    second = join_all(copies, store=store)
    assert store.tickets() == before
    assert [o.kind for o in second] == [o.kind for o in first]


def test_redelivery_in_a_later_run_is_duplicate(store):
    original = make_event("<p@x>", received_at=T.format(0), source="/one/1.eml")
    join_all([make_copy(original)], store=store)
    again = make_event("<p@x>", received_at=T.format(0), source="/two/1.eml")
    outcomes = join_all([make_copy(again)], store=store)
    assert [o.kind for o in outcomes] == ["duplicate"]


def test_reply_in_a_later_run_threads_through_ledger(store):
    join_all([make_copy(thread_events()[0])], store=store)
    outcomes = join_all([make_copy(thread_events()[1])], store=store)
    assert outcomes[0].kind == "threaded"
    assert len(store.tickets()) == 1


def test_own_key_in_subject_threads_in_a_later_run(store):
    join_all([make_copy(make_event("<p@x>", sender="ann@corp.example", received_at=T.format(0)))], store=store)
    key = store.tickets()[0]["key"]
    follow_up = make_event("<q@x>", subject=f"[{key}] any news?", sender="ben@corp.example",
                           received_at=T.format(9))
    outcomes = join_all([make_copy(follow_up)], store=store)
    assert outcomes[0].method == "subject_key"
    assert len(store.tickets()) == 1


def test_merge_keeps_both_keys_reachable(store):
    events = [
        make_event("<a@x>", received_at=T.format(0), sender="ann@corp.example"),
        make_event("<b@x>", received_at=T.format(1), sender="ann@corp.example", subject="Other"),
    ]
    join_all([make_copy(e) for e in events], store=store)
    bridge = make_event("<c@x>", received_at=T.format(2), references=("<a@x>", "<b@x>"),
                        sender="ann@corp.example")
    join_all([make_copy(bridge)], store=store)
    tickets = store.tickets()
    assert len(tickets) == 1
    assert tickets[0]["key"] == "ACME-1"
    assert store.ticket_for_ref("acme", "ACME-2") == tickets[0]["ticket_id"]


def test_unknown_key_is_kept_as_external_ref(store):
    event = make_event("<a@x>", subject="[SUP-42] Login broken", received_at=T.format(0))
    join_all([make_copy(event)], store=store)
    assert store.tickets()[0]["external_refs"] == ["SUP-42"]


def test_review_status_from_first_message(store):
    event = make_event("<a@x>", received_at=T.format(0))
    join_all([make_copy(event, review_reasons=("dmarc_fail",))], store=store)
    ticket = store.tickets()[0]
    assert ticket["status"] == "review"
    assert ticket["review_reasons"] == ["dmarc_fail"]


def test_keys_count_per_tenant(store):
    events = [make_event(f"<m{n}@x>", received_at=T.format(n), subject=f"Issue {n}") for n in range(3)]
    join_all([make_copy(events[0], tenant="acme"), make_copy(events[1], tenant="globex"),
              make_copy(events[2], tenant="acme")], store=store)
    assert sorted(t["key"] for t in store.tickets()) == ["ACME-1", "ACME-2", "GLOBEX-1"]


def test_dead_letter_stored_once(store):
    letter = DeadLetter("/corpus/bad.eml", "not_email", "no header block", "", b"\x00junk")
    outcome = Outcome(kind="dead_letter", source=letter.source, reason=letter.reason, dead_letter=letter)
    store.write([outcome])
    store.write([outcome])
    letters = store.dead_letters()
    assert [(l["source"], l["reason"], l["size"]) for l in letters] == [("/corpus/bad.eml", "not_email", 5)]
    assert store.dead_letter_bytes(letters[0]["dead_letter_id"]) == b"\x00junk"


def test_migrations_run_once(backend):
    url = backend.fresh_url()
    open_store(url).close()
    reopened = backend.open(url)
    assert reopened.schema_version() == len(backend.migrations)
    reopened.close()


def test_newer_schema_is_rejected(backend):
    url = backend.fresh_url()
    open_store(url).close()
    backend.add_schema_version(url, 99)
    with pytest.raises(StoreError, match="schema version 99, newer than"):
        open_store(url)


def dead_letter_outcome(letter):
    return Outcome(kind="dead_letter", source=letter.source, reason=letter.reason, dead_letter=letter)


def test_batch_numbers_new_tickets_in_send_order(store):
    events = [make_event(f"<m{n}@x>", received_at=T.format(n), subject=f"Issue {n}") for n in range(4)]
    outcomes = join_all([make_copy(e) for e in events])
    store.write(list(reversed(outcomes)))
    keys = {ticket["messages"][0]["message_id"]: ticket["key"] for ticket in store.tickets()}
    assert keys == {"<m0@x>": "ACME-1", "<m1@x>": "ACME-2", "<m2@x>": "ACME-3", "<m3@x>": "ACME-4"}


def test_keys_continue_across_batches(store):
    events = [make_event(f"<m{n}@x>", received_at=T.format(n), subject=f"Issue {n}") for n in range(3)]
    outcomes = join_all([make_copy(e) for e in events])
    store.write(outcomes[:2])
    store.write(outcomes[2:])
    store.write(outcomes)
    assert sorted(ticket["key"] for ticket in store.tickets()) == ["ACME-1", "ACME-2", "ACME-3"]


def test_dead_letter_cleared_when_source_succeeds(store):
    letter = DeadLetter("/corpus/a.eml", "parser_error", "ValueError: boom", "Subject: x\n", b"raw")
    store.write([dead_letter_outcome(letter)])
    assert [entry["source"] for entry in store.dead_letters()] == ["/corpus/a.eml"]

    join_all([make_copy(make_event("<a@x>", source="/corpus/a.eml"))], store=store)
    assert store.dead_letters() == []
    assert len(store.tickets()) == 1


@pytest.mark.parametrize("letter_first, remaining", [(True, 0), (False, 1)])
def test_dead_letter_clearing_follows_batch_order(store, letter_first, remaining):
    letter = DeadLetter("/corpus/a.eml", "parser_error", "ValueError: boom", "", b"raw")
    success = join_all([make_copy(make_event("<a@x>", source="/corpus/a.eml"))])
    batch = [dead_letter_outcome(letter), *success] if letter_first else [*success, dead_letter_outcome(letter)]
    store.write(batch)
    assert len(store.dead_letters()) == remaining


def test_dead_letter_records_skip_letters_without_bytes(store):
    kept = DeadLetter("/corpus/a.eml", "not_email", "no header block", "", b"abc")
    too_large = DeadLetter("/corpus/b.eml", "too_large", "over the limit", "Subject: big\n", b"")
    store.write([dead_letter_outcome(kept), dead_letter_outcome(too_large)])
    assert store.dead_letter_records() == [("/corpus/a.eml", b"abc")]
    assert sorted(entry["size"] for entry in store.dead_letters()) == [0, 3]
    assert store.dead_letter_bytes("no-such-id") is None


def test_earlier_message_renames_ticket_and_keeps_key(store):
    reply = make_event("<r@x>", subject="Re: Outage", received_at=T.format(5), in_reply_to="<p@x>")
    join_all([make_copy(reply)], store=store)
    before = store.tickets()[0]

    parent = make_event("<p@x>", subject="Outage", received_at=T.format(0))
    join_all([make_copy(parent)], store=store)
    tickets = store.tickets()
    assert len(tickets) == 1
    after = tickets[0]
    assert after["key"] == before["key"]
    assert after["ticket_id"] != before["ticket_id"]
    assert [message["message_id"] for message in after["messages"]] == ["<p@x>", "<r@x>"]
    assert after["subject"] == "Outage"
    assert store.ticket_info(before["ticket_id"]).ticket_id == after["ticket_id"]
    assert store.ticket_for_ref("acme", before["key"]) == after["ticket_id"]


def test_ledger_lookups_find_stored_message(store):
    outcome = join_all([make_copy(thread_events()[0])], store=store)[0]
    subject = normalize_subject("[P1] API timeout")
    assert store.stored_message("acme", outcome.dedupe_key) == (outcome.source, outcome.ticket_id, "created")
    assert store.stored_message("globex", outcome.dedupe_key) is None
    assert store.tickets_for_ids("acme", ["<p@x>", "<unknown@x>"]) == {"<p@x>": outcome.ticket_id}
    assert store.tickets_for_ids("globex", ["<p@x>"]) == {}
    assert store.tickets_for_ids("acme", []) == {}
    assert store.ticket_for_subject("acme", "alice@example.com", subject, T.format(0)) == outcome.ticket_id
    assert store.ticket_for_subject("acme", "alice@example.com", subject, T.format(1)) is None
    assert store.ticket_for_ref("acme", "ACME-1") == outcome.ticket_id
    assert store.ticket_info("tkt_unknown") is None


def test_tickets_filter_by_tenant(store):
    events = [make_event(f"<m{n}@x>", received_at=T.format(n), subject=f"Issue {n}") for n in range(3)]
    join_all([make_copy(events[0], tenant="acme"), make_copy(events[1], tenant="globex"),
              make_copy(events[2], tenant="acme")], store=store)
    assert [t["key"] for t in store.tickets("acme")] == ["ACME-1", "ACME-2"]
    assert [t["key"] for t in store.tickets("globex")] == ["GLOBEX-1"]
    assert store.tickets("initech") == []


@pytest.mark.parametrize("url", ["sqlite:/x.db", "mysql://h/db", "tickets.db"])
def test_bad_store_url_is_rejected(url):
    with pytest.raises(StoreError, match="invalid store URL"):
        open_store(url)


@pytest.mark.parametrize("tenant, prefix", [("acme", "ACME"), ("app1", "APP1"), ("a", "AX"),
                                            ("1st", "T1ST"), ("very.long_tenant", "VERYLONGTE")])
def test_key_prefix(tenant, prefix):
    assert key_prefix(tenant) == prefix


def _open_and_close(path, barrier):
    from ticketflow.connectors.store import SqliteStore

    barrier.wait()
    SqliteStore(path).close()


def test_processes_opening_a_new_sqlite_store_at_once(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(10):
        path = tmp_path / f"race{attempt}.db"
        barrier = context.Barrier(4)
        openers = [context.Process(target=_open_and_close, args=(path, barrier)) for _ in range(4)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(60)
        assert [opener.exitcode for opener in openers] == [0, 0, 0, 0], f"attempt {attempt}"
