"""Helpers the benchmark scripts share: stores that measure, machine facts, results files."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ticketflow.operators.thread import NullLedger
from ticketflow.outcome import Outcome

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class NoOpStore(NullLedger):
    """A sink that writes nothing and has no ledger: it measures what the flow costs by itself.

    Each instance has its own identity, so Redis state of two runs never mixes.
    """

    def __init__(self) -> None:
        self._identity = f"noop-{os.getpid()}-{time.time_ns()}"
        self.written = 0

    def write(self, outcomes: Iterable[Outcome]) -> None:
        """Count the outcomes and drop them."""
        self.written += sum(1 for _ in outcomes)

    def store_id(self) -> str:
        """Return this sink's unique identity."""
        return self._identity

    def close(self) -> None:
        """Nothing to close."""


class TimedStore:
    """Wraps a store and appends one line per outcome written: when, what, from where.

    Lines are ``written_epoch,first_copy,kind,source,message_id`` and the file is
    flushed after every batch, so another process can follow the progress.
    Every other attribute is the wrapped store's, so the thread join still reads
    the ledger through it.
    """

    def __init__(self, inner: Any, samples: Path) -> None:
        self._inner = inner
        self._file = samples.open("a", encoding="utf-8")

    def write(self, outcomes: Iterable[Outcome]) -> None:
        """Write through to the store, then note each outcome with the time the write ended."""
        items = list(outcomes)
        self._inner.write(items)
        written = time.time()
        lines = []
        for outcome in items:
            message_id = ""
            if outcome.copy is not None:
                message_id = outcome.copy.event["envelope"]["message_id"]
            lines.append(
                f"{written:.6f},{int(outcome.first_copy)},{outcome.kind},{outcome.source},{message_id}\n"
            )
        self._file.write("".join(lines))
        self._file.flush()

    def close(self) -> None:
        """Close the samples file and the wrapped store."""
        self._file.close()
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def rss_bytes() -> int:
    """Return this process's resident set size, from /proc (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Return the `share` quantile (0 to 1) of sorted values, by linear interpolation."""
    if not sorted_values:
        return math.nan
    position = share * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] * (1 - fraction) + sorted_values[high] * fraction


def machine() -> dict[str, Any]:
    """Return the facts a reader needs to compare figures: CPU, cores, memory, Python, date."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kilobytes = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kilobytes / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "packages": _versions(
            (
                "bytewax",
                "fast-mail-parser",
                "confluent-kafka",
                "redis",
                "mail-parser",
                "eml-parser",
                "pytest-benchmark",
                "matplotlib",
            )
        ),
    }


def _commit() -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _versions(names: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_result(folder: Path, name: str, data: dict[str, Any]) -> Path:
    """Write one benchmark's result as indented JSON; return the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def say(text: str) -> None:
    """Print a progress line of the benchmark run on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
