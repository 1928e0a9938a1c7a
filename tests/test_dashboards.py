"""The Grafana dashboard and the Prometheus rules query only what the flow exports.

Every PromQL expression in deploy/grafana/dashboards/*.json and
deploy/prometheus/rules.yml is parsed (promql-parser), and each series it selects
must be a metric the flow's registry exports after a small run, a series a
recording rule defines, or `up`, which Prometheus writes itself. Label matchers
must name labels that metric has. Where Debian's `prometheus` package is
installed, promtool checks and unit-tests the rules, and a real Prometheus
scrapes a metrics server and runs every expression.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.connectors.memory_sink import MemorySink
from ticketflow.config import load_settings, settings_from_mapping
from ticketflow.connectors.corpus import iter_corpus
from ticketflow.connectors.records import RecordsSource
from ticketflow.connectors.store import SqliteStore
from ticketflow.metrics import FlowMetrics, MetricsServer
from ticketflow.model import RawMessage
from ticketflow.runner import run_flow

promql = pytest.importorskip("promql_parser", reason="promql-parser (test extra) is not installed")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "corpus" / "sample"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = REPO / "deploy" / "grafana" / "provisioning" / "dashboards"
COMPOSE = REPO / "docker-compose.yml"

# Series Prometheus writes itself for every target, and the labels it adds to every series.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}
# Values Grafana puts in place of its variables before it sends a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h",
    "${tenant}": ".*", "$tenant": ".*",
}
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")


# -- what the flow exports -------------------------------------------------------------


def run_small_flow(metrics: FlowMetrics, tmp_path: Path) -> dict[str, int]:
    """Run the sample corpus and two dead letters through the flow, counted by `metrics`."""
    records = list(iter_corpus(SAMPLE))
    records += [RawMessage(source="mem://empty", raw=b""), RawMessage(source="mem://binary", raw=bytes(range(256)))]
    summary = run_flow("dashboards", load_settings(SAMPLE / "ticketflow.toml"), SqliteStore(tmp_path / "t.db"),
                       source=RecordsSource(records), metrics=metrics, sink=MemorySink(name="webhook"))
    return summary.as_dict()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, monkeypatch_module) -> dict[str, set[str]]:
    """Return {series name: label names} the registry exports after a small run with Kafka lag."""
    import ticketflow.connectors.kafka as kafka

    monkeypatch_module.setattr(kafka, "current_lag", lambda: {("mail", 0): 3})
    metrics = FlowMetrics(settings_from_mapping({}).routing)
    run_small_flow(metrics, tmp_path_factory.mktemp("exported"))

    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# -- the expressions -------------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return every panel, including those nested in rows."""
    found = []
    for panel in panels:
        found.append(panel)
        found += dashboard_panels(panel.get("panels") or [])
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """Return (where, PromQL) for every panel target of every dashboard."""
    expressions = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard_panels(dashboard["panels"]):
            for target in panel.get("targets") or []:
                expressions.append((f"{path.name}: {panel['title']} {target['refId']}", target["expr"]))
    return expressions


def rule_expressions() -> list[tuple[str, str]]:
    return [(f"rules.yml: {rule.get('record') or rule.get('alert')}", rule["expr"]) for rule in load_rules()]


def recorded_series() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def as_promql(expression: str) -> str:
    """Replace Grafana's variables with the values Grafana would send."""
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    return expression


def selectors(expression: str) -> list[Any]:
    """Return every vector selector in a PromQL expression; raises ValueError when it does not parse."""
    found: list[Any] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql.VectorSelector):
            found.append(node)
        return True

    promql.walk(promql.parse(as_promql(expression)), visit)
    return found


ALL_EXPRESSIONS = dashboard_expressions() + rule_expressions()


def test_there_are_expressions_to_check():
    assert DASHBOARDS, "deploy/grafana/dashboards holds no dashboard"
    assert len(dashboard_expressions()) >= 20
    assert len(rule_expressions()) >= 10


@pytest.mark.parametrize("where, expression", ALL_EXPRESSIONS, ids=[where for where, _ in ALL_EXPRESSIONS])
def test_expression_selects_exported_series(where, expression, exported):
    known = {**exported, **PROMETHEUS_SERIES}
    recorded = recorded_series()
    found = selectors(expression)
    assert found, f"{where}: selects no series"
    for selector in found:
        assert selector.name, f"{where}: a selector without a metric name"
        if selector.name in recorded:
            continue
        assert selector.name in known, f"{where}: {selector.name} is not exported by the flow"
        for matcher in selector.matchers.matchers:
            assert matcher.name in known[selector.name] | TARGET_LABELS, (
                f"{where}: {selector.name} has no label {matcher.name!r}; it has {sorted(known[selector.name])}"
            )


def test_slo_bucket_matcher_fits_both_prometheus_versions():
    bucket_matchers = [
        matcher for _, expression in ALL_EXPRESSIONS for selector in selectors(expression)
        for matcher in selector.matchers.matchers if matcher.name == "le"
    ]
    assert bucket_matchers, "no expression reads the 30 s bucket"
    for matcher in bucket_matchers:
        # Prometheus 2 keeps the exporter's "30.0"; Prometheus 3 stores "30".
        assert re.fullmatch(matcher.value, "30.0"), matcher.value
        assert re.fullmatch(matcher.value, "30"), matcher.value


def test_template_variables_read_exported_labels(exported):
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert match, f"{path.name}: variable {variable['name']} has an unexpected query {query!r}"
            metric, label = match.groups()
            assert label in exported.get(metric, set()), f"{path.name}: {metric} has no label {label}"


# -- the dashboard's shape -------------------------------------------------------------


