"""One process of an end-to-end benchmark run: the main job from Kafka, every write timed.

Started by `benchmarks/e2e.py`, once per process of the run. It runs `run_flow`
as `ticketflow run` does, with two additions that only measure:

- the store is wrapped in `TimedStore`, which appends a line per outcome with
  the time its batch was written to `--samples`;
- the source touches ``READY_DIR/<partition>.ready`` once each Kafka partition
  is open, so the harness starts the load only when the flow can read it.

It stops at the end of the topic with `--drain`, else at SIGTERM, and prints the
run summary as JSON on stdout.

    python benchmarks/e2e_worker.py --input kafka://127.0.0.1:9092/mail \
        --store noop --samples out.csv --ready-dir ready/ [--drain] [--config bench.toml] \
        [--process-id 0 --addresses "127.0.0.1:2101;127.0.0.1:2102"]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from common import NoOpStore, TimedStore

from ticketflow.config import load_settings
from ticketflow.connectors.store import open_store
from ticketflow.model import RawMessage
from ticketflow.runner import build_source, run_flow


class ReadySource(FixedPartitionedSource[RawMessage, Any]):
    """Wraps a source and marks each partition ready in a folder once it is open."""

    def __init__(self, inner: FixedPartitionedSource[RawMessage, Any], ready_dir: Path) -> None:
        self._inner = inner
        self._ready_dir = ready_dir

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> StatefulSourcePartition[RawMessage, Any]:
        part = self._inner.build_part(step_id, for_part, resume_state)
        marker = "".join(char if char.isalnum() else "_" for char in for_part)
        (self._ready_dir / f"{marker}.ready").touch()
        return part


def main(argv: list[str] | None = None) -> int:
    """Run one process of the benchmark; print its summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--store", required=True, help="noop, sqlite:///PATH or postgresql://…")
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--ready-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--addresses")
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    store = NoOpStore() if args.store == "noop" else open_store(args.store)
    timed = TimedStore(store, args.samples)
    source = ReadySource(
        build_source(args.input, settings, drain=args.drain, batch_size=args.batch_size),
        args.ready_dir,
    )
    try:
        summary = run_flow(
            args.input,
            settings,
            timed,
            source=source,
            drain=args.drain,
            process_id=args.process_id,
            addresses=args.addresses.split(";") if args.addresses else None,
        )
    finally:
        timed.close()
    print(json.dumps(summary.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
