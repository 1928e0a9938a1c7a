"""The whole flow in one process against the baseline pipeline, measured in the same run.

The same synthetic messages (`ticketflow.synth`, about 10 KB on average) go:

- through the main job from a `RecordsSource` into the SQLite store, and into a
  no-op sink (the flow's own cost);
- through `baseline.py` (stdlib `email` with `policy.default`, JSON, one SQLite
  commit per message), on the first messages only, because it is slow;
- through each parser of `parsers.py` alone, for the parse stage side by side;
- once more into the no-op sink under cProfile, to say where the time goes.

Every rate is messages per second of wall time, best of `--repeat` runs, and
every ratio divides two rates of this one invocation.

    .venv/bin/python benchmarks/flow_inprocess.py [--messages 20000] [--baseline 2000]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import parsers
from baseline import run_baseline
from common import RESULTS, NoOpStore, machine, say, write_result

from ticketflow.config import Settings
from ticketflow.connectors.records import RecordsSource
from ticketflow.connectors.store import SqliteStore
from ticketflow.model import RawMessage
from ticketflow.runner import run_flow
from ticketflow.synth import iter_messages

SEED = 7
# Functions of the flow whose cumulative time makes up each stage, from cProfile.
STAGES = {
    "parse": ("parse_record",),
    "fan out (enrich, gate)": ("tenant_copies",),
    "dedupe + thread join": ("_admit", "_release"),
    "store write": ("write_batch",),
}


def records(count: int) -> list[RawMessage]:
    """Return `count` synthetic messages as records, ingested now."""
    now = datetime.now(UTC)
    return [
        RawMessage(f"synth#{message.serial}", message.raw, now)
        for message in iter_messages(count, SEED)
    ]


def time_flow(batch: list[RawMessage], store: Any) -> tuple[float, dict[str, int]]:
    """Run the flow over `batch` into `store`; return messages per second and the counts."""
    started = time.perf_counter()
    summary = run_flow("bench", Settings(), store, source=RecordsSource(batch, batch_size=500))
    seconds = time.perf_counter() - started
    return len(batch) / seconds, summary.as_dict()


def best_flow_rate(batch: list[RawMessage], sink: str, repeat: int, folder: Path) -> dict[str, Any]:
    """Return the best of `repeat` runs into a fresh sink each time."""
    best: dict[str, Any] = {}
    for attempt in range(repeat):
        store = NoOpStore() if sink == "noop" else SqliteStore(folder / f"flow-{sink}-{attempt}.db")
        try:
            rate, counts = time_flow(batch, store)
        finally:
            store.close()
        if rate > best.get("rate", 0):
            best = {"rate": rate, "counts": counts}
    say(f"flow into {sink}: {best['rate']:,.0f} msgs/s")
    return best


def profile_stages(batch: list[RawMessage]) -> dict[str, Any]:
    """Profile one no-op run; return each stage's share of the time and the top functions."""
    profiler = cProfile.Profile()
    profiler.enable()
    run_flow("profile", Settings(), NoOpStore(), source=RecordsSource(batch, batch_size=500))
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    by_name: dict[str, float] = {}
    for (filename, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        if "/work/" in filename or "ticketflow" in filename or name in sum(STAGES.values(), ()):
            by_name[name] = max(by_name.get(name, 0.0), row[3])
    stages = {
        stage: sum(by_name.get(name, 0.0) for name in names) / total
        for stage, names in STAGES.items()
    }
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return {
        "messages": len(batch),
        "seconds_profiled": total,
        "stage_share": stages,
        "top_functions": _trim(text.getvalue()),
    }


def _trim(report: str) -> str:
    lines = [line for line in report.splitlines() if line.strip()]
    return "\n".join(
        line.replace(str(Path(__file__).resolve().parents[1]) + "/", "") for line in lines
    )


def parse_side_by_side(batch: list[RawMessage]) -> dict[str, Any]:
    """Return messages/s and fidelity of every parser in `parsers.py` on the same messages."""
    logging.disable(logging.WARNING)
    try:
        messages = [record.raw for record in batch]
        expectations = parsers.json.loads(
            (parsers.FIXTURES / "expected.json").read_text(encoding="utf-8")
        )
        results = {}
        for name, read in parsers.CANDIDATES.items():
            results[name] = {
                "rate": parsers.throughput(read, messages),
                "fidelity": parsers.fidelity(read, expectations),
            }
            say(f"parse {name}: {results[name]['rate']:,.0f} msgs/s")
    finally:
        logging.disable(logging.NOTSET)
    return {"messages": len(messages), "baseline": parsers.BASELINE, "parsers": results}


def main(argv: list[str] | None = None) -> int:
    """Run the in-process comparison and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages through the flow")
    parser.add_argument("--baseline", type=int, default=2_000, help="messages through the baseline")
    parser.add_argument("--parse", type=int, default=600, help="messages per parser")
    parser.add_argument("--profile", type=int, default=5_000, help="messages of the profiled run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per sink; the best counts")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    say(f"generating {args.messages:,} synthetic messages")
    batch = records(args.messages)
    average = sum(len(record.raw) for record in batch) / len(batch)
    result: dict[str, Any] = {
        "machine": machine(),
        "messages": len(batch),
        "average_bytes": average,
    }
    with tempfile.TemporaryDirectory(prefix="ticketflow-flow-") as scratch:
        folder = Path(scratch)
        result["noop"] = best_flow_rate(batch, "noop", args.repeat, folder)
        result["sqlite"] = best_flow_rate(batch, "sqlite", args.repeat, folder)
        baseline = run_baseline(
            (record.raw for record in batch[: args.baseline]), folder / "baseline.db"
        )
        say(f"baseline: {baseline['rate']:,.0f} msgs/s")
    result["baseline"] = baseline
    result["ratio_sqlite_to_baseline"] = result["sqlite"]["rate"] / baseline["rate"]
    result["ratio_noop_to_baseline"] = result["noop"]["rate"] / baseline["rate"]
    result["parse"] = parse_side_by_side(batch[: args.parse])
    say("profiling the flow")
    result["profile"] = profile_stages(batch[: args.profile])
    write_result(args.results, "flow", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
