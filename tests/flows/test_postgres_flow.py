"""The sample corpus, run through the command line, gives the same tickets in PostgreSQL and SQLite."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.connectors.postgres_schemas import store_url, temporary_schemas
from ticketflow.cli import main

SAMPLE = Path(__file__).resolve().parents[2] / "corpus" / "sample"


def run_and_list(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, int], list[dict]]:
    """Run the sample corpus into a store; return the run summary and `tickets --json`."""
    status = main(["run", "--input", str(SAMPLE), "--config", str(SAMPLE / "ticketflow.toml"),
                   "--store", url, "--json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main(["tickets", "--store", url, "--json"]) == 0
    return summary, json.loads(capsys.readouterr().out)


def without_keys(tickets: list[dict]) -> list[dict]:
    """Drop the human key, whose numbering depends on how the engine batched the run."""
    return sorted(({k: v for k, v in ticket.items() if k != "key"} for ticket in tickets),
                  key=lambda ticket: ticket["ticket_id"])


@pytest.fixture
def postgres_url():
    with temporary_schemas() as fresh_schema:
        yield store_url(fresh_schema())


def test_postgres_run_matches_sqlite_run(tmp_path, postgres_url, capsys):
    sqlite_summary, sqlite_tickets = run_and_list(f"sqlite:///{tmp_path / 'tickets.db'}", capsys)
    postgres_summary, postgres_tickets = run_and_list(postgres_url, capsys)

    assert postgres_summary == sqlite_summary
    assert len(postgres_tickets) == sqlite_summary["tickets_created"]
    assert without_keys(postgres_tickets) == without_keys(sqlite_tickets)
    keys = [ticket["key"] for ticket in postgres_tickets]
    assert len(set(keys)) == len(keys)


def test_postgres_rerun_changes_nothing(postgres_url, capsys):
    _, first = run_and_list(postgres_url, capsys)
    summary, again = run_and_list(postgres_url, capsys)
    assert again == first
    assert summary["tickets_created"] == len(first)


def test_unreachable_store_is_cli_error(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = main(["tickets", "--store", f"postgresql://ops:hunter2@127.0.0.1:{port}/tickets"])
    error = capsys.readouterr().err
    assert status == 2
    assert f"postgresql://ops:***@127.0.0.1:{port}/tickets" in error
    assert "hunter2" not in error
