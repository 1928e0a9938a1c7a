"""Tests for the Kafka connector: URLs, records, the source, producing and dead letters.

Everything that talks to Kafka runs against a real Tansu broker (the `tansu` fixture).
"""

from __future__ import annotations

import doctest
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.inputs import AbortExecution
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, cluster_main, run_main
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message, Producer

from ticketflow.connectors import kafka as kafka_module
from ticketflow.connectors.kafka import (
    DeadLetterTopic,
    KafkaAddress,
    KafkaConnectorError,
    KafkaPartition,
    KafkaSource,
    TopicNotFoundError,
    current_lag,
    fetch_bytes_for,
    parse_kafka_url,
    parse_rfc3339,
    produce_records,
    read_dead_letters,
    record_to_raw_message,
    topic_partitions,
)
from ticketflow.connectors.tansu import TansuBroker, free_loopback_port
from ticketflow.model import DeadLetter, RawMessage

NewTopic = Callable[..., str]

FIXED_NOW = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)


def fixed_clock() -> datetime:
    return FIXED_NOW


def mail(index: int) -> bytes:
    text = f"From: user{index}@example.com\r\nSubject: case {index}\r\n\r\nbody {index}\r\n"
    return text.encode()


def test_kafka_doctests_pass() -> None:
    failures, tried = doctest.testmod(kafka_module)

    assert tried >= 2
    assert failures == 0


# --- URLs ------------------------------------------------------------------------------


def test_url_single_broker() -> None:
    assert parse_kafka_url("kafka://localhost:9092/mail") == KafkaAddress("localhost:9092", "mail")


def test_url_several_brokers() -> None:
    address = parse_kafka_url("kafka://k1.example.com:9092,10.0.0.2:19092/support.inbound")

    assert address.bootstrap == "k1.example.com:9092,10.0.0.2:19092"
    assert address.topic == "support.inbound"


def test_url_ipv6_broker() -> None:
    assert parse_kafka_url("kafka://[::1]:9092/mail").bootstrap == "[::1]:9092"


