"""Tests for the Tansu broker helper: start, serve metadata, create topics, stop."""

from __future__ import annotations

import os
import socket

import pytest

from ticketflow.connectors.kafka import topic_partitions
from ticketflow.connectors.tansu import LOOPBACK, TansuBroker, TansuError


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_broker_serves_created_topic() -> None:
    with TansuBroker() as broker:
        broker.create_topic("tickets", partitions=3)

        assert topic_partitions(broker.bootstrap, "tickets") == [0, 1, 2]
        assert broker.bootstrap.startswith(f"{LOOPBACK}:")


def test_broker_process_ends_on_exit() -> None:
    with TansuBroker() as broker:
        pid = broker.pid
        assert pid is not None
        assert process_exists(pid)

    assert broker.pid is None
    assert not process_exists(pid)


def test_bootstrap_before_start_raises() -> None:
    with pytest.raises(TansuError, match="not running"):
        _ = TansuBroker().bootstrap


def test_create_existing_topic_raises(tansu: TansuBroker) -> None:
    tansu.create_topic("created-twice", partitions=1)

    with pytest.raises(TansuError, match="cannot create topic 'created-twice'.*already exists"):
        tansu.create_topic("created-twice", partitions=1)


def test_taken_port_reports_broker_output() -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port = holder.getsockname()[1]

        with pytest.raises(TansuError, match=f"exited during startup on port {port}") as raised:
            TansuBroker(port=port, startup_timeout=5).start()

    assert "Address in use" in str(raised.value)
