"""Replay a corpus into a Kafka topic at a chosen pace, stamping each record for latency.

`replay` reads a folder of messages, an mbox or a Maildir (`iter_corpus`) and
produces each message as one record, in corpus order, with three headers:

- ``content-type: message/rfc822``;
- ``ticketflow-ingested-at``: the wall-clock time of the send, RFC 3339 UTC with
  microseconds. The flow takes it as the message's ingest time, so the time from
  this stamp to the store write is the end-to-end latency;
- ``traceparent``: a W3C trace context of a new sampled trace per record, so a
  traced flow puts each message's spans into that trace.

The pace is either a rate (`RatePace`, a token bucket: N records per second on
average) or a speedup of the corpus's own Date spacing (`DatePace`: X times
faster than the mail was written). Both send at once when the replay is behind
its schedule, so a slow moment is made up instead of lost. `RatePace` makes up at
most `burst` seconds of it. A replay stops at the end of the corpus, after
`limit` records, after `duration` seconds, or when `stop` is set (SIGINT or
SIGTERM from the command line), and always waits for the records already sent.

Progress goes to stderr (one line refreshed in place on a terminal, a line every
few seconds otherwise); the command prints a JSON summary on stdout.

Errors: an invalid URL or pace raises `ValueError`, a corpus path that cannot
be read raises `CorpusError`, a missing topic raises `TopicNotFoundError`, and an
unreachable cluster raises `KafkaConnectorError`, each before anything is sent.
A record the cluster rejects is counted in `errors` and the replay goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ticketflow.config import load_settings
from ticketflow.connectors.corpus import iter_corpus
from ticketflow.connectors.kafka import (
    CONTENT_TYPE_HEADER,
    INGESTED_AT_HEADER,
    parse_kafka_url,
)
from ticketflow.connectors.kafka_client import describe, new_producer, partitions_from_metadata
from ticketflow.tracing import TRACEPARENT_HEADER, new_traceparent

__all__ = [
    "DatePace",
    "RatePace",
    "ReplaySummary",
    "add_command",
    "message_date",
    "replay",
    "run_command",
]

log = logging.getLogger(__name__)

MESSAGE_CONTENT_TYPE = b"message/rfc822"

# Seconds between two progress lines when stderr is not a terminal.
_LOG_PROGRESS_EVERY = 5.0
# Seconds between two refreshes of the progress line on a terminal.
_TERMINAL_PROGRESS_EVERY = 0.5
# Maximum length of one sleep, so a stop request or the deadline is noticed quickly.
_MAX_SLEEP = 0.1

_DATE_FIELD = re.compile(rb"^date:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


# -- pacing ----------------------------------------------------------------------


class RatePace:
    """A token bucket: `rate` sends per second on average, at most `burst` seconds' worth at once.

    `delay()` returns 0 and takes a token when one is available, so a replay that
    fell behind sends back to back until it has caught up. Otherwise it returns
    the seconds until the next token. The messages themselves play no part.
    The bucket starts with one token and holds at most ``max(1, rate * burst)``:
    a stall longer than `burst` seconds is not made up, which keeps the offered
    load from spiking after it.
    """

    def __init__(
        self, rate: float, burst: float = 1.0, timer: Callable[[], float] = time.monotonic
    ) -> None:
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"--rate {rate}: use a positive number of messages per second")
        if not math.isfinite(burst) or burst <= 0:
            raise ValueError(f"burst {burst}: use a positive number of seconds")
        self.rate = rate
        self._capacity = max(1.0, rate * burst)
        self._timer = timer
        self._tokens = 1.0
        self._last = timer()

    def next_message(self, raw: bytes) -> None:
        """Take the next message to pace; a rate does not look at it."""

    def delay(self) -> float:
        """Return the seconds to wait before the next send; 0 means send now (a token was taken)."""
        now = self._timer()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        # The tolerance absorbs rounding: waiting exactly the returned delay must yield a token.
        if self._tokens >= 1.0 - 1e-9:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def describe(self) -> dict[str, float | None]:
        """Return the pace for the summary."""
        return {"target_rate": self.rate, "speedup": None}


class DatePace:
    """Send each message `speedup` times faster than the gap between its Date and the first one's.

    Message i is due at ``start + (date_i - date_0) / speedup``. A message
    without a readable Date, or dated before the one sent before it, is due
    with that one: the schedule never runs backwards. The schedule starts when
    the first message is taken.
    """

    def __init__(self, speedup: float, timer: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(speedup) or speedup <= 0:
            raise ValueError(
                f"--speedup {speedup}: use a positive factor, e.g. 60 for an hour per minute"
            )
        self.speedup = speedup
        self._timer = timer
        self._start: float | None = None
        self._first_date: datetime | None = None
        self._due = 0.0

    def next_message(self, raw: bytes) -> None:
        """Take the next message: its Date sets when it is due."""
        if self._start is None:
            self._start = self._timer()
        self._due = max(self._due, self._offset(message_date(raw)))

    def delay(self) -> float:
        """Return the seconds until the current message is due; 0 means send now."""
        start = self._timer() if self._start is None else self._start
        return max(0.0, start + self._due - self._timer())

    def _offset(self, date: datetime | None) -> float:
        if date is None:
            return self._due
        if self._first_date is None:
            self._first_date = date
        return (date - self._first_date).total_seconds() / self.speedup

    def describe(self) -> dict[str, float | None]:
        """Return the pace for the summary."""
        return {"target_rate": None, "speedup": self.speedup}


Pace = RatePace | DatePace
# Called with the partition, offset and send time of each acknowledged record.
DeliveryListener = Callable[[int, int, datetime], None]


def message_date(raw: bytes) -> datetime | None:
    """Return the Date field of a message's header section as an aware UTC datetime, or None.

    Only the header section is searched, and a date without a zone is read as UTC.
    """
    end = _HEADER_END.search(raw)
    header = raw[: end.start()] if end else raw
    match = _DATE_FIELD.search(header)
    if match is None:
        return None
    text = match.group(1).decode("latin-1").strip()
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# -- the replay ------------------------------------------------------------------


@dataclass
class ReplaySummary:
    """Counts and times of one replay, printed as the command's JSON summary."""

    topic: str
    bootstrap: str
    pace: dict[str, float | None]
    sent: int = 0
    delivered: int = 0
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    stopped_by: str = "end_of_source"
    first_sent_at: datetime | None = None
    last_sent_at: datetime | None = None
    # Monotonic times of the first and last send, for the achieved rate.
    _first_send: float | None = field(default=None, repr=False)
    _last_send: float | None = field(default=None, repr=False)

    @property
    def rate(self) -> float:
        """Messages per second between the first and the last send; 0 for fewer than two."""
        if self.sent < 2 or self._first_send is None or self._last_send is None:
            return 0.0
        span = self._last_send - self._first_send
        return (self.sent - 1) / span if span > 0 else float(self.sent)

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as plain data for JSON."""
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "errors": self.errors,
            "first_error": self.first_error,
            "rate": round(self.rate, 2),
            **self.pace,
            "seconds": round(self.seconds, 3),
            "stopped_by": self.stopped_by,
            "first_sent_at": _stamp(self.first_sent_at) if self.first_sent_at else None,
            "last_sent_at": _stamp(self.last_sent_at) if self.last_sent_at else None,
            "topic": self.topic,
            "bootstrap": self.bootstrap,
        }


class _Deliveries:
    """Counts delivery reports; librdkafka calls it from `poll` and `flush`."""

    def __init__(self, summary: ReplaySummary, on_delivered: DeliveryListener | None) -> None:
        self._summary = summary
        self._on_delivered = on_delivered

    def callback(self, sent_at: datetime) -> Callable[[KafkaError | None, Message], None]:
        """Return the delivery callback of one record stamped `sent_at`."""
        if self._on_delivered is None:
            return self.on_delivery
        return lambda error, record: self.on_delivery(error, record, sent_at)

    def on_delivery(
        self, error: KafkaError | None, record: Message, sent_at: datetime | None = None
    ) -> None:
        if error is None:
            self._summary.delivered += 1
            partition, offset = record.partition(), record.offset()
            # A delivered record always has both; the checks satisfy the type checker.
            if self._on_delivered is not None and sent_at is not None:
                if partition is not None and offset is not None:
                    self._on_delivered(partition, offset, sent_at)
            return
        self._summary.errors += 1
        if self._summary.first_error is None:
            self._summary.first_error = error.str()
            log.error("delivery to %s failed: %s", self._summary.topic, error.str())


def replay(
    messages: Iterable[bytes],
    bootstrap: str,
    topic: str,
    pace: Pace,
    *,
    limit: int | None = None,
    duration: float | None = None,
    settings: dict[str, Any] | None = None,
    max_message_bytes: int = 25 * 1024 * 1024,
    metadata_timeout: float = 10.0,
    flush_timeout: float = 60.0,
    stop: threading.Event | None = None,
    progress: Callable[[ReplaySummary, bool], None] | None = None,
    on_delivered: DeliveryListener | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    timer: Callable[[], float] = time.monotonic,
) -> ReplaySummary:
    """Produce `messages` to `topic` at `pace`; return what was sent once every record is settled.

    `limit` caps the records sent and `duration` the seconds from the start;
    `stop` ends the replay early. `progress(summary, final)` is called now and
    then while sending, and once with `final` true at the end.
    `on_delivered(partition, offset, sent_at)` is called for each acknowledged
    record, so a benchmark can match what the flow read to when it was sent. `clock` stamps
    the records and `timer` paces them. Raises before sending anything, with the
    errors the module docstring lists. A failed delivery is counted, not raised.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: use 1 or more messages")
    if duration is not None and (not math.isfinite(duration) or duration <= 0):
        raise ValueError(f"--duration {duration}: use a positive number of seconds")

    producer = _producer(bootstrap, topic, settings, max_message_bytes, metadata_timeout)
    summary = ReplaySummary(topic=topic, bootstrap=bootstrap, pace=pace.describe())
    deliveries = _Deliveries(summary, on_delivered)
    stop = stop or threading.Event()
    started = timer()
    deadline = started + duration if duration is not None else math.inf
    next_progress = started

    try:
        for raw in messages:
            if limit is not None and summary.sent >= limit:
                summary.stopped_by = "limit"
                break
            outcome = _wait_until_due(producer, pace, raw, deadline, stop, timer)
            if outcome is not None:
                summary.stopped_by = outcome
                break
            _send(producer, topic, raw, summary, deliveries, clock(), timer())
            if progress is not None and timer() >= next_progress:
                progress(summary, False)
                next_progress = timer() + _TERMINAL_PROGRESS_EVERY
    finally:
        pending = producer.flush(flush_timeout)
        summary.seconds = timer() - started
    if pending:
        summary.errors += pending
        summary.first_error = summary.first_error or (
            f"{pending} records not acknowledged within {flush_timeout} s"
        )
    if progress is not None:
        progress(summary, True)
    log.info("replayed %d records to %s on %s", summary.sent, topic, bootstrap)
    return summary