def test_url_round_trips() -> None:
    url = "kafka://k1:9092,k2:9093/mail_in-2"

    assert parse_kafka_url(url).url() == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost:9092/mail", "scheme must be kafka://"),
        ("localhost:9092/mail", "scheme must be kafka://"),
        ("kafka://localhost:9092", "topic is missing"),
        ("kafka://localhost:9092/", "topic is missing"),
        ("kafka:///mail", "no broker"),
        ("kafka://localhost/mail", "'localhost' is not HOST:PORT"),
        ("kafka://localhost:9092,/mail", "'' is not HOST:PORT"),
        ("kafka://localhost:0/mail", "port 0"),
        ("kafka://localhost:70000/mail", "port 70000"),
        ("kafka://localhost:9092/mail/extra", "not a valid topic name"),
        ("kafka://localhost:9092/mail box", "not a valid topic name"),
        ("kafka://localhost:9092/..", "not a valid topic name"),
        ("kafka://localhost:9092/" + "t" * 250, "not a valid topic name"),
    ],
)
def test_url_invalid_names_url_and_form(url: str, reason: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_kafka_url(url)

    message = str(raised.value)
    assert repr(url) in message
    assert reason in message
    assert "expected kafka://HOST:PORT/TOPIC" in message


# --- records ---------------------------------------------------------------------------


def record(
    *,
    value: bytes | None = b"raw",
    headers: Sequence[tuple[str, str | bytes | None]] | None = None,
    timestamp: tuple[int, int] = (TIMESTAMP_NOT_AVAILABLE, -1),
) -> Message:
    return Message(
        topic="mail", partition=2, offset=41, key=None, value=value,
        headers=None if headers is None else list(headers),
        timestamp=timestamp,
    )


def test_record_source_names_partition_and_offset() -> None:
    message = record_to_raw_message(record(), bootstrap="k1:9092,k2:9092", clock=fixed_clock)

    assert message.source == "kafka://k1:9092,k2:9092/mail#2@41"
    assert message.raw == b"raw"


def test_record_ingested_at_header_wins() -> None:
    headers = [("ticketflow-ingested-at", b"2026-04-30T12:01:22+02:00")]
    sent = datetime(2026, 4, 30, 11, 0, tzinfo=UTC)
    stamped = record(
        headers=headers, timestamp=(TIMESTAMP_CREATE_TIME, int(sent.timestamp() * 1000))
    )

    message = record_to_raw_message(stamped, bootstrap="k:1", clock=fixed_clock)

    assert message.ingested_at == datetime(2026, 4, 30, 10, 1, 22, tzinfo=UTC)


def test_record_timestamp_when_no_header() -> None:
    sent = datetime(2026, 4, 30, 11, 0, 0, 250000, tzinfo=UTC)
    stamped = record(timestamp=(TIMESTAMP_CREATE_TIME, int(sent.timestamp() * 1000)))

    assert record_to_raw_message(stamped, bootstrap="k:1", clock=fixed_clock).ingested_at == sent


def test_record_invalid_header_falls_back_to_timestamp() -> None:
    sent = datetime(2026, 4, 30, 11, 0, tzinfo=UTC)
    stamped = record(
        headers=[("ticketflow-ingested-at", b"yesterday")],
        timestamp=(TIMESTAMP_CREATE_TIME, int(sent.timestamp() * 1000)),
    )

    assert record_to_raw_message(stamped, bootstrap="k:1", clock=fixed_clock).ingested_at == sent


def test_record_clock_when_no_timestamp() -> None:
    message = record_to_raw_message(record(), bootstrap="k:1", clock=fixed_clock)

    assert message.ingested_at == FIXED_NOW


def test_record_headers_case_insensitive_first_wins() -> None:
    headers = [
        ("Content-Type", b"application/json"),
        ("content-type", b"message/rfc822"),
        ("traceparent", None),
        ("TraceParent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]

    message = record_to_raw_message(record(headers=headers), bootstrap="k:1", clock=fixed_clock)

    assert message.content_type == "application/json"
    assert message.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_record_without_headers_has_no_content_type() -> None:
    message = record_to_raw_message(record(), bootstrap="k:1", clock=fixed_clock)

    assert message.content_type is None
    assert message.traceparent is None


def test_record_null_value_is_empty_bytes() -> None:
    assert record_to_raw_message(record(value=None), bootstrap="k:1").raw == b""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-30T12:01:22Z", datetime(2026, 4, 30, 12, 1, 22, tzinfo=UTC)),
        ("2026-04-30t12:01:22.5-01:00", datetime(2026, 4, 30, 13, 1, 22, 500000, tzinfo=UTC)),
        ("2026-04-30 12:01:22+00:00", datetime(2026, 4, 30, 12, 1, 22, tzinfo=UTC)),
        ("2026-04-30T12:01:22", None),
        ("2026-04-30", None),
        ("20260430T120122Z", None),
        ("2026-02-30T12:00:00Z", None),
        ("2026-04-30T12:01:22.123456789z", datetime(2026, 4, 30, 12, 1, 22, 123456, tzinfo=UTC)),
        ("", None),
        ("not a time", None),
    ],
)
def test_rfc3339_parsing(text: str, expected: datetime | None) -> None:
    assert parse_rfc3339(text) == expected


def test_fetch_bytes_leave_room_above_limit() -> None:
    limit = 25 * 1024 * 1024

    assert fetch_bytes_for(limit) > 2 * limit


def test_fetch_bytes_capped_at_librdkafka_maximum() -> None:
    assert fetch_bytes_for(2_000_000_000) == 1_000_000_000


# --- source settings -------------------------------------------------------------------


@pytest.mark.parametrize("owned", ["group.id", "bootstrap.servers", "enable.auto.commit"])
def test_source_rejects_owned_setting(owned: str) -> None:
    with pytest.raises(ValueError, match=owned):
        KafkaSource("127.0.0.1:9092", "mail", drain=True, settings={owned: "x"})


def test_source_rejects_zero_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        KafkaSource("127.0.0.1:9092", "mail", drain=True, batch_size=0)


def test_source_rejects_invalid_topic() -> None:
    with pytest.raises(ValueError, match="invalid Kafka topic name 'a b'"):
        KafkaSource("127.0.0.1:9092", "a b", drain=True)


def test_source_rejects_unknown_librdkafka_setting(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    source = KafkaSource(tansu.bootstrap, topic, drain=True, settings={"no.such.setting": "1"})

    with pytest.raises(ValueError, match="invalid librdkafka consumer settings.*no.such.setting"):
        source.list_parts()


def test_source_passes_settings_through(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    produce_records(tansu.bootstrap, topic, [mail(0)])
    source = KafkaSource(
        tansu.bootstrap, topic, drain=True, settings={"client.id": "ticketflow-test"}
    )

    assert read_all(source) == [f"kafka://{tansu.bootstrap}/{topic}#0@0"]


# --- reading through Bytewax -----------------------------------------------------------


def build_flow(source: KafkaSource, out: list[RawMessage]) -> Dataflow:
    flow = Dataflow("kafka_test")
    stream = op.input("read", flow, source)
    op.output("out", stream, TestingSink(out))
    return flow


def read_all(source: KafkaSource) -> list[str]:
    out: list[RawMessage] = []
    run_main(build_flow(source, out))
    return sorted(message.source for message in out)


def round_robin_sources(bootstrap: str, topic: str, count: int, partitions: int) -> list[str]:
    return sorted(
        f"kafka://{bootstrap}/{topic}#{index % partitions}@{index // partitions}"
        for index in range(count)
    )


def test_drain_reads_every_record_once(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=3)
    values = [mail(index) for index in range(150)]
    produce_records(tansu.bootstrap, topic, values, partitions=3)
    out: list[RawMessage] = []

    run_main(build_flow(KafkaSource(tansu.bootstrap, topic, drain=True, batch_size=7), out))

    assert len(out) == 150
    assert sorted(item.source for item in out) == round_robin_sources(
        tansu.bootstrap, topic, 150, 3
    )
    by_source = {item.source: item.raw for item in out}
    assert by_source[f"kafka://{tansu.bootstrap}/{topic}#1@4"] == values[13]


def test_drain_of_empty_topic_ends(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=2)

    assert read_all(KafkaSource(tansu.bootstrap, topic, drain=True)) == []


def test_two_workers_read_each_record_once(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=3)
    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(60)], partitions=3)
    out: list[RawMessage] = []

    cluster_main(
        build_flow(KafkaSource(tansu.bootstrap, topic, drain=True), out),
        [],
        0,
        worker_count_per_proc=2,
    )

    assert sorted(item.source for item in out) == round_robin_sources(
        tansu.bootstrap, topic, 60, 3
    )


def test_headers_round_trip(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    headers = {
        "content-type": "application/json",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "ticketflow-ingested-at": "2026-04-30T12:01:22Z",
    }
    produce_records(tansu.bootstrap, topic, [(b'{"envelope": {}}', headers), mail(1)])
    out: list[RawMessage] = []

    run_main(build_flow(KafkaSource(tansu.bootstrap, topic, drain=True), out))

    with_headers, without = out
    assert with_headers.raw == b'{"envelope": {}}'
    assert with_headers.content_type == "application/json"
    assert with_headers.traceparent == headers["traceparent"]
    assert with_headers.ingested_at == datetime(2026, 4, 30, 12, 1, 22, tzinfo=UTC)
    assert without.content_type is None
    assert without.traceparent is None


def test_record_timestamp_used_without_header(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    sent = datetime(2026, 3, 1, 8, 0, 0, 123000, tzinfo=UTC)
    producer = Producer({"bootstrap.servers": tansu.bootstrap})
    producer.produce(topic, mail(0), timestamp=int(sent.timestamp() * 1000))
    assert producer.flush(10) == 0
    out: list[RawMessage] = []

    run_main(build_flow(KafkaSource(tansu.bootstrap, topic, drain=True, clock=fixed_clock), out))

    assert [item.ingested_at for item in out] == [sent]


def test_oversized_record_still_read(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    limit = 1_500_000
    oversized = b"x" * (limit + 500_000)
    produce_records(tansu.bootstrap, topic, [oversized], max_message_bytes=4 * limit)
    out: list[RawMessage] = []

    run_main(
        build_flow(KafkaSource(tansu.bootstrap, topic, drain=True, max_message_bytes=limit), out)
    )

    assert [len(item.raw) for item in out] == [len(oversized)]


# --- drain, tail and resume at the partition -------------------------------------------


def open_partition(
    bootstrap: str,
    topic: str,
    *,
    drain: bool,
    resume_offset: int | None = None,
    batch_size: int = 10,
) -> KafkaPartition:
    source = KafkaSource(bootstrap, topic, drain=drain, batch_size=batch_size)
    return source.build_part("read", f"{topic}#0", resume_offset)


def poll_until(partition: KafkaPartition, count: int, timeout: float = 10.0) -> list[RawMessage]:
    """Call next_batch until `count` messages arrived; fail after `timeout` seconds."""
    got: list[RawMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} messages"
        got.extend(partition.next_batch())
        time.sleep(0.001)
    return got


def drain_partition(partition: KafkaPartition, timeout: float = 10.0) -> list[RawMessage]:
    """Call next_batch until StopIteration; fail after `timeout` seconds."""
    got: list[RawMessage] = []
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"partition did not end; got {len(got)} messages"
        try:
            got.extend(partition.next_batch())
        except StopIteration:
            return got
        time.sleep(0.001)


def offsets(messages: list[RawMessage]) -> list[int]:
    return [int(message.source.rpartition("@")[2]) for message in messages]


def test_drain_stops_at_end_seen_at_start(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(25)])
    partition = open_partition(tansu.bootstrap, topic, drain=True)
    first = poll_until(partition, 1)

    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(25, 30)])
    rest = drain_partition(partition)
    partition.close()

    assert offsets(first + rest) == list(range(25))


def test_tail_reads_records_added_later(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(5)])
    partition = open_partition(tansu.bootstrap, topic, drain=False)
    first = poll_until(partition, 5)

    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(5, 8)])
    later = poll_until(partition, 3)
    partition.close()

    assert offsets(first + later) == list(range(8))


