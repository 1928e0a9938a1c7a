"""Pytest plugin: a Tansu broker for the session and fresh topics on it.

Register it with ``pytest_plugins = ["tests.conftest_kafka"]`` in tests/conftest.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from ticketflow.connectors.tansu import TansuBroker

_topic_numbers = itertools.count()


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuBroker]:
    """Return a Tansu broker on a free loopback port, shared by the whole session."""
    with TansuBroker() as broker:
        yield broker


@pytest.fixture
def new_topic(tansu: TansuBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Return a function creating a topic no other test uses; it returns the topic's name."""

    def create(partitions: int = 1) -> str:
        name = f"{request.node.name[:60]}-{next(_topic_numbers)}"
        name = "".join(char if char.isalnum() or char in "._-" else "-" for char in name)
        tansu.create_topic(name, partitions)
        return name

    return create
