"""What only the PostgreSQL store does: several writers, migrations under a lock, search, errors.

The behaviour it shares with SQLite is tested in test_store.py, against both stores.
"""

from __future__ import annotations

import inspect
import multiprocessing
import socket
import sys
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.connectors.postgres_schemas import POSTGRES_URL, execute_in_schema, store_url
from tests.factories import join_all, make_copy, make_event
from ticketflow.connectors import postgres_store
from ticketflow.connectors.postgres_store import PostgresStore, redacted_url, store_location
from ticketflow.connectors.retry import retry_transient
from ticketflow.connectors.store import (
    SqliteStore,
    StoreError,
    TicketStore,
    open_store,
    store_error_is_transient,
)
from ticketflow.model import DeadLetter
from ticketflow.operators.thread import Ledger
from ticketflow.outcome import Outcome

START = datetime(2026, 4, 30, 12, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def pg_store(postgres_schemas):
    store = PostgresStore(store_url(postgres_schemas()))
    yield store
    store.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- opening -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_url_opens_postgres_store(postgres_schemas, scheme):
    url = store_url(postgres_schemas()).replace("postgresql://", f"{scheme}://", 1)
    store = open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        assert store.schema_version() == len(postgres_store.MIGRATIONS)
    finally:
        store.close()


def test_reading_a_schema_without_a_store_is_an_error_and_creates_nothing(postgres_schemas):
    schema = postgres_schemas()
    with pytest.raises(StoreError, match=rf"no store in schema '{schema}'.*ticketflow run --store"):
        open_store(store_url(schema), existing=True)
    with psycopg.connect(POSTGRES_URL) as db:
        found = db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    assert found is None

    open_store(store_url(schema)).close()
    open_store(store_url(schema), existing=True).close()


def test_unreachable_server_names_url_without_password():
    url = f"postgresql://postgres:s3cret@127.0.0.1:{closed_port()}/test?schema=tf_x"
    with pytest.raises(StoreError) as raised:
        open_store(url)
    message = str(raised.value)
    assert "s3cret" not in message
    assert f"postgresql://postgres:***@127.0.0.1:{url.split(':')[3].split('/')[0]}/test" in message
    assert "cannot connect to the PostgreSQL store" in message
    assert "check that the server is running" in message


def test_unknown_database_is_a_store_error():
    with pytest.raises(StoreError, match="database name"):
        open_store(POSTGRES_URL.rsplit("/", 1)[0] + "/tf_no_such_database")


@pytest.mark.parametrize("schema", ["1abc", "tf-demo", "a b", "x" * 64, ""])
def test_invalid_schema_name_is_rejected(schema):
    with pytest.raises(StoreError, match="invalid schema"):
        open_store(f"{POSTGRES_URL}?schema={schema}")


def test_missing_psycopg_is_a_store_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "ticketflow.connectors.postgres_store")
    with pytest.raises(StoreError, match="needs psycopg 3"):
        open_store(POSTGRES_URL)


def test_store_location_keeps_other_parameters():
    conninfo, schema = store_location("postgresql://u@h:5433/db?sslmode=disable&schema=tf_a")
    assert schema == "tf_a"
    assert conninfo == "postgresql://u@h:5433/db?sslmode=disable"
    assert store_location("postgresql://u@h/db")[1] == "public"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?password=pw&schema=s", "postgresql://u@h/db?password=***&schema=s"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_redacted_url_hides_password(url, shown):
    assert redacted_url(url) == shown


def test_closed_store_rejects_use(pg_store):
    pg_store.close()
    with pytest.raises(StoreError, match="is closed"):
        pg_store.tickets()


def test_stores_share_signatures():
    names = [name for protocol in (TicketStore, Ledger) for name in vars(protocol) if not name.startswith("_")]
    assert "write" in names
    assert "tickets_for_ids" in names
    for name in names:
        expected = inspect.signature(getattr(TicketStore, name))
        assert inspect.signature(getattr(SqliteStore, name)) == expected, name
        assert inspect.signature(getattr(PostgresStore, name)) == expected, name


# -- same tickets as SQLite ------------------------------------------------------------


