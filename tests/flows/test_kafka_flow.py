"""The main job on Kafka: same tickets as a folder run, with 1 and 2 processes, through crashes."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ticketflow.config import load_settings
from ticketflow.connectors.corpus import iter_corpus
from ticketflow.connectors.kafka import produce_records, read_dead_letters
from ticketflow.connectors.store import SqliteStore
from ticketflow.runner import FAULT_KILL_VARIABLE, run_corpus
from tests.conftest import REDIS_URL
from tests.mailgen import expected_counts, thread_corpus

SAMPLE = Path(__file__).resolve().parents[2] / "corpus" / "sample"


def ticket_shapes(store_path: Path) -> list[tuple]:
    """Everything about the stored tickets except what depends on arrival order (human keys)."""
    store = SqliteStore(store_path)
    try:
        shapes = []
        for ticket in store.tickets():
            messages = tuple(sorted((m["message_id"], m["kind"]) for m in ticket["messages"]))
            shapes.append((ticket["ticket_id"], ticket["tenant"], ticket["subject"], ticket["status"],
                           ticket["priority"], tuple(ticket["participants"]), messages))
        return sorted(shapes)
    finally:
        store.close()


def cli(*arguments: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ticketflow.cli", *arguments], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def write_config(path: Path, namespace: str | None, base: Path | None = None) -> Path:
    text = base.read_text() if base else ""
    if namespace:
        text += f'\n[state]\nredis_url = "{REDIS_URL}"\nnamespace = "{namespace}"\n'
    path.write_text(text)
    return path


@pytest.fixture
def sample_topic(tansu, new_topic):
    """The sample corpus, shuffled into a 3-partition topic, with its dead-letter topic."""
    topic = new_topic(partitions=3)
    tansu.create_topic(f"{topic}.dlq", 1)
    raws = [message.raw for message in iter_corpus(SAMPLE)] + [b"\x00\x01 not a mail at all"]
    random.Random(3).shuffle(raws)
    produce_records(tansu.bootstrap, topic, raws, partitions=3)
    return f"kafka://{tansu.bootstrap}/{topic}"


@pytest.fixture(scope="module")
def folder_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "folder.db"
    run_corpus(SAMPLE, load_settings(SAMPLE / "ticketflow.toml"), f"sqlite:///{path}")
    return ticket_shapes(path)


@pytest.mark.parametrize("processes", [1, 2])
def test_kafka_run_gives_folder_tickets(processes, sample_topic, folder_reference, tmp_path, redis_namespace):
    config = write_config(tmp_path / "t.toml", redis_namespace if processes > 1 else None,
                          SAMPLE / "ticketflow.toml")
    store = tmp_path / "kafka.db"
    result = cli("run", "--input", sample_topic, "--drain", "--json", "--processes", str(processes),
                 "--config", str(config), "--store", f"sqlite:///{store}")
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["read"] == 35
    assert summary["dead_letters"] == 1
    assert summary["tickets_created"] == 23
    assert ticket_shapes(store) == folder_reference


def test_dead_letters_reach_the_topic_and_the_cli(sample_topic, tmp_path, tansu):
    store = tmp_path / "kafka.db"
    result = cli("run", "--input", sample_topic, "--drain", "--json", "--store", f"sqlite:///{store}")
    assert result.returncode == 0, result.stderr

    topic = sample_topic.rsplit("/", 1)[1]
    letters = read_dead_letters(tansu.bootstrap, f"{topic}.dlq")
    assert [(letter["reason"], letter["size"]) for letter in letters] == [("not_email", len(b"\x00\x01 not a mail at all"))]
    assert letters[0]["source"].startswith(sample_topic + "#")

    listed = cli("dead-letters", "--input", sample_topic, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [letter["reason"] for letter in json.loads(listed.stdout)] == ["not_email"]


def test_multi_process_needs_redis(sample_topic, tmp_path):
    result = cli("run", "--input", sample_topic, "--drain", "--processes", "2",
                 "--store", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert "set [state] redis_url" in result.stderr


def test_missing_dead_letter_topic_is_a_clear_error(tansu, new_topic, tmp_path):
    topic = new_topic(partitions=1)
    result = cli("run", "--input", f"kafka://{tansu.bootstrap}/{topic}", "--drain",
                 "--store", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert f"{topic}.dlq" in result.stderr


# -- crash and restart -------------------------------------------------------------

THREADS = 90


@pytest.fixture
def threads_topic(tansu, new_topic):
    topic = new_topic(partitions=3)
    tansu.create_topic(f"{topic}.dlq", 1)
    produce_records(tansu.bootstrap, topic, thread_corpus(THREADS), partitions=3)
    return f"kafka://{tansu.bootstrap}/{topic}"


@pytest.fixture
def threads_reference(threads_topic, tmp_path):
    store = tmp_path / "reference.db"
    result = cli("run", "--input", threads_topic, "--drain", "--json", "--store", f"sqlite:///{store}")
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == expected_counts(THREADS)
    return ticket_shapes(store)


@pytest.mark.parametrize("kill_after_batches", [1, 4, 9])
def test_kill_between_write_and_snapshot_then_restart(kill_after_batches, threads_topic, threads_reference,
                                                     tmp_path):
    store = tmp_path / "crash.db"
    command = ("run", "--input", threads_topic, "--drain", "--json", "--store", f"sqlite:///{store}",
               "--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "0.5",
               "--batch-size", "10")

    crashed = cli(*command, env={FAULT_KILL_VARIABLE: str(kill_after_batches)})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    partial = ticket_shapes(store)
    assert len(partial) < THREADS

    resumed = cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert ticket_shapes(store) == threads_reference


@pytest.mark.parametrize("kill_after_batches", [2, 6])
def test_kill_one_of_two_processes_then_restart(kill_after_batches, threads_topic, threads_reference, tmp_path,
                                                redis_namespace):
    store = tmp_path / "cluster.db"
    config = write_config(tmp_path / "c.toml", redis_namespace)
    command = ("run", "--input", threads_topic, "--drain", "--json", "--processes", "2",
               "--config", str(config), "--store", f"sqlite:///{store}",
               "--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "0.3",
               "--batch-size", "5")

    crashed = cli(*command, env={FAULT_KILL_VARIABLE: f"{kill_after_batches}@1"})
    assert crashed.returncode == 1
    assert "process 1 of 2 ended with signal 9" in crashed.stderr

    resumed = cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert ticket_shapes(store) == threads_reference


def test_two_processes_deliver_each_ticket_once_to_a_webhook(sample_topic, tmp_path, redis_namespace):
    from tests.connectors.webhook_receiver import WebhookReceiver

    with WebhookReceiver(secret=b"cluster-secret") as receiver:
        config = write_config(tmp_path / "t.toml", redis_namespace, SAMPLE / "ticketflow.toml")
        config.write_text(config.read_text() + f'\n[sink]\nkind = "webhook"\n\n[sink.webhook]\n'
                                               f'url = "{receiver.hook_url}"\n')
        store = tmp_path / "kafka.db"
        result = cli("run", "--input", sample_topic, "--drain", "--json", "--processes", "2",
                     "--config", str(config), "--store", f"sqlite:///{store}",
                     env={"TICKETFLOW_WEBHOOK_SECRET": "cluster-secret"})
        assert result.returncode == 0, result.stderr

        summary = last_json(result.stdout)
        stored = SqliteStore(store)
        try:
            tickets = stored.tickets()
        finally:
            stored.close()
        comments = sum(len(items) for items in receiver.comments.values())
        assert summary["deliveries"]["pending"] == 0
        assert summary["deliveries"]["delivered"] == sum(len(ticket["messages"]) for ticket in tickets)
        assert len(receiver.tickets) == len(tickets)
        assert comments == sum(len(ticket["messages"]) for ticket in tickets) - len(tickets)
