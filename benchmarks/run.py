"""Run every benchmark and write the report: `make bench` and `make bench-quick`.

Parts, each in its own process so that one's memory and imports do not bend
another's figures:

1. stage micro-benchmarks (pytest-benchmark, ``test_stages.py``);
2. the whole flow in one process against the baseline, parsers side by side, profile;
3. end to end through Tansu at several offered loads, 1 and 2 processes;
4. RSS over a long in-process run.

Quick mode (under 2 minutes on a 2-core machine) runs smaller sizes, writes to
``benchmarks/results/quick/``, and runs the memory part beside parts 1 and 2
(each takes one core) to fit the time. Full mode (under 15 minutes) runs the
parts one after another and writes to ``benchmarks/results/``. A part that fails
is reported as missing; the run goes on.

    .venv/bin/python benchmarks/run.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, say
from report import write_report

HERE = Path(__file__).resolve().parent


def commands(quick: bool, results: Path) -> dict[str, list[str]]:
    """Return the command of each part for the mode."""
    python = sys.executable
    micro = [
        python,
        "-m",
        "pytest",
        str(HERE / "test_stages.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={results / 'micro.json'}",
        "--benchmark-columns=median,rounds",
    ]
    if quick:
        flow = [
            "--messages",
            "3000",
            "--baseline",
            "300",
            "--parse",
            "150",
            "--profile",
            "1500",
            "--repeat",
            "1",
        ]
        memory = ["--messages", "200000"]
        e2e = ["--quick"]
    else:
        flow = [
            "--messages",
            "20000",
            "--baseline",
            "2000",
            "--parse",
            "600",
            "--profile",
            "5000",
            "--repeat",
            "2",
        ]
        memory = ["--messages", "1000000", "--trace", "20000"]
        e2e = []
    where = ["--results", str(results)]
    return {
        "stages": micro,
        "flow": [python, str(HERE / "flow_inprocess.py"), *flow, *where],
        "end to end": [python, str(HERE / "e2e.py"), *e2e, *where],
        "memory": [python, str(HERE / "memory.py"), *memory, *where],
    }


def environment(quick: bool) -> dict[str, str]:
    variables = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if quick:
        variables["TICKETFLOW_BENCH_QUICK"] = "1"
    return variables


def main(argv: list[str] | None = None) -> int:
    """Run the parts, then the report; return 1 if a part failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 2-minute version")
    args = parser.parse_args(argv)

    results = RESULTS / "quick" if args.quick else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("micro", "flow", "e2e", "memory"):
        (results / f"{stale}.json").unlink(missing_ok=True)
    parts = commands(args.quick, results)
    variables = environment(args.quick)
    timings: dict[str, float] = {}
    notes: list[str] = []
    started = time.perf_counter()

    def run(name: str) -> None:
        say(f"{name}: starting")
        begun = time.perf_counter()
        code = subprocess.run(parts[name], cwd=HERE, env=variables).returncode
        timings[name] = time.perf_counter() - begun
        if code != 0:
            notes.append(f"The part '{name}' failed (exit status {code}); its section is missing.")

    if args.quick:
        # The memory run takes one core for about a minute; stages and flow take the other.
        say("memory: starting beside the stages and flow parts")
        begun = time.perf_counter()
        memory = subprocess.Popen(parts["memory"], cwd=HERE, env=variables)
        run("stages")
        run("flow")
        code = memory.wait()
        timings["memory (beside stages and flow)"] = time.perf_counter() - begun
        if code != 0:
            notes.append(f"The part 'memory' failed (exit status {code}); its section is missing.")
        notes.append(
            "Quick mode ran the memory part at the same time as the stages and flow parts, each "
            "on one of the two cores; their figures may be a little lower than alone."
        )
        notes.append(
            "Quick mode drains 3,000 messages in one to four seconds, so its throughput ratios "
            "move by tens of percent from run to run; quote the full run's figures instead."
        )
        run("end to end")
    else:
        for name in ("stages", "flow", "end to end", "memory"):
            run(name)

    timings["total"] = time.perf_counter() - started
    (results / "timings.json").write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    report = write_report(results, timings, notes)
    say(f"report written to {report} after {timings['total']:.0f} s")
    return 1 if notes and any("failed" in note for note in notes) else 0


if __name__ == "__main__":
    sys.exit(main())