def mixed_copies():
    """Threads that merge, a rename, an auto-reply, review, two tenants and a foreign key."""
    return [
        make_copy(make_event("<a@x>", subject="[P1] Payments down", received_at=at(0))),
        make_copy(make_event("<b@x>", subject="Refund", received_at=at(1))),
        make_copy(make_event("<c@x>", subject="Re: [P1] Payments down", sender="bob@example.com",
                             received_at=at(2), in_reply_to="<a@x>", references=("<a@x>",))),
        make_copy(make_event("<ooo@x>", subject="Out of office", sender="carl@example.com",
                             received_at=at(3), in_reply_to="<a@x>"), automatic="auto_submitted"),
        make_copy(make_event("<d@x>", subject="Re: both", received_at=at(4),
                             references=("<a@x>", "<b@x>"))),
        make_copy(make_event("<r@x>", subject="Re: Outage", received_at=at(9), in_reply_to="<p@x>")),
        make_copy(make_event("<p@x>", subject="Outage", received_at=at(5)), review_reasons=("dmarc_fail",)),
        make_copy(make_event("<g@x>", subject="[SUP-42] Export stuck", received_at=at(6)), tenant="globex"),
        make_copy(make_event("<h@x>", subject="Счёт оплачен дважды", text="Платёж прошёл дважды.",
                             received_at=at(7)), tenant="globex"),
    ]


def test_same_tickets_as_sqlite(tmp_path, pg_store):
    sqlite_store = SqliteStore(tmp_path / "reference.db")
    letter = DeadLetter("/corpus/junk.eml", "not_email", "no header block", "", b"\x00junk")
    for store in (sqlite_store, pg_store):
        join_all(mixed_copies(), store=store)
        store.write([Outcome(kind="dead_letter", source=letter.source, reason=letter.reason, dead_letter=letter)])

    expected = sqlite_store.tickets()
    threads = sorted(sorted(m["message_id"] for m in ticket["messages"]) for ticket in expected)
    assert ["<a@x>", "<b@x>", "<c@x>", "<d@x>", "<ooo@x>"] in threads
    assert ["<p@x>", "<r@x>"] in threads
    assert pg_store.tickets() == expected
    assert pg_store.tickets("globex") == sqlite_store.tickets("globex")

    def without_time(letters):
        return [{k: v for k, v in entry.items() if k != "created_at"} for entry in letters]

    assert without_time(pg_store.dead_letters()) == without_time(sqlite_store.dead_letters())
    assert pg_store.dead_letter_records() == sqlite_store.dead_letter_records()
    sqlite_store.close()


def test_schemas_keep_stores_apart(postgres_schemas):
    first = PostgresStore(store_url(postgres_schemas()))
    second = PostgresStore(store_url(postgres_schemas()))
    join_all([make_copy(make_event("<a@x>", received_at=at(0)))], store=first)
    assert len(first.tickets()) == 1
    assert second.tickets() == []
    first.close()
    second.close()


def test_values_jsonb_rejects_are_stored(pg_store):
    event = make_event("<a@x>", received_at=at(0))
    event["spam"] = {"score": float("inf"), "is_spam": False}
    event["authentication"] = {"dkim": "pass\x00"}
    join_all([make_copy(event)], store=pg_store)
    letter = DeadLetter("/corpus/nul.eml", "not_email", "no body", "Subject: a\x00b\n", b"\x00raw")
    pg_store.write([Outcome(kind="dead_letter", source=letter.source, reason=letter.reason, dead_letter=letter)])

    ticket = pg_store.tickets()[0]
    assert ticket["messages"][0]["authentication"] == {"dkim": "pass"}
    stored = execute_in_schema(pg_store.schema, "SELECT event -> 'spam' ->> 'score' FROM messages")
    assert stored == [(None,)]
    assert pg_store.dead_letters()[0]["headers"] == "Subject: ab\n"
    assert pg_store.dead_letter_records() == [("/corpus/nul.eml", b"\x00raw")]


# -- failures and retries ---------------------------------------------------------------


def test_failed_batch_leaves_nothing_and_retries_whole(pg_store, monkeypatch):
    events = [make_event(f"<m{n}@x>", subject=f"Issue {n}", received_at=at(n)) for n in range(3)]
    outcomes = join_all([make_copy(e) for e in events])
    real_assign = postgres_store._assign_pending_keys
    calls = []

    def assign_then_fail_once(cursor):
        real_assign(cursor)
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.errors.SerializationFailure("could not serialize access")

    monkeypatch.setattr(postgres_store, "_assign_pending_keys", assign_then_fail_once)
    written = retry_transient(
        lambda: pg_store.write(outcomes), is_transient=store_error_is_transient, what="test write",
        sleep=lambda seconds: None,
    )
    assert written is None
    assert len(calls) == 2
    assert [t["key"] for t in pg_store.tickets()] == ["ACME-1", "ACME-2", "ACME-3"]
    counters = execute_in_schema(pg_store.schema, "SELECT tenant, last_number FROM key_counters")
    assert counters == [("acme", 3)]


def test_failed_batch_is_rolled_back(pg_store, monkeypatch):
    outcomes = join_all([make_copy(make_event("<a@x>", received_at=at(0)))])

    def fail(cursor):
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    monkeypatch.setattr(postgres_store, "_assign_pending_keys", fail)
    with pytest.raises(psycopg.errors.DeadlockDetected) as raised:
        pg_store.write(outcomes)
    assert store_error_is_transient(raised.value)
    assert pg_store.tickets() == []
    assert pg_store.stored_message("acme", outcomes[0].dedupe_key) is None


