"""Write REPORT.md and its plots from the JSON results of one benchmark run.

Reads ``micro.json`` (pytest-benchmark), ``flow.json``, ``e2e.json`` and
``memory.json`` from the results folder; a missing file leaves its section out
with a note. Plots are PNG files next to the report (matplotlib, Agg backend).

    .venv/bin/python benchmarks/report.py [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, machine

# Targets for this 2-core machine: rates in messages per second, growth as a share.
TARGET_BASELINE_RATIO = 30.0
TARGET_STORE_RATE = 5_000.0
TARGET_NOOP_RATE = 12_000.0
TARGET_TWO_PROCESS_RATIO = 1.5
TARGET_P99_SECONDS = 0.25
TARGET_RSS_GROWTH = 0.10

MICRO_NAMES = {
    "test_parse": "parse (ticketflow `parse_message`)",
    "test_parse_stdlib_policy_default": "parse (stdlib `policy.default`, the baseline's)",
    "test_parse_stdlib_compat32_headers_only": "parse (stdlib compat32, tree only)",
    "test_enrich": "enrich (tenants, priority, component, environment)",
    "test_gate": "gate (automatic, bulk, review)",
    "test_fan_out": "fan out (tenant copies: enrich + gate)",
    "test_dedupe": "dedupe (check + commit)",
    "test_thread_join": "thread join (in-memory index)",
    "test_store_write": "store write (SQLite, batches of 500)",
}


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def milliseconds(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 1000:,.0f} ms"


def verdict(measured: float | None, target: float, higher_is_better: bool = True) -> str:
    if measured is None or math.isnan(measured):
        return "not measured"
    met = measured >= target if higher_is_better else measured <= target
    if met:
        return "**met**"
    if higher_is_better:
        return f"missed: reached {measured / target:.0%} of the target"
    return f"missed: {measured / target:.1f}× the limit"


# -- pieces of the report -------------------------------------------------------------


def micro_rows(micro: dict[str, Any]) -> list[str]:
    rows = ["| stage | µs per message | messages/s | rounds |", "| --- | ---: | ---: | ---: |"]
    for bench in micro["benchmarks"]:
        messages = bench.get("extra_info", {}).get("messages", 1)
        per_message = bench["stats"]["median"] / messages
        rows.append(
            f"| {MICRO_NAMES.get(bench['name'], bench['name'])} | {per_message * 1e6:,.0f} "
            f"| {1 / per_message:,.0f} | {bench['stats']['rounds']} |"
        )
    return rows


def drain_lookup(
    e2e: dict[str, Any], processes: int, state: str, store: str
) -> dict[str, Any] | None:
    for run in e2e.get("drain", []):
        if (run["processes"], run["state"], run["store"]) == (processes, state, store):
            return run
    return None


def sustained_max(e2e: dict[str, Any]) -> tuple[float | None, str]:
    """Return the highest rate one process wrote under live load, and how to read it.

    A run keeps up when it wrote at least 95 % of what the replay managed to
    send. The qualifier is "at least " when even the highest load offered kept
    up (the true maximum is higher), "at most " when no load kept up, else "".
    """
    runs = [
        run
        for run in e2e.get("load", [])
        if run["processes"] == 1 and "fetch.wait" not in run["setup"] and run["complete"]
    ]
    if not runs:
        return None, ""
    kept_up = [run for run in runs if run["throughput"] >= 0.95 * run["achieved_send_rate"]]
    if not kept_up:
        return max(run["throughput"] for run in runs), "at most "
    highest = max(runs, key=lambda run: run["offered_rate"])
    qualifier = "at least " if highest in kept_up else ""
    return max(run["throughput"] for run in kept_up), qualifier


def half_max_run(e2e: dict[str, Any], maximum: float | None, tuned: bool) -> dict[str, Any] | None:
    """Return the single-process run offered closest to half the sustained maximum."""
    if not maximum:
        return None
    candidates = [
        run
        for run in e2e.get("load", [])
        if run["processes"] == 1 and ("fetch.wait" in run["setup"]) == tuned
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda run: abs(run["achieved_send_rate"] - maximum / 2))


def row(*cells: object) -> str:
    """Return one row of a markdown table."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def targets(
    flow: dict[str, Any] | None, e2e: dict[str, Any] | None, memory: dict[str, Any] | None
) -> list[str]:
    rows = [row("target", "measured", "verdict"), row("---", "---", "---")]
    if flow:
        ratio = flow["ratio_sqlite_to_baseline"]
        store, noop = flow["sqlite"]["rate"], flow["noop"]["rate"]
        versus = f"{number(store)} vs {number(flow['baseline']['rate'])} msgs/s"
        rows += [
            row(
                f"≥ {TARGET_BASELINE_RATIO:.0f}× the baseline, one process into SQLite",
                f"{ratio:.1f}× ({versus})",
                verdict(ratio, TARGET_BASELINE_RATIO),
            ),
            row(
                f"≥ {TARGET_STORE_RATE:,.0f} msgs/s into the SQLite store, one process",
                f"{number(store)} msgs/s",
                verdict(store, TARGET_STORE_RATE),
            ),
            row(
                f"≥ {TARGET_NOOP_RATE:,.0f} msgs/s into a no-op sink",
                f"{number(noop)} msgs/s",
                verdict(noop, TARGET_NOOP_RATE),
            ),
        ]
    if e2e:
        rows += two_process_rows(e2e) + latency_rows(e2e)
    if memory:
        span = f"{memory['from_messages']:,} to {memory['messages']:,} messages"
        growth = (
            f"{memory['rss_at_start_mb']:.0f} → {memory['rss_at_end_mb']:.0f} MB "
            f"({memory['growth']:+.0%})"
        )
        rows.append(
            row(
                f"RSS flat within {TARGET_RSS_GROWTH:.0%} from {span}",
                growth,
                verdict(memory["growth"], TARGET_RSS_GROWTH, False),
            )
        )
    return rows


