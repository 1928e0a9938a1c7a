"""`ticketflow top`: a live terminal view of running flows, read from their /metrics.

Each refresh scrapes every URL (one per process of a cluster), computes rates
over the time since the previous scrape, adds the processes up, and prints one
frame: per-stage rates and totals, email-to-ticket latency percentiles (over the
last interval and since the processes started), the run summary's counts, dead
letters by reason, store writes and Kafka lag. A target whose scrape fails is
listed as down and left out of the sums.

Percentiles are read from the histogram's buckets the way PromQL's
`histogram_quantile` reads them: linear inside the bucket the rank falls in, and
the largest finite bound when it falls in the +Inf bucket. They are therefore
only as fine as the buckets (`ticketflow.metrics.LATENCY_BUCKETS`).
"""

from __future__ import annotations

import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from ticketflow.metrics import OUTCOME_FIELDS, STAGES

DEFAULT_URL = "http://127.0.0.1:9464/metrics"
LATENCY = "ticketflow_email_to_ticket_latency_seconds"
SLO_SECONDS = 30.0
SLO_TARGET = 0.95
FETCH_TIMEOUT = 5.0

# One scraped series: its name and its labels, sorted.
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[SeriesKey, float]
Fetch = Callable[[str, float], str]


@dataclass(frozen=True)
class Scrape:
    """The result of scraping one URL once: samples, or the error that stopped the scrape."""

    url: str
    taken_at: float
    samples: Samples | None
    error: str = ""


def normalize_url(url: str) -> str:
    """Accept `HOST:PORT` and `http://HOST:PORT` as well as a full /metrics URL."""
    if "://" not in url:
        url = f"http://{url}"
    scheme, _, rest = url.partition("://")
    if "/" not in rest:
        url = f"{scheme}://{rest}/metrics"
    return url