def test_lost_connection_reconnects_on_retry(pg_store, caplog):
    backend_pid = pg_store._db.info.backend_pid
    terminated = execute_in_schema(pg_store.schema, "SELECT pg_terminate_backend(%s)", (backend_pid,))
    assert terminated == [(True,)]

    outcomes = join_all([make_copy(make_event("<a@x>", received_at=at(0)))])
    retry_transient(
        lambda: pg_store.write(outcomes), is_transient=store_error_is_transient, what="test write",
        sleep=lambda seconds: None,
    )
    assert [t["key"] for t in pg_store.tickets()] == ["ACME-1"]
    assert "reconnecting" in caplog.text


def test_server_error_in_batch_rolls_back(pg_store):
    first = join_all([make_copy(make_event("<a@x>", received_at=at(0)))])
    pg_store.write(first)
    execute_in_schema(pg_store.schema, "UPDATE key_counters SET last_number = 0")
    second = join_all([make_copy(make_event("<b@x>", subject="Other", received_at=at(1)))])

    with pytest.raises(psycopg.errors.UniqueViolation):
        pg_store.write(second)
    assert [t["key"] for t in pg_store.tickets()] == ["ACME-1"]
    assert pg_store.stored_message("acme", second[0].dedupe_key) is None


def test_real_deadlock_is_retried_whole(postgres_schemas):
    """Two batches create the same two tickets in opposite orders; one is chosen to fail."""
    url = store_url(postgres_schemas())
    stores = [PostgresStore(url), PostgresStore(url)]
    x = make_copy(make_event("<x@x>", subject="X", received_at=at(0)))
    y = make_copy(make_event("<y@x>", subject="Y", received_at=at(1)))
    forward = join_all([x, y])
    backward = list(reversed(forward))
    transient_errors: list[BaseException] = []

    def note_transient(exc: BaseException) -> bool:
        transient_errors.append(exc)
        return store_error_is_transient(exc)

    def write(store: PostgresStore, batch: list[Outcome]) -> None:
        retry_transient(lambda: store.write(batch), is_transient=note_transient, what="write",
                        sleep=lambda seconds: None)

    # Holding messages lets each batch insert its first ticket row and then wait,
    # so that each then needs the row the other inserted.
    with psycopg.connect(POSTGRES_URL) as blocker:
        blocker.execute(f"LOCK TABLE {stores[0].schema}.messages IN SHARE ROW EXCLUSIVE MODE")
        writers = [
            threading.Thread(target=write, args=(stores[0], forward)),
            threading.Thread(target=write, args=(stores[1], backward)),
        ]
        for writer in writers:
            writer.start()
        waiting = 0
        for _ in range(100):
            rows = blocker.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'ticketflow' AND wait_event_type = 'Lock'"
            ).fetchone()
            waiting = rows[0] if rows else 0
            if waiting >= 2:
                break
            threading.Event().wait(0.02)
        assert waiting >= 2
    for writer in writers:
        writer.join(timeout=30)

    assert [type(exc) for exc in transient_errors] == [psycopg.errors.DeadlockDetected]
    tickets = stores[0].tickets()
    assert [t["key"] for t in tickets] == ["ACME-1", "ACME-2"]
    assert [t["subject"] for t in tickets] == ["X", "Y"]
    for store in stores:
        store.close()


@pytest.mark.parametrize(
    "error, transient",
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.SerializationFailure("could not serialize access"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.UniqueViolation("duplicate key value"), True),
        (psycopg.errors.UndefinedTable("relation does not exist"), False),
        (psycopg.DataError("invalid input syntax"), False),
    ],
)
def test_transient_postgres_errors(error, transient):
    assert store_error_is_transient(error) is transient


# -- several writers -----------------------------------------------------------------------


def write_disjoint_tickets(url: str, worker: int, count: int, barrier: object) -> None:
    """Open `count` tickets for tenant acme, five per batch, retrying transient errors."""
    store = PostgresStore(url)
    events = [
        make_event(f"<w{worker}-{n}@x>", subject=f"Issue {worker}-{n}", received_at=at(2 * n + worker))
        for n in range(count)
    ]
    outcomes = join_all([make_copy(event) for event in events])
    barrier.wait()  # type: ignore[attr-defined]
    for start in range(0, len(outcomes), 5):
        batch = outcomes[start : start + 5]
        retry_transient(
            lambda batch=batch: store.write(batch), is_transient=store_error_is_transient, what="write"
        )
    store.close()