def two_process_rows(e2e: dict[str, Any]) -> list[str]:
    rows = []
    one = drain_lookup(e2e, 1, "memory", "noop")
    for store in ("noop", "postgres"):
        two = drain_lookup(e2e, 2, "redis", store)
        one_redis = drain_lookup(e2e, 1, "redis", store)
        if not (two and one_redis):
            continue
        ratio = two["rate"] / one_redis["rate"]
        measured = (
            f"{ratio:.2f}× one process with Redis state "
            f"({number(two['rate'])} vs {number(one_redis['rate'])} msgs/s)"
        )
        if one and store == "noop":
            measured += f"; {two['rate'] / one['rate']:.2f}× one process with state in memory"
        rows.append(
            row(
                f"≥ {TARGET_TWO_PROCESS_RATIO}× with 2 processes "
                f"({store} sink, topic loaded first)",
                measured,
                verdict(ratio, TARGET_TWO_PROCESS_RATIO),
            )
        )
    return rows


def latency_rows(e2e: dict[str, Any]) -> list[str]:
    rows = []
    maximum, bound = sustained_max(e2e)
    for tuned in (False, True):
        run = half_max_run(e2e, maximum, tuned)
        if run is None:
            continue
        label = " with fetch.wait.max.ms=10" if tuned else ""
        measured = (
            f"P99 {milliseconds(run['p99'])} at {number(run['achieved_send_rate'])} msgs/s "
            f"sent (max sustained under live load: {bound}{number(maximum)} msgs/s)"
        )
        rows.append(
            row(
                f"P99 < {TARGET_P99_SECONDS * 1000:.0f} ms at half the max rate{label}",
                measured,
                verdict(run["p99"], TARGET_P99_SECONDS, False),
            )
        )
    return rows


