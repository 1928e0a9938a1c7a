"""Run the main job from Kafka with one and with two processes on the same topic; compare.

Usage: python benchmarks/kafka_flow.py [--threads N] [--repeat R]

A Tansu broker is started on a free loopback port; a 3-partition topic is
loaded with N generated threads (three messages each, plus five redeliveries)
before the runs. Each run drains the topic into a fresh SQLite store: one
process with its state in memory, one with its state in the machine's Redis,
and two processes sharing state in Redis. It prints, per mode, the
summary counts, the number of stored tickets, and messages per second (whole
command, process start-up included), with the ratio against one process
measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mailgen import thread_corpus  # noqa: E402
from ticketflow.connectors.kafka import produce_records  # noqa: E402
from ticketflow.connectors.tansu import TansuBroker  # noqa: E402


def run_once(url: str, processes: int, redis: bool, workdir: Path) -> tuple[dict, int, float]:
    store = workdir / f"{uuid.uuid4().hex}.db"
    config = workdir / "bench.toml"
    state = f'[state]\nredis_url = "redis://127.0.0.1:6379/0"\nnamespace = "bench-{uuid.uuid4().hex}"\n'
    config.write_text(state if redis else "")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "ticketflow.cli", "run", "--input", url, "--drain", "--json",
         "--processes", str(processes), "--config", str(config), "--store", f"sqlite:///{store}"],
        capture_output=True, text=True, check=True,
    )
    elapsed = time.perf_counter() - started
    with sqlite3.connect(store) as db:
        tickets = db.execute("SELECT count(*) FROM tickets").fetchone()[0]
    return json.loads(result.stdout.strip().splitlines()[-1]), tickets, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    corpus = thread_corpus(args.threads)
    with TansuBroker() as broker, tempfile.TemporaryDirectory() as scratch:
        broker.create_topic("mail", 3)
        broker.create_topic("mail.dlq", 1)
        produce_records(broker.bootstrap, "mail", corpus, partitions=3)
        url = f"kafka://{broker.bootstrap}/mail"

        baseline = 0.0
        print(f"{len(corpus)} messages on 3 partitions, best of {args.repeat}\n")
        print("| processes | state | read | tickets_created | stored tickets | messages/s | vs 1 process in memory |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for processes, redis in ((1, False), (1, True), (2, True)):
            best = None
            for _ in range(args.repeat):
                summary, tickets, elapsed = run_once(url, processes, redis, Path(scratch))
                if best is None or elapsed < best[2]:
                    best = (summary, tickets, elapsed)
            summary, tickets, elapsed = best
            rate = summary["read"] / elapsed
            baseline = baseline or rate
            print(f"| {processes} | {'Redis' if redis else 'memory'} | {summary['read']} "
                  f"| {summary['tickets_created']} | {tickets} | {rate:,.0f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
