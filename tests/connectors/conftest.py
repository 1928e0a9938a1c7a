"""Connector fixtures: stores of both kinds (each test on a fresh store) and a clamd daemon."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.connectors.clamd_daemon import ClamdDaemon, clamd_binary
from tests.connectors.postgres_schemas import execute_in_schema, store_url, temporary_schemas
from ticketflow.connectors import store as sqlite_module
from ticketflow.connectors.store import TicketStore, open_store


@dataclass
class StoreBackend:
    """One kind of store: fresh store URLs, and a way to edit a store behind its back."""

    name: str
    migrations: tuple[str, ...]
    fresh_url: Callable[[], str]
    execute: Callable[[str, str, tuple[Any, ...]], Any]
    opened: list[TicketStore] = field(default_factory=list)

    def open(self, url: str | None = None) -> TicketStore:
        """Open a store (a fresh one unless a URL is given); it is closed after the test."""
        store = open_store(url or self.fresh_url())
        self.opened.append(store)
        return store

    def add_schema_version(self, url: str, version: int) -> None:
        """Record a schema version in the store, as a newer ticketflow would."""
        self.execute(url, f"INSERT INTO schema_version (version) VALUES ({int(version)})", ())

    def close_all(self) -> None:
        for store in self.opened:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - a test may have closed it already
                pass


def _sqlite_backend(folder: Path) -> StoreBackend:
    numbers = itertools.count(1)

    def execute(url: str, statement: str, params: tuple[Any, ...]) -> None:
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute(statement, params)

    return StoreBackend(
        name="sqlite",
        migrations=sqlite_module.MIGRATIONS,
        fresh_url=lambda: f"sqlite:///{folder / f'store-{next(numbers)}.db'}",
        execute=execute,
    )


def _postgres_backend(fresh_schema: Callable[[], str]) -> StoreBackend:
    from ticketflow.connectors import postgres_store

    def execute(url: str, statement: str, params: tuple[Any, ...]) -> None:
        schema = url.rpartition("schema=")[2]
        execute_in_schema(schema, statement, params)

    return StoreBackend(
        name="postgres",
        migrations=postgres_store.MIGRATIONS,
        fresh_url=lambda: store_url(fresh_schema()),
        execute=execute,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    """Each kind of store in turn; PostgreSQL stores live in schemas dropped afterwards."""
    if request.param == "sqlite":
        chosen = _sqlite_backend(tmp_path)
        yield chosen
        chosen.close_all()
        return
    with temporary_schemas() as fresh_schema:
        chosen = _postgres_backend(fresh_schema)
        yield chosen
        chosen.close_all()


@pytest.fixture
def store(backend: StoreBackend) -> TicketStore:
    """Open a fresh, empty store of each kind."""
    return backend.open()


@pytest.fixture
def postgres_schemas() -> Iterator[Callable[[], str]]:
    """Name fresh PostgreSQL schemas; all are dropped after the test."""
    with temporary_schemas() as fresh_schema:
        yield fresh_schema


@pytest.fixture(scope="session")
def clamd() -> Iterator[ClamdDaemon]:
    """Run one clamd with the test signatures on a loopback port, or skip without clamd."""
    if clamd_binary() is None:
        pytest.skip("clamd not installed: apt-get install clamav-daemon")
    with ClamdDaemon() as daemon:
        yield daemon
