"""End to end through Kafka (Tansu): maximum throughput, then latency at several offered loads.

Each setup is a number of processes, where the state lives (memory, or Redis
for several processes) and the sink (the SQLite store, PostgreSQL, or a no-op
sink). For every setup:

1. **Drain**: a 3-partition topic is loaded with synthetic mail first, then the
   flow (`e2e_worker.py`, one child process per flow process) reads it to the
   end. Throughput is inputs per second between the first and the last store
   write, which leaves process start-up out. The wall time of the whole run is
   reported too.
2. **Offered load**: the flow runs tailing an empty topic, and the replay tool
   produces to it at a fraction of the drain rate for a fixed time. Throughput
   is the median of the inputs written per second while the load runs. Latency
   is store write time minus the record's ``ticketflow-ingested-at`` stamp, for
   every message that ends on a ticket (created or threaded). Messages the
   corpus sends before their parent wait for it as orphans, so they are
   reported apart and left out of the percentiles.

Results go to ``RESULTS/e2e.json``: per run the counts, throughput, latency
percentiles, per-second series and the latency distribution as quantiles.

    .venv/bin/python benchmarks/e2e.py [--quick] [--results DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from common import RESULTS, machine, percentile, say, write_result

from ticketflow.cluster import free_loopback_ports
from ticketflow.connectors.tansu import TansuBroker
from ticketflow.replay import RatePace, replay
from ticketflow.synth import iter_messages

WORKER = Path(__file__).resolve().parent / "e2e_worker.py"
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
PARTITIONS = 3
# Latency objectives: P99 under 250 ms at half the maximum rate, and 95 % of tickets within 30 s.
TARGET_P99_SECONDS = 0.25
SLO_SECONDS = 30.0
# A held orphan whose parent was cut off by the end of the replayed prefix would
# wait `orphan_wait` (300 s by default), so the benchmark config shortens it.
ORPHAN_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class Setup:
    """One configuration of the flow under test."""

    processes: int
    state: str  # "memory" or "redis"
    store: str  # "sqlite", "postgres" or "noop"
    # True: the consumer's fetch.wait.max.ms is 10 instead of librdkafka's 500.
    short_fetch_wait: bool = False

    @property
    def name(self) -> str:
        plural = "es" if self.processes > 1 else ""
        tuned = ", fetch.wait.max.ms=10" if self.short_fetch_wait else ""
        return f"{self.processes} process{plural}, {self.state} state, {self.store}{tuned}"


@dataclass
class Corpus:
    """Synthetic messages in memory, with the ids of those that arrive before their parent."""

    raws: list[bytes]
    early: set[str]

    @classmethod
    def generate(cls, count: int, seed: int) -> Corpus:
        raws, early = [], set()
        for message in iter_messages(count, seed):
            raws.append(message.raw)
            if message.early:
                early.add(message.message_id)
        return cls(raws, early)


# -- the processes of one run --------------------------------------------------------


class Run:
    """The worker processes of one run and the files they write."""

    def __init__(self, setup: Setup, url: str, workdir: Path, drain: bool) -> None:
        self.setup = setup
        self.folder = workdir / uuid.uuid4().hex[:8]
        self.ready = self.folder / "ready"
        self.ready.mkdir(parents=True)
        self.namespace = f"bench-{uuid.uuid4().hex[:12]}"
        self.schema = f"bench_{uuid.uuid4().hex[:12]}"
        self.config = self.folder / "bench.toml"
        self.config.write_text(self._config_text(), encoding="utf-8")
        self.store_url = {
            "noop": "noop",
            "sqlite": f"sqlite:///{self.folder / 'tickets.db'}",
            "postgres": f"{POSTGRES_URL}?schema={self.schema}",
        }[setup.store]
        self.samples = [self.folder / f"samples-{index}.csv" for index in range(setup.processes)]
        self.started = time.perf_counter()
        self.children = self._start(url, drain)

    def _config_text(self) -> str:
        lines = ["[threading]", f"orphan_wait = {ORPHAN_WAIT_SECONDS}"]
        if self.setup.state == "redis":
            lines += ["[state]", f'redis_url = "{REDIS_URL}"', f'namespace = "{self.namespace}"']
        if self.setup.short_fetch_wait:
            lines += ["[kafka]", '"fetch.wait.max.ms" = 10']
        return "\n".join(lines) + "\n"

    def _start(self, url: str, drain: bool) -> list[subprocess.Popen[str]]:
        processes = self.setup.processes
        addresses = (
            [f"127.0.0.1:{port}" for port in free_loopback_ports(processes)]
            if processes > 1
            else []
        )
        children = []
        for index in range(processes):
            command = [
                sys.executable,
                str(WORKER),
                "--input",
                url,
                "--store",
                self.store_url,
                "--samples",
                str(self.samples[index]),
                "--ready-dir",
                str(self.ready),
                "--config",
                str(self.config),
            ]
            if drain:
                command.append("--drain")
            if addresses:
                command += ["--process-id", str(index), "--addresses", ";".join(addresses)]
            log = (self.folder / f"worker-{index}.log").open("w")
            children.append(
                subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=WORKER.parent
                )
            )
        return children

    def wait_ready(self, partitions: int, timeout: float = 90.0) -> None:
        """Wait until every partition of the topic is open in some process."""
        deadline = time.monotonic() + timeout
        while len(list(self.ready.glob("*.ready"))) < partitions:
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.setup.name}: the flow did not open its partitions in {timeout} s"
                )
            time.sleep(0.05)

    def read_count(self) -> int:
        """Return the inputs written so far (first tenant copies), from the samples files."""
        total = 0
        for path in self.samples:
            if path.exists():
                with path.open(encoding="utf-8") as lines:
                    total += sum(1 for line in lines if line.split(",", 2)[1:2] == ["1"])
        return total

    def wait_written(self, expected: int, timeout: float) -> bool:
        """Wait until `expected` inputs are written; return False on timeout."""
        deadline = time.monotonic() + timeout
        while self.read_count() < expected:
            self._check_alive()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)
        return True

    def finish(self, stop: bool, timeout: float = 120.0) -> float:
        """Stop the workers (SIGTERM) if asked and wait for them; return the run's wall seconds."""
        if stop:
            for child in self.children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        seconds = time.perf_counter() - self.started
        failed = [index for index, child in enumerate(self.children) if child.returncode != 0]
        if failed:
            log = (self.folder / f"worker-{failed[0]}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.setup.name}: worker {failed[0]} failed:\n{log}")
        return seconds

    def _check_alive(self) -> None:
        for index, child in enumerate(self.children):
            if child.poll() is not None and child.returncode != 0:
                log = (self.folder / f"worker-{index}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"{self.setup.name}: worker {index} exited with {child.returncode}:\n{log}"
                )

    def samples_rows(self) -> list[tuple[float, bool, str, str, str]]:
        """Return (written, first_copy, kind, source, message_id) of every outcome written."""
        rows = []
        for path in self.samples:
            if not path.exists():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                written, first, kind, source, message_id = line.split(",", 4)
                rows.append((float(written), first == "1", kind, source, message_id))
        return rows

    def cleanup(self) -> None:
        """Drop what the run left in Redis and PostgreSQL."""
        if self.setup.state == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(f"{self.namespace}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        if self.setup.store == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


# -- the two kinds of run -------------------------------------------------------------


def new_topic(broker: TansuBroker) -> tuple[str, str]:
    """Create a topic and its dead-letter topic; return the topic and its kafka:// URL."""
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(f"{topic}.dlq", 1)
    return topic, f"kafka://{broker.bootstrap}/{topic}"


def drain_run(
    broker: TansuBroker, setup: Setup, corpus: Corpus, count: int, workdir: Path
) -> dict[str, Any]:
    """Load `count` messages, then time the flow reading them to the end of the topic."""
    topic, url = new_topic(broker)
    loaded = replay(iter(corpus.raws[:count]), broker.bootstrap, topic, RatePace(1e9))
    run = Run(setup, url, workdir, drain=True)
    try:
        wall = run.finish(stop=False, timeout=600)
        rows = run.samples_rows()
    finally:
        run.cleanup()
    times = sorted(row[0] for row in rows)
    reads = sum(1 for row in rows if row[1])
    span = times[-1] - times[0] if len(times) > 1 else math.nan
    result = {
        "setup": setup.name,
        "processes": setup.processes,
        "state": setup.state,
        "store": setup.store,
        "messages": loaded.sent,
        "read": reads,
        "outcomes": len(rows),
        "kinds": dict(Counter(row[2] for row in rows)),
        "wall_seconds": wall,
        "write_span_seconds": span,
        "rate": reads / span if span and span > 0 else math.nan,
        "rate_with_startup": reads / wall,
    }
    say(
        f"drain {setup.name}: {result['rate']:,.0f} msgs/s "
        f"({reads} in {span:.1f} s; wall {wall:.1f} s)"
    )
    return result


def load_run(
    broker: TansuBroker, setup: Setup, corpus: Corpus, rate: float, seconds: float, workdir: Path
) -> dict[str, Any]:
    """Offer `rate` messages/s for `seconds` to a running flow; measure what it writes and when."""
    topic, url = new_topic(broker)
    count = min(len(corpus.raws), int(rate * seconds))
    sent_at: dict[tuple[int, int], float] = {}

    def note(partition: int, offset: int, sent: datetime) -> None:
        sent_at[(partition, offset)] = sent.timestamp()

    run = Run(setup, url, workdir, drain=False)
    try:
        run.wait_ready(PARTITIONS)
        replayed = replay(
            iter(corpus.raws[:count]), broker.bootstrap, topic, RatePace(rate), on_delivered=note
        )
        complete = run.wait_written(replayed.sent, timeout=max(60.0, seconds * 4))
        run.finish(stop=True)
        rows = run.samples_rows()
    finally:
        run.cleanup()
    result = latency_result(rows, sent_at, corpus.early)
    result.update(
        {
            "setup": setup.name,
            "processes": setup.processes,
            "state": setup.state,
            "store": setup.store,
            "offered_rate": rate,
            "achieved_send_rate": replayed.rate,
            "sent": replayed.sent,
            "send_errors": replayed.errors,
            "complete": complete,
        }
    )
    say(
        f"load {setup.name} at {rate:,.0f}/s: wrote {result['throughput']:,.0f}/s, "
        f"P50 {result['p50'] * 1000:,.0f} ms, P99 {result['p99'] * 1000:,.0f} ms"
        + ("" if complete else " (INCOMPLETE)")
    )
    return result


def latency_result(
    rows: list[tuple[float, bool, str, str, str]],
    sent_at: dict[tuple[int, int], float],
    early: set[str],
) -> dict[str, Any]:
    """Compute latency percentiles and per-second series from the written outcomes."""
    latencies, orphans = [], []
    per_second: dict[int, list[float]] = defaultdict(list)
    writes: Counter[int] = Counter()
    start = min(sent_at.values()) if sent_at else 0.0
    for written, _first, kind, source, message_id in rows:
        writes[int(written - start)] += 1
        if kind not in ("created", "threaded"):
            continue
        partition, _, offset = source.rpartition("#")[2].partition("@")
        sent = sent_at.get((int(partition), int(offset)))
        if sent is None:
            continue
        latency = written - sent
        if message_id in early:
            orphans.append(latency)
            continue
        latencies.append(latency)
        per_second[int(written - start)].append(latency)
    offered = Counter(int(sent - start) for sent in sent_at.values())
    latencies.sort()
    orphans.sort()
    # Throughput is the median of the inputs written per second while the load
    # runs, first and last second left out: a flow that keeps up scores the sent
    # rate, and the few orphans released `orphan_wait` later do not count.
    last_send = max(sent_at.values()) if sent_at else math.nan
    inputs = Counter(int(row[0] - start) for row in rows if row[1])
    steady = sorted(inputs.get(second, 0) for second in range(1, int(last_send - start)))
    finished = max(row[0] for row in rows) - last_send if rows else math.nan
    seconds = sorted(set(writes) | set(offered))
    return {
        "outcomes": len(rows),
        "measured": len(latencies),
        "throughput": percentile(steady, 0.5) if steady else math.nan,
        "finished_after_last_send": finished,
        "p50": percentile(latencies, 0.50),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "max": latencies[-1] if latencies else math.nan,
        "under_target": sum(1 for value in latencies if value < TARGET_P99_SECONDS)
        / max(len(latencies), 1),
        "under_slo": sum(1 for value in latencies if value < SLO_SECONDS) / max(len(latencies), 1),
        "orphans": {
            "count": len(orphans),
            "p50": percentile(orphans, 0.5),
            "max": orphans[-1] if orphans else None,
        },
        "quantiles": [percentile(latencies, step / 100) for step in range(101)],
        "series": {
            "second": seconds,
            "offered": [offered.get(second, 0) for second in seconds],
            "written": [writes.get(second, 0) for second in seconds],
            "p50": [
                percentile(sorted(per_second[second]), 0.5) if per_second.get(second) else None
                for second in seconds
            ],
            "p99": [
                percentile(sorted(per_second[second]), 0.99) if per_second.get(second) else None
                for second in seconds
            ],
        },
    }


# -- the plan ------------------------------------------------------------------------


def services_up() -> dict[str, bool]:
    """Tell which of Redis and PostgreSQL respond on this machine."""
    up = {"redis": False, "postgres": False}
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        up["redis"] = True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        pass
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
        up["postgres"] = True
    except Exception:  # noqa: BLE001
        pass
    return up


def plan(
    quick: bool, up: dict[str, bool]
) -> tuple[list[Setup], list[tuple[Setup, list[float]]], int, float]:
    """Return the drain setups, load setups with fractions of the drain rate, messages, seconds.

    Offered loads are fractions of the drain rate of the same setup: with the
    replay producer and the broker on the same two cores, the flow sustains
    well under its drain rate, so the fractions stay below one.
    """
    single = Setup(1, "memory", "sqlite")
    tuned = Setup(1, "memory", "sqlite", short_fetch_wait=True)
    drains = [Setup(1, "memory", "noop"), single]
    if quick:
        loads: list[tuple[Setup, list[float]]] = [(single, [0.3]), (tuned, [0.3])]
    else:
        loads = [(single, [0.1, 0.2, 0.3, 0.45]), (tuned, [0.2, 0.3, 0.45])]
    if up["redis"]:
        pair_store = "postgres" if up["postgres"] and not quick else "noop"
        drains += [Setup(1, "redis", "noop"), Setup(2, "redis", "noop")]
        if pair_store != "noop":
            drains += [Setup(1, "redis", pair_store), Setup(2, "redis", pair_store)]
        loads.append((Setup(2, "redis", pair_store), [0.3] if quick else [0.3, 0.6]))
    if quick:
        return drains, loads, 3000, 5.0
    return drains, loads, 15000, 15.0


def main(argv: list[str] | None = None) -> int:
    """Run the end-to-end benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer setups, shorter runs")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    up = services_up()
    drains, loads, drain_count, load_seconds = plan(args.quick, up)
    say(f"generating {drain_count} synthetic messages")
    corpus = Corpus.generate(max(drain_count, 3 * drain_count // 2), seed=42)

    results: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "services": up,
        "drain": [],
        "load": [],
        "partitions": PARTITIONS,
        "orphan_wait_seconds": ORPHAN_WAIT_SECONDS,
        "target_p99_seconds": TARGET_P99_SECONDS,
        "slo_seconds": SLO_SECONDS,
    }
    with TansuBroker() as broker, tempfile.TemporaryDirectory(prefix="ticketflow-e2e-") as scratch:
        workdir = Path(scratch)
        rates: dict[Setup, float] = {}
        for setup in drains:
            outcome = drain_run(broker, setup, corpus, drain_count, workdir)
            results["drain"].append(outcome)
            rates[setup] = outcome["rate"]
        for setup, fractions in loads:
            top = rates.get(setup) or rates[Setup(1, "memory", setup.store)]
            for fraction in fractions:
                rate = max(50.0, round(top * fraction, -1))
                if rate * load_seconds > len(corpus.raws):
                    corpus = Corpus.generate(int(rate * load_seconds) + 1, seed=42)
                outcome = load_run(broker, setup, corpus, rate, load_seconds, workdir)
                outcome["fraction_of_max"] = fraction
                outcome["max_rate"] = top
                results["load"].append(outcome)
    write_result(args.results, "e2e", results)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
