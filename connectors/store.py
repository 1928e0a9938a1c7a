"""The built-in ticket store: the local ledger of tickets, keys and dead letters.

`open_store("sqlite:///path.db")` gives a `SqliteStore`. The store is written in
batches, one transaction per batch, and every write is idempotent: a message is
identified by (tenant, dedupe key), so writing the same outcomes twice changes
nothing. Ticket rows are derived from their messages after every batch (subject,
requester, priority and review status from the earliest message), so a ticket
reads the same whatever order its messages arrived in.

It also serves as the thread join's `Ledger`: lookups of message ids, ticket
keys, reply tokens and subjects that earlier runs wrote.

Schema migrations are numbered and run on open; the applied version is kept in
`schema_version`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ticketflow.connectors.retry import retry_transient
from ticketflow.model import DeadLetter, utc_now, format_timestamp
from ticketflow.operators.enrich import clean_subject
from ticketflow.operators.thread import Ledger, TicketInfo, reply_address, thread_parents
from ticketflow.operators.subject import normalize_subject
from ticketflow.outcome import Outcome

log = logging.getLogger(__name__)

DEFAULT_STORE_URL = "sqlite:///./ticketflow.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: tickets, their messages, the thread ledger and dead letters.
    """
    CREATE TABLE tickets (
        ticket_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        key TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL DEFAULT '',
        requester TEXT NOT NULL DEFAULT '',
        participants TEXT NOT NULL DEFAULT '[]',
        priority TEXT NOT NULL DEFAULT 'P3',
        component TEXT,
        environment TEXT,
        tier TEXT,
        status TEXT NOT NULL DEFAULT 'open',
        review_reasons TEXT NOT NULL DEFAULT '[]',
        reply_address TEXT,
        external TEXT NOT NULL DEFAULT '{}',
        first_sent_at TEXT NOT NULL DEFAULT '',
        first_message_id TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX tickets_tenant ON tickets (tenant, key);
    CREATE TABLE messages (
        tenant TEXT NOT NULL,
        dedupe_key TEXT NOT NULL,
        ticket_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        received_at TEXT NOT NULL,
        sent_at TEXT NOT NULL,
        automatic TEXT,
        outcome TEXT NOT NULL,
        source TEXT NOT NULL,
        mailbox TEXT NOT NULL,
        event TEXT NOT NULL,
        enrichment TEXT NOT NULL,
        review_reasons TEXT NOT NULL,
        PRIMARY KEY (tenant, dedupe_key)
    );
    CREATE INDEX messages_ticket ON messages (ticket_id, sent_at, message_id);
    CREATE TABLE thread_ids (
        tenant TEXT NOT NULL,
        message_id TEXT NOT NULL,
        ticket_id TEXT NOT NULL,
        PRIMARY KEY (tenant, message_id)
    );
    CREATE INDEX thread_ids_ticket ON thread_ids (ticket_id);
    CREATE TABLE ticket_refs (
        tenant TEXT NOT NULL,
        ref TEXT NOT NULL,
        ticket_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        PRIMARY KEY (tenant, ref)
    );
    CREATE INDEX ticket_refs_ticket ON ticket_refs (ticket_id);
    CREATE TABLE ticket_subjects (
        tenant TEXT NOT NULL,
        requester TEXT NOT NULL,
        subject TEXT NOT NULL,
        ticket_id TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        PRIMARY KEY (tenant, requester, subject)
    );
    CREATE TABLE ticket_aliases (
        old_id TEXT PRIMARY KEY,
        new_id TEXT NOT NULL
    );
    CREATE TABLE key_counters (
        tenant TEXT PRIMARY KEY,
        last_number INTEGER NOT NULL
    );
    CREATE TABLE dead_letters (
        dead_letter_id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        headers TEXT NOT NULL,
        raw BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # 2: find a dead letter by its source, to clear it once that source succeeds.
    """
    CREATE INDEX dead_letters_source ON dead_letters (source);
    """,
    # 3: a random identity, so state kept outside the store (Redis) is never shared by two stores.
    """
    CREATE TABLE store_identity (store_id TEXT NOT NULL);
    INSERT INTO store_identity VALUES (lower(hex(randomblob(8))));
    """,
    # 4: find stored messages by Message-ID, to notice one reused by other content.
    """
    CREATE INDEX messages_message_id ON messages (tenant, message_id);
    """,
    # 5: what each external sink still has to receive, and what it got (see delivery.py).
    """
    CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sink TEXT NOT NULL,
        tenant TEXT NOT NULL,
        item TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        detail TEXT NOT NULL DEFAULT '',
        updated_at TEXT NOT NULL,
        UNIQUE (sink, tenant, item)
    );
    CREATE INDEX deliveries_pending ON deliveries (sink, state, seq);
    """,
)


class StoreError(RuntimeError):
    """A store URL or database that cannot be used."""


def open_store(url: str, *, existing: bool = False) -> TicketStore:
    """Open the store a URL names: `sqlite:///PATH` or `postgresql://…` (also `postgres://…`).

    A PostgreSQL URL may end in `?schema=NAME` to keep the tables in a schema of
    their own. With `existing`, a SQLite file or PostgreSQL schema that contains no
    store yet is an error instead of a new empty store (for commands that only
    read). Raises
    `StoreError` for a URL of another form, a server that cannot be reached, or a
    missing psycopg.
    """
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if existing and not path.exists():
            raise StoreError(
                f"no store at {path}: run `ticketflow run --store {url}` first, or check --store"
            )
        return SqliteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres_store(url, existing)
    raise StoreError(
        f"invalid store URL {url!r}: expected sqlite:///PATH.db "
        "(three slashes, then a relative or absolute path) or postgresql://USER@HOST:PORT/DATABASE"
    )


def _open_postgres_store(url: str, existing: bool = False) -> TicketStore:
    # Imported here, so that SQLite users need not install psycopg.
    try:
        from ticketflow.connectors.postgres_store import PostgresStore
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("psycopg"):
            raise
        raise StoreError(
            "the PostgreSQL store needs psycopg 3, which is not installed; "
            "run `pip install 'psycopg[binary]'`"
        ) from exc
    return PostgresStore(url, existing=existing)


def store_error_is_transient(exc: BaseException) -> bool:
    """Tell whether a store error may pass on retry.

    SQLite: a locked or busy database, an I/O hiccup. PostgreSQL: a lost or
    refused connection, a deadlock, a serialization failure or a cancelled
    statement (psycopg's `OperationalError` and its subclasses), and a row that
    another writer created first (`UniqueViolation`). Each of these rolls the
    whole batch back, so writing it again is safe.
    """
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return any(word in message for word in ("locked", "busy", "disk i/o"))
    # A psycopg error exists only once psycopg is imported; SQLite users never import it.
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        return isinstance(exc, (psycopg.OperationalError, psycopg.errors.UniqueViolation))
    return False


class TicketStore(Ledger, Protocol):
    """The interface of every ticket store: the thread join's `Ledger`, batch writes, the CLI's reads.

    `SqliteStore` and `PostgresStore` implement it with the same behaviour; the
    store tests run against both.
    """

    def write(self, outcomes: Iterable[Outcome]) -> None:
        """Write a batch of outcomes in one transaction; idempotent."""
        ...

    def tickets(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Return every ticket in the design's ticket shape, ordered by tenant and key number."""
        ...

    def dead_letters(self) -> list[dict[str, Any]]:
        """Return every dead letter with its source, reason, detail and header block."""
        ...

    def dead_letter_records(self) -> list[tuple[str, bytes]]:
        """Return (source, original bytes) of every dead letter that kept its bytes."""
        ...

    def dead_letter_bytes(self, dead_letter_id: str) -> bytes | None:
        """Return the original bytes kept with a dead letter."""
        ...

    def schema_version(self) -> int:
        """Return the schema version the store is at."""
        ...

    def store_id(self) -> str:
        """Return the store's random identity, made when its schema was created."""
        ...

    def close(self) -> None:
        """Close the store; it cannot be used afterwards."""
        ...


@dataclass(frozen=True)
class PendingDelivery:
    """One thing an external sink has yet to receive, in the order it was written.

    `item` is a message's dedupe key, with its ticket and message fields; or
    "merge:<old ticket id>", with `merged` holding the old ticket's id, key and
    external ids, and `ticket_id` the ticket it was folded into.
    """

    tenant: str
    item: str
    attempts: int
    ticket_id: str | None
    message: dict[str, Any] | None = None
    merged: dict[str, Any] | None = None


class DeliveryLedger(Protocol):
    """What `ticketflow.connectors.delivery` keeps in the store for each sink.

    Every created or threaded message gets a pending delivery per sink in the
    transaction that stores it, and a merge of two tickets a "merge:<old id>"
    one; `record_delivery` marks them done or rejected. Items are unique per
    (sink, tenant, item), so a message written again is never queued twice.
    """

    def deliver_to(self, sinks: tuple[str, ...]) -> None:
        """Queue a delivery for each of these sinks with every message written from now on."""
        ...

    def pending_deliveries(self, sink: str, limit: int) -> list[PendingDelivery]:
        """Return up to `limit` pending deliveries of `sink`, oldest first."""
        ...

    def ticket(self, ticket_id: str) -> dict[str, Any] | None:
        """Return one ticket in the design's shape, following merges, or None."""
        ...

    def record_external(self, ticket_id: str, sink: str, ref: str, human_key: bool) -> None:
        """Keep the sink's reference on the ticket; a human key becomes the ticket's key."""
        ...

    def record_delivery(self, sink: str, tenant: str, item: str, state: str, detail: str = "") -> None:
        """Set an item's state ("pending", "done", "rejected") and detail, adding it if new."""
        ...

    def delivery_detail(self, sink: str, tenant: str, item: str) -> str | None:
        """Return the detail kept with an item, or None when there is no such item."""
        ...

    def count_attempt(self, sink: str, tenant: str, item: str) -> None:
        """Note that a delivery was tried and its outcome is unknown."""
        ...

    def delivery_counts(self, sink: str) -> dict[str, int]:
        """Count the sink's message and merge deliveries by state."""
        ...

    def retry_rejected(self, sink: str) -> int:
        """Make the sink's rejected deliveries pending again; return how many."""
        ...


def merge_detail(old_id: str, old_key: str, old_external: dict[str, Any]) -> str:
    """Describe a merged ticket for its pending "merge:" delivery."""
    return json.dumps({"old_id": old_id, "old_key": old_key, "old_external": old_external})


def pending_delivery(row: Sequence[Any]) -> PendingDelivery:
    """Build a `PendingDelivery` from a row of `PENDING_DELIVERIES` (both stores use it)."""
    tenant, item, attempts, detail, ticket_id, message_id, event_id, sender, received_at, \
        automatic, event, sent_at, source = row
    if item.startswith("merge:"):
        merged = json.loads(detail)
        return PendingDelivery(tenant, item, attempts, ticket_id, merged=merged)
    if isinstance(event, str):
        event = json.loads(event)
    message = {
        "message_id": message_id, "event_id": event_id, "from": sender,
        "received_at": received_at, "sent_at": sent_at, "automatic": automatic,
        "event": event, "source": source,
    }
    return PendingDelivery(tenant, item, attempts, ticket_id, message=message)


# Pending deliveries with their messages; a merge item has no message, and its
# surviving ticket is read from its detail by the caller. Placeholders are "?".
PENDING_DELIVERIES = (
    "SELECT d.tenant, d.item, d.attempts, d.detail, m.ticket_id, m.message_id, m.event_id, "
    "m.sender, m.received_at, m.automatic, m.event, m.sent_at, m.source "
    "FROM deliveries d LEFT JOIN messages m ON m.tenant = d.tenant AND m.dedupe_key = d.item "
    "WHERE d.sink = ? AND d.state = 'pending' ORDER BY d.seq LIMIT ?"
)
UPSERT_DELIVERY = (
    "INSERT INTO deliveries (sink, tenant, item, state, detail, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (sink, tenant, item) DO UPDATE SET state = excluded.state, "
    "detail = excluded.detail, updated_at = excluded.updated_at"
)
DELIVERY_DETAIL = "SELECT detail FROM deliveries WHERE sink = ? AND tenant = ? AND item = ?"
COUNT_ATTEMPT = (
    "UPDATE deliveries SET attempts = attempts + 1 WHERE sink = ? AND tenant = ? AND item = ?"
)
DELIVERY_COUNTS = (
    "SELECT state, COUNT(*) FROM deliveries WHERE sink = ? AND item NOT LIKE 'ticket:%' GROUP BY state"
)
RETRY_REJECTED = "UPDATE deliveries SET state = 'pending' WHERE sink = ? AND state = 'rejected'"
# A sink's rejection is cleared by queueing the delivery again, not by the source's mail.
CLEAR_DEAD_LETTERS = "DELETE FROM dead_letters WHERE source = ? AND reason <> 'sink_rejected'"
CLEAR_SINK_REJECTIONS = "DELETE FROM dead_letters WHERE reason = 'sink_rejected'"


class DeliveryQueue:
    """The `DeliveryLedger` methods both stores share, written once over two hooks.

    A store supplies `_query(statement, params)`, which returns the rows of a
    read, and `_change(statements)`, which runs (statement, params) pairs in one
    transaction and returns the row count of the last one. Statements use "?"
    placeholders, which the PostgreSQL store converts. `_now()` gives the time
    written with each change.
    """

    _sinks: tuple[str, ...] = ()

    def _query(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _change(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        raise NotImplementedError

    def _now(self) -> str:
        return format_timestamp(utc_now())

    def deliver_to(self, sinks: tuple[str, ...]) -> None:
        """Queue a delivery for each of these sinks with every message written from now on."""
        self._sinks = tuple(sinks)

    def pending_deliveries(self, sink: str, limit: int) -> list[PendingDelivery]:
        """Return up to `limit` pending deliveries of `sink`, oldest first."""
        return [pending_delivery(row) for row in self._query(PENDING_DELIVERIES, (sink, limit))]

    def record_delivery(self, sink: str, tenant: str, item: str, state: str, detail: str = "") -> None:
        """Set an item's state ("pending", "done", "rejected") and detail, adding it if new."""
        self._change([(UPSERT_DELIVERY, (sink, tenant, item, state, detail, self._now()))])

    def delivery_detail(self, sink: str, tenant: str, item: str) -> str | None:
        """Return the detail kept with an item, or None when there is no such item."""
        rows = self._query(DELIVERY_DETAIL, (sink, tenant, item))
        return str(rows[0][0]) if rows else None

    def count_attempt(self, sink: str, tenant: str, item: str) -> None:
        """Note that a delivery was tried and its outcome is unknown."""
        self._change([(COUNT_ATTEMPT, (sink, tenant, item))])

    def delivery_counts(self, sink: str) -> dict[str, int]:
        """Count the sink's message and merge deliveries by state."""
        return {state: int(count) for state, count in self._query(DELIVERY_COUNTS, (sink,))}

    def retry_rejected(self, sink: str) -> int:
        """Make the sink's rejected deliveries pending again, clearing their dead letters; return how many."""
        return self._change([(CLEAR_SINK_REJECTIONS, ()), (RETRY_REJECTED, (sink,))])


def key_prefix(tenant: str) -> str:
    """Return the human key prefix of a tenant: upper-case letters and digits, 2–10 long."""
    prefix = re.sub(r"[^A-Z0-9]", "", tenant.upper())
    if not prefix or not prefix[0].isalpha():
        prefix = "T" + prefix
    return prefix.ljust(2, "X")[:10]


def dead_letter_id(letter: DeadLetter) -> str:
    """Identify a dead letter by its source and reason, so a re-read stores it once."""
    return hashlib.sha256(f"{letter.source}\n{letter.reason}".encode()).hexdigest()[:32]


class SqliteStore(DeliveryQueue):
    """Tickets in one SQLite file, written in WAL mode, one transaction per batch.

    One connection is shared by the worker threads of a process behind a lock.
    Several processes may write the same file: SQLite serializes the writers and
    `busy_timeout` makes them wait rather than fail.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        self._lock = threading.RLock()
        self._sinks: tuple[str, ...] = ()
        try:
            self._db.execute("PRAGMA busy_timeout=30000")
            # Switching to WAL ignores the busy timeout, and fails while another
            # process is creating the same new file; it passes a moment later.
            retry_transient(
                lambda: self._db.execute("PRAGMA journal_mode=WAL"),
                is_transient=store_error_is_transient,
                what=f"opening store {path}",
                attempts=40,
                max_delay=0.5,
            )
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"cannot use {path} as a ticket store: {exc}") from exc

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"store {self.path} has schema version {current}, newer than this "
                    f"ticketflow knows ({len(MIGRATIONS)}); upgrade ticketflow"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                log.info("store %s migrated to schema version %d", self.path, version)

    def store_id(self) -> str:
        """Return this store's random identity, made when its schema was created."""
        with self._lock:
            return str(self._db.execute("SELECT store_id FROM store_identity").fetchone()[0])

    def schema_version(self) -> int:
        """Return the schema version the store is at."""
        with self._lock:
            return int(self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    # -- writing -------------------------------------------------------------

    def write(self, outcomes: Iterable[Outcome]) -> None:
        """Write a batch of outcomes in one transaction; idempotent."""
        now = format_timestamp(utc_now())
        touched: set[str] = set()
        with self._transaction() as db:
            for outcome in outcomes:
                if outcome.kind == "dead_letter" and outcome.dead_letter is not None:
                    _insert_dead_letter(db, outcome.dead_letter, now)
                    continue
                # A source that now gets through (a redrive after a fix) is no longer dead.
                db.execute(CLEAR_DEAD_LETTERS, (outcome.source,))
                if outcome.kind in ("created", "threaded") and outcome.ticket_id:
                    touched |= _write_message(db, outcome, now, self._sinks)
            for ticket_id in touched:
                _refresh_ticket(db, ticket_id, now)
            _assign_pending_keys(db)

    # -- deliveries to external sinks (the rest is `DeliveryQueue`'s) ----------

    def _query(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(statement, params).fetchall()

    def _change(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        with self._transaction() as db:
            count = 0
            for statement, params in statements:
                count = db.execute(statement, params).rowcount
            return count

    def ticket(self, ticket_id: str) -> dict[str, Any] | None:
        """Return one ticket in the design's shape, following merges, or None."""
        with self._lock:
            ticket_id = _resolve_alias(self._db, ticket_id)
            self._db.row_factory = sqlite3.Row
            try:
                row = self._db.execute("SELECT * FROM tickets WHERE ticket_id = ?", (ticket_id,)).fetchone()
                return None if row is None else self._ticket_document(row)
            finally:
                self._db.row_factory = None

    def record_external(self, ticket_id: str, sink: str, ref: str, human_key: bool) -> None:
        """Keep the sink's reference on the ticket; a human key becomes the ticket's key.

        The reference is also a ref of the ticket in the ledger, so mail quoting
        it (`[SUP-42]`) threads onto the ticket. The earlier key stays a ref too.
        """
        with self._transaction() as db:
            ticket_id = _resolve_alias(db, ticket_id)
            row = db.execute("SELECT tenant, key, external FROM tickets WHERE ticket_id = ?",
                             (ticket_id,)).fetchone()
            if row is None:
                return
            tenant, key, external = row[0], row[1], json.loads(row[2])
            external[sink] = ref
            db.execute("UPDATE tickets SET external = ? WHERE ticket_id = ?", (json.dumps(external), ticket_id))
            if human_key and key != ref and not _key_taken(db, ref):
                db.execute("UPDATE tickets SET key = ? WHERE ticket_id = ?", (ref, ticket_id))
            db.execute("INSERT OR REPLACE INTO ticket_refs VALUES (?, ?, ?, 'key')", (tenant, ref, ticket_id))

    # -- the ledger, for the thread join --------------------------------------

    def tickets_for_ids(self, tenant: str, message_ids: list[str]) -> dict[str, str]:
        """Map each known message id to its ticket id."""
        if not message_ids:
            return {}
        marks = ",".join("?" * len(message_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT message_id, ticket_id FROM thread_ids "
                f"WHERE tenant = ? AND message_id IN ({marks})",
                (tenant, *message_ids),
            ).fetchall()
        return dict(rows)

    def ticket_for_ref(self, tenant: str, ref: str) -> str | None:
        """Find a ticket by key, external reference or `token:<reply token>`."""
        with self._lock:
            row = self._db.execute(
                "SELECT ticket_id FROM ticket_refs WHERE tenant = ? AND ref = ?", (tenant, ref)
            ).fetchone()
        return row[0] if row else None

    def ticket_for_subject(self, tenant: str, requester: str, subject: str, since: str) -> str | None:
        """Find a requester's ticket with this normalized subject, seen since a time."""
        with self._lock:
            row = self._db.execute(
                "SELECT ticket_id FROM ticket_subjects WHERE tenant = ? AND requester = ? "
                "AND subject = ? AND last_seen >= ?",
                (tenant, requester, subject, since),
            ).fetchone()
        return row[0] if row else None

    def ticket_info(self, ticket_id: str) -> TicketInfo | None:
        """Load a ticket's thread facts, following merges to the surviving ticket."""
        with self._lock:
            ticket_id = _resolve_alias(self._db, ticket_id)
            row = self._db.execute(
                "SELECT ticket_id, tenant, first_sent_at, first_message_id, requester, "
                "participants FROM tickets WHERE ticket_id = ?",
                (ticket_id,),
            ).fetchone()
        if row is None:
            return None
        return TicketInfo(
            ticket_id=row[0],
            tenant=row[1],
            first_sent_at=row[2],
            first_message_id=row[3],
            requester=row[4],
            participants=set(json.loads(row[5])),
        )

    def stored_message(self, tenant: str, dedupe_key: str) -> tuple[str, str, str] | None:
        """Return (source, ticket_id, outcome) of a message already stored, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT source, ticket_id, outcome FROM messages WHERE tenant = ? AND dedupe_key = ?",
                (tenant, dedupe_key),
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def message_holder(self, tenant: str, message_id: str, dedupe_key: str) -> str | None:
        """Return the dedupe key of a stored message with this Message-ID other than `dedupe_key`."""
        with self._lock:
            row = self._db.execute(
                "SELECT dedupe_key FROM messages WHERE tenant = ? AND message_id = ? AND dedupe_key != ? "
                "LIMIT 1",
                (tenant, message_id, dedupe_key),
            ).fetchone()
        return row[0] if row else None

    # -- reading, for the CLI ---------------------------------------------------

    def tickets(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Return every ticket in the design's ticket shape, ordered by tenant and key number."""
        query = "SELECT * FROM tickets"
        params: tuple[str, ...] = ()
        if tenant is not None:
            query += " WHERE tenant = ?"
            params = (tenant,)
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                rows = self._db.execute(query, params).fetchall()
                tickets = [self._ticket_document(row) for row in rows]
            finally:
                self._db.row_factory = None
        tickets.sort(key=lambda ticket: (ticket["tenant"], _key_number(ticket["key"])))
        return tickets

    def _ticket_document(self, row: sqlite3.Row) -> dict[str, Any]:
        messages = self._db.execute(
            "SELECT message_id, event_id, sender, received_at, automatic, event FROM messages "
            "WHERE ticket_id = ? ORDER BY sent_at, message_id",
            (row["ticket_id"],),
        ).fetchall()
        refs = self._db.execute(
            "SELECT ref FROM ticket_refs WHERE ticket_id = ? AND kind = 'external' ORDER BY ref",
            (row["ticket_id"],),
        ).fetchall()
        return {
            "ticket_id": row["ticket_id"],
            "key": row["key"],
            "tenant": row["tenant"],
            "subject": row["subject"],
            "requester": row["requester"],
            "participants": json.loads(row["participants"]),
            "priority": row["priority"],
            "component": row["component"],
            "environment": row["environment"],
            "tier": row["tier"],
            "status": row["status"],
            "review_reasons": json.loads(row["review_reasons"]),
            "reply_address": row["reply_address"],
            "messages": _message_documents(messages),
            "external": json.loads(row["external"]),
            "external_refs": sorted({ref[0].partition("@")[0] for ref in refs}),
        }

    def dead_letters(self) -> list[dict[str, Any]]:
        """Return every dead letter with its source, reason, detail and header block."""
        with self._lock:
            rows = self._db.execute(
                "SELECT dead_letter_id, source, reason, detail, headers, length(raw), created_at "
                "FROM dead_letters ORDER BY created_at, source"
            ).fetchall()
        return [dead_letter_document(row) for row in rows]

    def dead_letter_records(self) -> list[tuple[str, bytes]]:
        """Return (source, original bytes) of every dead letter that kept its bytes."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, raw FROM dead_letters WHERE length(raw) > 0 ORDER BY created_at, source"
            ).fetchall()
        return [(row[0], bytes(row[1])) for row in rows]

    def dead_letter_bytes(self, dead_letter_id: str) -> bytes | None:
        """Return the original bytes kept with a dead letter."""
        with self._lock:
            row = self._db.execute(
                "SELECT raw FROM dead_letters WHERE dead_letter_id = ?", (dead_letter_id,)
            ).fetchone()
        return bytes(row[0]) if row else None


# -- batch write steps ---------------------------------------------------------


def _insert_dead_letter(db: sqlite3.Connection, letter: DeadLetter, now: str) -> None:
    db.execute(
        "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            dead_letter_id(letter),
            letter.source,
            letter.reason,
            letter.detail,
            letter.headers,
            letter.raw,
            now,
        ),
    )


def _write_message(
    db: sqlite3.Connection, outcome: Outcome, now: str, sinks: tuple[str, ...]
) -> set[str]:
    """Write one threaded or created message; return the ticket ids to refresh.

    Each sink in `sinks` gets a pending delivery of the message, unless it
    already has one (a message written again after a crash is not sent twice).
    """
    copy = outcome.copy
    assert copy is not None and outcome.ticket_id is not None and outcome.tenant is not None
    event = copy.event
    envelope = event["envelope"]
    tenant = outcome.tenant
    # Another process may have merged this ticket since the decision was taken.
    ticket_id = _resolve_alias(db, outcome.ticket_id)

    for old_id in outcome.merged_from:
        _merge_ticket(db, old_id, ticket_id, tenant, now, sinks)
    _ensure_ticket(db, ticket_id, tenant, now)
    db.executemany(
        "INSERT OR IGNORE INTO deliveries (sink, tenant, item, state, updated_at) "
        "VALUES (?, ?, ?, 'pending', ?)",
        [(sink, tenant, outcome.dedupe_key, now) for sink in sinks],
    )

    db.execute(
        "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            tenant,
            outcome.dedupe_key,
            ticket_id,
            envelope["message_id"],
            event["event_id"],
            envelope["from"],
            event["received_at"],
            copy.thread_order[0],
            copy.automatic,
            outcome.kind,
            event["source"],
            copy.mailbox,
            json.dumps(event, ensure_ascii=False),
            json.dumps(copy.enrichment, ensure_ascii=False),
            json.dumps(list(copy.review_reasons)),
        ),
    )

    db.executemany(
        "INSERT OR IGNORE INTO thread_ids VALUES (?, ?, ?)",
        [(tenant, message_id, ticket_id) for message_id in (envelope["message_id"], *thread_parents(event))],
    )
    db.executemany(
        "INSERT OR IGNORE INTO ticket_refs VALUES (?, ?, ?, 'external')",
        [(tenant, ref, ticket_id) for ref in outcome.external_refs],
    )

    normalized = normalize_subject(envelope["subject"])
    if normalized and envelope["from"]:
        db.execute(
            "INSERT INTO ticket_subjects VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, requester, subject) DO UPDATE SET "
            "ticket_id = excluded.ticket_id, last_seen = excluded.last_seen "
            "WHERE excluded.last_seen >= ticket_subjects.last_seen",
            (tenant, envelope["from"], normalized, ticket_id, event["received_at"]),
        )
    return {ticket_id}


_PENDING_KEY = "~"


def _ensure_ticket(db: sqlite3.Connection, ticket_id: str, tenant: str, now: str) -> None:
    """Create a ticket row if missing; its human key is assigned at the end of the batch."""
    exists = db.execute("SELECT 1 FROM tickets WHERE ticket_id = ?", (ticket_id,)).fetchone()
    if exists:
        return
    db.execute(
        "INSERT INTO tickets (ticket_id, tenant, key, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        (ticket_id, tenant, _PENDING_KEY + ticket_id, now, now),
    )
    db.execute(
        "INSERT OR REPLACE INTO ticket_refs VALUES (?, ?, ?, 'token')",
        (tenant, f"token:{ticket_id.removeprefix('tkt_')[:12]}", ticket_id),
    )


def _assign_pending_keys(db: sqlite3.Connection) -> None:
    """Number the batch's new tickets per tenant in the order their first messages were sent.

    The engine emits a batch's outcomes grouped by thread, not in arrival order,
    so numbering at creation would scatter the keys of a corpus.
    """
    pending = db.execute(
        # GLOB, unlike LIKE, is case-sensitive and so can use the index on key.
        "SELECT ticket_id, tenant FROM tickets WHERE key GLOB ? "
        "ORDER BY first_sent_at, first_message_id",
        (_PENDING_KEY + "*",),
    ).fetchall()
    for ticket_id, tenant in pending:
        key = _allocate_key(db, tenant)
        db.execute("UPDATE tickets SET key = ? WHERE ticket_id = ?", (key, ticket_id))
        db.execute("INSERT OR REPLACE INTO ticket_refs VALUES (?, ?, ?, 'key')", (tenant, key, ticket_id))


def _allocate_key(db: sqlite3.Connection, tenant: str) -> str:
    row = db.execute(
        "INSERT INTO key_counters VALUES (?, 1) ON CONFLICT (tenant) "
        "DO UPDATE SET last_number = last_number + 1 RETURNING last_number",
        (tenant,),
    ).fetchone()
    return f"{key_prefix(tenant)}-{row[0]}"


def _merge_ticket(
    db: sqlite3.Connection, old_id: str, new_id: str, tenant: str, now: str, sinks: tuple[str, ...]
) -> None:
    """Fold ticket `old_id` into `new_id`: messages, ids, refs and the human key move over.

    When `new_id` does not exist yet (the ticket was renamed because an earlier
    message joined), it takes over the old ticket's key and external ids.
    Otherwise each sink gets a pending "merge:<old id>" delivery, so the
    external tickets are linked.
    """
    old_id = _resolve_alias(db, old_id)
    if old_id == new_id:
        return
    old = db.execute("SELECT key, external FROM tickets WHERE ticket_id = ?", (old_id,)).fetchone()
    if old is None:
        return

    target_exists = db.execute("SELECT 1 FROM tickets WHERE ticket_id = ?", (new_id,)).fetchone()
    if target_exists:
        db.execute("DELETE FROM tickets WHERE ticket_id = ?", (old_id,))
        detail = merge_detail(old_id, old[0], json.loads(old[1]))
        db.executemany(
            "INSERT OR IGNORE INTO deliveries (sink, tenant, item, state, detail, updated_at) "
            "VALUES (?, ?, ?, 'pending', ?, ?)",
            [(sink, tenant, f"merge:{old_id}", detail, now) for sink in sinks],
        )
    else:
        db.execute("UPDATE tickets SET ticket_id = ?, updated_at = ? WHERE ticket_id = ?", (new_id, now, old_id))

    for table in ("messages", "thread_ids", "ticket_refs", "ticket_subjects"):
        db.execute(f"UPDATE OR IGNORE {table} SET ticket_id = ? WHERE ticket_id = ?", (new_id, old_id))
    if not target_exists:
        db.execute(
            "INSERT OR REPLACE INTO ticket_refs VALUES (?, ?, ?, 'token')",
            (tenant, f"token:{new_id.removeprefix('tkt_')[:12]}", new_id),
        )
    db.execute("INSERT OR REPLACE INTO ticket_aliases VALUES (?, ?)", (old_id, new_id))
    db.execute("UPDATE ticket_aliases SET new_id = ? WHERE new_id = ?", (new_id, old_id))
    log.info("ticket %s (key %s) merged into %s", old_id, old[0], new_id)


def _key_taken(db: sqlite3.Connection, key: str) -> bool:
    return db.execute("SELECT 1 FROM tickets WHERE key = ?", (key,)).fetchone() is not None


def _resolve_alias(db: sqlite3.Connection, ticket_id: str) -> str:
    for _ in range(32):
        row = db.execute("SELECT new_id FROM ticket_aliases WHERE old_id = ?", (ticket_id,)).fetchone()
        if row is None:
            return ticket_id
        ticket_id = row[0]
    return ticket_id


def _refresh_ticket(db: sqlite3.Connection, ticket_id: str, now: str) -> None:
    """Derive a ticket's fields from its messages, earliest first."""
    rows = db.execute(
        "SELECT sender, sent_at, message_id, automatic, mailbox, "
        "json_extract(event, '$.envelope.subject'), enrichment, review_reasons "
        "FROM messages WHERE ticket_id = ? ORDER BY sent_at, message_id",
        (ticket_id,),
    ).fetchall()
    if not rows:
        return

    decoded = [(*row[:6], json.loads(row[6]), json.loads(row[7])) for row in rows]
    fields = derived_ticket_fields(ticket_id, decoded)
    db.execute(
        "UPDATE tickets SET subject = ?, requester = ?, participants = ?, priority = ?, "
        "component = ?, environment = ?, status = ?, review_reasons = ?, reply_address = ?, "
        "first_sent_at = ?, first_message_id = ?, updated_at = ? WHERE ticket_id = ?",
        (
            fields["subject"],
            fields["requester"],
            json.dumps(fields["participants"]),
            fields["priority"],
            fields["component"],
            fields["environment"],
            fields["status"],
            json.dumps(fields["review_reasons"]),
            fields["reply_address"],
            fields["first_sent_at"],
            fields["first_message_id"],
            now,
            ticket_id,
        ),
    )


def derived_ticket_fields(ticket_id: str, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Derive a ticket's fields from its message rows, given earliest first; both stores use it.

    Each row is (sender, sent_at, message_id, automatic, mailbox, subject,
    enrichment dict, review_reasons list). Subject, requester, review status and
    reply address come from the earliest message a person sent, and from
    automatic mail only when there is nothing else. The priority is the most
    urgent of those messages; component and environment are the first ones given.
    """
    people = [row for row in rows if row[3] is None] or rows
    first = people[0]
    enrichments = [row[6] for row in people]
    review_reasons = list(first[7])
    participants = sorted({row[0] for row in rows if row[3] is None and row[0]})
    return {
        "subject": clean_subject(first[5] or ""),
        "requester": first[0],
        "participants": participants,
        "priority": min(enrichment.get("priority") or "P3" for enrichment in enrichments),
        "component": _first_value(enrichments, "component"),
        "environment": _first_value(enrichments, "environment"),
        "status": "review" if review_reasons else "open",
        "review_reasons": review_reasons,
        "reply_address": reply_address(first[4], ticket_id) if first[4] else None,
        "first_sent_at": first[1],
        "first_message_id": first[2],
    }


def _first_value(enrichments: list[dict[str, Any]], name: str) -> Any:
    for enrichment in enrichments:
        if enrichment.get(name):
            return enrichment[name]
    return None


def dead_letter_document(row: Sequence[Any]) -> dict[str, Any]:
    """Build a dead letter's listing from (id, source, reason, detail, headers, size, created_at)."""
    return {
        "dead_letter_id": row[0],
        "source": row[1],
        "reason": row[2],
        "detail": row[3],
        "headers": row[4],
        "size": row[5],
        "created_at": row[6],
    }


def _message_documents(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    documents = []
    original_seen = False
    for message_id, event_id, sender, received_at, automatic, event_json in rows:
        event = json.loads(event_json)
        if automatic:
            kind = "auto_reply"
        elif not original_seen:
            kind = "original"
            original_seen = True
        else:
            kind = "reply"
        documents.append(
            {
                "message_id": message_id,
                "event_id": event_id,
                "from": sender,
                "received_at": received_at,
                "kind": kind,
                "text": event["text"],
                "html": event["html"],
                "authentication": event["authentication"],
                "attachments": event["attachments"],
            }
        )
    return documents


def _key_number(key: str) -> int:
    number = key.rpartition("-")[2]
    return int(number) if number.isdigit() else 0