def _producer(
    bootstrap: str,
    topic: str,
    settings: dict[str, Any] | None,
    max_message_bytes: int,
    timeout: float,
) -> Producer:
    """Create the producer and check that the topic exists, so nothing is sent to a typo."""
    # A few milliseconds of linger let records sent back to back share a request.
    producer = new_producer(bootstrap, {"linger.ms": 5, **(settings or {})}, max_message_bytes)
    partitions_from_metadata(producer, bootstrap, topic, timeout)
    return producer


def _wait_until_due(
    producer: Producer,
    pace: Pace,
    raw: bytes,
    deadline: float,
    stop: threading.Event,
    timer: Callable[[], float],
) -> str | None:
    """Wait until `raw` is due, serving delivery reports; return why the replay must stop, if so."""
    pace.next_message(raw)
    while True:
        if stop.is_set():
            return "signal"
        now = timer()
        if now >= deadline:
            return "duration"
        wait = pace.delay()
        if wait <= 0:
            return None
        # Sleep in producer.poll, which serves delivery reports meanwhile.
        producer.poll(min(wait, deadline - now, _MAX_SLEEP))


def _send(
    producer: Producer,
    topic: str,
    raw: bytes,
    summary: ReplaySummary,
    deliveries: _Deliveries,
    sent_at: datetime,
    now: float,
) -> None:
    headers: list[tuple[str, str | bytes | None]] = [
        (CONTENT_TYPE_HEADER, MESSAGE_CONTENT_TYPE),
        (INGESTED_AT_HEADER, _stamp(sent_at).encode("ascii")),
        (TRACEPARENT_HEADER, new_traceparent().encode("ascii")),
    ]
    while True:
        try:
            producer.produce(topic, raw, headers=headers, on_delivery=deliveries.callback(sent_at))
            break
        except BufferError:
            # librdkafka's queue is full: wait for acknowledgements to make room.
            producer.poll(_MAX_SLEEP)
        except KafkaException as exc:
            summary.errors += 1
            summary.first_error = summary.first_error or describe(exc)
            log.error("cannot send a record of %d bytes to %s: %s", len(raw), topic, describe(exc))
            return
    producer.poll(0)

    summary.sent += 1
    if summary._first_send is None:
        summary._first_send = now
        summary.first_sent_at = sent_at
    summary._last_send = now
    summary.last_sent_at = sent_at


