"""Plumbing shared by the Kafka source and producers: settings, metadata, errors, headers.

Everything public here is re-exported by `ticketflow.connectors.kafka`; import it
from there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ticketflow.config import LimitsSettings

log = logging.getLogger("ticketflow.connectors.kafka")

# librdkafka's own log lines, routed into Python logging instead of stderr.
librdkafka_log = logging.getLogger("ticketflow.connectors.kafka.librdkafka")


class _RepeatFilter(logging.Filter):
    """Let one copy of a log line through per `interval` seconds; count the rest.

    librdkafka logs the same connection failure for every retry, hundreds of
    times a second while a broker is down; the next copy that gets through says
    how many were held back.
    """

    def __init__(self, interval: float = 30.0, max_lines: int = 1000) -> None:
        super().__init__()
        self._interval = interval
        self._max_lines = max_lines
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        line = record.getMessage()
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(line, (float("-inf"), 0))
            if now - last < self._interval:
                self._seen[line] = (last, held + 1)
                return False
            if len(self._seen) >= self._max_lines:
                self._seen.clear()
            self._seen[line] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self._interval:.0f} s)"
        return True


librdkafka_log.addFilter(_RepeatFilter())

DEFAULT_MAX_MESSAGE_BYTES = LimitsSettings().max_message_bytes

# Settings the connector sets itself; giving them in the librdkafka settings is an error.
OWNED_SETTINGS = frozenset(
    {"bootstrap.servers", "enable.auto.commit", "enable.auto.offset.store", "group.id"}
)

# librdkafka's maximum for max.partition.fetch.bytes and message.max.bytes
# (CONFIGURATION.md of librdkafka 2.x).
LIBRDKAFKA_MAX_FETCH_BYTES = 1_000_000_000
# Room for record and batch framing on top of a record's own bytes.
FRAMING_BYTES = 64 * 1024

# librdkafka requires a group.id for every consumer, even one that only assigns
# partitions. This one is never joined and nothing is committed under it.
_UNUSED_GROUP_ID = "ticketflow-no-group"

# Seconds between two log lines for the same repeated error.
_ERROR_LOG_INTERVAL = 30.0


class KafkaConnectorError(RuntimeError):
    """Kafka could not be read or written; the message names the cluster and the topic."""


class TopicNotFoundError(KafkaConnectorError):
    """The topic does not exist on the cluster."""


def new_consumer(bootstrap: str, settings: Mapping[str, Any] | None, **extra: Any) -> Consumer:
    """Create an assign-only consumer that never creates topics or commits offsets.

    `settings` override the defaults here and `extra` overrides `settings`, except
    for the settings the connector owns (`OWNED_SETTINGS`), which raise `ValueError`.
    An unknown or invalid librdkafka setting also raises `ValueError`.
    """
    check_owned_settings(settings)
    config: dict[str, Any] = {
        "auto.offset.reset": "earliest",
        "allow.auto.create.topics": False,
        "logger": librdkafka_log,
    }
    config.update(settings or {})
    config.update(extra)
    config.update(
        {
            "bootstrap.servers": bootstrap,
            "group.id": _UNUSED_GROUP_ID,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )
    try:
        return Consumer(config)
    except KafkaException as exc:
        raise ValueError(f"invalid librdkafka consumer settings: {describe(exc)}") from exc


def new_producer(
    bootstrap: str, settings: Mapping[str, Any] | None, max_message_bytes: int
) -> Producer:
    """Create a producer that never creates topics and accepts records of `max_message_bytes`.

    The size counts key, value and headers. `settings` override the defaults here;
    an unknown or invalid librdkafka setting raises `ValueError`.
    """
    if max_message_bytes < 1:
        raise ValueError(f"max_message_bytes must be a positive integer, got {max_message_bytes}")
    check_owned_settings(settings)
    message_max = min(max_message_bytes + FRAMING_BYTES, LIBRDKAFKA_MAX_FETCH_BYTES)
    config: dict[str, Any] = {
        "allow.auto.create.topics": False,
        "message.max.bytes": message_max,
        # librdkafka rejects a batch.size above message.max.bytes; its default is 1 MB.
        "batch.size": min(1_000_000, message_max),
        "logger": librdkafka_log,
    }
    config.update(settings or {})
    config["bootstrap.servers"] = bootstrap
    try:
        return Producer(config)
    except KafkaException as exc:
        raise ValueError(f"invalid librdkafka producer settings: {describe(exc)}") from exc


def check_owned_settings(settings: Mapping[str, Any] | None) -> None:
    """Raise `ValueError` if `settings` contain a setting the connector sets itself."""
    owned = sorted(OWNED_SETTINGS.intersection(settings or {}))
    if owned:
        raise ValueError(
            f"librdkafka setting(s) {', '.join(owned)} are set by the Kafka connector "
            "itself; remove them from the settings (brokers go in the kafka:// URL)"
        )


def topic_partitions(
    bootstrap: str,
    topic: str,
    settings: Mapping[str, Any] | None = None,
    *,
    timeout: float = 10.0,
) -> list[int]:
    """Return the partition ids of `topic`, sorted, from the cluster's metadata.

    The request never creates the topic, even where the broker auto-creates topics.
    Raises `TopicNotFoundError` when the topic does not exist and
    `KafkaConnectorError` when the cluster does not respond within `timeout` seconds.
    """
    consumer = new_consumer(bootstrap, settings)
    try:
        return partitions_from_metadata(consumer, bootstrap, topic, timeout)
    finally:
        consumer.close()


def partitions_from_metadata(
    client: Consumer | Producer, bootstrap: str, topic: str, timeout: float
) -> list[int]:
    """Return the partition ids of `topic` from `client`'s metadata; see `topic_partitions`.

    `client` must have been created with ``allow.auto.create.topics=false``, as
    `new_consumer` and `new_producer` do, so that the request creates nothing.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(deadline - time.monotonic(), 0.1)
        try:
            metadata = client.list_topics(topic, timeout=remaining)
        except KafkaException as exc:
            raise KafkaConnectorError(
                f"cannot read the metadata of topic {topic!r} from Kafka at {bootstrap}: "
                f"{describe(exc)}; check that the brokers are reachable and that the "
                "security settings (security.protocol, sasl.*) are right"
            ) from exc

        topic_metadata = metadata.topics.get(topic)
        error = None if topic_metadata is None else topic_metadata.error
        if topic_metadata is not None and error is None:
            return sorted(topic_metadata.partitions)

        if error is None or error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise TopicNotFoundError(
                f"topic {topic!r} does not exist on Kafka at {bootstrap}; create it "
                "or correct the topic name"
            )
        if not error.retriable() or time.monotonic() >= deadline:
            raise KafkaConnectorError(
                f"cannot read the metadata of topic {topic!r} from Kafka at {bootstrap}: "
                f"{error.str()}"
            )
        log.info("metadata of topic %s on %s: %s; retrying", topic, bootstrap, error.str())
        time.sleep(0.2)


