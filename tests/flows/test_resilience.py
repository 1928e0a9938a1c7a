"""Redrive after a fix, a Redis outage mid-run, a stalled sink, and a clean stop on SIGTERM."""

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ticketflow.config import Settings
from ticketflow.connectors.kafka import produce_records
from ticketflow.connectors.records import RecordsSource
from ticketflow.connectors.store import SqliteStore
from ticketflow.model import RawMessage
from ticketflow.runner import run_flow
from tests.flows.test_kafka_flow import cli, last_json, ticket_shapes
from tests.mailgen import expected_counts, message, thread_corpus, START


def test_redrive_store_dead_letters_after_a_fix(tmp_path, monkeypatch):
    store_url = f"sqlite:///{tmp_path / 't.db'}"
    good = message("<fixed@customer.example>", "ann@customer.example", "acme", "Broken parser case", START)
    records = [RawMessage(source="/in/flaky.eml", raw=good)]

    import ticketflow.flows.main as flow_module

    real_decode = flow_module.decode_record

    def broken_decode(*args, **kwargs):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(flow_module, "decode_record", broken_decode)
    first = run_flow("records", Settings(), store_url, source=RecordsSource(records))
    assert first.dead_letters == 1

    monkeypatch.setattr(flow_module, "decode_record", real_decode)
    result = cli("redrive", "--store", store_url, "--json")
    assert result.returncode == 0, result.stderr
    redriven = last_json(result.stdout)
    assert (redriven["redriven"], redriven["tickets_created"], redriven["dead_letters_left"]) == (1, 1, 0)

    store = SqliteStore(tmp_path / "t.db")
    assert [ticket["subject"] for ticket in store.tickets()] == ["Broken parser case"]


def test_redrive_topic_sends_records_back(tansu, new_topic, tmp_path):
    topic = new_topic(partitions=1)
    tansu.create_topic(f"{topic}.dlq", 1)
    url = f"kafka://{tansu.bootstrap}/{topic}"
    produce_records(tansu.bootstrap, topic, [b"no header block here"])
    run = cli("run", "--input", url, "--drain", "--json", "--store", f"sqlite:///{tmp_path / 'a.db'}")
    assert last_json(run.stdout)["dead_letters"] == 1

    result = cli("redrive", "--input", url, "--json")
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout)["redriven"] == 1

    rerun = cli("run", "--input", url, "--drain", "--json", "--store", f"sqlite:///{tmp_path / 'b.db'}")
    assert last_json(rerun.stdout)["read"] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(port: int, directory: Path) -> subprocess.Popen:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed; the Redis outage test needs its own server")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("redis-server did not start")


OUTAGE_THREADS = 200


def _wait_for_messages(store: Path, at_least: int, timeout: float = 60) -> None:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(store) as db:
                if db.execute("SELECT count(*) FROM messages").fetchone()[0] >= at_least:
                    return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"the store never held {at_least} messages")


def test_redis_outage_parks_the_flow_and_loses_nothing(tansu, new_topic, tmp_path):
    topic = new_topic(partitions=3)
    tansu.create_topic(f"{topic}.dlq", 1)
    produce_records(tansu.bootstrap, topic, thread_corpus(OUTAGE_THREADS), partitions=3)
    url = f"kafka://{tansu.bootstrap}/{topic}"

    reference = tmp_path / "reference.db"
    assert cli("run", "--input", url, "--drain", "--store", f"sqlite:///{reference}").returncode == 0

    port = _free_port()
    redis_process = _start_redis(port, tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\nredis_url = "redis://127.0.0.1:{port}/0"\n')
    store = tmp_path / "outage.db"
    run = subprocess.Popen(
        [sys.executable, "-m", "ticketflow.cli", "run", "--input", url, "--drain", "--json", "--processes", "2",
         "--config", str(config), "--store", f"sqlite:///{store}", "--batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for_messages(store, at_least=10)
        redis_process.kill()
        redis_process.wait()
        time.sleep(2.0)
        if run.poll() is not None:
            raise AssertionError(f"the flow must wait for Redis, not stop:\n{run.communicate()[1][-3000:]}")
        redis_process = _start_redis(port, tmp_path)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        redis_process.kill()
        if run.poll() is None:
            run.kill()

    assert run.returncode == 0, stderr
    assert "redis" in stderr.lower() and "retrying" in stderr
    assert last_json(stdout) == expected_counts(OUTAGE_THREADS)
    assert ticket_shapes(store) == ticket_shapes(reference)


class StalledStore:
    """A store whose first write blocks until released, counting what reached it."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.release = threading.Event()
        self.stalled = threading.Event()

    def write(self, outcomes):
        self.stalled.set()
        self.release.wait(30)
        self._inner.write(outcomes)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class CountingSource(RecordsSource):
    """Counts the records the flow pulled from the source."""

    pulled = 0

    def build_part(self, step_id, for_part, resume_state):
        part = super().build_part(step_id, for_part, resume_state)
        inner_next = part.next_batch

        def next_batch():
            batch = inner_next()
            CountingSource.pulled += len(batch)
            return batch

        part.next_batch = next_batch
        return part


def test_stalled_sink_stops_consumption(tmp_path):
    records = [
        RawMessage(source=f"/gen/{number}", raw=message(f"<m{number}@x>", "a@customer.example", "acme",
                                                       f"Issue {number}", START))
        for number in range(5000)
    ]
    store = StalledStore(SqliteStore(tmp_path / "t.db"))
    CountingSource.pulled = 0
    result = {}
    runner = threading.Thread(
        target=lambda: result.setdefault("summary", run_flow("gen", Settings(), store,
                                                             source=CountingSource(records, batch_size=50))),
    )
    runner.start()
    assert store.stalled.wait(30)
    time.sleep(1.0)
    pulled_while_stalled = CountingSource.pulled
    store.release.set()
    runner.join(120)

    assert pulled_while_stalled <= 200, f"the source kept reading while the sink was stalled: {pulled_while_stalled}"
    assert result["summary"].tickets_created == 5000


def test_sigterm_stops_a_tailing_run_cleanly(tansu, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    tansu.create_topic(f"{topic}.dlq", 1)
    produce_records(tansu.bootstrap, topic, thread_corpus(10), partitions=2)
    run = subprocess.Popen(
        [sys.executable, "-m", "ticketflow.cli", "run", "--input", f"kafka://{tansu.bootstrap}/{topic}", "--json",
         "--store", f"sqlite:///{tmp_path / 't.db'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (tmp_path / "t.db").exists():
        time.sleep(0.1)
    time.sleep(1.5)
    assert run.poll() is None, "without --drain the run keeps tailing"
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr
    summary = last_json(stdout)
    assert summary["read"] == 10 * 3 + 5
