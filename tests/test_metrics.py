"""Prometheus metrics: scraped over real HTTP while a corpus flows, checked against the run's summary."""

from __future__ import annotations

import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from prometheus_client import generate_latest

from tests.conftest import REDIS_URL
from tests.mailgen import thread_corpus
from ticketflow.config import load_settings, settings_from_mapping
from ticketflow.connectors.corpus import iter_corpus
from ticketflow.connectors.kafka import produce_records
from ticketflow.connectors.records import RecordsSource
from ticketflow.connectors.store import SqliteStore
from ticketflow.metrics import (
    LATENCY_BUCKETS,
    OTHER_TENANT,
    OUTCOME_FIELDS,
    FlowMetrics,
    MetricsServer,
    TenantLabels,
    ingested_timestamp,
    metrics_port_for,
    stamp_ingest_time,
    start_metrics_server,
)
from ticketflow.model import RawMessage
from ticketflow.outcome import Outcome, TenantCopy
from ticketflow.runner import run_flow
from ticketflow.top import buckets, parse_samples, total

SAMPLE = Path(__file__).resolve().parents[1] / "corpus" / "sample"
KNOWN_TENANTS = ("acme", "globex")
LATENCY = "ticketflow_email_to_ticket_latency_seconds"


def http_get(url: str) -> tuple[int, str]:
    """Return the status and body of a GET, including error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(server: MetricsServer) -> dict:
    status, body = http_get(server.url)
    assert status == 200, body
    return parse_samples(body)


def outcome_totals(samples: dict) -> dict[str, float]:
    return {name: total(samples, "ticketflow_outcomes_total", outcome=name) for name in OUTCOME_FIELDS}


def sample_settings():
    settings = load_settings(SAMPLE / "ticketflow.toml")
    routing = {"inbound_domains": list(settings.routing.inbound_domains), "known_tenants": list(KNOWN_TENANTS)}
    return settings_from_mapping({"routing": routing, "trust": {"authserv_ids": ["mx.support.example.com"]}})


def mixed_records() -> list[RawMessage]:
    """The sample corpus (fan-out, duplicates, suppressed, review), two dead letters, generated threads."""
    records = list(iter_corpus(SAMPLE))
    records += [RawMessage(source="mem://empty", raw=b""), RawMessage(source="mem://binary", raw=bytes(range(256)))]
    records += [RawMessage(source=f"mem://thread#{n}", raw=raw) for n, raw in enumerate(thread_corpus(20))]
    return records


class _GatedPartition(StatefulSourcePartition[RawMessage, int]):
    def __init__(self, records: list[RawMessage], gate: threading.Event, position: int) -> None:
        self._records = records
        self._gate = gate
        self._position = position
        self._half = len(records) // 2

    def next_batch(self) -> list[RawMessage]:
        if self._position >= len(self._records):
            raise StopIteration()
        if self._position >= self._half and not self._gate.is_set():
            return []
        end = self._half if self._position < self._half else len(self._records)
        batch = self._records[self._position : end]
        self._position = end
        return batch

    def next_awake(self) -> datetime | None:
        return None if self._gate.is_set() else datetime.now(UTC) + timedelta(milliseconds=10)

    def snapshot(self) -> int:
        return self._position


class GatedSource(FixedPartitionedSource[RawMessage, int]):
    """Emit the first half of the records, then wait for `gate` before emitting the rest."""

    def __init__(self, records: list[RawMessage]) -> None:
        self.records = records
        self.gate = threading.Event()

    def list_parts(self) -> list[str]:
        return ["gated"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _GatedPartition:
        return _GatedPartition(self.records, self.gate, resume_state or 0)


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def live_run(tmp_path):
    """Run the flow in a thread on a gated source, with a metrics server the test owns.

    Yields (server, source, finished, result); `result["summary"]` is set once the run ends.
    The server keeps serving after the run, until the test is done with it.
    """
    settings = sample_settings()
    metrics = FlowMetrics(settings.routing)
    source = GatedSource(mixed_records())
    result: dict = {}
    finished = threading.Event()

    def run() -> None:
        try:
            result["summary"] = run_flow("gated", settings, SqliteStore(tmp_path / "t.db"),
                                         source=source, metrics=metrics)
        except BaseException as exc:  # surfaced by the test's asserts
            result["error"] = exc
        finally:
            finished.set()

    with MetricsServer(metrics) as server:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield server, source, finished, result
        source.gate.set()
        worker.join(60)


def test_scrape_matches_summary_exactly(live_run):
    server, source, finished, result = live_run
    half = len(source.records) // 2
    wait_until(lambda: total(scrape(server), "ticketflow_stage_messages_in_total", stage="parse") >= half,
               what="the first half to be parsed")
    assert not finished.is_set()
    assert http_get(server.url.replace("/metrics", "/readyz"))[0] == 200
    assert http_get(server.url.replace("/metrics", "/healthz"))[0] == 200
    during = scrape(server)
    assert total(during, "ticketflow_stage_messages_in_total", stage="parse") == half

    source.gate.set()
    assert finished.wait(60), "the run did not end"
    assert "error" not in result, result.get("error")
    summary = result["summary"].as_dict()
    after = scrape(server)

    assert outcome_totals(after) == {name: float(count) for name, count in summary.items()}
    latency_count = total(after, f"{LATENCY}_count")
    assert latency_count == summary["tickets_created"] + summary["replies_threaded"]
    assert buckets(after, LATENCY)[-1] == (float("inf"), latency_count)
    for name, count in outcome_totals(during).items():
        assert count <= outcome_totals(after)[name], name
    assert http_get(server.url.replace("/metrics", "/readyz"))[0] == 503


def test_stage_counters_add_up(live_run):
    server, source, finished, result = live_run
    source.gate.set()
    assert finished.wait(60)
    summary = result["summary"]
    samples = scrape(server)

    def stage(name: str, stage_name: str) -> float:
        return total(samples, f"ticketflow_stage_{name}_total", stage=stage_name)

    assert stage("messages_in", "parse") == len(source.records) == summary.read
    assert stage("messages_errored", "parse") == summary.dead_letters == 2
    assert stage("messages_out", "parse") == stage("messages_in", "fan_out")
    assert stage("messages_out", "fan_out") == summary.read + summary.fanned_out - summary.dead_letters
    assert stage("messages_in", "thread_join") == stage("messages_out", "fan_out")
    assert stage("messages_out", "thread_join") == stage("messages_in", "thread_join")
    assert stage("messages_in", "store") == summary.read + summary.fanned_out
    assert stage("messages_out", "store") == stage("messages_in", "store")
    for stage_name in ("parse", "fan_out", "thread_join", "store"):
        assert stage("seconds", stage_name) > 0, stage_name


def test_detail_counters_follow_outcomes(live_run):
    server, source, finished, result = live_run
    source.gate.set()
    assert finished.wait(60)
    summary = result["summary"]
    samples = scrape(server)

    matches = total(samples, "ticketflow_thread_matches_total")
    assert matches == summary.tickets_created + summary.replies_threaded
    assert total(samples, "ticketflow_thread_matches_total", method="none") == summary.tickets_created
    assert total(samples, "ticketflow_suppressed_total") == summary.suppressed
    assert total(samples, "ticketflow_dead_letters_total") == summary.dead_letters
    assert total(samples, "ticketflow_dead_letters_total", reason="empty") == 1
    enriched_tenants = total(samples, "ticketflow_tickets_enriched_total", field="tenant")
    assert 0 < enriched_tenants <= summary.tickets_created
    # The sample corpus holds its review reasons: bulk, dmarc_fail, spam_flag + spam_score.
    assert total(samples, "ticketflow_review_reasons_total") >= summary.review
    assert total(samples, "ticketflow_store_write_requests_total", result="ok") > 0
    assert total(samples, "ticketflow_store_write_requests_total", result="error") == 0


def test_tenant_labels_are_bounded(live_run):
    server, source, finished, _ = live_run
    source.gate.set()
    assert finished.wait(60)
    samples = scrape(server)
    tenants = {dict(labels).get("tenant") for (_, labels), _ in samples.items()} - {None}
    # initech writes to the sample corpus too, but is not a known tenant.
    assert tenants == {*KNOWN_TENANTS, OTHER_TENANT, ""}


def test_new_tenants_fold_into_other():
    labels = TenantLabels(["acme"])
    assert [labels(name) for name in ("acme", "globex", "tenant-7", None)] == ["acme", "other", "other", ""]
    assert labels.values() == ("acme", "other")


def test_latency_uses_exact_ingest_time():
    routing = settings_from_mapping({}).routing
    metrics = FlowMetrics(routing)
    ingested = datetime(2026, 5, 4, 8, 0, 0, 940_000, tzinfo=UTC)
    event = stamp_ingest_time({"ingested_at": "2026-05-04T08:00:00Z", "event_id": "evt_1"}, ingested)
    copy = TenantCopy(tenant="acme", event=event, first_copy=True, enrichment={"priority": "P3"})
    outcome = Outcome(kind="created", source="mem://1", tenant="acme", copy=copy, ticket_id="t1")

    metrics.record_stored([outcome], written_at=ingested + timedelta(milliseconds=40))

    samples = parse_samples(generate_latest(metrics.registry).decode())
    cumulative = dict(buckets(samples, LATENCY))
    assert 0.025 in LATENCY_BUCKETS and 0.05 in LATENCY_BUCKETS
    assert cumulative[0.025] == 0
    assert cumulative[0.05] == 1


def test_stamped_event_survives_pickle():
    ingested = datetime(2026, 5, 4, 8, 0, 0, 123_456, tzinfo=UTC)
    event = stamp_ingest_time({"ingested_at": "2026-05-04T08:00:00Z"}, ingested)
    restored = pickle.loads(pickle.dumps(event))
    assert restored == {"ingested_at": "2026-05-04T08:00:00Z"}
    assert ingested_timestamp(restored) == ingested.timestamp()


def test_unstamped_event_falls_back_to_ingested_at():
    event = {"ingested_at": "2026-05-04T08:00:01Z", "received_at": "2026-05-04T07:00:00Z"}
    assert ingested_timestamp(event) == datetime(2026, 5, 4, 8, 0, 1, tzinfo=UTC).timestamp()
    assert ingested_timestamp({"ingested_at": "garbage", "received_at": "2026-05-04T07:00:00Z"}) == (
        datetime(2026, 5, 4, 7, tzinfo=UTC).timestamp()
    )


class FlakyStore(SqliteStore):
    """A SQLite store whose first `failures` writes fail as a locked database does."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def write(self, outcomes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        super().write(outcomes)