def _stamp(moment: datetime) -> str:
    """Format an aware time as RFC 3339 UTC with microseconds and a Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- progress ----------------------------------------------------------------------


class ProgressLine:
    """Writes a replay's progress: refreshed in place on a terminal, else a line now and then."""

    def __init__(self, stream: TextIO, timer: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._terminal = stream.isatty()
        self._timer = timer
        self._started = timer()
        self._next_line = self._started + _LOG_PROGRESS_EVERY

    def __call__(self, summary: ReplaySummary, final: bool) -> None:
        now = self._timer()
        if not self._terminal and not final and now < self._next_line:
            return
        self._next_line = now + _LOG_PROGRESS_EVERY
        elapsed = max(now - self._started, 1e-9)
        target = summary.pace["target_rate"]
        goal = f", target {target:,.0f}/s" if target else f", speedup {summary.pace['speedup']:g}x"
        line = (
            f"replay: sent {summary.sent:,} ({summary.sent / elapsed:,.1f}/s{goal}), "
            f"delivered {summary.delivered:,}, errors {summary.errors:,}, {elapsed:,.1f} s"
        )
        if self._terminal:
            self._stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


# -- the command -------------------------------------------------------------------


def add_command(commands: Any) -> None:
    """Add the `replay` subcommand to the `ticketflow` command's subparsers."""
    command = commands.add_parser(
        "replay",
        help="produce a corpus to a Kafka topic at a chosen rate, for load tests",
        description="Read a folder of messages, an mbox or a Maildir and produce each message to "
        "a Kafka topic, paced by --rate or --speedup, with the headers content-type: "
        "message/rfc822 and ticketflow-ingested-at (the send time, for latency). Progress goes "
        "to stderr and a JSON summary to stdout.",
    )
    command.add_argument("source", type=Path, help="a folder of messages, an mbox or a Maildir")
    command.add_argument(
        "--to",
        required=True,
        metavar="kafka://HOST:PORT/TOPIC",
        help="the topic to produce to; it must exist",
    )
    pace = command.add_mutually_exclusive_group(required=True)
    pace.add_argument("--rate", type=float, help="messages per second (a token bucket)")
    pace.add_argument(
        "--speedup", type=float, help="replay the corpus's own Date spacing this many times faster"
    )
    command.add_argument("--limit", type=int, help="stop after this many messages")
    command.add_argument("--duration", type=float, help="stop after this many seconds")
    command.add_argument(
        "--burst",
        type=float,
        default=1.0,
        help="with --rate: seconds of delay a replay may make up at once (default 1)",
    )
    command.add_argument(
        "--config", type=Path, help="TOML config file, for [kafka] client settings"
    )
    command.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the cluster's metadata (default 10)",
    )
    command.add_argument("--quiet", action="store_true", help="no progress on stderr")
    command.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run `ticketflow replay`; return 1 when a record was not delivered."""
    settings = load_settings(args.config)
    address = parse_kafka_url(args.to)
    pace: Pace = (
        RatePace(args.rate, args.burst) if args.rate is not None else DatePace(args.speedup)
    )
    messages = _corpus_bytes(args.source)

    stop = threading.Event()
    previous = _install_stop(stop)
    try:
        summary = replay(
            messages,
            address.bootstrap,
            address.topic,
            pace,
            limit=args.limit,
            duration=args.duration,
            settings=settings.kafka.client_settings(),
            max_message_bytes=settings.limits.max_message_bytes,
            metadata_timeout=args.connect_timeout,
            stop=stop,
            progress=None if args.quiet else ProgressLine(sys.stderr),
        )
    finally:
        _restore_signals(previous)
    print(json.dumps(summary.as_dict()), flush=True)
    return 1 if summary.errors else 0


def _corpus_bytes(path: Path) -> Iterator[bytes]:
    """Open the corpus now, so a bad path fails before the cluster is contacted."""
    records = iter_corpus(path)
    return (record.raw for record in records)


def _install_stop(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {
        number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)
    }
    for number in previous:
        signal.signal(number, lambda _number, _frame: stop.set())
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)
