"""Corpus replay into Kafka (Tansu): pacing, stamps, bounds and errors."""

import json
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ticketflow.cli import main
from ticketflow.connectors.kafka import TopicNotFoundError, parse_rfc3339
from ticketflow.connectors.kafka_client import (
    KafkaConnectorError,
    header_map,
    new_consumer,
    read_partition_to_end,
)
from ticketflow.replay import DatePace, ProgressLine, RatePace, message_date, replay
from ticketflow.synth import iter_messages, synthesize


class FakeTimer:
    """A monotonic clock that advances only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def mail(number: int, sent: datetime | None) -> bytes:
    date = f"Date: {format_datetime(sent)}\n" if sent else ""
    head = f"From: a@example.com\nSubject: n{number}\n{date}Message-ID: <{number}@x>\n"
    return (head + "\nbody\n").encode()


def records(bootstrap: str, topic: str) -> list:
    consumer = new_consumer(bootstrap, None)
    try:
        return read_partition_to_end(consumer, bootstrap, topic, 0, timeout=30)
    finally:
        consumer.close()


def stamps(found: list) -> list[datetime]:
    return [
        parse_rfc3339(header_map(record.headers())["ticketflow-ingested-at"]) for record in found
    ]


# -- pacing, on a fake clock ------------------------------------------------------------


def test_rate_pace_keeps_the_rate_over_time():
    timer = FakeTimer()
    pace = RatePace(200, timer=timer)
    sent = 0
    for _ in range(100_000):
        if timer.now >= 110.0:
            break
        wait = pace.delay()
        if wait > 0:
            timer.now += wait
        else:
            sent += 1

    assert sent == pytest.approx(200 * 10, abs=2)


def test_rate_pace_catches_up_without_waiting():
    timer = FakeTimer()
    pace = RatePace(100, burst=1.0, timer=timer)
    pace.delay()
    timer.now += 0.5

    waits = [pace.delay() for _ in range(50)]

    assert waits == [0.0] * 50
    assert pace.delay() > 0


def test_rate_pace_makes_up_at_most_its_burst():
    timer = FakeTimer()
    pace = RatePace(100, burst=0.2, timer=timer)
    timer.now += 60.0

    ready = 0
    while pace.delay() == 0 and ready < 1000:
        ready += 1

    assert ready == 20


def test_date_pace_follows_the_corpus_spacing():
    timer = FakeTimer()
    pace = DatePace(10, timer=timer)
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    pace.next_message(mail(0, start))
    first = pace.delay()
    pace.next_message(mail(1, start + timedelta(seconds=30)))
    second = pace.delay()
    timer.now += 3.0
    after_wait = pace.delay()

    assert first == 0
    assert second == pytest.approx(3.0)
    assert after_wait == 0


def test_date_pace_never_runs_backwards():
    timer = FakeTimer()
    pace = DatePace(1, timer=timer)
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    pace.next_message(mail(0, start + timedelta(seconds=20)))
    pace.next_message(mail(1, start))
    earlier = pace.delay()
    pace.next_message(mail(2, None))
    undated = pace.delay()

    assert earlier == 0
    assert undated == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"Date: Mon, 2 Mar 2026 10:14:29 +0100\n\nbody",
            datetime(2026, 3, 2, 9, 14, 29, tzinfo=UTC),
        ),
        (
            b"Subject: x\r\nDATE: Mon, 2 Mar 2026\r\n 10:14:29 +0000\r\n\r\n",
            datetime(2026, 3, 2, 10, 14, 29, tzinfo=UTC),
        ),
        (b"Subject: x\n\nDate: Mon, 2 Mar 2026 10:14:29 +0000\n", None),
        (b"Date: yesterday\n\n", None),
    ],
)
def test_message_date(raw, expected):
    assert message_date(raw) == expected


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RatePace(0), "--rate 0"),
        (lambda: RatePace(float("nan")), "--rate nan"),
        (lambda: RatePace(10, burst=0), "burst 0"),
        (lambda: DatePace(-2), "--speedup -2"),
    ],
)
def test_invalid_pace_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- against Tansu ------------------------------------------------------------------------


def test_replay_sends_every_message_stamped(tansu, new_topic, tmp_path):
    topic = new_topic()
    expected = [message.raw for message in iter_messages(300, 2)]

    summary = replay(iter(expected), tansu.bootstrap, topic, RatePace(150))
    found = records(tansu.bootstrap, topic)
    headers = [header_map(record.headers()) for record in found]

    assert summary.sent == summary.delivered == 300
    assert summary.errors == 0
    assert [record.value() for record in found] == expected
    assert all(header["content-type"] == "message/rfc822" for header in headers)
    sent = stamps(found)
    assert all(moment is not None for moment in sent)
    assert sent == sorted(sent)


def test_delivery_listener_sees_every_record(tansu, new_topic):
    topic = new_topic()
    heard = {}

    def note(partition, offset, sent_at):
        heard[(partition, offset)] = sent_at

    replay(
        iter([mail(n, None) for n in range(20)]),
        tansu.bootstrap,
        topic,
        RatePace(500),
        on_delivered=note,
    )
    found = records(tansu.bootstrap, topic)

    assert sorted(heard) == [(record.partition(), record.offset()) for record in found]
    assert [heard[(record.partition(), record.offset())] for record in found] == stamps(found)


def test_replay_rate_shows_in_the_stamps(tansu, new_topic):
    topic = new_topic()
    messages = [message.raw for message in iter_messages(200, 4)]

    summary = replay(iter(messages), tansu.bootstrap, topic, RatePace(100))
    sent = stamps(records(tansu.bootstrap, topic))
    spread = (sent[-1] - sent[0]).total_seconds()

    # 199 gaps at 100/s take 1.99 s; the bounds leave room for a slow machine.
    assert 1.6 <= spread <= 2.8
    assert summary.rate == pytest.approx(100, rel=0.2)
    assert summary.stopped_by == "end_of_source"


def test_replay_speedup_shows_in_the_stamps(tansu, new_topic):
    topic = new_topic()
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    messages = [mail(number, start + timedelta(seconds=10 * number)) for number in range(5)]

    replay(iter(messages), tansu.bootstrap, topic, DatePace(40))
    sent = stamps(records(tansu.bootstrap, topic))
    gaps = [
        (later - earlier).total_seconds() for earlier, later in zip(sent, sent[1:], strict=False)
    ]

    assert all(0.2 <= gap <= 0.45 for gap in gaps), gaps


def test_limit_stops_the_replay(tansu, new_topic):
    topic = new_topic()
    messages = (message.raw for message in iter_messages(500, 1))

    summary = replay(messages, tansu.bootstrap, topic, RatePace(5000), limit=40)

    assert summary.sent == 40
    assert summary.stopped_by == "limit"
    assert len(records(tansu.bootstrap, topic)) == 40


def test_duration_stops_the_replay(tansu, new_topic):
    topic = new_topic()
    messages = (message.raw for message in iter_messages(2000, 1))

    summary = replay(messages, tansu.bootstrap, topic, RatePace(100), duration=1.0)

    assert summary.stopped_by == "duration"
    assert 70 <= summary.sent <= 130
    assert len(records(tansu.bootstrap, topic)) == summary.sent


def test_stop_event_ends_the_replay(tansu, new_topic):
    topic = new_topic()
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()

    summary = replay(
        (mail(n, None) for n in range(10_000)), tansu.bootstrap, topic, RatePace(50), stop=stop
    )

    assert summary.stopped_by == "signal"
    assert 10 <= summary.sent <= 50


def test_missing_topic_raises_before_sending(tansu):
    with pytest.raises(TopicNotFoundError, match="no-such-topic"):
        replay(iter([b"x"]), tansu.bootstrap, "no-such-topic", RatePace(10))


def test_unreachable_cluster_raises(tmp_path):
    with pytest.raises(KafkaConnectorError, match="127.0.0.1:9"):
        replay(iter([b"x"]), "127.0.0.1:9", "mail", RatePace(10), metadata_timeout=1.0)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [({"limit": 0}, "--limit 0"), ({"duration": -1.0}, "--duration -1.0")],
)
def test_invalid_bounds_rejected(bounds, message):
    with pytest.raises(ValueError, match=message):
        replay(iter([b"x"]), "127.0.0.1:9", "mail", RatePace(10), **bounds)


# -- the command ---------------------------------------------------------------------------


def test_command_prints_summary_and_progress(tansu, new_topic, tmp_path, capsys):
    topic = new_topic()
    synthesize(120, 3, tmp_path / "corpus", format="folder")

    code = main(
        [
            "replay",
            str(tmp_path / "corpus"),
            "--to",
            f"kafka://{tansu.bootstrap}/{topic}",
            "--rate",
            "400",
            "--limit",
            "100",
        ]
    )
    output = capsys.readouterr()
    summary = json.loads(output.out.strip().splitlines()[-1])

    assert code == 0
    assert summary["sent"] == summary["delivered"] == 100
    assert summary["stopped_by"] == "limit"
    assert summary["target_rate"] == 400
    assert "replay: sent 100" in output.err


def test_progress_refreshes_in_place_on_a_terminal():
    class Terminal:
        def __init__(self):
            self.written = []

        def isatty(self):
            return True

        def write(self, text):
            self.written.append(text)

        def flush(self):
            pass

    from ticketflow.replay import ReplaySummary

    terminal = Terminal()
    line = ProgressLine(terminal)
    summary = ReplaySummary("mail", "k:1", {"target_rate": 10.0, "speedup": None}, sent=5)

    line(summary, False)
    line(summary, True)

    assert terminal.written[0].startswith("\r")
    assert not terminal.written[0].endswith("\n")
    assert terminal.written[1].endswith("\n")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--to", "http://127.0.0.1:9/mail", "--rate", "10"], "invalid Kafka URL"),
        (["--to", "kafka://127.0.0.1:9", "--rate", "10"], "the topic is missing"),
        (["--to", "kafka://127.0.0.1:9/mail", "--rate", "-5"], "--rate -5"),
    ],
)
def test_command_rejects_bad_urls(tmp_path, capsys, arguments, message):
    synthesize(3, 1, tmp_path / "c.mbox")

    code = main(["replay", str(tmp_path / "c.mbox"), *arguments])

    assert code == 2
    assert message in capsys.readouterr().err


def test_command_rejects_missing_corpus(tmp_path, capsys):
    code = main(
        ["replay", str(tmp_path / "nowhere"), "--to", "kafka://127.0.0.1:9/mail", "--rate", "1"]
    )

    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_command_requires_one_pace(tmp_path):
    with pytest.raises(SystemExit):
        main(["replay", str(tmp_path), "--to", "kafka://h:1/t", "--rate", "1", "--speedup", "2"])
    with pytest.raises(SystemExit):
        main(["replay", str(tmp_path), "--to", "kafka://h:1/t"])
