"""Fixtures of the stage micro-benchmarks: one synthetic corpus, taken apart stage by stage.

Each benchmark runs one stage over the same `STAGE_MESSAGES` messages per
round, so the report divides a round's time by that count to get the cost per
message. `TICKETFLOW_BENCH_QUICK=1` uses fewer messages, for `make bench-quick`.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ticketflow.config import Settings  # noqa: E402
from ticketflow.flows.main import tenant_copies  # noqa: E402
from ticketflow.operators.dedupe import dedupe_key  # noqa: E402
from ticketflow.operators.parse import parse_message  # noqa: E402
from ticketflow.operators.thread import ThreadIndex  # noqa: E402
from ticketflow.synth import iter_messages  # noqa: E402

QUICK = os.environ.get("TICKETFLOW_BENCH_QUICK") == "1"
STAGE_MESSAGES = 200 if QUICK else 1000
INGESTED = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture(scope="session")
def settings():
    return Settings()


@pytest.fixture(scope="session")
def raws():
    """Return the synthetic messages of every stage benchmark, in arrival order."""
    return [message.raw for message in iter_messages(STAGE_MESSAGES, seed=7)]


@pytest.fixture(scope="session")
def events(raws):
    return [parse_message(raw, f"synth#{number}", INGESTED) for number, raw in enumerate(raws)]


@pytest.fixture(scope="session")
def copies(events, settings):
    return [copy for event in events for copy in tenant_copies(event, settings)]


@pytest.fixture(scope="session")
def outcomes(copies, settings):
    """Return the thread join's decision for every copy: what the store writes."""
    index = ThreadIndex(settings)
    decided = []
    for copy in copies:
        outcome = index.decide(copy, dedupe_key(copy.event), allow_open=True)
        if outcome is not None:
            decided.append(outcome)
    return decided
