"""Throwaway schemas in the machine's PostgreSQL, for tests of the PostgreSQL store.

Tests reach the server at `TICKETFLOW_TEST_POSTGRES_URL` (default: the local
server's `test` database as user `postgres`). Each schema gets a random name and
is dropped with everything in it when the test ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL = os.environ.get("TICKETFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def store_url(schema: str) -> str:
    """Return the store URL of a schema in the test database."""
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}schema={schema}"


def require_postgres() -> None:
    """Fail the test, saying what to start, when the test server accepts no connection."""
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.fail(
            f"cannot connect to PostgreSQL at {POSTGRES_URL} ({exc}); start the server or set "
            "TICKETFLOW_TEST_POSTGRES_URL"
        )


@contextmanager
def temporary_schemas() -> Iterator[Callable[[], str]]:
    """Yield a function that names a fresh schema; every schema it named is dropped at the end.

    The schema itself is created by the store that opens it first.
    """
    require_postgres()
    names: list[str] = []

    def fresh_schema() -> str:
        name = f"tftest_{uuid.uuid4().hex[:12]}"
        names.append(name)
        return name

    try:
        yield fresh_schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
            for name in names:
                db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def execute_in_schema(
    schema: str, statement: str, params: tuple[object, ...] = ()
) -> list[tuple[object, ...]]:
    """Run one statement in a schema behind the store's back; return its rows, if any."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        cursor = db.execute(statement, params)
        return cursor.fetchall() if cursor.description else []
