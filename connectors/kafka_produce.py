"""Write records and dead letters to Kafka, and read dead letters back.

`produce_records` serves tests, replays and redrives. `DeadLetterTopic` keeps each
dead letter's original bytes as the record value and its reason in headers.
`read_dead_letters` lists them. Everything public here is re-exported by
`ticketflow.connectors.kafka`; import it from there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ticketflow.connectors.kafka_client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KafkaConnectorError,
    describe,
    header_map,
    new_consumer,
    new_producer,
    partitions_from_metadata,
    read_partition_to_end,
)
from ticketflow.model import DeadLetter

log = logging.getLogger("ticketflow.connectors.kafka")

REASON_HEADER = "ticketflow-reason"
DETAIL_HEADER = "ticketflow-detail"
SOURCE_HEADER = "ticketflow-source"
SOURCE_PARTITION_HEADER = "ticketflow-source-partition"
SOURCE_OFFSET_HEADER = "ticketflow-source-offset"
# The message's header block, sent only when the letter has no raw bytes (a
# too_large message), so that the record still identifies the mail.
MESSAGE_HEADERS_HEADER = "ticketflow-message-headers"

# A record to produce: its value, or its value and headers.
Record = bytes | tuple[bytes, Mapping[str, str | bytes]]


def produce_records(
    bootstrap: str,
    topic: str,
    values: Iterable[Record],
    *,
    partitions: int | None = None,
    key_fn: Callable[[bytes], bytes | str | None] | None = None,
    settings: Mapping[str, Any] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    timeout: float = 60.0,
) -> int:
    """Write `values` to `topic` and wait until every record is acknowledged.

    Each value is the record's bytes, or a pair of bytes and a header mapping.
    With `partitions` set, record i goes to partition ``i % partitions``. Otherwise
    librdkafka's partitioner places it, by the key from `key_fn` if one is given.
    The producer accepts records up to `max_message_bytes` of key, value and headers.

    Returns the number of records written. Raises `TopicNotFoundError` if the topic
    does not exist (it is never auto-created), `ValueError` if `partitions` exceeds
    the topic's partition count, and `KafkaConnectorError` if a record is rejected
    or not acknowledged within `timeout` seconds of the last send.
    """
    producer = new_producer(bootstrap, settings, max_message_bytes)
    available = partitions_from_metadata(producer, bootstrap, topic, timeout=10.0)
    if partitions is not None and not 1 <= partitions <= len(available):
        raise ValueError(
            f"partitions must be between 1 and {len(available)} (the partition count of "
            f"topic {topic!r}), got {partitions}"
        )

    failures = _DeliveryFailures(bootstrap, topic)
    count = 0
    for index, item in enumerate(values):
        value, headers = (item, {}) if isinstance(item, bytes) else item
        _send(
            producer,
            topic,
            value,
            key=key_fn(value) if key_fn is not None else None,
            headers=_header_list(headers),
            partition=None if partitions is None else index % partitions,
            on_delivery=failures.on_delivery,
        )
        count += 1

    _flush(producer, failures, timeout)
    log.info("produced %d records to %s on %s", count, topic, bootstrap)
    return count


class DeadLetterTopic:
    """Writes dead letters to a Kafka topic, the original bytes as each record's value.

    Each record's key is the letter's source. Its headers carry
    ``ticketflow-reason``, ``ticketflow-detail`` and ``ticketflow-source``, and for a
    letter read from Kafka also ``ticketflow-source-partition`` and
    ``ticketflow-source-offset``. A letter without raw bytes (``too_large``) carries
    its message header block in ``ticketflow-message-headers`` instead.

    `send` queues a record and returns at once. `flush` and `close` wait for every
    queued record and raise `KafkaConnectorError` if any was not delivered. The topic
    must exist when the object is built, otherwise `TopicNotFoundError` is raised.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        settings: Mapping[str, Any] | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        flush_timeout: float = 30.0,
    ) -> None:
        self._producer = new_producer(bootstrap, settings, max_message_bytes)
        partitions_from_metadata(self._producer, bootstrap, topic, timeout=10.0)
        self._bootstrap = bootstrap
        self._topic = topic
        self._flush_timeout = flush_timeout
        self._failures = _DeliveryFailures(bootstrap, topic)
        self._sent = 0

    def send(self, letter: DeadLetter, partition: int | None, offset: int | None) -> None:
        """Queue `letter`; `partition` and `offset` locate it in its source topic, if any."""
        headers: list[tuple[str, bytes]] = [
            (REASON_HEADER, letter.reason.encode()),
            (DETAIL_HEADER, letter.detail.encode()),
            (SOURCE_HEADER, letter.source.encode()),
        ]
        if partition is not None:
            headers.append((SOURCE_PARTITION_HEADER, str(partition).encode()))
        if offset is not None:
            headers.append((SOURCE_OFFSET_HEADER, str(offset).encode()))
        if not letter.raw and letter.headers:
            headers.append((MESSAGE_HEADERS_HEADER, letter.headers.encode()))

        _send(
            self._producer,
            self._topic,
            letter.raw,
            key=letter.source,
            headers=headers,
            partition=None,
            on_delivery=self._failures.on_delivery,
        )
        self._sent += 1
        self._producer.poll(0)

    def flush(self) -> None:
        """Wait until every queued letter is delivered; raise if any was not."""
        _flush(self._producer, self._failures, self._flush_timeout)

    def close(self) -> None:
        """Flush the queued letters; raise `KafkaConnectorError` if any was not delivered."""
        self.flush()
        log.info("sent %d dead letters to %s on %s", self._sent, self._topic, self._bootstrap)

    def __enter__(self) -> DeadLetterTopic:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_dead_letters(
    bootstrap: str,
    topic: str,
    settings: Mapping[str, Any] | None = None,
    *,
    timeout: float = 30.0,
    with_values: bool = False,
) -> list[dict[str, Any]]:
    """Read every dead letter in `topic`, from the start to the end offsets seen now.

    With `with_values`, each letter also carries ``value``: the original bytes.

    Each letter is a dict with ``source``, ``reason``, ``detail``, ``partition`` and
    ``offset`` (its position in the source topic, or None), and ``size`` (bytes of
    the stored value). Letters come in dead-letter-topic partition order, then
    offset order. Raises `TopicNotFoundError` if the topic does not exist and
    `KafkaConnectorError` if the records do not arrive within `timeout` seconds.
    """
    consumer = new_consumer(bootstrap, settings)
    try:
        records: list[Message] = []
        for partition in partitions_from_metadata(consumer, bootstrap, topic, timeout):
            records.extend(read_partition_to_end(consumer, bootstrap, topic, partition, timeout))
    finally:
        consumer.close()

    letters = [_dead_letter_summary(record) for record in records]
    if with_values:
        for letter, record in zip(letters, records, strict=True):
            letter["value"] = record.value() or b""
    return letters