def provisioned_datasource_uids() -> set[str]:
    uids = set()
    for path in DATASOURCES.glob("*.y*ml"):
        uids |= {source["uid"] for source in yaml.safe_load(path.read_text())["datasources"]}
    return uids


@pytest.mark.parametrize("path", DASHBOARDS, ids=[path.name for path in DASHBOARDS])
def test_dashboard_panels_are_well_formed(path):
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    panels = dashboard_panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
    assert dashboard["uid"], f"{path.name} has no uid"
    uids = provisioned_datasource_uids()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, f"{panel['title']} uses an unprovisioned datasource"


def test_dashboard_shows_each_subject():
    titles = " | ".join(panel["title"].lower() for path in DASHBOARDS
                        for panel in dashboard_panels(json.loads(path.read_text())["panels"]))
    for subject in ("stage", "latency", "dead letters", "lag", "burn rate", "store write"):
        assert subject in titles, f"no panel about {subject}"


def test_latency_panel_marks_the_slo():
    dashboard = json.loads(DASHBOARDS[0].read_text())
    latency = next(panel for panel in dashboard_panels(dashboard["panels"])
                   if panel["title"] == "Email to ticket latency")
    steps = latency["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert 30 in [step["value"] for step in steps]
    assert {target["legendFormat"] for target in latency["targets"]} == {"p50", "p95", "p99"}


def test_dashboards_provisioned_from_compose_mount():
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = dict(
        (entry.split(":")[1], entry.split(":")[0]) for entry in compose["services"]["grafana"]["volumes"]
    )
    providers = []
    for path in DASHBOARD_PROVIDERS.glob("*.y*ml"):
        providers += yaml.safe_load(path.read_text())["providers"]
    folders = {provider["options"]["path"] for provider in providers}
    assert folders, "no dashboard provider is provisioned"
    for folder in folders:
        assert mounts.get(folder) == "./deploy/grafana/dashboards", (
            f"the provider reads {folder}, where compose mounts {mounts.get(folder)!r}"
        )


# -- promtool and a real Prometheus ---------------------------------------------------


@needs_promtool
def test_promtool_checks_rules():
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


ALERT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  # 90 of 100 tickets a minute miss the 30 s bound: the fast burn pages.
  - interval: 1m
    input_series:
      - series: 'ticketflow_email_to_ticket_latency_seconds_bucket{{le="30.0",tenant="acme",instance="a",job="ticketflow"}}'
        values: '0+10x90'
      - series: 'ticketflow_email_to_ticket_latency_seconds_count{{tenant="acme",instance="a",job="ticketflow"}}'
        values: '0+100x90'
    alert_rule_test:
      - eval_time: 80m
        alertname: TicketflowLatencySLOFastBurn
        exp_alerts:
          - exp_labels:
              severity: page
            exp_annotations:
              summary: Email-to-ticket latency is burning the SLO budget fast
              description: >-
                90% of messages took longer than 30 s to reach a ticket over the last hour
                (the SLO allows 5%). Check the store write latency, the Kafka lag and the
                thread join's held orphans on the ticketflow dashboard.
  # Every ticket within 30 s: no burn.
  - interval: 1m
    input_series:
      - series: 'ticketflow_email_to_ticket_latency_seconds_bucket{{le="30.0",tenant="acme",instance="a",job="ticketflow"}}'
        values: '0+100x90'
      - series: 'ticketflow_email_to_ticket_latency_seconds_count{{tenant="acme",instance="a",job="ticketflow"}}'
        values: '0+100x90'
    alert_rule_test:
      - eval_time: 80m
        alertname: TicketflowLatencySLOFastBurn
        exp_alerts: []
      - eval_time: 80m
        alertname: TicketflowLatencySLOSlowBurn
        exp_alerts: []
  # One read in ten becomes a dead letter.
  - interval: 1m
    input_series:
      - series: 'ticketflow_outcomes_total{{outcome="read",tenant="other",instance="a",job="ticketflow"}}'
        values: '0+100x60'
      - series: 'ticketflow_outcomes_total{{outcome="dead_letters",tenant="",instance="a",job="ticketflow"}}'
        values: '0+10x60'
    alert_rule_test:
      - eval_time: 40m
        alertname: TicketflowDeadLettersHigh
        exp_alerts:
          - exp_labels:
              severity: ticket
            exp_annotations:
              summary: More than 5% of inbound mail becomes dead letters
              description: >-
                10% of the messages read in the last 10 minutes became dead letters.
                `ticketflow dead-letters` lists them with their reasons, and `ticketflow
                redrive --reason REASON` sends them through again after a fix.
"""


@needs_promtool
def test_promtool_alert_rules_fire_as_intended(tmp_path):
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(rules=RULES))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prometheus_query(base: str, expression: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package prometheus) is not installed")
def test_real_prometheus_scrapes_flow_and_runs_every_query(tmp_path):
    metrics = FlowMetrics(load_settings(SAMPLE / "ticketflow.toml").routing)
    summary = run_small_flow(metrics, tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with MetricsServer(metrics) as server:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "ticketflow",
                                "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}],
        }))
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                try:
                    read = prometheus_query(base, 'sum(ticketflow_outcomes_total{outcome="read"})')
                    if read["data"]["result"]:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "Prometheus scraped nothing within 60 s"
                time.sleep(0.2)

            assert float(read["data"]["result"][0]["value"][1]) == summary["read"]
            for where, expression in ALL_EXPRESSIONS:
                answer = prometheus_query(base, as_promql(expression))
                assert answer["status"] == "success", f"{where}: {answer.get('error')}"
        finally:
            process.terminate()
            process.wait(30)