def test_resume_state_is_next_offset(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(12)])

    partition = open_partition(tansu.bootstrap, topic, drain=True, resume_offset=7)
    resumed = drain_partition(partition)
    snapshot = partition.snapshot()
    partition.close()

    assert offsets(resumed) == list(range(7, 12))
    assert snapshot == 12


def test_resume_past_end_reads_nothing(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(3)])

    partition = open_partition(tansu.bootstrap, topic, drain=True, resume_offset=3)
    resumed = drain_partition(partition)
    partition.close()

    assert resumed == []


def test_lag_counts_unread_records(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(6)])
    partition = open_partition(tansu.bootstrap, topic, drain=False, resume_offset=2, batch_size=1)

    poll_until(partition, 1)
    lag_after_one = partition.partition_lag()
    registered = current_lag()[(topic, 0)]
    poll_until(partition, 3)
    lag_after_all = partition.partition_lag()
    partition.close()

    assert lag_after_one == {0: 3}
    assert registered == 3
    assert lag_after_all == {0: 0}
    assert (topic, 0) not in current_lag()


def test_partition_key_of_other_topic_rejected() -> None:
    source = KafkaSource("127.0.0.1:9092", "mail", drain=True)

    with pytest.raises(ValueError, match="'other#0' of step 'read' does not belong"):
        source.build_part("read", "other#0", None)


