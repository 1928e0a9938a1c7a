"""Read mail from a Kafka topic, and write records and dead letters to one.

Addresses have the form ``kafka://HOST:PORT/TOPIC``, with several brokers as
``kafka://HOST1:PORT1,HOST2:PORT2/TOPIC``; `parse_kafka_url` splits one into the
bootstrap list and the topic.

`KafkaSource` is a Bytewax input with one partition per Kafka partition. It assigns
partitions explicitly and never joins a consumer group or commits offsets: the
resume state of each partition is the next offset to read, and it lives in the
Bytewax recovery store. Each record becomes a `RawMessage` (`record_to_raw_message`):

- ``source``: ``kafka://BOOTSTRAP/TOPIC#PARTITION@OFFSET``;
- ``raw``: the record's value (a null value becomes ``b""``);
- ``ingested_at``: the ``ticketflow-ingested-at`` header (RFC 3339 with ``Z`` or an
  offset), else the record's timestamp, else the injected clock;
- ``content_type`` and ``traceparent``: the ``content-type`` and ``traceparent``
  headers, if present.

Header names are matched case-insensitively and the first occurrence wins.

With ``drain=True`` a partition ends at its high watermark at the start of the
run: the larger of the one listed when the partition is built and the one in its
first fetch response. A run thus reads what the topic held when it started and stops.
Without it the partition keeps tailing. Each partition reports its lag (high
watermark minus next offset) through `KafkaPartition.partition_lag`, and
`current_lag` collects the lag of every partition open in this process.

A record larger than the mail size limit is still read and emitted, so that the
flow can dead-letter it as ``too_large``: the consumer's fetch sizes leave room for
records up to twice the limit (`fetch_bytes_for`).

Errors: a missing topic raises `TopicNotFoundError` and an unreachable cluster
raises `KafkaConnectorError`, both naming the bootstrap list and the topic. Invalid
librdkafka settings raise `ValueError`. Errors that librdkafka reports while
reading (a broker down, a lost connection) are logged with the topic and
partition, at most every 30 s per kind, and librdkafka keeps retrying. A fatal
error raises `KafkaConnectorError` from the next batch.

`produce_records`, `DeadLetterTopic` and `read_dead_letters` come from
`ticketflow.connectors.kafka_produce` and are re-exported here.

Limitations:

- Drain stops at the high watermark. Under ``isolation.level=read_committed`` (the
  librdkafka default) records of a transaction still open there are not delivered
  until it ends, so drain waits for it.
- A record larger than ``receive.message.max.bytes`` cannot be fetched. librdkafka
  logs an error naming that setting and the partition stops advancing. Raise the
  fetch settings in the librdkafka settings when the topic allows larger records.
- Partition keys of the Bytewax source name the topic but not the cluster, so a
  recovery store reused against another cluster resumes at offsets that belong to
  the first one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from ticketflow.connectors.kafka_client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAMING_BYTES,
    LIBRDKAFKA_MAX_FETCH_BYTES,
    KafkaConnectorError,
    RepeatedErrorLog,
    TopicNotFoundError,
    check_owned_settings,
    describe,
    header_map,
    new_consumer,
    position,
    topic_partitions,
)
from ticketflow.connectors.kafka_produce import (
    DETAIL_HEADER,
    MESSAGE_HEADERS_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    DeadLetterTopic,
    produce_records,
    read_dead_letters,
)
from ticketflow.model import RawMessage, utc_now

__all__ = [
    "CONTENT_TYPE_HEADER",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DETAIL_HEADER",
    "INGESTED_AT_HEADER",
    "MESSAGE_HEADERS_HEADER",
    "REASON_HEADER",
    "SOURCE_HEADER",
    "SOURCE_OFFSET_HEADER",
    "SOURCE_PARTITION_HEADER",
    "TRACEPARENT_HEADER",
    "DeadLetterTopic",
    "KafkaAddress",
    "KafkaConnectorError",
    "KafkaPartition",
    "KafkaSource",
    "TopicNotFoundError",
    "current_lag",
    "fetch_bytes_for",
    "parse_kafka_url",
    "parse_rfc3339",
    "produce_records",
    "read_dead_letters",
    "record_to_raw_message",
    "topic_partitions",
]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500

INGESTED_AT_HEADER = "ticketflow-ingested-at"
CONTENT_TYPE_HEADER = "content-type"
TRACEPARENT_HEADER = "traceparent"

_EXPECTED_URL = "kafka://HOST:PORT/TOPIC (several brokers: kafka://HOST1:PORT1,HOST2:PORT2/TOPIC)"

# Topic names Kafka accepts: ASCII letters, digits, ".", "_" and "-", at most 249.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
# RFC 3339 section 5.6 date-time; a space may replace the "T", as its note allows.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_BROKER = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")


# --- addresses -----------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaAddress:
    """A topic on a cluster: the `bootstrap.servers` list and the topic name."""

    bootstrap: str
    topic: str

    def url(self) -> str:
        """Return the address as a ``kafka://`` URL."""
        return f"kafka://{self.bootstrap}/{self.topic}"


