"""Measure resident memory over a long in-process run, to see whether the flow's state is bounded.

A generator source makes small messages on the fly (threads of a new message and
two replies by In-Reply-To, every 50th message delivered twice), one second of
event time apart, so the 24 h dedupe window contains 86,400 deliveries and is full
well before 100,000 messages. The flow runs in this process into a no-op sink, and
the sink samples the resident set size (RSS) every 10,000 outcomes.

One million messages one second apart span only 11.6 days of event time, so the
default `[threading] index_ttl` of 30 days would never expire an entry of the
in-memory thread index here. The run therefore sets `index_ttl` to the 24 h of
the dedupe window (`WINDOW_SECONDS`): both are full before 100,000 messages, and
flat memory from there on shows that the state is bounded by event time.

With `--trace N`, a second, shorter run of N messages under `tracemalloc`
compares the heap at N/2 and at N and lists the source lines whose allocations
grew most: where the memory goes. That run uses a 1 h dedupe window and index
TTL, full after 3,600 messages, so what still grows in its second half is
neither.

    .venv/bin/python benchmarks/memory.py [--messages 1000000] [--trace 20000]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from common import RESULTS, NoOpStore, machine, rss_bytes, say, write_result

from ticketflow.config import Settings
from ticketflow.model import RawMessage
from ticketflow.runner import run_flow

START = datetime(2026, 3, 2, tzinfo=UTC)
TENANTS = ("acme", "globex", "initech")
SAMPLE_EVERY = 10_000
WINDOW_SECONDS = 24 * 3600.0
TRACE_WINDOW_SECONDS = 3600.0


def windowed_settings(seconds: float) -> Settings:
    """Return the default settings with both the dedupe window and the index TTL set to `seconds`."""
    defaults = Settings()
    return dataclasses.replace(
        defaults,
        dedupe=dataclasses.replace(defaults.dedupe, window=seconds),
        threading=dataclasses.replace(defaults.threading, index_ttl=seconds),
    )


def small_message(number: int) -> bytes:
    """Return message `number`: a thread's first message or one of its two replies (~600 bytes)."""
    thread, position = divmod(number, 3)
    moment = format_datetime(START + timedelta(seconds=number))
    domain = f"customer{thread % 997}.example.com"
    lines = [
        f"Received: from mx1.example.net by mx.support.example.com; {moment}",
        f"From: User {thread} <user{thread}@{domain}>",
        f"To: {TENANTS[thread % 3]}-support@support.example.com",
        f"Subject: {'Re: ' if position else ''}Export {thread} stuck",
        f"Date: {moment}",
        f"Message-ID: <m{number}@{domain}>",
    ]
    if position:
        lines.append(f"In-Reply-To: <m{number - 1}@{domain}>")
    lines += [
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"Message {number}: the nightly export of job {thread} stays at 99 percent.",
        "",
    ]
    return "\r\n".join(lines).encode()


def redelivered(raw: bytes) -> bytes:
    """Return the same message as delivered again through another relay."""
    return raw.replace(b"from mx1.example.net", b"from mx2.example.net", 1)


class _Generated(StatefulSourcePartition[RawMessage, int]):
    def __init__(self, total: int, start: int) -> None:
        self._total = total
        self._position = start

    def next_batch(self) -> list[RawMessage]:
        if self._position >= self._total:
            raise StopIteration()
        now = datetime.now(UTC)
        batch = []
        for number in range(self._position, min(self._total, self._position + 500)):
            # Every 50th record delivers the message before it again.
            if number % 50 == 49:
                raw = redelivered(small_message(number - 1 - (number - 1) // 50))
            else:
                raw = small_message(number - number // 50)
            batch.append(RawMessage(f"generated#{number}", raw, now))
        self._position += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._position


class GeneratedSource(FixedPartitionedSource[RawMessage, int]):
    """`total` small messages made on demand, never held all at once."""

    def __init__(self, total: int) -> None:
        self._total = total

    def list_parts(self) -> list[str]:
        return ["generated"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Generated:
        return _Generated(self._total, resume_state or 0)


class SamplingSink(NoOpStore):
    """A no-op sink that samples RSS every `SAMPLE_EVERY` outcomes."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()
        self.samples: list[dict[str, float]] = []

    def write(self, outcomes: Any) -> None:
        before = self.written
        super().write(outcomes)
        if self.written // SAMPLE_EVERY != before // SAMPLE_EVERY:
            elapsed = time.perf_counter() - self.started
            self.samples.append(
                {
                    "messages": self.written,
                    "rss_mb": rss_bytes() / 1e6,
                    "seconds": elapsed,
                    "rate": self.written / elapsed,
                }
            )
            if len(self.samples) % 10 == 0:
                say(f"memory: {self.written:,} messages, RSS {self.samples[-1]['rss_mb']:.0f} MB")


def measure(total: int) -> dict[str, Any]:
    """Run `total` generated messages through the flow; return the RSS samples and the verdict."""
    sink = SamplingSink()
    settings = windowed_settings(WINDOW_SECONDS)
    summary = run_flow("memory", settings, sink, source=GeneratedSource(total))
    samples = sink.samples
    first = next((sample for sample in samples if sample["messages"] >= 100_000), samples[0])
    last = samples[-1]
    return {
        "messages": total,
        "summary": summary.as_dict(),
        "samples": samples,
        "rss_at_start_mb": first["rss_mb"],
        "from_messages": first["messages"],
        "rss_at_end_mb": last["rss_mb"],
        "growth": last["rss_mb"] / first["rss_mb"] - 1,
        "rate": last["rate"],
        "dedupe_window_seconds": WINDOW_SECONDS,
        "index_ttl_seconds": WINDOW_SECONDS,
    }


def trace_growth(total: int, top: int = 12) -> list[dict[str, Any]]:
    """Trace `total` messages with tracemalloc; return the lines that grew most late in the run."""
    half: list[Any] = []

    class Snapshotting(NoOpStore):
        def write(self, outcomes: Any) -> None:
            before = self.written
            super().write(outcomes)
            if before < total // 2 <= self.written:
                half.append(tracemalloc.take_snapshot())

    tracemalloc.start()
    try:
        run_flow(
            "memory-trace",
            windowed_settings(TRACE_WINDOW_SECONDS),
            Snapshotting(),
            source=GeneratedSource(total),
        )
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = end.compare_to(half[0], "lineno")
    return [
        {
            "where": f"{Path(stat.traceback[0].filename).name}:{stat.traceback[0].lineno}",
            "file": stat.traceback[0].filename,
            "growth_kb": stat.size_diff / 1024,
            "per_message_bytes": stat.size_diff / (total - total // 2),
            "blocks": stat.count_diff,
        }
        for stat in stats[:top]
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the memory benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument(
        "--trace", type=int, default=0, help="messages of the tracemalloc run (0: none)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    say(f"memory: {args.messages:,} small messages in process")
    result = measure(args.messages)
    say(
        f"memory: RSS {result['rss_at_start_mb']:.0f} MB at {result['from_messages']:,} → "
        f"{result['rss_at_end_mb']:.0f} MB at {args.messages:,} ({result['growth']:+.0%})"
    )
    if args.trace:
        say(f"memory: tracing allocations over {args.trace:,} messages")
        result["growth_by_line"] = trace_growth(args.trace)
    result["machine"] = machine()
    write_result(args.results, "memory", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