def flow_section(flow: dict[str, Any]) -> list[str]:
    baseline = flow["baseline"]
    lines = [
        f"{flow['messages']:,} synthetic messages (`ticketflow.synth`, seed 7, "
        f"{flow['average_bytes'] / 1024:.1f} KB on average) from a `RecordsSource`, "
        "batches of 500; "
        f"the baseline ran on the first {baseline['messages']:,}.",
        "",
        row("pipeline", "messages/s", "vs baseline"),
        row("---", "---:", "---:"),
        row(
            "ticketflow into a no-op sink",
            number(flow["noop"]["rate"]),
            f"{flow['ratio_noop_to_baseline']:.1f}×",
        ),
        row(
            "ticketflow into the SQLite store",
            number(flow["sqlite"]["rate"]),
            f"{flow['ratio_sqlite_to_baseline']:.1f}×",
        ),
        row(
            "baseline (`policy.default`, JSON, one commit per message)",
            number(baseline["rate"]),
            "1.0×",
        ),
        "",
        f"Counts of the flow: `{json.dumps(flow['sqlite']['counts'])}`. The baseline found "
        f"{baseline['tickets_created']:,} tickets, {baseline['replies_threaded']:,} replies and "
        f"{baseline['duplicates']:,} duplicates. It neither dedupes redeliveries (their bytes "
        "differ) nor threads by subject key, so it does less work per message than the flow.",
        "",
        "### The parse stage side by side",
        "",
        f"{flow['parse']['messages']} of the same messages per parser. "
        "Fidelity is the share of the "
        "parse fixtures (`tests/fixtures/mail/parse`) read right: subject, sender, Message-ID, "
        "text and attachment names.",
        "",
        row("parser", "messages/s", "vs `policy.default`", "fidelity"),
        row("---", "---:", "---:", "---:"),
    ]
    parsers = flow["parse"]["parsers"]
    base = parsers[flow["parse"]["baseline"]]["rate"]
    for name, result in parsers.items():
        lines.append(
            row(
                name,
                number(result["rate"]),
                f"{result['rate'] / base:.1f}×",
                f"{result['fidelity']:.0%}",
            )
        )
    profile = flow["profile"]
    lines += [
        "",
        "### Where the time goes (cProfile, no-op sink)",
        "",
        f"{profile['messages']:,} messages, "
        f"{profile['seconds_profiled']:.1f} s under the profiler. "
        "Share of the run's time inside each stage's functions (cumulative):",
        "",
        row("stage", "share"),
        row("---", "---:"),
    ]
    for stage, share in profile["stage_share"].items():
        lines.append(row(stage, f"{share:.0%}"))
    lines += [
        "",
        "The 25 functions with the most time of their own:",
        "",
        "```",
        profile["top_functions"],
        "```",
    ]
    return lines


def e2e_section(e2e: dict[str, Any], plots: list[str]) -> list[str]:
    lines = [
        f"Tansu on a loopback port, a {e2e['partitions']}-partition topic, synthetic mail (seed "
        f"42). `[threading] orphan_wait` is {e2e['orphan_wait_seconds']:g} s in these runs, so a "
        "reply whose parent falls after the end of the replayed prefix does not hold the run for "
        "300 s. The replay tool, the broker and the flow share the machine's two cores.",
        "",
        "### Maximum throughput: the topic loaded before the run",
        "",
        row("setup", "messages", "msgs/s (first to last write)", "msgs/s (with process start)"),
        row("---", "---:", "---:", "---:"),
    ]
    for run in e2e["drain"]:
        lines.append(
            row(
                run["setup"],
                f"{run['read']:,}",
                number(run["rate"]),
                number(run["rate_with_startup"]),
            )
        )
    lines += [
        "",
        "### Latency at offered loads",
        "",
        "Latency is the store write time minus the record's `ticketflow-ingested-at` stamp (the "
        "send time), for every message that ends on a ticket. Orphans (replies sent before their "
        "parent) are left out and listed apart. Written msgs/s is the median of the inputs "
        "written per second while the load ran.",
        "",
        row(
            "setup",
            "offered msgs/s",
            "sent msgs/s",
            "written msgs/s",
            "P50",
            "P95",
            "P99",
            "max",
            "< 250 ms",
            "< 30 s",
            "orphans (P50)",
        ),
        row("---", *["---:"] * 10),
    ]
    for run in e2e["load"]:
        orphans = run["orphans"]
        written = number(run["throughput"]) + ("" if run["complete"] else " (incomplete)")
        lines.append(
            row(
                run["setup"],
                number(run["offered_rate"]),
                number(run["achieved_send_rate"]),
                written,
                milliseconds(run["p50"]),
                milliseconds(run["p95"]),
                milliseconds(run["p99"]),
                milliseconds(run["max"]),
                f"{run['under_target']:.1%}",
                f"{run['under_slo']:.1%}",
                f"{orphans['count']} ({milliseconds(orphans['p50'])})",
            )
        )
    lines += [""] + [f"![{name}]({name})" for name in plots]
    return lines