def test_concurrent_processes_get_distinct_gapless_keys(postgres_schemas):
    url = store_url(postgres_schemas())
    PostgresStore(url).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    count = 60
    workers = [
        context.Process(target=write_disjoint_tickets, args=(url, worker, count, barrier)) for worker in range(2)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [process.exitcode for process in workers] == [0, 0]

    store = PostgresStore(url)
    tickets = store.tickets()
    store.close()
    numbers = [int(ticket["key"].rpartition("-")[2]) for ticket in tickets]
    assert sorted(numbers) == list(range(1, 2 * count + 1))
    for worker in range(2):
        own = [
            int(ticket["key"].rpartition("-")[2])
            for ticket in sorted(tickets, key=lambda ticket: ticket["messages"][0]["received_at"])
            if ticket["messages"][0]["message_id"].startswith(f"<w{worker}-")
        ]
        assert len(own) == count
        assert own == sorted(own), f"worker {worker}'s keys are out of send order"


def test_concurrent_opens_migrate_once(postgres_schemas):
    url = store_url(postgres_schemas())
    starters = 4
    barrier = threading.Barrier(starters)
    versions: list[int] = []
    errors: list[BaseException] = []

    def open_at_once() -> None:
        barrier.wait()
        try:
            store = PostgresStore(url)
            versions.append(store.schema_version())
            store.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=open_at_once) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert versions == [len(postgres_store.MIGRATIONS)] * starters
    applied = execute_in_schema(url.rpartition("schema=")[2], "SELECT version FROM schema_version ORDER BY version")
    assert applied == [(version,) for version in range(1, len(postgres_store.MIGRATIONS) + 1)]


# -- search --------------------------------------------------------------------------------


@pytest.fixture
def searchable(pg_store):
    copies = [
        make_copy(make_event("<inv@x>", subject="Invoice charged twice",
                             text="We were charged twice for invoice 4411.", received_at=at(0))),
        make_copy(make_event("<inv2@x>", subject="Re: Invoice charged twice", in_reply_to="<inv@x>",
                             text="Still charged twice, please refund.", received_at=at(1))),
        make_copy(make_event("<login@x>", subject="Login broken",
                             text="The password reset email never arrives; printer unrelated.",
                             received_at=at(2))),
        make_copy(make_event("<printer@x>", subject="Printer offline", text="It is out of paper.",
                             received_at=at(3))),
        make_copy(make_event("<ru@x>", subject="Счёт оплачен дважды",
                             text="Здравствуйте! Платёж прошёл ДВАЖДЫ, верните деньги.", received_at=at(4)),
                  tenant="globex"),
    ]
    join_all(copies, store=pg_store)
    return pg_store


def subjects(results):
    return [result["subject"] for result in results]


def test_search_finds_english_word_once_per_ticket(searchable):
    results = searchable.search("charged")
    assert subjects(results) == ["Invoice charged twice"]
    assert results[0]["key"] == "ACME-1"
    assert "**charged**" in results[0]["headline"]
    assert results[0]["rank"] > 0


def test_search_finds_cyrillic_word_in_any_case(searchable):
    for query in ("дважды", "ДВАЖДЫ", "Платёж"):
        results = searchable.search(query)
        assert subjects(results) == ["Счёт оплачен дважды"], query
        assert results[0]["tenant"] == "globex"


def test_search_filters_by_tenant(searchable):
    assert searchable.search("дважды", tenant="acme") == []
    assert subjects(searchable.search("charged", tenant="acme")) == ["Invoice charged twice"]


def test_search_ranks_subject_above_text(searchable):
    assert subjects(searchable.search("printer")) == ["Printer offline", "Login broken"]


def test_search_understands_web_syntax(searchable):
    assert subjects(searchable.search('"email reset"')) == []
    assert subjects(searchable.search('"password reset"')) == ["Login broken"]
    assert subjects(searchable.search("printer -paper")) == ["Login broken"]
    assert sorted(subjects(searchable.search("refund or paper"))) == ["Invoice charged twice", "Printer offline"]


def test_search_limit_and_empty_query(searchable):
    assert len(searchable.search("printer", limit=1)) == 1
    assert searchable.search("   ") == []
    assert searchable.search("nothingmatches") == []
    with pytest.raises(ValueError, match="at least 1"):
        searchable.search("printer", limit=0)


def test_search_indexes_long_text_up_to_limit(pg_store):
    filler = " ".join(f"w{n}" for n in range(postgres_store.SEARCH_TEXT_CHARS))
    text = "needle " + filler + " haystackend"
    join_all([make_copy(make_event("<long@x>", text=text, received_at=at(0)))], store=pg_store)
    assert len(pg_store.search("needle")) == 1
    assert pg_store.search("haystackend") == []