def test_store_retries_are_counted(tmp_path):
    settings = settings_from_mapping({})
    metrics = FlowMetrics(settings.routing)
    records = [RawMessage(source=f"mem://{n}", raw=raw) for n, raw in enumerate(thread_corpus(3))]
    run_flow("flaky", settings, FlakyStore(tmp_path / "t.db", failures=2),
             source=RecordsSource(records, batch_size=100), metrics=metrics)
    samples = parse_samples(generate_latest(metrics.registry).decode())
    assert total(samples, "ticketflow_store_write_retries_total") == 2
    assert total(samples, "ticketflow_store_write_requests_total", result="error") == 0
    requests = total(samples, "ticketflow_store_write_requests_total", result="ok")
    assert total(samples, "ticketflow_store_write_seconds_count") == requests > 0


def test_health_and_unknown_paths():
    metrics = FlowMetrics(settings_from_mapping({}).routing)
    with MetricsServer(metrics) as server:
        base = server.url.removesuffix("/metrics")
        assert http_get(f"{base}/healthz") == (200, "ok\n")
        assert http_get(f"{base}/readyz")[0] == 503
        assert http_get(f"{base}/nothing")[0] == 404
        metrics.readiness.store_opened()
        metrics.readiness.source_listed()
        assert http_get(f"{base}/readyz") == (200, "ready\n")
        assert total(scrape(server), "ticketflow_ready") == 1


