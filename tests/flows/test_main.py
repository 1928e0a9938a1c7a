"""The main job end to end: raw files in, tickets in the store, counts that add up."""

import json
import random
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from ticketflow.config import Settings, settings_as_dict, settings_from_mapping
from ticketflow.connectors.kafka import produce_records
from ticketflow.connectors.store import SqliteStore
from ticketflow.outcome import RunSummary
from ticketflow.runner import run_corpus
from tests.conftest import REDIS_URL

SUMMARY_KEYS = ("read", "fanned_out", "tickets_created", "replies_threaded", "duplicates",
                "suppressed", "dead_letters", "review")


def mail(message_id, subject="API timeout", sender="alice@customer.example",
         to="acme-support@support.example.com", date="Thu, 30 Apr 2026 12:00:00 +0000",
         extra="", body="The charge endpoint times out.\n", received="mx1"):
    lines = [
        f"Received: from {received}.example.net by mx.support.example.com; {date}",
        f"From: Customer <{sender}>",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {date}",
    ]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    if extra:
        lines.append(extra.rstrip("\n"))
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", body]
    return "\r\n".join(lines).encode()


def write_corpus(folder: Path, messages: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in messages.items():
        (folder / name).write_bytes(raw)
    return folder


@pytest.fixture(autouse=True, params=["folder", "kafka-1", "kafka-2"])
def transport(request, monkeypatch):
    """Run every scenario from a folder, and through Kafka with one and two processes.

    Through Kafka, the folder's files are produced in shuffled order over three
    partitions; two processes share state in Redis.
    """
    if request.param != "folder":
        broker = request.getfixturevalue("tansu")
        namespace = request.getfixturevalue("redis_namespace")
        monkeypatch.setattr(sys.modules[__name__], "TRANSPORT", (request.param, broker, namespace))
    return request.param


TRANSPORT = ("folder", None, None)


def run(folder, tmp_path, settings=None, name="tickets.db"):
    """Run the main job on a folder through the current transport; return (summary, store)."""
    settings = settings or Settings()
    kind, broker, namespace = TRANSPORT
    store_path = tmp_path / name
    if kind == "folder":
        summary = run_corpus(folder, settings, SqliteStore(store_path))
    else:
        summary = run_through_kafka(folder, settings, store_path, broker, namespace,
                                    processes=int(kind.rsplit("-", 1)[1]))
    return summary, SqliteStore(store_path)


def run_through_kafka(folder, settings, store_path, broker, namespace, processes):
    topic = f"scenario-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, 3)
    broker.create_topic(f"{topic}.dlq", 1)
    raws = [path.read_bytes() for path in sorted(folder.iterdir())]
    random.Random(len(raws)).shuffle(raws)
    produce_records(broker.bootstrap, topic, raws, partitions=3)

    config = store_path.with_suffix(".toml")
    tables = settings_as_dict(settings)
    tables["state"] = {"redis_url": REDIS_URL, "namespace": namespace}
    config.write_text(to_toml(tables))
    result = subprocess.run(
        [sys.executable, "-m", "ticketflow.cli", "run", "--input", f"kafka://{broker.bootstrap}/{topic}",
         "--drain", "--json", "--processes", str(processes), "--config", str(config),
         "--store", f"sqlite:///{store_path}"],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return RunSummary(**json.loads(result.stdout.strip().splitlines()[-1]))


def to_toml(tables: dict, prefix: str = "") -> str:
    """Write settings as TOML: nested tables of strings, numbers, lists and lists of tables."""
    lines = []
    for table, values in tables.items():
        if table == "kafka" and not prefix:
            continue
        name = f"{prefix}{table}"
        lines.append(f"[{name}]")
        nested = {}
        for key, value in values.items():
            if isinstance(value, dict):
                nested[key] = value
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                raise ValueError(f"{name}.{key}: lists of tables are not written by this helper")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        if nested:
            lines.append(to_toml(nested, prefix=f"{name}."))
    return "\n".join(lines) + "\n"


def assert_balanced(summary):
    counts = summary.as_dict()
    assert counts["read"] + counts["fanned_out"] == sum(
        counts[key] for key in ("tickets_created", "replies_threaded", "duplicates", "suppressed", "dead_letters")
    ), counts


THREAD = {
    "01-question.eml": mail("<q1@customer.example>", subject="[P1][Payments] API timeout"),
    "02-reply.eml": mail("<r1@support.example.com>", subject="Re: [P1][Payments] API timeout",
                         sender="agent@customer.example", date="Thu, 30 Apr 2026 12:05:00 +0000",
                         extra="In-Reply-To: <q1@customer.example>\r\nReferences: <q1@customer.example>"),
    "03-followup.eml": mail("<f1@customer.example>", subject="RE: API timeout",
                            date="Thu, 30 Apr 2026 12:10:00 +0000",
                            extra="In-Reply-To: <r1@support.example.com>"),
    "04-other.eml": mail("<o1@other.example>", subject="Invoice copy", sender="bob@other.example",
                         to="globex-support@support.example.com"),
}


def test_thread_and_tenants_end_to_end(tmp_path):
    summary, store = run(write_corpus(tmp_path / "in", THREAD), tmp_path)
    assert summary.as_dict() == {"read": 4, "fanned_out": 0, "tickets_created": 2, "replies_threaded": 2,
                                 "duplicates": 0, "suppressed": 0, "dead_letters": 0, "review": 0}
    tickets = {ticket["tenant"]: ticket for ticket in store.tickets()}
    assert set(tickets) == {"acme", "globex"}
    acme = tickets["acme"]
    assert len(acme["messages"]) == 3
    assert acme["priority"] == "P1"
    assert acme["component"] == "payments"
    assert acme["subject"] == "API timeout"


@pytest.mark.parametrize("seed", range(4))
def test_any_file_order_gives_same_tickets(tmp_path, seed):
    names = list(THREAD)
    shuffled = names[:]
    random.Random(seed).shuffle(shuffled)
    renamed = {f"{position:02d}-{name}": THREAD[name] for position, name in enumerate(shuffled)}

    _, reference = run(write_corpus(tmp_path / "a", THREAD), tmp_path, name="a.db")
    _, other = run(write_corpus(tmp_path / "b", renamed), tmp_path, name="b.db")

    def comparable(store):
        tickets = store.tickets()
        for ticket in tickets:
            ticket.pop("key")
            for message in ticket["messages"]:
                message.pop("event_id")
        return sorted(tickets, key=lambda ticket: ticket["ticket_id"])

    assert comparable(other) == comparable(reference)


def test_same_corpus_twice_changes_nothing(tmp_path):
    folder = write_corpus(tmp_path / "in", THREAD)
    store = SqliteStore(tmp_path / "t.db")
    first = run_corpus(folder, Settings(), store)
    before = store.tickets()
    second = run_corpus(folder, Settings(), store)
    assert store.tickets() == before
    assert second.as_dict() == first.as_dict()


def test_duplicate_delivery_stored_once(tmp_path):
    corpus = {
        "1.eml": mail("<d1@customer.example>", received="mx1"),
        "2.eml": mail("<d1@customer.example>", received="mx2"),
    }
    summary, store = run(write_corpus(tmp_path / "in", corpus), tmp_path)
    assert summary.duplicates == 1
    assert summary.tickets_created == 1
    assert len(store.tickets()[0]["messages"]) == 1


def test_same_message_to_two_tenants(tmp_path):
    corpus = {"1.eml": mail("<two@customer.example>",
                            to="acme-support@support.example.com, globex-support@support.example.com")}
    summary, store = run(write_corpus(tmp_path / "in", corpus), tmp_path)
    assert (summary.read, summary.fanned_out, summary.tickets_created) == (1, 1, 2)
    assert sorted(ticket["tenant"] for ticket in store.tickets()) == ["acme", "globex"]


def test_auto_reply_and_bulk(tmp_path):
    corpus = {
        "1.eml": mail("<q@customer.example>"),
        "2.eml": mail("<ooo@customer.example>", subject="Out of office", sender="carol@customer.example",
                      date="Thu, 30 Apr 2026 12:01:00 +0000",
                      extra="Auto-Submitted: auto-replied\r\nIn-Reply-To: <q@customer.example>"),
        "3.eml": mail("<ooo2@customer.example>", subject="Out of office", sender="dan@customer.example",
                      extra="Auto-Submitted: auto-replied"),
        "4.eml": mail("<news@list.example>", subject="Our newsletter", sender="news@list.example",
                      extra="List-Id: <news.list.example>\r\nPrecedence: bulk"),
    }
    summary, store = run(write_corpus(tmp_path / "in", corpus), tmp_path)
    assert (summary.tickets_created, summary.replies_threaded, summary.suppressed, summary.review) == (2, 1, 1, 1)
    kinds = sorted(m["kind"] for t in store.tickets() for m in t["messages"])
    assert kinds == ["auto_reply", "original", "original"]


def test_bulk_policy_suppress(tmp_path):
    corpus = {"1.eml": mail("<news@list.example>", extra="List-Id: <news.list.example>")}
    settings = settings_from_mapping({"gate": {"bulk_policy": "suppress"}})
    summary, store = run(write_corpus(tmp_path / "in", corpus), tmp_path, settings)
    assert summary.suppressed == 1
    assert store.tickets() == []


def test_dmarc_failure_held_for_review(tmp_path):
    corpus = {"1.eml": mail("<spoof@customer.example>",
                            extra="Authentication-Results: mx.support.example.com; spf=pass; dkim=pass; dmarc=fail")}
    summary, store = run(write_corpus(tmp_path / "in", corpus), tmp_path)
    assert summary.review == 1
    ticket = store.tickets()[0]
    assert (ticket["status"], ticket["review_reasons"]) == ("review", ["dmarc_fail"])


BAD_INPUTS = {
    "empty.eml": b"",
    "not-email.bin": bytes(range(256)) * 4,
    "truncated-multipart.eml": (
        b"From: a@customer.example\r\nTo: acme-support@support.example.com\r\nSubject: cut\r\n"
        b"Message-ID: <cut@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain\r\n\r\nhalf a body"
    ),
    "many-headers.eml": b"".join(b"X-Filler-%d: value\r\n" % n for n in range(10_000))
    + mail("<many@x>", subject="many headers"),
    "deep-nesting.eml": b"From: a@customer.example\r\nTo: acme-support@support.example.com\r\n"
    b"Subject: deep\r\nMessage-ID: <deep@x>\r\n"
    + b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (n, n) for n in range(200))
    + b"Content-Type: text/plain\r\n\r\nbottom\r\n",
}


def test_bad_input_never_stops_the_run(tmp_path):
    corpus = dict(BAD_INPUTS)
    corpus["zz-good.eml"] = mail("<good@x>", subject="still fine")
    summary, store = run(write_corpus(tmp_path / "in", corpus), tmp_path)
    assert summary.read == len(corpus)
    assert_balanced(summary)
    assert sorted(letter["reason"] for letter in store.dead_letters()) == ["empty", "not_email"]
    subjects = {ticket["subject"] for ticket in store.tickets()}
    assert {"still fine", "cut", "many headers", "deep"} <= subjects


def test_too_large_is_dead_letter_with_headers(tmp_path):
    corpus = {"big.eml": mail("<big@x>", subject="huge", body="x" * 5000)}
    settings = settings_from_mapping({"limits": {"max_message_bytes": 1000}})
    summary, store = run(write_corpus(tmp_path / "in", corpus), tmp_path, settings)
    assert summary.dead_letters == 1
    letter = store.dead_letters()[0]
    assert letter["reason"] == "too_large"
    assert "Subject: huge" in letter["headers"]


CPYTHON_EMAIL_DATA = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"


@pytest.mark.skipif(not CPYTHON_EMAIL_DATA.is_dir(), reason="CPython's test_email data is not installed here")
def test_cpython_email_test_messages_all_accounted(tmp_path):
    folder = tmp_path / "cpython"
    folder.mkdir()
    for path in sorted(CPYTHON_EMAIL_DATA.glob("msg_*.txt")):
        (folder / path.name).write_bytes(path.read_bytes())
    summary, _ = run(folder, tmp_path)
    assert summary.read == len(list(folder.iterdir()))
    assert_balanced(summary)


def test_event_time_of_dedupe_is_capped_at_ingest_time():
    from ticketflow.flows.main import _event_time
    from tests.factories import make_event

    event = make_event("<a@x>", received_at="2099-01-01T00:00:00Z")
    event["ingested_at"] = "2026-05-01T00:00:00Z"
    assert _event_time(event).isoformat() == "2026-05-01T00:00:00+00:00"

    event["received_at"] = "2026-04-30T12:00:00Z"
    assert _event_time(event).isoformat() == "2026-04-30T12:00:00+00:00"