# --- recovery ------------------------------------------------------------------------------


def recovery_config(tmp_path: Path) -> RecoveryConfig:
    recovery_dir = tmp_path / "recovery"
    recovery_dir.mkdir()
    init_db_dir(recovery_dir, 1)
    return RecoveryConfig(str(recovery_dir))


def test_recovery_second_run_reads_only_new(
    tansu: TansuBroker, new_topic: NewTopic, tmp_path: Path
) -> None:
    topic = new_topic(partitions=3)
    recovery = recovery_config(tmp_path)
    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(30)], partitions=3)

    first_run: list[RawMessage] = []
    run_main(
        build_flow(KafkaSource(tansu.bootstrap, topic, drain=True), first_run),
        epoch_interval=timedelta(0),
        recovery_config=recovery,
    )
    produce_records(
        tansu.bootstrap, topic, [mail(index) for index in range(30, 39)], partitions=3
    )
    second_run: list[RawMessage] = []
    run_main(
        build_flow(KafkaSource(tansu.bootstrap, topic, drain=True), second_run),
        epoch_interval=timedelta(0),
        recovery_config=recovery,
    )

    everything = round_robin_sources(tansu.bootstrap, topic, 39, 3)
    new_sources = sorted(
        f"kafka://{tansu.bootstrap}/{topic}#{index % 3}@{index // 3}" for index in range(30, 39)
    )
    assert len(first_run) == 30
    assert sorted(item.source for item in second_run) == new_sources
    assert sorted(item.source for item in first_run + second_run) == everything