def read_partition_to_end(
    consumer: Consumer, bootstrap: str, topic: str, partition: int, timeout: float
) -> list[Message]:
    """Read one partition from its low watermark to the end offset seen at the start.

    The end is the larger of the listed high watermark and the one in the first fetch
    response, because Tansu 0.6.0 lists the last batch's base offset plus one.
    Raises `KafkaConnectorError` if the records do not arrive within `timeout` seconds.
    """
    target = TopicPartition(topic, partition)
    try:
        low, end = consumer.get_watermark_offsets(target, timeout=timeout)
    except KafkaException as exc:
        raise KafkaConnectorError(
            f"cannot read the offsets of {topic}#{partition} from Kafka at {bootstrap}: "
            f"{describe(exc)}"
        ) from exc
    if end <= low:
        return []

    consumer.assign([TopicPartition(topic, partition, low)])
    records: list[Message] = []
    end_confirmed = False
    deadline = time.monotonic() + timeout
    while not (end_confirmed and position(consumer, target) >= end):
        if time.monotonic() > deadline:
            raise KafkaConnectorError(
                f"timed out after {timeout} s reading {topic}#{partition} from Kafka at "
                f"{bootstrap}: got {len(records)} records, expected offsets up to {end - 1}"
            )
        batch = consumer.consume(500, 0.1)
        if not end_confirmed:
            _, fetched_end = consumer.get_watermark_offsets(target, cached=True)
            if fetched_end >= 0:
                end, end_confirmed = max(end, fetched_end), True
        for record in batch:
            offset = record.offset()
            if record.error() is None and offset is not None and offset < end:
                records.append(record)
    return records


def position(consumer: Consumer, target: TopicPartition) -> int:
    """Return the offset after the last record consumed, or -1001 before the first."""
    [current] = consumer.position([target])
    return int(current.offset)


def header_map(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Map lower-cased header names to their first non-null value, decoded as UTF-8.

    Invalid UTF-8 is replaced with U+FFFD; surrounding whitespace is stripped.
    """
    result: dict[str, str] = {}
    for name, value in headers or ():
        key = name.lower()
        if key in result or value is None:
            continue
        result[key] = value.decode("utf-8", errors="replace").strip()
    return result


def describe(exc: KafkaException) -> str:
    """Return librdkafka's text for the error inside `exc`."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return str(error.str())
    return str(exc)


class RepeatedErrorLog:
    """Logs an error when it first occurs, then at most once per interval.

    Repeats in between are counted and the count goes into the next line, so a broker
    outage produces a line every 30 seconds instead of a flood. Fatal errors are
    always logged.
    """

    def __init__(self, where: str) -> None:
        self._where = where
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, error: KafkaError) -> None:
        """Log a librdkafka error; librdkafka retries every error that is not fatal."""
        text = error.str() if error.fatal() else f"{error.str()}; librdkafka retries"
        self.report_text(error.name(), text, fatal=error.fatal())

    def report_text(self, code: str, text: str, *, fatal: bool = False) -> None:
        """Log `text` under `code`, unless `code` was logged less than 30 s ago."""
        now = time.monotonic()
        last = self._last_logged.get(code)
        if not fatal and last is not None and now - last < _ERROR_LOG_INTERVAL:
            self._suppressed[code] = self._suppressed.get(code, 0) + 1
            return

        repeats = self._suppressed.pop(code, 0)
        self._last_logged[code] = now
        log.log(
            logging.ERROR if fatal else logging.WARNING,
            "Kafka %s: %s (%s)%s",
            self._where, text, code,
            f", {repeats} more since the last report" if repeats else "",
        )
