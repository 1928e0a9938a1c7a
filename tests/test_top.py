"""`ticketflow top`: percentiles from buckets, rates between scrapes, and a frame from a live server."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ticketflow.config import load_settings
from ticketflow.connectors.corpus import iter_corpus
from ticketflow.connectors.records import RecordsSource
from ticketflow.connectors.store import SqliteStore
from ticketflow.metrics import FlowMetrics, MetricsServer
from ticketflow.model import RawMessage
from ticketflow.runner import run_flow
from ticketflow.top import (
    Scrape,
    build_view,
    histogram_quantile,
    increase,
    normalize_url,
    render,
    run_top,
)

SAMPLE = Path(__file__).resolve().parents[1] / "corpus" / "sample"
INF = math.inf


# -- percentiles -----------------------------------------------------------------------


def test_quantile_interpolates_inside_bucket():
    # 50 observations up to 0.1 s, 50 more between 0.1 s and 1 s.
    cumulative = [(0.1, 50.0), (1.0, 100.0), (INF, 100.0)]
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.1)
    # Rank 75 lies halfway through the second bucket's 50 observations.
    assert histogram_quantile(0.75, cumulative) == pytest.approx(0.1 + 0.9 * 0.5)
    # Rank 10 lies a fifth into the first bucket, which starts at 0.
    assert histogram_quantile(0.1, cumulative) == pytest.approx(0.02)


def test_quantile_in_inf_bucket_is_largest_bound():
    cumulative = [(0.1, 10.0), (30.0, 90.0), (INF, 100.0)]
    assert histogram_quantile(0.99, cumulative) == 30.0


def test_quantile_of_empty_histogram_is_none():
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None


# -- rates -----------------------------------------------------------------------------


def test_increase_treats_drop_as_reset():
    key_a = ("x_total", ())
    key_b = ("y_total", ())
    grown = increase({key_a: 10.0, key_b: 50.0}, {key_a: 25.0, key_b: 4.0})
    assert grown == {key_a: 15.0, key_b: 4.0}


@pytest.mark.parametrize(
    "given, expected",
    [
        ("127.0.0.1:9464", "http://127.0.0.1:9464/metrics"),
        ("http://flow:9465", "http://flow:9465/metrics"),
        ("http://flow:9465/metrics", "http://flow:9465/metrics"),
    ],
)
def test_url_shorthands(given, expected):
    assert normalize_url(given) == expected


def exposition(parse_in: int, read: int, latency: list[tuple[str, int]]) -> str:
    lines = [
        "# TYPE ticketflow_stage_messages_in_total counter",
        f'ticketflow_stage_messages_in_total{{stage="parse"}} {parse_in}',
        "# TYPE ticketflow_outcomes_total counter",
        f'ticketflow_outcomes_total{{outcome="read",tenant="acme"}} {read}',
        "# TYPE ticketflow_email_to_ticket_latency_seconds histogram",
    ]
    for bound, count in latency:
        lines.append(f'ticketflow_email_to_ticket_latency_seconds_bucket{{le="{bound}",tenant="acme"}} {count}')
    lines.append(f'ticketflow_email_to_ticket_latency_seconds_count{{tenant="acme"}} {latency[-1][1]}')
    lines.append('ticketflow_email_to_ticket_latency_seconds_sum{tenant="acme"} 1.0')
    return "\n".join(lines) + "\n"


def test_two_processes_add_up_and_rates_use_window():
    from ticketflow.top import parse_samples

    before = [
        Scrape("a", 100.0, parse_samples(exposition(100, 100, [("0.1", 0), ("1.0", 0), ("+Inf", 0)]))),
        Scrape("b", 100.0, parse_samples(exposition(50, 50, [("0.1", 0), ("1.0", 0), ("+Inf", 0)]))),
    ]
    after = [
        Scrape("a", 102.0, parse_samples(exposition(300, 300, [("0.1", 10), ("1.0", 20), ("+Inf", 20)]))),
        Scrape("b", 102.0, parse_samples(exposition(150, 150, [("0.1", 0), ("1.0", 0), ("+Inf", 0)]))),
    ]
    view = build_view(before, after)
    frame = render(view, 2.0, wall_clock=datetime(2026, 5, 4, 8, tzinfo=UTC))

    parse_line = next(line for line in frame.splitlines() if line.startswith("parse"))
    # (200 + 100) more messages over 2 s; 450 since start.
    assert parse_line.split()[1:2] == ["150.0"]
    assert "450" in parse_line.split()
    read_line = next(line for line in frame.splitlines() if line.startswith("read"))
    assert read_line.split() == ["read", "450", "150.0"]
    # 20 tickets, 10 of them within 0.1 s: the median is the bucket bound.
    assert "p50 100 ms" in frame
    assert "2 of 2 targets up" in frame


def test_down_target_is_listed_and_left_out():
    from ticketflow.top import parse_samples

    samples = parse_samples(exposition(10, 10, [("0.1", 1), ("+Inf", 1)]))
    before = [Scrape("a", 0.0, samples), Scrape("b", 0.0, None, "connection refused")]
    after = [Scrape("a", 1.0, samples), Scrape("b", 1.0, None, "connection refused")]
    frame = render(build_view(before, after), 1.0)
    assert "1 of 2 targets up" in frame
    assert "down: b (connection refused)" in frame


# -- against a live server ------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """A metrics server with the counts of a sample corpus run plus one dead letter."""
    metrics = FlowMetrics(load_settings(SAMPLE / "ticketflow.toml").routing)
    records = list(iter_corpus(SAMPLE)) + [RawMessage(source="mem://empty", raw=b"")]
    summary = run_flow("top", load_settings(SAMPLE / "ticketflow.toml"),
                       SqliteStore(tmp_path_factory.mktemp("top") / "t.db"),
                       source=RecordsSource(records), metrics=metrics)
    with MetricsServer(metrics) as server:
        yield server, summary.as_dict()


def test_once_prints_frame_of_live_server(live_server):
    server, summary = live_server
    out = io.StringIO()
    status = run_top([server.url], interval=0.05, once=True, stream=out)
    frame = out.getvalue()

    assert status == 0
    for name, count in summary.items():
        line = next(line for line in frame.splitlines() if line.startswith(f"{name} "))
        assert line.split()[1] == str(count), line
    for stage in ("parse", "fan_out", "thread_join", "store"):
        assert any(line.startswith(stage) for line in frame.splitlines()), stage
    assert "dead letters: empty 1" in frame
    tickets = summary["tickets_created"] + summary["replies_threaded"]
    assert "since start  p50" in frame
    assert f"({tickets} tickets)" in frame
    assert "\x1b[" not in frame, "a pipe should get no terminal control codes"


def test_cli_once_against_live_server(live_server):
    server, summary = live_server
    result = subprocess.run(
        [sys.executable, "-m", "ticketflow.cli", "top", "--once", "--interval", "0.1",
         f"127.0.0.1:{server.port}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    read_lines = [line.split() for line in result.stdout.splitlines() if line.startswith("read ")]
    assert read_lines == [["read", str(summary["read"]), "0.0"]]


def test_cli_once_with_no_target_fails(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "ticketflow.cli", "top", "--once", "--interval", "0.05", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert f"down: http://127.0.0.1:{port}/metrics" in result.stdout


def test_cli_rejects_nonpositive_interval():
    result = subprocess.run([sys.executable, "-m", "ticketflow.cli", "top", "--interval", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--interval 0.0: use a positive number of seconds" in result.stderr