def _dead_letter_summary(record: Message) -> dict[str, Any]:
    headers = header_map(record.headers())
    return {
        "source": headers.get(SOURCE_HEADER, ""),
        "reason": headers.get(REASON_HEADER, ""),
        "detail": headers.get(DETAIL_HEADER, ""),
        "partition": _optional_int(headers.get(SOURCE_PARTITION_HEADER)),
        "offset": _optional_int(headers.get(SOURCE_OFFSET_HEADER)),
        "size": len(record.value() or b""),
    }


def _optional_int(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None
    return int(text)


def _header_list(headers: Mapping[str, str | bytes]) -> list[tuple[str, bytes]]:
    return [
        (name, value if isinstance(value, bytes) else value.encode())
        for name, value in headers.items()
    ]


def _send(
    producer: Producer,
    topic: str,
    value: bytes,
    *,
    key: bytes | str | None,
    headers: list[tuple[str, bytes]],
    partition: int | None,
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> None:
    """Queue one record, serving delivery reports while librdkafka's queue is full."""
    arguments: dict[str, Any] = {"key": key, "headers": headers, "on_delivery": on_delivery}
    if partition is not None:
        arguments["partition"] = partition
    while True:
        try:
            producer.produce(topic, value, **arguments)
            return
        except BufferError:
            producer.poll(0.1)
        except KafkaException as exc:
            raise KafkaConnectorError(
                f"cannot send a record of {len(value)} bytes to {topic}: {describe(exc)}"
            ) from exc


def _flush(producer: Producer, failures: _DeliveryFailures, timeout: float) -> None:
    pending = producer.flush(timeout)
    if pending:
        raise KafkaConnectorError(
            f"{pending} records to {failures.topic} on {failures.bootstrap} were not "
            f"acknowledged within {timeout} s; check that the brokers are reachable"
        )
    failures.raise_if_any()


class _DeliveryFailures:
    """Collects failed delivery reports so that the flush that follows can raise."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._count = 0
        self._first: KafkaError | None = None

    def on_delivery(self, error: KafkaError | None, record: Message) -> None:
        if error is None:
            return
        self._count += 1
        if self._first is None:
            self._first = error
            log.error(
                "delivery to %s#%s on %s failed: %s",
                self.topic, record.partition(), self.bootstrap, error.str(),
            )

    def raise_if_any(self) -> None:
        if self._first is None:
            return
        first, count = self._first, self._count
        self._first, self._count = None, 0
        raise KafkaConnectorError(
            f"{count} records were not delivered to {self.topic} on {self.bootstrap}; "
            f"the first failure: {first.str()}"
        )