def test_kafka_lag_is_read_at_scrape_time(monkeypatch):
    import ticketflow.connectors.kafka as kafka

    monkeypatch.setattr(kafka, "current_lag", lambda: {("mail", 0): 12, ("mail", 1): 0})
    metrics = FlowMetrics(settings_from_mapping({}).routing)
    samples = parse_samples(generate_latest(metrics.registry).decode())
    assert total(samples, "ticketflow_kafka_consumer_lag", topic="mail", partition="0") == 12
    assert ("ticketflow_kafka_consumer_lag", (("partition", "1"), ("topic", "mail"))) in samples


def test_process_port_is_base_plus_id():
    assert metrics_port_for(9464, None) == 9464
    assert metrics_port_for(9464, 2) == 9466
    assert metrics_port_for(0, 3) == 0
    with pytest.raises(ValueError, match=r"9464 \+ process id 60072 = 69536 is above 65535"):
        metrics_port_for(9464, 60072)


def test_port_in_use_runs_without_metrics(caplog):
    with MetricsServer(FlowMetrics(settings_from_mapping({}).routing)) as taken:
        settings = settings_from_mapping({"metrics": {"port": taken.port}})
        assert start_metrics_server(settings) is None
    assert f"cannot serve metrics on 127.0.0.1:{taken.port}" in caplog.text
    assert "--metrics-port" in caplog.text