class AbortOnceSource(KafkaSource):
    """A Kafka source whose first run aborts after its first non-empty batch."""

    aborted = False

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> KafkaPartition:
        partition = super().build_part(step_id, for_part, resume_state)
        if AbortOnceSource.aborted:
            return partition
        real_next_batch = partition.next_batch
        emitted = False

        def next_batch() -> list[RawMessage]:
            nonlocal emitted
            if emitted:
                AbortOnceSource.aborted = True
                raise AbortExecution()
            batch = real_next_batch()
            emitted = bool(batch)
            return batch

        partition.next_batch = next_batch
        return partition


def test_recovery_resumes_after_abort(
    tansu: TansuBroker, new_topic: NewTopic, tmp_path: Path
) -> None:
    topic = new_topic()
    recovery = recovery_config(tmp_path)
    produce_records(tansu.bootstrap, topic, [mail(index) for index in range(40)])
    AbortOnceSource.aborted = False

    first_run: list[RawMessage] = []
    run_main(
        build_flow(AbortOnceSource(tansu.bootstrap, topic, drain=True, batch_size=4), first_run),
        epoch_interval=timedelta(0),
        recovery_config=recovery,
    )
    second_run: list[RawMessage] = []
    run_main(
        build_flow(AbortOnceSource(tansu.bootstrap, topic, drain=True, batch_size=4), second_run),
        epoch_interval=timedelta(0),
        recovery_config=recovery,
    )

    assert AbortOnceSource.aborted
    assert 1 <= len(first_run) <= 4
    assert offsets(first_run) == list(range(len(first_run)))
    assert offsets(second_run) == list(range(len(first_run), 40))


# --- missing topics and unreachable clusters ------------------------------------------------


def test_missing_topic_names_bootstrap_and_topic(tansu: TansuBroker) -> None:
    source = KafkaSource(tansu.bootstrap, "no-such-topic", drain=True)

    with pytest.raises(TopicNotFoundError) as raised:
        source.list_parts()

    assert "'no-such-topic'" in str(raised.value)
    assert tansu.bootstrap in str(raised.value)


def test_missing_topic_is_not_created(tansu: TansuBroker) -> None:
    with pytest.raises(TopicNotFoundError):
        KafkaSource(tansu.bootstrap, "never-created", drain=True).list_parts()

    with pytest.raises(TopicNotFoundError):
        topic_partitions(tansu.bootstrap, "never-created")


def test_missing_topic_stops_bytewax_run(tansu: TansuBroker) -> None:
    source = KafkaSource(tansu.bootstrap, "absent-in-run", drain=True)

    with pytest.raises(BytewaxRuntimeError) as raised:
        run_main(build_flow(source, []))

    chain = []
    cause: BaseException | None = raised.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert any(isinstance(link, TopicNotFoundError) for link in chain)


def test_unreachable_cluster_raises() -> None:
    bootstrap = f"127.0.0.1:{free_loopback_port()}"
    source = KafkaSource(bootstrap, "mail", drain=True, metadata_timeout=1.0)

    with pytest.raises(KafkaConnectorError, match=f"from Kafka at {bootstrap}"):
        source.list_parts()


def test_lost_broker_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with TansuBroker() as broker:
        bootstrap = broker.bootstrap
        broker.create_topic("mail", partitions=1)
        produce_records(bootstrap, "mail", [mail(0)])
        partition = open_partition(bootstrap, "mail", drain=False)
        poll_until(partition, 1)

    deadline = time.monotonic() + 10
    with caplog.at_level(logging.WARNING, logger="ticketflow.connectors.kafka"):
        while not any("mail#0" in line for line in caplog.messages):
            assert time.monotonic() < deadline, "no error was logged after the broker stopped"
            assert partition.next_batch() == []
            time.sleep(0.01)
    partition.close()

    assert any(bootstrap in line for line in caplog.messages)


