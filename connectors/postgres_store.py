"""The PostgreSQL ticket store: the ledger of `SqliteStore`, shared by processes on many hosts.

`open_store("postgresql://user@host:5432/db?schema=NAME")` gives a `PostgresStore`.
It has the tables, methods and results of `SqliteStore` (see `ticketflow.connectors.store`
for what the ledger holds): tickets read the same, keys are numbered per tenant at the
end of each batch in the order the tickets' first messages were sent, merges and
renames move messages, ids, refs and keys alike, and a dead letter is cleared once its
source gets through. What the server adds:

- **Several writers.** Processes on several hosts may write one database. Each batch
  is one transaction at READ COMMITTED. A tenant's key counter is a row of
  `key_counters`, bumped by `INSERT … ON CONFLICT DO UPDATE … RETURNING` inside that
  transaction: the row stays locked until commit, so concurrent batches get distinct
  numbers, and a batch that rolls back gives its numbers back (keys stay gapless).
  A batch that fails on a deadlock, a serialization failure or a lost connection
  leaves nothing behind and may be retried whole; `store_error_is_transient` accepts
  those errors, and the store reconnects on the next call after a lost connection.
- **Full-text search** over message subjects and texts (`search`), from a generated
  `tsvector` column with a GIN index.
- **Schemas.** `?schema=NAME` (default `public`) keeps the tables in a schema of their
  own, created on first open. Migrations are numbered and run on open, each in its own
  transaction under an advisory lock, so processes that start together apply each
  migration once.

Events and the other JSON values are `jsonb`, raw dead-letter bytes `bytea`. jsonb and
text cannot hold what SQLite keeps: NaN and infinities become null and NUL characters
are dropped, so such a value is stored rather than failing its batch for good. Text
columns that are sorted or compared use the "C" collation, so they order by bytes, as
SQLite does. Times stay RFC 3339 UTC strings, as in SQLite.

Leave the password out of the URL: libpq reads it from `PGPASSWORD` or `~/.pgpass`.
Error messages and logs show the URL with any password replaced by `***`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from ticketflow.connectors.store import (
    CLEAR_DEAD_LETTERS,
    DeliveryQueue,
    dead_letter_document,
    merge_detail,
    StoreError,
    _key_number,
    _message_documents,
    dead_letter_id,
    derived_ticket_fields,
    key_prefix,
)
from ticketflow.model import DeadLetter, format_timestamp, utc_now
from ticketflow.operators.subject import normalize_subject
from ticketflow.operators.thread import TicketInfo, thread_parents
from ticketflow.outcome import Outcome

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "public"
CONNECT_TIMEOUT_SECONDS = 10

# Search indexes this many characters of each message's text. A tsvector is limited to
# 1 MB, so a much longer text would make its insert fail. Changing it needs a new migration.
SEARCH_TEXT_CHARS = 100_000

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PENDING_KEY = "~"
_HEADLINE_OPTIONS = "MaxFragments=1, MaxWords=20, MinWords=8, StartSel=**, StopSel=**"

MIGRATIONS: tuple[str, ...] = (
    # 1: tickets, their messages, the thread ledger and dead letters.
    """
    CREATE TABLE tickets (
        ticket_id text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL UNIQUE,
        subject text NOT NULL DEFAULT '',
        requester text COLLATE "C" NOT NULL DEFAULT '',
        participants jsonb NOT NULL DEFAULT '[]',
        priority text NOT NULL DEFAULT 'P3',
        component text,
        environment text,
        tier text,
        status text NOT NULL DEFAULT 'open',
        review_reasons jsonb NOT NULL DEFAULT '[]',
        reply_address text,
        external jsonb NOT NULL DEFAULT '{}',
        first_sent_at text COLLATE "C" NOT NULL DEFAULT '',
        first_message_id text COLLATE "C" NOT NULL DEFAULT '',
        created_at text COLLATE "C" NOT NULL,
        updated_at text COLLATE "C" NOT NULL
    );
    CREATE INDEX tickets_tenant ON tickets (tenant, key);
    CREATE TABLE messages (
        tenant text COLLATE "C" NOT NULL,
        dedupe_key text COLLATE "C" NOT NULL,
        ticket_id text COLLATE "C" NOT NULL,
        message_id text COLLATE "C" NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        sender text COLLATE "C" NOT NULL,
        received_at text COLLATE "C" NOT NULL,
        sent_at text COLLATE "C" NOT NULL,
        automatic text,
        outcome text NOT NULL,
        source text COLLATE "C" NOT NULL,
        mailbox text NOT NULL,
        event jsonb NOT NULL,
        enrichment jsonb NOT NULL,
        review_reasons jsonb NOT NULL,
        PRIMARY KEY (tenant, dedupe_key)
    );
    CREATE INDEX messages_ticket ON messages (ticket_id, sent_at, message_id);
    CREATE TABLE thread_ids (
        tenant text COLLATE "C" NOT NULL,
        message_id text COLLATE "C" NOT NULL,
        ticket_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (tenant, message_id)
    );
    CREATE INDEX thread_ids_ticket ON thread_ids (ticket_id);
    CREATE TABLE ticket_refs (
        tenant text COLLATE "C" NOT NULL,
        ref text COLLATE "C" NOT NULL,
        ticket_id text COLLATE "C" NOT NULL,
        kind text NOT NULL,
        PRIMARY KEY (tenant, ref)
    );
    CREATE INDEX ticket_refs_ticket ON ticket_refs (ticket_id);
    CREATE TABLE ticket_subjects (
        tenant text COLLATE "C" NOT NULL,
        requester text COLLATE "C" NOT NULL,
        subject text COLLATE "C" NOT NULL,
        ticket_id text COLLATE "C" NOT NULL,
        last_seen text COLLATE "C" NOT NULL,
        PRIMARY KEY (tenant, requester, subject)
    );
    CREATE INDEX ticket_subjects_ticket ON ticket_subjects (ticket_id);
    CREATE TABLE ticket_aliases (
        old_id text COLLATE "C" PRIMARY KEY,
        new_id text COLLATE "C" NOT NULL
    );
    CREATE INDEX ticket_aliases_new ON ticket_aliases (new_id);
    CREATE TABLE key_counters (
        tenant text COLLATE "C" PRIMARY KEY,
        last_number bigint NOT NULL
    );
    CREATE TABLE dead_letters (
        dead_letter_id text COLLATE "C" PRIMARY KEY,
        source text COLLATE "C" NOT NULL,
        reason text NOT NULL,
        detail text NOT NULL,
        headers text NOT NULL,
        raw bytea NOT NULL,
        created_at text COLLATE "C" NOT NULL
    );
    CREATE INDEX dead_letters_source ON dead_letters (source);
    """,
    # 2: full-text search over each message's subject (weight A) and text (weight B).
    # The 'simple' configuration lower-cases words without stemming, so every language
    # is searchable the same way.
    f"""
    ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple'::regconfig,
                              left(coalesce(event #>> '{{envelope,subject}}', ''), 10000)), 'A')
        || setweight(to_tsvector('simple'::regconfig,
                                 left(coalesce(event ->> 'text', ''), {SEARCH_TEXT_CHARS})), 'B')
    ) STORED;
    CREATE INDEX messages_search ON messages USING gin (search_vector);
    """,
    # 3: a random identity, so state kept outside the store (Redis) is never shared by
    # two stores. An index finds stored messages by Message-ID, to notice one reused
    # by other content.
    """
    CREATE TABLE store_identity (store_id text NOT NULL);
    INSERT INTO store_identity VALUES (left(replace(gen_random_uuid()::text, '-', ''), 16));
    CREATE INDEX messages_message_id ON messages (tenant, message_id);
    """,
    # 4: what each external sink still has to receive, and what it got (see delivery.py).
    """
    CREATE TABLE deliveries (
        seq bigserial PRIMARY KEY,
        sink text COLLATE "C" NOT NULL,
        tenant text COLLATE "C" NOT NULL,
        item text COLLATE "C" NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        detail text NOT NULL DEFAULT '',
        updated_at text COLLATE "C" NOT NULL,
        UNIQUE (sink, tenant, item)
    );
    CREATE INDEX deliveries_pending ON deliveries (sink, state, seq);
    """,
)


def redacted_url(url: str) -> str:
    """Return a store URL fit for messages and logs: any password becomes `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = [
        (name, "***" if name == "password" else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/")))


def store_location(url: str) -> tuple[str, str]:
    """Split a store URL into the connection URL libpq reads and the schema name.

    Raises `StoreError` for a schema name that is not a plain SQL identifier.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StoreError(f"invalid store URL {redacted_url(url)}: {exc}") from exc
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(schema):
        raise StoreError(
            f"invalid schema {schema!r} in store URL {redacted_url(url)}: expected a letter or "
            "underscore, then letters, digits or underscores, at most 63 in all"
        )
    rest = [(name, value) for name, value in query if name != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


class PostgresStore(DeliveryQueue):
    """Tickets in a PostgreSQL schema, one transaction per batch, safe for many writers.

    Each store object has one connection, which the worker threads of a process
    share behind a lock. It runs in autocommit mode, so reads never leave a
    transaction open, and each batch opens one explicitly.
    """

    def __init__(
        self,
        url: str,
        *,
        existing: bool = False,
        connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.url = redacted_url(url)
        self._conninfo, self.schema = store_location(url)
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False
        self._sinks: tuple[str, ...] = ()
        try:
            self._db = self._connect()
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the PostgreSQL store {self.url}: {_one_line(exc)}; check that "
                "the server is running and accepts TCP connections at that host and port, and "
                "that the user, password (PGPASSWORD or ~/.pgpass) and database name are right"
            ) from exc
        try:
            if existing:
                self._require_existing()
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            self._db.close()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            given = conninfo_to_dict(self._conninfo)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"invalid store URL {self.url}: {_one_line(exc)}") from exc
        defaults: dict[str, str | int] = {
            "connect_timeout": self._connect_timeout,
            "application_name": "ticketflow",
        }
        extra = {name: value for name, value in defaults.items() if name not in given}
        db = psycopg.connect(make_conninfo(self._conninfo, **extra), autocommit=True)
        db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return db

    def _connection(self) -> psycopg.Connection[Any]:
        """Return the live connection, opening a new one after a lost one.

        A failure to reconnect raises psycopg's `OperationalError`, which the
        sink's retry treats as transient.
        """
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._db.closed or self._db.broken:
            log.warning("connection to store %s was lost; reconnecting", self.url)
            self._db.close()
            self._db = self._connect()
        return self._db

    @contextmanager
    def _transaction(self, pipeline: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        with self._lock:
            db = self._connection()
            with db.transaction():
                with db.pipeline() if pipeline else nullcontext(), db.cursor() as cursor:
                    yield cursor

    # -- schema ----------------------------------------------------------------

    def _require_existing(self) -> None:
        """Raise `StoreError` unless the schema already contains a store (for commands that only read)."""
        row = self._db.execute(
            "SELECT to_regclass(format('%%I.schema_version', %s::text))", (self.schema,)
        ).fetchone()
        if row is None or row[0] is None:
            raise StoreError(
                f"no store in schema {self.schema!r} of {self.url}: run `ticketflow run --store "
                f"{self.url}` first, or check --store"
            )

    def _migrate(self) -> None:
        try:
            while self._apply_next_migration():
                pass
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot prepare schema {self.schema!r} of store {self.url}: {_one_line(exc)}; "
                "check that the user may create schemas and tables in that database"
            ) from exc

    def _apply_next_migration(self) -> bool:
        """Apply the first migration the schema lacks, in a transaction of its own.

        Returns False when the schema is up to date. The advisory lock makes a
        process that opens the store at the same moment wait, then find the
        migration applied.
        """
        with self._transaction() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"ticketflow.migrate.{self.schema}",),
            )
            _create_schema_version(cursor, self.schema)
            current = _current_version(cursor)
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"store {self.url} has schema version {current}, newer than this "
                    f"ticketflow knows ({len(MIGRATIONS)}); upgrade ticketflow"
                )
            if current == len(MIGRATIONS):
                return False
            version = current + 1
            cursor.execute(MIGRATIONS[version - 1])
            cursor.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        log.info(
            "store %s (schema %s) migrated to schema version %d", self.url, self.schema, version
        )
        return True

    def store_id(self) -> str:
        """Return this store's random identity, made when its schema was created."""
        with self._lock:
            row = self._connection().execute("SELECT store_id FROM store_identity").fetchone()
        assert row is not None, "migration 3 inserts the store's identity"
        return str(row[0])

    def schema_version(self) -> int:
        """Return the schema version the store is at."""
        with self._lock:
            return _current_version(self._connection().cursor())

    # -- writing -------------------------------------------------------------

    def write(self, outcomes: Iterable[Outcome]) -> None:
        """Write a batch of outcomes in one transaction; idempotent, all or nothing.

        A batch that raises has changed nothing, so the caller may retry it
        whole; pass a list, since an iterator is used up by the first try.
        """
        now = format_timestamp(self._clock())
        touched: set[str] = set()
        # The pipeline sends statements without waiting for each answer; only
        # the reads (merges, the refresh, key numbering) wait for the server.
        with self._transaction(pipeline=True) as cursor:
            for outcome in outcomes:
                if outcome.kind == "dead_letter" and outcome.dead_letter is not None:
                    _insert_dead_letter(cursor, outcome.dead_letter, now)
                    continue
                # A source that now gets through (a redrive after a fix) is no longer dead.
                cursor.execute(_dialect(CLEAR_DEAD_LETTERS), (outcome.source,))
                if outcome.kind in ("created", "threaded") and outcome.ticket_id:
                    touched.add(_write_message(cursor, outcome, now, self._sinks))

            _refresh_tickets(cursor, touched, now)
            _assign_pending_keys(cursor)

    # -- deliveries to external sinks (the rest is `DeliveryQueue`'s) ----------

    def _query(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(_dialect(statement), params).fetchall()

    def _change(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        with self._transaction() as cursor:
            for statement, params in statements:
                cursor.execute(_dialect(statement), params)
            return cursor.rowcount

    def _now(self) -> str:
        return format_timestamp(self._clock())

    def ticket(self, ticket_id: str) -> dict[str, Any] | None:
        """Return one ticket in the design's shape, following merges, or None."""
        with self._lock:
            cursor = self._connection().cursor()
            ticket_id = _resolve_alias(cursor, ticket_id)
            row = cursor.execute(
                "SELECT ticket_id, key, tenant, subject, requester, participants, priority, "
                "component, environment, tier, status, review_reasons, reply_address, external "
                "FROM tickets WHERE ticket_id = %s",
                (ticket_id,),
            ).fetchone()
            if row is None:
                return None
            messages = cursor.execute(
                "SELECT message_id, event_id, sender, received_at, automatic, event::text "
                "FROM messages WHERE ticket_id = %s ORDER BY sent_at, message_id",
                (ticket_id,),
            ).fetchall()
            refs = cursor.execute(
                "SELECT ref FROM ticket_refs WHERE ticket_id = %s AND kind = 'external'", (ticket_id,)
            ).fetchall()
        return _ticket_document(row, messages, [ref[0] for ref in refs])

    def record_external(self, ticket_id: str, sink: str, ref: str, human_key: bool) -> None:
        """Keep the sink's reference on the ticket; a human key becomes the ticket's key.

        The reference is also a ref of the ticket in the ledger, so mail quoting
        it (`[SUP-42]`) threads onto the ticket. The earlier key stays a ref too.
        """
        with self._transaction() as cursor:
            ticket_id = _resolve_alias(cursor, ticket_id)
            row = _read(cursor, "SELECT tenant, key FROM tickets WHERE ticket_id = %s FOR UPDATE",
                        (ticket_id,)).fetchone()
            if row is None:
                return
            tenant, key = row
            cursor.execute(
                "UPDATE tickets SET external = external || %s WHERE ticket_id = %s",
                (Jsonb({sink: ref}), ticket_id),
            )
            taken = _read(cursor, "SELECT 1 FROM tickets WHERE key = %s", (ref,)).fetchone()
            if human_key and key != ref and taken is None:
                cursor.execute("UPDATE tickets SET key = %s WHERE ticket_id = %s", (ref, ticket_id))
            _put_ref(cursor, tenant, ref, ticket_id, "key")

    # -- the ledger, for the thread join --------------------------------------

    def tickets_for_ids(self, tenant: str, message_ids: list[str]) -> dict[str, str]:
        """Map each known message id to its ticket id."""
        if not message_ids:
            return {}
        # An IN list, not `= ANY(array)`: about 40% faster per call on PostgreSQL 15,
        # and the thread join calls this for most messages.
        placeholders = ", ".join(["%s"] * len(message_ids))
        with self._lock:
            rows = self._connection().execute(
                f"SELECT message_id, ticket_id FROM thread_ids "
                f"WHERE tenant = %s AND message_id IN ({placeholders})",
                (tenant, *message_ids),
            ).fetchall()
        return dict(rows)

    def ticket_for_ref(self, tenant: str, ref: str) -> str | None:
        """Find a ticket by key, external reference or `token:<reply token>`."""
        with self._lock:
            row = self._connection().execute(
                "SELECT ticket_id FROM ticket_refs WHERE tenant = %s AND ref = %s", (tenant, ref)
            ).fetchone()
        return row[0] if row else None

    def ticket_for_subject(self, tenant: str, requester: str, subject: str, since: str) -> str | None:
        """Find a requester's ticket with this normalized subject, seen since a time."""
        with self._lock:
            row = self._connection().execute(
                "SELECT ticket_id FROM ticket_subjects WHERE tenant = %s AND requester = %s "
                "AND subject = %s AND last_seen >= %s",
                (tenant, requester, subject, since),
            ).fetchone()
        return row[0] if row else None

    def ticket_info(self, ticket_id: str) -> TicketInfo | None:
        """Load a ticket's thread facts, following merges to the surviving ticket."""
        with self._lock:
            cursor = self._connection().cursor()
            ticket_id = _resolve_alias(cursor, ticket_id)
            row = cursor.execute(
                "SELECT ticket_id, tenant, first_sent_at, first_message_id, requester, "
                "participants FROM tickets WHERE ticket_id = %s",
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
            participants=set(row[5]),
        )

    def stored_message(self, tenant: str, dedupe_key: str) -> tuple[str, str, str] | None:
        """Return (source, ticket_id, outcome) of a message already stored, or None."""
        with self._lock:
            row = self._connection().execute(
                "SELECT source, ticket_id, outcome FROM messages "
                "WHERE tenant = %s AND dedupe_key = %s",
                (tenant, dedupe_key),
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def message_holder(self, tenant: str, message_id: str, dedupe_key: str) -> str | None:
        """Return the dedupe key of a stored message with this Message-ID other than `dedupe_key`."""
        with self._lock:
            row = self._connection().execute(
                "SELECT dedupe_key FROM messages WHERE tenant = %s AND message_id = %s "
                "AND dedupe_key <> %s LIMIT 1",
                (tenant, message_id, dedupe_key),
            ).fetchone()
        return row[0] if row else None

    # -- reading, for the CLI ---------------------------------------------------

    def tickets(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Return every ticket in the design's ticket shape, ordered by tenant and key number.

        The tickets, their messages and their refs are read from one snapshot.
        """
        where = sql.SQL(" WHERE tenant = %(tenant)s" if tenant is not None else "")
        params = {"tenant": tenant}
        with self._lock:
            db = self._connection()
            with db.transaction():
                cursor = db.cursor()
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                tickets = cursor.execute(
                    sql.SQL(
                        "SELECT ticket_id, key, tenant, subject, requester, participants, "
                        "priority, component, environment, tier, status, review_reasons, "
                        "reply_address, external FROM tickets{}"
                    ).format(where),
                    params,
                ).fetchall()
                messages = cursor.execute(
                    sql.SQL(
                        "SELECT ticket_id, message_id, event_id, sender, received_at, automatic, "
                        "event::text FROM messages{} ORDER BY ticket_id, sent_at, message_id"
                    ).format(where),
                    params,
                ).fetchall()
                refs = cursor.execute(
                    sql.SQL("SELECT ticket_id, ref FROM ticket_refs WHERE kind = 'external'{}").format(
                        sql.SQL(" AND tenant = %(tenant)s" if tenant is not None else "")
                    ),
                    params,
                ).fetchall()

        messages_of: dict[str, list[tuple[Any, ...]]] = {}
        for row in messages:
            messages_of.setdefault(row[0], []).append(row[1:])
        refs_of: dict[str, list[str]] = {}
        for ticket_id, ref in refs:
            refs_of.setdefault(ticket_id, []).append(ref)

        documents = [
            _ticket_document(row, messages_of.get(row[0], []), refs_of.get(row[0], []))
            for row in tickets
        ]
        documents.sort(key=lambda ticket: (ticket["tenant"], _key_number(ticket["key"])))
        return documents

    def dead_letters(self) -> list[dict[str, Any]]:
        """Return every dead letter with its source, reason, detail and header block."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT dead_letter_id, source, reason, detail, headers, octet_length(raw), "
                "created_at FROM dead_letters ORDER BY created_at, source"
            ).fetchall()
        return [dead_letter_document(row) for row in rows]

    def dead_letter_records(self) -> list[tuple[str, bytes]]:
        """Return (source, original bytes) of every dead letter that kept its bytes."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT source, raw FROM dead_letters WHERE octet_length(raw) > 0 "
                "ORDER BY created_at, source"
            ).fetchall()
        return [(row[0], bytes(row[1])) for row in rows]

    def dead_letter_bytes(self, dead_letter_id: str) -> bytes | None:
        """Return the original bytes kept with a dead letter."""
        with self._lock:
            row = self._connection().execute(
                "SELECT raw FROM dead_letters WHERE dead_letter_id = %s", (dead_letter_id,)
            ).fetchone()
        return bytes(row[0]) if row else None

    def search(self, query: str, tenant: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Find the tickets whose messages match a search query, best match first.

        `query` is read by `websearch_to_tsquery`: words (all must occur),
        "quoted phrases", `or`, and `-word` to exclude. Words match as written,
        lower-cased and without stemming ('simple' configuration), so mail in any
        language is found the same way, and `charge` does not find `charges`. The
        subject and the first `SEARCH_TEXT_CHARS` characters of each message's
        text are searched; a subject match ranks higher. Each ticket appears
        once, ranked by its best message, as `{ticket_id, key, tenant, subject,
        rank, headline}`; `headline` is a fragment of that message with the
        matched words between `**`. A query with no words finds nothing.
        """
        if limit < 1:
            raise ValueError(f"search limit must be at least 1, got {limit}")
        if not query.strip():
            return []
        tenant_filter = sql.SQL(" AND m.tenant = %(tenant)s" if tenant is not None else "")
        with self._lock:
            rows = self._connection().execute(
                sql.SQL(_SEARCH_QUERY).format(tenant_filter=tenant_filter),
                {
                    "query": query,
                    "tenant": tenant,
                    "limit": limit,
                    "text_chars": SEARCH_TEXT_CHARS,
                    "options": _HEADLINE_OPTIONS,
                },
            ).fetchall()
        return [
            {
                "ticket_id": row[0],
                "key": row[1],
                "tenant": row[2],
                "subject": row[3],
                "rank": float(row[4]),
                "headline": " ".join(row[5].split()),
            }
            for row in rows
        ]


# Each ticket once, by its best-ranked message; the headline is cut from that message,
# and only for the rows returned, because ts_headline reads the whole text.
_SEARCH_QUERY = """
WITH search AS (SELECT websearch_to_tsquery('simple', %(query)s) AS query),
best AS (
    SELECT DISTINCT ON (m.ticket_id)
           m.ticket_id,
           ts_rank(m.search_vector, search.query) AS rank,
           coalesce(m.event #>> '{{envelope,subject}}', '') AS message_subject,
           left(coalesce(m.event ->> 'text', ''), %(text_chars)s) AS message_text
    FROM messages AS m, search
    WHERE m.search_vector @@ search.query{tenant_filter}
    ORDER BY m.ticket_id, rank DESC, m.sent_at, m.message_id
),
top AS (
    SELECT t.ticket_id, t.key, t.tenant, t.subject, best.rank,
           best.message_subject, best.message_text
    FROM best JOIN tickets AS t USING (ticket_id)
    ORDER BY best.rank DESC, t.tenant, length(t.key), t.key
    LIMIT %(limit)s
)
SELECT top.ticket_id, top.key, top.tenant, top.subject, top.rank,
       ts_headline('simple', top.message_subject || E'\\n' || top.message_text,
                   search.query, %(options)s)
FROM top, search
ORDER BY top.rank DESC, top.tenant, length(top.key), top.key
"""


# -- schema steps ----------------------------------------------------------------


def _create_schema_version(cursor: psycopg.Cursor[Any], schema: str) -> None:
    """Create the schema and its `schema_version` table where missing.

    Checked before creating, so a user without CREATE rights can still open a
    store that exists.
    """
    exists = cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if not exists:
        cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    table = cursor.execute(
        "SELECT to_regclass(format('%%I.schema_version', %s::text))", (schema,)
    ).fetchone()
    if table is None or table[0] is None:
        cursor.execute(
            "CREATE TABLE schema_version ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )


def _current_version(cursor: psycopg.Cursor[Any]) -> int:
    row = cursor.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


# -- batch write steps ---------------------------------------------------------


def _insert_dead_letter(cursor: psycopg.Cursor[Any], letter: DeadLetter, now: str) -> None:
    # PostgreSQL text cannot hold NUL characters; a header block read from junk may.
    cursor.execute(
        "INSERT INTO dead_letters (dead_letter_id, source, reason, detail, headers, raw, created_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (dead_letter_id) DO NOTHING",
        (
            dead_letter_id(letter),
            _without_nul(letter.source),
            _without_nul(letter.reason),
            _without_nul(letter.detail),
            _without_nul(letter.headers),
            letter.raw,
            now,
        ),
    )


def _write_message(
    cursor: psycopg.Cursor[Any], outcome: Outcome, now: str, sinks: tuple[str, ...]
) -> str:
    """Write one threaded or created message; return the ticket id to refresh.

    Each sink in `sinks` gets a pending delivery of the message, unless it
    already has one (a message written again after a crash is not sent twice).
    """
    copy = outcome.copy
    assert copy is not None and outcome.ticket_id is not None and outcome.tenant is not None
    event = copy.event
    envelope = event["envelope"]
    tenant = outcome.tenant
    ticket_id = outcome.ticket_id

    for old_id in outcome.merged_from:
        _merge_ticket(cursor, old_id, ticket_id, tenant, now, sinks)
    _ensure_ticket(cursor, ticket_id, tenant, now)
    if sinks:
        cursor.executemany(
            "INSERT INTO deliveries (sink, tenant, item, state, updated_at) "
            "VALUES (%s, %s, %s, 'pending', %s) ON CONFLICT (sink, tenant, item) DO NOTHING",
            [(sink, tenant, outcome.dedupe_key, now) for sink in sinks],
        )

    cursor.execute(
        "INSERT INTO messages (tenant, dedupe_key, ticket_id, message_id, event_id, sender, "
        "received_at, sent_at, automatic, outcome, source, mailbox, event, enrichment, "
        "review_reasons) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (tenant, dedupe_key) DO NOTHING",
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
            _jsonb(event),
            _jsonb(copy.enrichment),
            _jsonb(list(copy.review_reasons)),
        ),
    )

    cursor.executemany(
        "INSERT INTO thread_ids (tenant, message_id, ticket_id) VALUES (%s, %s, %s) "
        "ON CONFLICT (tenant, message_id) DO NOTHING",
        [(tenant, message_id, ticket_id) for message_id in [envelope["message_id"], *thread_parents(event)]],
    )
    if outcome.external_refs:
        cursor.executemany(
            "INSERT INTO ticket_refs (tenant, ref, ticket_id, kind) VALUES (%s, %s, %s, 'external') "
            "ON CONFLICT (tenant, ref) DO NOTHING",
            [(tenant, ref, ticket_id) for ref in outcome.external_refs],
        )

    normalized = normalize_subject(envelope["subject"])
    if normalized and envelope["from"]:
        cursor.execute(
            "INSERT INTO ticket_subjects (tenant, requester, subject, ticket_id, last_seen) "
            "VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (tenant, requester, subject) DO UPDATE SET "
            "ticket_id = excluded.ticket_id, last_seen = excluded.last_seen "
            "WHERE excluded.last_seen >= ticket_subjects.last_seen",
            (tenant, envelope["from"], normalized, ticket_id, event["received_at"]),
        )
    return ticket_id


# Point a ref at a ticket, replacing whatever it pointed at (SQLite's INSERT OR REPLACE).
_PUT_REF = (
    "INSERT INTO ticket_refs (tenant, ref, ticket_id, kind) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (tenant, ref) DO UPDATE SET ticket_id = excluded.ticket_id, kind = excluded.kind"
)


def _put_ref(cursor: psycopg.Cursor[Any], tenant: str, ref: str, ticket_id: str, kind: str) -> None:
    cursor.execute(_PUT_REF, (tenant, ref, ticket_id, kind))


def _token_ref(ticket_id: str) -> str:
    return f"token:{ticket_id.removeprefix('tkt_')[:12]}"


def _ensure_ticket(cursor: psycopg.Cursor[Any], ticket_id: str, tenant: str, now: str) -> None:
    """Create a ticket row if missing, with its reply-token ref.

    The human key is assigned at the end of the batch. This is one statement,
    so the pipeline need not wait for its answer.
    """
    cursor.execute(
        "WITH created AS ("
        "  INSERT INTO tickets (ticket_id, tenant, key, created_at, updated_at) "
        "  VALUES (%(ticket_id)s, %(tenant)s, %(pending_key)s, %(now)s, %(now)s) "
        "  ON CONFLICT (ticket_id) DO NOTHING RETURNING ticket_id, tenant) "
        "INSERT INTO ticket_refs (tenant, ref, ticket_id, kind) "
        "SELECT tenant, %(token)s, ticket_id, 'token' FROM created "
        "ON CONFLICT (tenant, ref) DO UPDATE SET ticket_id = excluded.ticket_id, kind = excluded.kind",
        {
            "ticket_id": ticket_id,
            "tenant": tenant,
            "pending_key": _PENDING_KEY + ticket_id,
            "now": now,
            "token": _token_ref(ticket_id),
        },
    )


def _assign_pending_keys(cursor: psycopg.Cursor[Any]) -> None:
    """Number the batch's new tickets per tenant in the order their first messages were sent.

    Each tenant's counter is bumped once by the batch's count, tenants in name
    order, so concurrent batches lock counter rows in one order and cannot
    deadlock on them. Only this transaction's tickets have pending keys: other
    writers' uncommitted rows are not visible, and committed rows have keys.
    """
    pending = _read(cursor,
        "SELECT ticket_id, tenant FROM tickets WHERE key LIKE '~%' "
        "ORDER BY first_sent_at, first_message_id"
    ).fetchall()
    by_tenant: dict[str, list[str]] = {}
    for ticket_id, tenant in pending:
        by_tenant.setdefault(tenant, []).append(ticket_id)

    for tenant in sorted(by_tenant):
        ticket_ids = by_tenant[tenant]
        row = _read(cursor,
            "INSERT INTO key_counters (tenant, last_number) VALUES (%s, %s) ON CONFLICT (tenant) "
            "DO UPDATE SET last_number = key_counters.last_number + excluded.last_number "
            "RETURNING last_number",
            (tenant, len(ticket_ids)),
        ).fetchone()
        assert row is not None
        first_number = row[0] - len(ticket_ids) + 1
        keys = [
            (f"{key_prefix(tenant)}-{first_number + offset}", ticket_id)
            for offset, ticket_id in enumerate(ticket_ids)
        ]
        cursor.executemany("UPDATE tickets SET key = %s WHERE ticket_id = %s", keys)
        cursor.executemany(_PUT_REF, [(tenant, key, ticket_id, "key") for key, ticket_id in keys])


def _merge_ticket(
    cursor: psycopg.Cursor[Any], old_id: str, new_id: str, tenant: str, now: str,
    sinks: tuple[str, ...],
) -> None:
    """Fold ticket `old_id` into `new_id`: messages, ids, refs and the human key move over.

    When `new_id` does not exist yet (the ticket was renamed because an earlier
    message joined), it takes over the old ticket's key and external ids.
    Otherwise each sink gets a pending "merge:<old id>" delivery, so the
    external tickets are linked.
    """
    old_id = _resolve_alias(cursor, old_id)
    if old_id == new_id:
        return
    old = _read(cursor, "SELECT key, external FROM tickets WHERE ticket_id = %s", (old_id,)).fetchone()
    if old is None:
        return

    target = _read(cursor, "SELECT 1 FROM tickets WHERE ticket_id = %s", (new_id,))
    target_exists = target.fetchone() is not None
    if target_exists:
        cursor.execute("DELETE FROM tickets WHERE ticket_id = %s", (old_id,))
        if sinks:
            cursor.executemany(
                "INSERT INTO deliveries (sink, tenant, item, state, detail, updated_at) "
                "VALUES (%s, %s, %s, 'pending', %s, %s) ON CONFLICT (sink, tenant, item) DO NOTHING",
                [(sink, tenant, f"merge:{old_id}", merge_detail(old_id, old[0], old[1]), now)
                 for sink in sinks],
            )
    else:
        cursor.execute(
            "UPDATE tickets SET ticket_id = %s, updated_at = %s WHERE ticket_id = %s",
            (new_id, now, old_id),
        )

    for table in ("messages", "thread_ids", "ticket_refs", "ticket_subjects"):
        update = sql.SQL("UPDATE {} SET ticket_id = %s WHERE ticket_id = %s")
        cursor.execute(update.format(sql.Identifier(table)), (new_id, old_id))
    if not target_exists:
        _put_ref(cursor, tenant, _token_ref(new_id), new_id, "token")
    cursor.execute(
        "INSERT INTO ticket_aliases (old_id, new_id) VALUES (%s, %s) "
        "ON CONFLICT (old_id) DO UPDATE SET new_id = excluded.new_id",
        (old_id, new_id),
    )
    cursor.execute("UPDATE ticket_aliases SET new_id = %s WHERE new_id = %s", (new_id, old_id))
    log.info("ticket %s (key %s) merged into %s", old_id, old[0], new_id)


def _dialect(query: str) -> str:
    """Turn a statement shared with the SQLite store ("?" placeholders) into psycopg's."""
    return query.replace("%", "%%").replace("?", "%s")


def _resolve_alias(cursor: psycopg.Cursor[Any], ticket_id: str) -> str:
    for _ in range(32):
        alias = _read(cursor, "SELECT new_id FROM ticket_aliases WHERE old_id = %s", (ticket_id,))
        row = alias.fetchone()
        if row is None:
            return ticket_id
        ticket_id = row[0]
    return ticket_id


def _refresh_tickets(cursor: psycopg.Cursor[Any], ticket_ids: set[str], now: str) -> None:
    """Derive the fields of tickets from their messages, earliest first.

    Tickets are updated in id order, so two batches that touch the same
    tickets lock them in the same order.
    """
    if not ticket_ids:
        return
    rows = _read(cursor,
        "SELECT ticket_id, sender, sent_at, message_id, automatic, mailbox, "
        "event #>> '{envelope,subject}', enrichment, review_reasons FROM messages "
        "WHERE ticket_id = ANY(%s) ORDER BY ticket_id, sent_at, message_id",
        (sorted(ticket_ids),),
    ).fetchall()
    messages_of: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        messages_of.setdefault(row[0], []).append(row[1:])

    updates = []
    for ticket_id, messages in sorted(messages_of.items()):
        fields = derived_ticket_fields(ticket_id, messages)
        fields["participants"] = Jsonb(fields["participants"])
        fields["review_reasons"] = Jsonb(fields["review_reasons"])
        updates.append({**fields, "now": now, "ticket_id": ticket_id})
    cursor.executemany(
        "UPDATE tickets SET subject = %(subject)s, requester = %(requester)s, "
        "participants = %(participants)s, priority = %(priority)s, component = %(component)s, "
        "environment = %(environment)s, status = %(status)s, review_reasons = %(review_reasons)s, "
        "reply_address = %(reply_address)s, first_sent_at = %(first_sent_at)s, "
        "first_message_id = %(first_message_id)s, updated_at = %(now)s WHERE ticket_id = %(ticket_id)s",
        updates,
    )


# -- reading -----------------------------------------------------------------------


def _ticket_document(
    row: tuple[Any, ...], messages: list[tuple[Any, ...]], refs: list[str]
) -> dict[str, Any]:
    (ticket_id, key, tenant, subject, requester, participants, priority, component,
     environment, tier, status, review_reasons, ticket_reply_address, external) = row
    return {
        "ticket_id": ticket_id,
        "key": key,
        "tenant": tenant,
        "subject": subject,
        "requester": requester,
        "participants": participants,
        "priority": priority,
        "component": component,
        "environment": environment,
        "tier": tier,
        "status": status,
        "review_reasons": review_reasons,
        "reply_address": ticket_reply_address,
        "messages": _message_documents(messages),
        "external": external,
        "external_refs": sorted({ref.partition("@")[0] for ref in refs}),
    }


# -- values -------------------------------------------------------------------------


def _jsonb(value: Any) -> Jsonb:
    """Wrap a value for a jsonb column.

    jsonb rejects what Python's JSON allows but JSON does not: NaN and the
    infinities (stored as null) and NUL characters in strings (removed).
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_json_safe(value), ensure_ascii=False)
    if "\\u0000" in text:
        text = json.dumps(_json_safe(value), ensure_ascii=False)
    return Jsonb(value, dumps=lambda _: text)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return _without_nul(value)
    if isinstance(value, dict):
        return {_without_nul(str(key)): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _read(cursor: psycopg.Cursor[Any], query: str, params: Any = None) -> psycopg.Cursor[Any]:
    """Run a statement whose rows the batch needs, on a cursor of its own.

    In pipeline mode a cursor that has queued statements may hand back the
    result of an earlier one, so reads never share the batch's cursor.
    """
    return cursor.connection.execute(query, params)


def _without_nul(text: str) -> str:
    return text.replace("\x00", "")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
