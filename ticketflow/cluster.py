"""Cluster mode: run the main job as N cooperating processes on this machine.

Bytewax 0.21 runs a cluster from a list of addresses, one per process; this
module picks free loopback ports, starts one `ticketflow run` child per process
with its `--process-id` and the shared `--addresses`, forwards SIGTERM and
SIGINT to them, and adds up their summaries.

When one process dies the cluster cannot go on (Bytewax stops every process);
the others are stopped, and running the same command again resumes every
process from the recovery snapshots.

On several hosts, run `ticketflow run … --process-id I --addresses A0;A1;…` on
each host yourself, with the same address list everywhere (see the README).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

SUMMARY_FIELDS = (
    "read", "fanned_out", "tickets_created", "replies_threaded",
    "duplicates", "suppressed", "dead_letters", "review",
)


class ClusterError(RuntimeError):
    """A process of the cluster failed; the message names it and how it ended."""


def free_loopback_ports(count: int) -> list[int]:
    """Return `count` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def child_command(
    run_arguments: Sequence[str],
    process_id: int,
    addresses: list[str],
    global_arguments: Sequence[str] = (),
) -> list[str]:
    """Build the command line of one process: the parent's `run` arguments plus its place."""
    return [
        sys.executable, "-m", "ticketflow.cli", *global_arguments, "run", *run_arguments,
        "--json", "--process-id", str(process_id), "--addresses", ";".join(addresses),
    ]


def run_cluster(
    run_arguments: Sequence[str],
    processes: int,
    global_arguments: Sequence[str] = (),
    resumable: bool = False,
) -> dict[str, int]:
    """Run `processes` children to completion and return their summed summary.

    Raises `ClusterError` when a child exits with an error or a signal; the
    other children are stopped first.
    """
    addresses = [f"127.0.0.1:{port}" for port in free_loopback_ports(processes)]
    children = [
        subprocess.Popen(
            child_command(run_arguments, index, addresses, global_arguments),
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]
    log.info("cluster started: %d processes on %s", processes, ", ".join(addresses))

    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}

    def forward(number: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(number)

    for number in previous:
        signal.signal(number, forward)
    try:
        outputs = _wait_all(children, resumable)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return _sum_summaries(outputs)


def _wait_all(children: list[subprocess.Popen[str]], resumable: bool) -> list[str]:
    outputs: list[str | None] = [None] * len(children)
    failed: tuple[int, int] | None = None
    while any(output is None for output in outputs):
        for index, child in enumerate(children):
            if outputs[index] is not None or child.poll() is None:
                continue
            stdout = child.stdout.read() if child.stdout else ""
            outputs[index] = stdout
            if child.returncode != 0 and failed is None:
                failed = (index, child.returncode)
                _stop_others(children)
        time.sleep(0.05)

    if failed is not None:
        index, code = failed
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        if resumable:
            advice = "Run the same command again to resume from the recovery snapshots."
        else:
            advice = (
                "Run the same command again: without --recovery-dir it reads its input from the "
                "start, and the idempotent store makes that harmless."
            )
        raise ClusterError(f"process {index} of {len(children)} ended with {how}; the cluster stopped. {advice}")
    return [output or "" for output in outputs]


def _stop_others(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 10
    for child in children:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            child.wait(remaining)
        except subprocess.TimeoutExpired:
            child.kill()


def _sum_summaries(outputs: list[str]) -> dict[str, Any]:
    total = dict.fromkeys(SUMMARY_FIELDS, 0)
    for output in outputs:
        lines = [line for line in output.splitlines() if line.strip()]
        if not lines:
            raise ClusterError("a process ended without printing its summary")
        summary = json.loads(lines[-1])
        for name in SUMMARY_FIELDS:
            total[name] += int(summary[name])
        _add_deliveries(total, summary.get("deliveries"))
    return total


def _add_deliveries(total: dict[str, Any], deliveries: dict[str, Any] | None) -> None:
    """Add one process's delivery counts (only process 0 sends) to the cluster's."""
    if not deliveries:
        return
    summed = total.setdefault("deliveries", {"sink": deliveries["sink"]})
    for name, value in deliveries.items():
        if name != "sink":
            summed[name] = summed.get(name, 0) + int(value)
