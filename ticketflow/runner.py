"""Run the main job on a source and return its summary; used by the CLI and the tests."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bytewax._bytewax import cli_main

from ticketflow.config import Settings
from ticketflow.connectors.corpus import CorpusSource
from ticketflow.connectors.store import SqliteStore, open_store
from ticketflow.flows.main import FlowContext, build_flow
from ticketflow.outcome import RunSummary

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """An input the run cannot read; the message names it and says what is accepted."""


def run_corpus(
    input_path: str | Path,
    settings: Settings,
    store: SqliteStore | str,
    *,
    workers: int = 1,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RunSummary:
    """Run the main job over a corpus (file, folder, mbox or Maildir) until it is drained."""
    if str(input_path).startswith("kafka://"):
        raise SourceError(
            f"input {input_path}: the Kafka source is not built yet; "
            "give a file, a folder of messages, an mbox or a Maildir"
        )

    owns_store = isinstance(store, str)
    ticket_store = open_store(store) if isinstance(store, str) else store
    try:
        context = FlowContext(settings=settings, store=ticket_store, clock=clock)
        flow = build_flow(CorpusSource(Path(input_path)), context)
        log.info("run started: input=%s workers=%d", input_path, workers)
        cli_main(flow, workers_per_process=workers)
        log.info("run finished: %s", context.summary.as_dict())
        return context.summary
    finally:
        if owns_store:
            ticket_store.close()