def parse_kafka_url(url: str) -> KafkaAddress:
    """Split ``kafka://HOST:PORT[,HOST:PORT...]/TOPIC`` into bootstrap list and topic.

    Every broker needs an explicit port (1 to 65535), and an IPv6 host goes in
    brackets. The topic must be a legal Kafka topic name. Anything else raises
    `ValueError` naming the URL and the expected form.

    >>> parse_kafka_url("kafka://k1:9092,k2:9092/mail")
    KafkaAddress(bootstrap='k1:9092,k2:9092', topic='mail')
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() != "kafka":
        raise _invalid_url(url, "the scheme must be kafka://")

    brokers, slash, topic = rest.partition("/")
    if not slash or not topic:
        raise _invalid_url(url, "the topic is missing")
    if not is_topic_name(topic):
        raise _invalid_url(
            url,
            f"{topic!r} is not a valid topic name (use 1 to 249 ASCII letters, digits, "
            "'.', '_' or '-')",
        )

    if not brokers:
        raise _invalid_url(url, "no broker is given")
    for broker in brokers.split(","):
        _check_broker(url, broker)

    return KafkaAddress(bootstrap=brokers, topic=topic)


def is_topic_name(name: str) -> bool:
    """Return whether Kafka accepts `name` as a topic name."""
    return _TOPIC_NAME.fullmatch(name) is not None and name not in {".", ".."}


def _check_broker(url: str, broker: str) -> None:
    match = _BROKER.fullmatch(broker)
    if match is None:
        raise _invalid_url(url, f"broker {broker!r} is not HOST:PORT")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise _invalid_url(url, f"port {port} of broker {broker!r} is out of range 1-65535")


def _invalid_url(url: str, reason: str) -> ValueError:
    return ValueError(f"invalid Kafka URL {url!r}: {reason}; expected {_EXPECTED_URL}")


# --- records -------------------------------------------------------------------------


_invalid_header_log = RepeatedErrorLog("records")


def record_to_raw_message(
    record: Message, *, bootstrap: str, clock: Callable[[], datetime] = utc_now
) -> RawMessage:
    """Turn one consumed record into a `RawMessage`, as described in the module docstring.

    An ``ticketflow-ingested-at`` header that is not an RFC 3339 time with an offset
    is logged (at most every 30 s) and the record's timestamp is used instead.
    """
    headers = header_map(record.headers())
    return RawMessage(
        source=f"kafka://{bootstrap}/{record.topic()}#{record.partition()}@{record.offset()}",
        raw=record.value() or b"",
        ingested_at=_ingested_at(headers, record.timestamp(), clock),
        content_type=headers.get(CONTENT_TYPE_HEADER),
        traceparent=headers.get(TRACEPARENT_HEADER),
    )


def _ingested_at(
    headers: dict[str, str], timestamp: tuple[int, int], clock: Callable[[], datetime]
) -> datetime:
    stamped = headers.get(INGESTED_AT_HEADER)
    if stamped is not None:
        moment = parse_rfc3339(stamped)
        if moment is not None:
            return moment
        _invalid_header_log.report_text(
            "invalid_ingested_at",
            f"header {INGESTED_AT_HEADER} {stamped!r} is not an RFC 3339 time with an "
            "offset; using the record timestamp",
        )

    kind, millis = timestamp
    if kind != TIMESTAMP_NOT_AVAILABLE and millis >= 0:
        return datetime.fromtimestamp(millis / 1000, UTC)
    return clock()


def parse_rfc3339(text: str) -> datetime | None:
    """Parse an RFC 3339 date-time with ``Z`` or a numeric offset into UTC; None if invalid.

    >>> parse_rfc3339("2026-04-30T12:01:22+02:00")
    datetime.datetime(2026, 4, 30, 10, 1, 22, tzinfo=datetime.timezone.utc)
    """
    if _RFC3339.fullmatch(text) is None:
        return None
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC)


# The consumer's fetch.wait.max.ms unless [kafka] sets it.
DEFAULT_FETCH_WAIT_MS = 50


def fetch_bytes_for(max_message_bytes: int) -> int:
    """Return a consumer fetch size that lets a record of twice the size limit through.

    A record over the limit must still reach the flow to be dead-lettered, so the
    fetch size leaves room above the limit. NOTE: twice the limit is a guess at how
    far over it a topic lets records grow. Larger ones stall their partition (see
    the module's Limitations).
    """
    size = 2 * max_message_bytes + 1024 * 1024
    return min(size, LIBRDKAFKA_MAX_FETCH_BYTES)


# --- the source ----------------------------------------------------------------------


_lag_lock = threading.Lock()
_lag_registry: dict[tuple[str, int], int] = {}


def current_lag() -> dict[tuple[str, int], int]:
    """Return the lag of every Kafka partition open in this process, by (topic, partition).

    Lag is the partition's high watermark minus the next offset to read, as of the
    partition's last batch. A partition leaves the registry when it closes.
    """
    with _lag_lock:
        return dict(_lag_registry)


class KafkaSource(FixedPartitionedSource[RawMessage, int]):
    """A Bytewax input reading one topic, one partition per Kafka partition.

    Partition keys are ``TOPIC#PARTITION`` and each partition's state is the next
    offset to read. A new partition (no resume state) starts at the partition's
    low watermark. No consumer group is joined and no offset is committed, so
    several runs may read the same topic without affecting one another.

    `settings` are librdkafka settings passed through by their own names
    (``security.protocol``, ``sasl.mechanisms``, ``sasl.username``...). They override
    the connector's defaults, such as the fetch sizes. The settings the connector
    owns (``bootstrap.servers``, ``group.id``, ``enable.auto.commit``,
    ``enable.auto.offset.store``) raise `ValueError`.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        settings: Mapping[str, Any] | None = None,
        drain: bool,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metadata_timeout: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not bootstrap:
            raise ValueError("bootstrap must name at least one broker as HOST:PORT")
        if not is_topic_name(topic):
            raise ValueError(f"invalid Kafka topic name {topic!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if max_message_bytes < 1:
            raise ValueError(
                f"max_message_bytes must be a positive integer, got {max_message_bytes}"
            )
        check_owned_settings(settings)

        self._bootstrap = bootstrap
        self._topic = topic
        self._settings = dict(settings or {})
        self._drain = drain
        self._batch_size = batch_size
        self._fetch_bytes = fetch_bytes_for(max_message_bytes)
        self._metadata_timeout = metadata_timeout
        self._clock = clock

    def list_parts(self) -> list[str]:
        """List ``TOPIC#PARTITION`` for every partition of the topic, from its metadata."""
        partitions = topic_partitions(
            self._bootstrap, self._topic, self._settings, timeout=self._metadata_timeout
        )
        return [f"{self._topic}#{partition}" for partition in partitions]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> KafkaPartition:
        """Open the Kafka partition `for_part`, resuming at offset `resume_state`."""
        topic, _, number = for_part.rpartition("#")
        if topic != self._topic or not number.isdigit():
            raise ValueError(
                f"partition key {for_part!r} of step {step_id!r} does not belong to topic "
                f"{self._topic!r}; the recovery store was written by a run reading another "
                "topic, so give this run its own recovery directory"
            )

        return KafkaPartition(
            self._bootstrap,
            self._topic,
            int(number),
            settings={
                # librdkafka lets a broker hold a fetch for 500 ms by default, which a
                # low-volume topic turns into email-to-ticket latency; 50 ms costs an idle
                # consumer about 20 fetch requests a second per broker.
                "fetch.wait.max.ms": DEFAULT_FETCH_WAIT_MS,
                "fetch.max.bytes": self._fetch_bytes,
                "max.partition.fetch.bytes": self._fetch_bytes,
                "receive.message.max.bytes": self._fetch_bytes + FRAMING_BYTES,
                **self._settings,
            },
            resume_offset=resume_state,
            drain=self._drain,
            batch_size=self._batch_size,
            metadata_timeout=self._metadata_timeout,
            clock=self._clock,
        )


class KafkaPartition(StatefulSourcePartition[RawMessage, int]):
    """The records of one Kafka partition, in offset order; the state is the next offset.

    `next_batch` does not wait for the network. It consumes with a zero timeout, so it
    returns only the records librdkafka has already fetched in the background,
    possibly none.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partition: int,
        *,
        settings: Mapping[str, Any],
        resume_offset: int | None,
        drain: bool,
        batch_size: int = DEFAULT_BATCH_SIZE,
        metadata_timeout: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._partition = partition
        self._target = TopicPartition(topic, partition)
        self._drain = drain
        self._batch_size = batch_size
        self._clock = clock
        self._errors = RepeatedErrorLog(f"{topic}#{partition} on {bootstrap}")
        self._fatal: KafkaError | None = None
        self._consumer = new_consumer(bootstrap, settings, error_cb=self._on_client_error)

        low, high = self._watermarks(metadata_timeout)
        self._next_offset = self._start_offset(resume_offset, low, high)
        self._high_watermark = high
        # The drain end is provisional until the first fetch response confirms it,
        # because Tansu 0.6.0 lists the last batch's base offset plus one as the high
        # watermark, while its fetch responses carry the true one.
        self._end_offset = high
        self._end_confirmed = False
        self._finished = False

        self._consumer.assign([TopicPartition(topic, partition, self._next_offset)])
        self._publish_lag()
        log.info(
            "reading %s#%d on %s from offset %d (listed high watermark %d, %s)",
            topic, partition, bootstrap, self._next_offset, high,
            "drain" if drain else "tail",
        )

    def next_batch(self) -> list[RawMessage]:
        """Return the records fetched so far, up to `batch_size`.

        Raises `StopIteration` once a draining partition has emitted every record
        below its end offset, and `KafkaConnectorError` after a fatal client error.
        """
        if self._fatal is not None:
            raise KafkaConnectorError(
                f"fatal error reading {self._topic}#{self._partition} from Kafka at "
                f"{self._bootstrap}: {self._fatal.str()}"
            )
        if self._finished:
            raise StopIteration

        records = self._consumer.consume(self._batch_size, 0)
        self._update_high_watermark()

        batch = []
        for record in records:
            error = record.error()
            if error is not None:
                self._errors.report(error)
                continue
            offset = record.offset()
            if self._drain and offset >= self._end_offset:
                self._finished = True
                break
            message = record_to_raw_message(record, bootstrap=self._bootstrap, clock=self._clock)
            batch.append(message)
            self._next_offset = offset + 1

        self._publish_lag()
        if self._drain and self._end_confirmed and not self._finished:
            self._finished = self._reached_end()
        return batch

    def snapshot(self) -> int:
        """Return the next offset to read, where a resumed run starts."""
        return self._next_offset

    def partition_lag(self) -> dict[int, int]:
        """Return ``{partition: high watermark - next offset}`` as of the last batch."""
        return {self._partition: self._lag()}

    def close(self) -> None:
        """Close the consumer and remove this partition from `current_lag`."""
        with _lag_lock:
            _lag_registry.pop((self._topic, self._partition), None)
        self._consumer.close()

    def _watermarks(self, timeout: float) -> tuple[int, int]:
        """Ask the partition leader for the low and high watermarks, retrying until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(self._target, timeout=timeout)
                return int(low), int(high)
            except KafkaException as exc:
                if time.monotonic() >= deadline:
                    self._consumer.close()
                    raise KafkaConnectorError(
                        f"cannot read the offsets of {self._topic}#{self._partition} "
                        f"from Kafka at {self._bootstrap}: {describe(exc)}"
                    ) from exc
                log.warning(
                    "reading the offsets of %s#%d from %s failed: %s; retrying",
                    self._topic, self._partition, self._bootstrap, describe(exc),
                )
                time.sleep(0.5)

    def _start_offset(self, resume_offset: int | None, low: int, high: int) -> int:
        if resume_offset is None:
            return low
        if resume_offset < low:
            log.warning(
                "%s#%d: records %d to %d were deleted (retention or compaction) before "
                "this run resumed; continuing at offset %d",
                self._topic, self._partition, resume_offset, low - 1, low,
            )
            return low
        return resume_offset

    def _update_high_watermark(self) -> None:
        """Take the high watermark of the latest fetch response, once one has arrived.

        librdkafka caches it from every fetch response, so reading it costs no
        request. The first one also fixes the drain end offset. librdkafka stores the
        watermark before it queues the response's records, so every record that
        `consume` has returned lies below it.
        """
        _, high = self._consumer.get_watermark_offsets(self._target, cached=True)
        if high < 0:
            return
        self._high_watermark = max(self._high_watermark, high)
        if not self._end_confirmed:
            self._end_offset = max(self._end_offset, high)
            self._end_confirmed = True

    def _reached_end(self) -> bool:
        """Return whether the next offset or the consumer position reached the drain end.

        The position can pass the end without a record at the end offset when the last
        offsets hold transaction markers or compacted-away records.
        """
        if self._next_offset >= self._end_offset:
            return True
        return position(self._consumer, self._target) >= self._end_offset

    def _lag(self) -> int:
        return max(self._high_watermark - self._next_offset, 0)

    def _publish_lag(self) -> None:
        with _lag_lock:
            _lag_registry[(self._topic, self._partition)] = self._lag()

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        self._errors.report(error)