def test_metrics_off_with_port_zero():
    assert start_metrics_server(settings_from_mapping({"metrics": {"port": 0}})) is None


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian package prometheus) is not installed")
def test_promtool_accepts_exposition(live_run):
    server, source, finished, _ = live_run
    source.gate.set()
    assert finished.wait(60)
    _, body = http_get(server.url)
    checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                             text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- a Kafka cluster run, scraped process by process ------------------------------------


def test_cluster_processes_serve_port_plus_id(tmp_path, tansu, new_topic, redis_namespace):
    topic = new_topic(partitions=2)
    tansu.create_topic(f"{topic}.dlq", 1)
    raws = thread_corpus(10)
    produce_records(tansu.bootstrap, topic, raws, partitions=2)
    config = tmp_path / "cluster.toml"
    config.write_text(f'[state]\nredis_url = "{REDIS_URL}"\nnamespace = "{redis_namespace}"\n')
    base = free_port_pair()

    process = subprocess.Popen(
        [sys.executable, "-m", "ticketflow.cli", "run", "--input", f"kafka://{tansu.bootstrap}/{topic}",
         "--processes", "2", "--config", str(config), "--store", f"sqlite:///{tmp_path / 't.db'}",
         "--metrics-port", str(base), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        urls = [f"http://127.0.0.1:{base + index}" for index in range(2)]

        def read_total() -> float:
            try:
                return sum(total(parse_samples(http_get(f"{url}/metrics")[1]),
                                 "ticketflow_outcomes_total", outcome="read") for url in urls)
            except OSError:
                return -1

        wait_until(lambda: read_total() == len(raws), timeout=60, what="both processes to read the topic")
        for url in urls:
            assert http_get(f"{url}/readyz")[0] == 200, url
        lag = [parse_samples(http_get(f"{url}/metrics")[1]) for url in urls]
        partitions = {dict(labels)["partition"] for samples in lag for (name, labels) in samples
                      if name == "ticketflow_kafka_consumer_lag"}
        assert partitions == {"0", "1"}
        assert sum(total(samples, "ticketflow_kafka_consumer_lag") for samples in lag) == 0
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr


def free_port_pair() -> int:
    """Return a port P such that P and P + 1 were both free on 127.0.0.1 a moment ago."""
    import socket

    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two adjacent free ports found")


def test_attachment_results_are_counted():
    from ticketflow.config import Settings
    from ticketflow.metrics import FlowMetrics
    from tests.factories import make_event

    metrics = FlowMetrics(Settings().routing)
    event = make_event("<a@x>")
    base = {"content_type": "application/pdf", "size": 1, "content_id": None,
            "disposition": "attachment", "sha256": "", "download_url": None}
    event["attachments"] = [
        {**base, "filename": "a.pdf", "refused": None, "quarantined": None},
        {**base, "filename": "b.exe", "refused": "type_denied:application/x-dosexec", "quarantined": None},
        {**base, "filename": "c.doc", "refused": None, "quarantined": "Eicar-Test-Signature"},
        {**base, "filename": "d.pdf"},
    ]

    metrics.record_attachments(event)

    def value(name, labels):
        return metrics.registry.get_sample_value(name, labels)

    assert value("ticketflow_attachments_total", {"result": "accepted"}) == 2
    assert value("ticketflow_attachments_total", {"result": "refused"}) == 1
    assert value("ticketflow_attachments_total", {"result": "quarantined"}) == 1
    assert value("ticketflow_attachments_refused_total", {"reason": "type_denied"}) == 1