def fetch_text(url: str, timeout: float) -> str:
    """Return the body of an HTTP GET of `url`; raises `OSError` when it fails."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user's URL
        return response.read().decode("utf-8")


def parse_samples(text: str) -> Samples:
    """Return every sample of a Prometheus text exposition, keyed by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(
    url: str, fetch: Fetch = fetch_text, clock: Callable[[], float] = time.monotonic
) -> Scrape:
    """Scrape one URL; a failure becomes a `Scrape` with the error, never an exception."""
    taken_at = clock()
    try:
        return Scrape(url, taken_at, parse_samples(fetch(url, FETCH_TIMEOUT)))
    except (OSError, ValueError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Scrape(url, taken_at, None, str(reason))


# -- reading the samples ---------------------------------------------------------------


def total(samples: Samples, name: str, **labels: str) -> float:
    """Return the sum of the series called `name` whose labels include `labels`."""
    wanted = labels.items()
    return sum(
        value for (series, series_labels), value in samples.items()
        if series == name and wanted <= dict(series_labels).items()
    )


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """Return the series called `name` summed per value of `label`."""
    sums: dict[str, float] = {}
    wanted = labels.items()
    for (series, series_labels), value in samples.items():
        label_map = dict(series_labels)
        if series == name and wanted <= label_map.items() and label in label_map:
            sums[label_map[label]] = sums.get(label_map[label], 0.0) + value
    return sums


def buckets(samples: Samples, histogram: str) -> list[tuple[float, float]]:
    """Return a histogram's cumulative buckets, summed over its other labels, by upper bound."""
    per_bound = by_label(samples, f"{histogram}_bucket", "le")
    return sorted((float(bound), count) for bound, count in per_bound.items())


def histogram_quantile(quantile: float, cumulative: list[tuple[float, float]]) -> float | None:
    """Estimate a quantile from cumulative buckets, as PromQL's histogram_quantile does.

    Returns None when the histogram is empty. The estimate interpolates linearly
    inside the bucket the rank falls in (from 0 for the first bucket), and is the
    largest finite bound when the rank falls in the +Inf bucket.
    """
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = quantile * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def increase(before: Samples, after: Samples) -> Samples:
    """Return how much each series grew between two scrapes of one target.

    A series that went down was reset (the process restarted), so its growth
    is its new value, as in PromQL's `increase`.
    """
    grown: Samples = {}
    for key, value in after.items():
        previous = before.get(key, 0.0)
        grown[key] = value - previous if value >= previous else value
    return grown


def merge(parts: Iterable[Samples]) -> Samples:
    """Add the samples of several targets together, series by series."""
    merged: Samples = {}
    for samples in parts:
        for key, value in samples.items():
            merged[key] = merged.get(key, 0.0) + value
    return merged


# -- the frame -------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """The numbers one frame shows: totals now, and growth over the last `seconds`."""

    now: Samples
    window: Samples
    seconds: float
    up: list[str]
    down: list[tuple[str, str]]


def build_view(previous: list[Scrape], current: list[Scrape]) -> View:
    """Combine two rounds of scrapes (same URLs, same order) into one `View`."""
    now_parts, window_parts, spans = [], [], []
    up, down = [], []
    for before, after in zip(previous, current, strict=True):
        if after.samples is None:
            down.append((after.url, after.error))
            continue
        up.append(after.url)
        now_parts.append(after.samples)
        if before.samples is not None:
            window_parts.append(increase(before.samples, after.samples))
            spans.append(after.taken_at - before.taken_at)
    seconds = max(spans) if spans else 0.0
    return View(merge(now_parts), merge(window_parts), seconds, up, down)


def render(view: View, interval: float, wall_clock: datetime | None = None) -> str:
    """Format one frame of `ticketflow top` as text."""
    moment = (wall_clock or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    targets = len(view.up) + len(view.down)
    lines = [
        f"ticketflow top · {len(view.up)} of {targets} targets up · rates over "
        f"{view.seconds or interval:.1f} s · {moment}",
        "",
    ]
    lines += _stage_lines(view)
    lines.append("")
    lines += _latency_lines(view)
    lines.append("")
    lines += _outcome_lines(view)
    lines.append("")
    lines += _error_lines(view)
    for url, error in view.down:
        lines.append(f"down: {url} ({error})")
    return "\n".join(lines)


def _rate(view: View, amount: float) -> float:
    return amount / view.seconds if view.seconds > 0 else 0.0


def _stage_lines(view: View) -> list[str]:
    header = (f"{'stage':<12} {'in/s':>9} {'out/s':>9} {'errored/s':>9} "
              f"{'in':>10} {'out':>10} {'errored':>8} {'busy':>6}")
    lines = [header]
    for stage in STAGES:
        received = total(view.now, "ticketflow_stage_messages_in_total", stage=stage)
        emitted = total(view.now, "ticketflow_stage_messages_out_total", stage=stage)
        errored = total(view.now, "ticketflow_stage_messages_errored_total", stage=stage)
        window = {
            name: _rate(view, total(view.window, f"ticketflow_stage_{name}_total", stage=stage))
            for name in ("messages_in", "messages_out", "messages_errored", "seconds")
        }
        lines.append(
            f"{stage:<12} {window['messages_in']:>9.1f} {window['messages_out']:>9.1f} "
            f"{window['messages_errored']:>9.1f} {received:>10.0f} {emitted:>10.0f} "
            f"{errored:>8.0f} {window['seconds']:>6.1%}"
        )
    return lines


def _latency_lines(view: View) -> list[str]:
    lines = ["email to ticket latency"]
    for label, samples in ((f"last {view.seconds:.0f} s", view.window), ("since start", view.now)):
        cumulative = buckets(samples, LATENCY)
        count = cumulative[-1][1] if cumulative else 0.0
        quantiles = "   ".join(
            f"p{round(q * 100)} {_seconds(histogram_quantile(q, cumulative))}"
            for q in (0.5, 0.95, 0.99)
        )
        lines.append(f"  {label:<12} {quantiles}   ({count:.0f} tickets)")

    cumulative = buckets(view.now, LATENCY)
    within = dict(cumulative).get(SLO_SECONDS)
    if cumulative and cumulative[-1][1] > 0 and within is not None:
        share = within / cumulative[-1][1]
        verdict = "met" if share >= SLO_TARGET else "MISSED"
        lines.append(
            f"  under {SLO_SECONDS:.0f} s: {share:.1%} since start "
            f"(SLO {SLO_TARGET:.0%}: {verdict})"
        )
    return lines


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _outcome_lines(view: View) -> list[str]:
    now = by_label(view.now, "ticketflow_outcomes_total", "outcome")
    window = by_label(view.window, "ticketflow_outcomes_total", "outcome")
    lines = [f"{'outcome':<18} {'total':>10} {'/s':>9}"]
    for name in OUTCOME_FIELDS:
        rate = _rate(view, window.get(name, 0.0))
        lines.append(f"{name:<18} {now.get(name, 0.0):>10.0f} {rate:>9.1f}")
    return lines


def _error_lines(view: View) -> list[str]:
    letters = by_label(view.now, "ticketflow_dead_letters_total", "reason")
    listed = ", ".join(
        f"{reason} {count:.0f}" for reason, count in sorted(letters.items()) if count
    )
    lines = [f"dead letters: {listed or 'none'}"]

    ok = total(view.now, "ticketflow_store_write_requests_total", result="ok")
    failed = total(view.now, "ticketflow_store_write_requests_total", result="error")
    retries = total(view.now, "ticketflow_store_write_retries_total")
    p95 = histogram_quantile(0.95, buckets(view.now, "ticketflow_store_write_seconds"))
    lines.append(f"store writes: {ok:.0f} ok, {failed:.0f} failed, {retries:.0f} retries, "
                 f"p95 {_seconds(p95)}")

    lag = _lag_by_partition(view.now)
    if lag:
        parts = ", ".join(f"{name} {value:.0f}" for name, value in lag.items())
        lines.append(f"kafka lag: {parts} (total {sum(lag.values()):.0f})")
    return lines


def _lag_by_partition(samples: Samples) -> dict[str, float]:
    lag: dict[str, float] = {}
    for (series, labels), value in sorted(samples.items()):
        if series == "ticketflow_kafka_consumer_lag":
            label_map: Mapping[str, str] = dict(labels)
            lag[f"{label_map.get('topic', '?')}#{label_map.get('partition', '?')}"] = value
    return lag


# -- the loop --------------------------------------------------------------------------


CLEAR_SCREEN = "\x1b[H\x1b[J"


def run_top(
    urls: list[str],
    *,
    interval: float = 2.0,
    once: bool = False,
    stream: IO[str] | None = None,
    fetch: Fetch = fetch_text,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print frames every `interval` seconds until Ctrl-C; with `once`, print one and return.

    Each frame covers one interval, so `once` takes two scrapes `interval` apart.
    A terminal gets each frame in place of the previous one; a pipe gets them
    one after another. Returns 1 when every URL failed the last scrape, else 0.
    """
    out = stream or sys.stdout
    targets = [normalize_url(url) for url in urls]
    in_place = out.isatty()
    previous = [scrape(url, fetch) for url in targets]
    try:
        while True:
            sleep(interval)
            current = [scrape(url, fetch) for url in targets]
            view = build_view(previous, current)
            frame = render(view, interval)
            out.write((CLEAR_SCREEN if in_place else "") + frame + "\n")
            out.flush()
            if once:
                return 0 if view.up else 1
            if not in_place:
                out.write("\n")
            previous = current
    except KeyboardInterrupt:
        return 0