# --- producing and dead letters ------------------------------------------------------------


def test_produce_counts_records(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=2)

    count = produce_records(tansu.bootstrap, topic, (mail(index) for index in range(9)))

    assert count == 9
    assert len(read_all(KafkaSource(tansu.bootstrap, topic, drain=True))) == 9


def test_produce_key_fn_keeps_key_on_one_partition(
    tansu: TansuBroker, new_topic: NewTopic
) -> None:
    topic = new_topic(partitions=3)

    # One call per record, so that keyless records would land on random partitions.
    for _ in range(6):
        produce_records(tansu.bootstrap, topic, [b"same"], key_fn=lambda value: b"tenant-a")

    sources = read_all(KafkaSource(tansu.bootstrap, topic, drain=True))
    partitions_used = {source.rpartition("#")[2].partition("@")[0] for source in sources}
    assert len(sources) == 6
    assert len(partitions_used) == 1


def test_produce_to_missing_topic_raises(tansu: TansuBroker) -> None:
    with pytest.raises(TopicNotFoundError, match="'not-there'"):
        produce_records(tansu.bootstrap, "not-there", [b"x"])


def test_produce_rejects_too_many_partitions(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=2)

    with pytest.raises(ValueError, match="partitions must be between 1 and 2"):
        produce_records(tansu.bootstrap, topic, [b"x"], partitions=3)


def test_produce_rejects_record_over_limit(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()

    with pytest.raises(KafkaConnectorError, match="cannot send a record of 300000 bytes"):
        produce_records(tansu.bootstrap, topic, [b"x" * 300_000], max_message_bytes=100_000)


def test_dead_letters_round_trip(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    broken = DeadLetter(
        source="kafka://k:9092/mail#2@17", reason="unparseable", detail="no header block",
        raw=b"\x00\x01garbage",
    )
    too_large = DeadLetter(
        source="/corpus/box.mbox#3", reason="too_large", detail="31457280 bytes > 26214400",
        headers="From: a@example.com\r\nSubject: huge\r\n",
    )

    with DeadLetterTopic(tansu.bootstrap, topic) as letters:
        letters.send(broken, 2, 17)
        letters.send(too_large, None, None)

    assert read_dead_letters(tansu.bootstrap, topic) == [
        {"source": broken.source, "reason": "unparseable", "detail": "no header block",
         "partition": 2, "offset": 17, "size": len(broken.raw)},
        {"source": too_large.source, "reason": "too_large", "detail": too_large.detail,
         "partition": None, "offset": None, "size": 0},
    ]


def test_dead_letter_keeps_original_bytes(tansu: TansuBroker, new_topic: NewTopic) -> None:
    topic = new_topic()
    original = mail(7) + "\r\nnon-ASCII: é".encode()
    with DeadLetterTopic(tansu.bootstrap, topic) as letters:
        letters.send(DeadLetter(source="s", reason="r", detail="d", raw=original), None, None)

    out: list[RawMessage] = []
    run_main(build_flow(KafkaSource(tansu.bootstrap, topic, drain=True), out))

    assert [item.raw for item in out] == [original]


def test_dead_letter_topic_must_exist(tansu: TansuBroker) -> None:
    with pytest.raises(TopicNotFoundError, match="'dead-letters-missing'"):
        DeadLetterTopic(tansu.bootstrap, "dead-letters-missing")


def test_read_dead_letters_of_empty_topic(tansu: TansuBroker, new_topic: NewTopic) -> None:
    assert read_dead_letters(tansu.bootstrap, new_topic(partitions=2)) == []



def test_repeated_librdkafka_lines_are_held_back() -> None:
    import logging

    from ticketflow.connectors.kafka_client import _RepeatFilter

    repeat_filter = _RepeatFilter(interval=60)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "broker down", None, None)
    passed = [repeat_filter.filter(logging.makeLogRecord(record.__dict__)) for _ in range(500)]
    assert passed.count(True) == 1
    other = logging.LogRecord("x", logging.ERROR, __file__, 1, "another line", None, None)
    assert repeat_filter.filter(other)