def memory_section(memory: dict[str, Any], plots: list[str]) -> list[str]:
    lines = [
        f"{memory['messages']:,} small generated messages (threads of three, every 50th "
        "delivered twice, one second of event time apart, so the 24 h dedupe window is full from "
        f"86,400 on), in one process into a no-op sink, at {number(memory['rate'])} msgs/s.",
        "",
        row("messages", "RSS MB"),
        row("---:", "---:"),
    ]
    samples = memory["samples"]
    step = max(1, len(samples) // 10)
    for sample in samples[step - 1 :: step]:
        lines.append(row(f"{sample['messages']:,}", f"{sample['rss_mb']:.0f}"))
    lines += [""] + [f"![{name}]({name})" for name in plots]
    if memory.get("growth_by_line"):
        lines += [
            "",
            "Where the memory goes: the source lines whose allocations grew most over the second "
            "half of a tracemalloc run (1 h dedupe window, so the window is full and not "
            "among them):",
            "",
            "| line | bytes per message | blocks |",
            "| --- | ---: | ---: |",
        ]
        for line in memory["growth_by_line"]:
            lines.append(
                row(
                    f"`{line['where']}`", f"{line['per_message_bytes']:,.0f}", f"{line['blocks']:,}"
                )
            )
    return lines


# -- plots ------------------------------------------------------------------------------


def plot_all(
    folder: Path, e2e: dict[str, Any] | None, memory: dict[str, Any] | None
) -> dict[str, list[str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "report: matplotlib is not installed; no plots (pip install matplotlib)",
            file=sys.stderr,
        )
        return {"e2e": [], "memory": []}
    made: dict[str, list[str]] = {"e2e": [], "memory": []}
    if e2e and e2e.get("load"):
        made["e2e"] = [
            _plot_series(plt, folder, e2e, "throughput_over_time.png", "throughput"),
            _plot_series(plt, folder, e2e, "latency_over_time.png", "latency"),
            _plot_distribution(plt, folder, e2e),
        ]
    if memory:
        figure, axes = plt.subplots(figsize=(8, 4))
        samples = memory["samples"]
        axes.plot(
            [sample["messages"] for sample in samples], [sample["rss_mb"] for sample in samples]
        )
        start = memory["rss_at_start_mb"]
        axes.axhspan(
            start, start * (1 + TARGET_RSS_GROWTH), color="green", alpha=0.15, label="target: +10 %"
        )
        axes.set_xlabel("messages")
        axes.set_ylabel("RSS (MB)")
        axes.set_title("Resident memory over a long run")
        axes.legend()
        figure.tight_layout()
        figure.savefig(folder / "memory.png", dpi=100)
        plt.close(figure)
        made["memory"] = ["memory.png"]
    return made


def _plot_series(plt: Any, folder: Path, e2e: dict[str, Any], name: str, what: str) -> str:
    runs = e2e["load"]
    figure, grid = plt.subplots(
        len(runs), 1, figsize=(9, 2.2 * len(runs)), sharex=False, squeeze=False
    )
    for axes, run in zip(grid[:, 0], runs, strict=True):
        series = run["series"]
        if what == "throughput":
            axes.plot(series["second"], series["offered"], label="offered (sent)")
            axes.plot(
                series["second"], series["written"], label="outcomes written (tenant copies too)"
            )
            axes.set_ylabel("msgs/s")
            axes.set_ylim(bottom=0)
        else:
            axes.plot(
                series["second"],
                [value * 1000 if value is not None else None for value in series["p50"]],
                label="P50",
            )
            axes.plot(
                series["second"],
                [value * 1000 if value is not None else None for value in series["p99"]],
                label="P99",
            )
            axes.axhline(
                TARGET_P99_SECONDS * 1000, color="red", linestyle="--", linewidth=1, label="250 ms"
            )
            axes.set_ylabel("ms")
            axes.set_yscale("log")
        axes.set_title(f"{run['setup']} at {run['offered_rate']:,.0f} msgs/s", fontsize=9)
        axes.legend(fontsize=7, loc="upper right")
    grid[-1, 0].set_xlabel("seconds since the first send")
    figure.tight_layout()
    figure.savefig(folder / name, dpi=100)
    plt.close(figure)
    return name


def _plot_distribution(plt: Any, folder: Path, e2e: dict[str, Any]) -> str:
    figure, axes = plt.subplots(figsize=(9, 5))
    shares = [step / 100 for step in range(101)]
    for run in e2e["load"]:
        values = [
            value for value in run["quantiles"] if value is not None and not math.isnan(value)
        ]
        if values:
            axes.plot(
                values,
                shares[: len(values)],
                label=f"{run['setup']} @ {run['offered_rate']:,.0f}/s",
            )
    axes.axvline(TARGET_P99_SECONDS, color="red", linestyle="--", label="target P99 250 ms")
    axes.axvline(e2e["slo_seconds"], color="black", linestyle=":", label="SLO: 95 % under 30 s")
    axes.axhline(0.99, color="grey", linewidth=0.5)
    axes.axhline(0.95, color="grey", linewidth=0.5)
    axes.set_xscale("log")
    axes.set_xlabel("email-to-ticket latency (s)")
    axes.set_ylabel("share of messages")
    axes.set_title("Latency distribution against the SLO")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(folder / "latency_distribution.png", dpi=100)
    plt.close(figure)
    return "latency_distribution.png"


# -- the report -------------------------------------------------------------------------


def write_report(
    folder: Path, timings: dict[str, float] | None = None, notes: list[str] | None = None
) -> Path:
    """Write REPORT.md and the plots into `folder` from the results found there."""
    micro, flow, e2e, memory = (load(folder, name) for name in ("micro", "flow", "e2e", "memory"))
    facts = (flow or e2e or memory or {}).get("machine") or machine()
    quick = bool(e2e and e2e.get("quick"))
    plots = plot_all(folder, e2e, memory)
    lines = [
        "# ticketflow benchmarks" + (" (quick mode)" if quick else ""),
        "",
        f"Measured {facts['date']} on {facts['cpu']}, {facts['cores']} cores, {facts['memory']}, "
        f"Python {facts['python']} ({facts['platform']}); commit {facts['commit']}.",
        "Packages: "
        + ", ".join(f"{name} {version}" for name, version in facts["packages"].items())
        + ".",
        "",
        f"Command: `make {'bench-quick' if quick else 'bench'}` (`benchmarks/run.py`). "
        "Every ratio divides two "
        "figures of this one run.",
        "",
        "## Targets",
        "",
        *targets(flow, e2e, memory),
        "",
    ]
    if notes:
        lines += ["## Notes on this run", "", *[f"- {note}" for note in notes], ""]
    if micro:
        lines += [
            "## Stages one by one (pytest-benchmark)",
            "",
            "Median of the rounds, each round handling the same synthetic messages.",
            "",
            *micro_rows(micro),
            "",
        ]
    if flow:
        lines += ["## The whole flow in one process", "", *flow_section(flow), ""]
    if e2e:
        lines += ["## End to end through Kafka", "", *e2e_section(e2e, plots["e2e"]), ""]
    if memory:
        lines += ["## Memory over a long run", "", *memory_section(memory, plots["memory"]), ""]
    if timings:
        lines += ["## How long each part took", "", "| part | seconds |", "| --- | ---: |"]
        lines += [f"| {name} | {seconds:,.0f} |" for name, seconds in timings.items()]
        lines.append("")
    analysis = folder / "ANALYSIS.md"
    if analysis.exists():
        lines += [analysis.read_text(encoding="utf-8").strip(), ""]
    path = folder / "REPORT.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    timings_path = args.results / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else None
    print(write_report(args.results, timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
