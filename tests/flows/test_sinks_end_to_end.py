"""The sample corpus through the whole CLI into each ticket system, and again, and into a new store.

Each system is a local HTTP server that follows its documented API
(tests/connectors/*_api.py). The run goes through `ticketflow run --config`
with a `[sink]` table and the secret in its TICKETFLOW_* variable, as a user
would start it. Whatever is run again, each ticket and each comment exists once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ticketflow.cli import main
from ticketflow.connectors.store import open_store

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "corpus" / "sample"
SAMPLE_CONFIG = (SAMPLE / "ticketflow.toml").read_text(encoding="utf-8")


@dataclass
class SinkCase:
    """How to run one ticket system's mock and read what it holds."""

    kind: str
    start: Callable[[], Any]
    table: Callable[[Any], str]
    environment: Callable[[Any], dict[str, str]]
    ticket_count: Callable[[Any], int]
    comment_count: Callable[[Any], int]


def _jira() -> SinkCase:
    from tests.connectors.jira_api import JiraApi

    return SinkCase(
        kind="jira",
        start=lambda: JiraApi(user="bot@example.com", token="jira-token"),
        table=lambda api: f'[sink.jira]\nurl = "{api.url}"\nuser = "{api.user}"\n',
        environment=lambda api: {"TICKETFLOW_JIRA_TOKEN": api.token},
        ticket_count=lambda api: len(api.issues),
        comment_count=lambda api: sum(len(issue.comments) for issue in api.issues.values()),
    )


def _servicenow() -> SinkCase:
    from tests.connectors.servicenow_api import ServiceNowApi

    return SinkCase(
        kind="servicenow",
        start=lambda: ServiceNowApi(user="ticketflow", password="snow-secret"),
        table=lambda api: f'[sink.servicenow]\nurl = "{api.url}"\nuser = "ticketflow"\n',
        environment=lambda api: {"TICKETFLOW_SERVICENOW_PASSWORD": "snow-secret"},
        ticket_count=lambda api: len(api.incidents),
        # Link and review notes live in the journal too; comments carry the message marker.
        comment_count=lambda api: sum("ticketflow-message:" in str(row) for row in api.journal),
    )


def _zendesk() -> SinkCase:
    from tests.connectors.zendesk_api import ZendeskApi

    return SinkCase(
        kind="zendesk",
        start=lambda: ZendeskApi(email="bot@example.com", token="zendesk-token"),
        table=lambda api: f'[sink.zendesk]\nurl = "{api.url}"\nemail = "{api.email}"\n',
        environment=lambda api: {"TICKETFLOW_ZENDESK_TOKEN": api.token},
        ticket_count=lambda api: len(api.tickets),
        # Each ticket's description is its first comment.
        comment_count=lambda api: sum(len(comments) for comments in api.comments.values()) - len(api.tickets),
    )


def _webhook() -> SinkCase:
    from tests.connectors.webhook_receiver import WebhookReceiver

    return SinkCase(
        kind="webhook",
        start=lambda: WebhookReceiver(secret=b"webhook-secret"),
        table=lambda api: f'[sink.webhook]\nurl = "{api.hook_url}"\n',
        environment=lambda api: {"TICKETFLOW_WEBHOOK_SECRET": api.secret.decode()},
        ticket_count=lambda api: len(api.tickets),
        comment_count=lambda api: sum(len(comments) for comments in api.comments.values()),
    )


CASES = {"jira": _jira, "servicenow": _servicenow, "zendesk": _zendesk, "webhook": _webhook}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> SinkCase:
    return CASES[request.param]()


@pytest.fixture
def api(case: SinkCase, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with case.start() as server:
        for name, value in case.environment(server).items():
            monkeypatch.setenv(name, value)
        yield server


def run_into(case: SinkCase, api: Any, store_url: str, tmp_path: Path, capsys: Any) -> dict[str, Any]:
    config = tmp_path / f"{case.kind}.toml"
    sink_table = f'[sink]\nkind = "{case.kind}"\nbackoff = 0.01\n\n{case.table(api)}'
    config.write_text(SAMPLE_CONFIG + "\n" + sink_table, encoding="utf-8")
    status = main(["run", "--input", str(SAMPLE), "--config", str(config), "--store", store_url,
                   "--metrics-port", "0", "--json"])
    assert status == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def stored_tickets(store_url: str) -> list[dict[str, Any]]:
    store = open_store(store_url, existing=True)
    try:
        return store.tickets()
    finally:
        store.close()


def test_sample_corpus_makes_each_ticket_and_comment_once(case, api, tmp_path, capsys):
    store_url = f"sqlite:///{tmp_path / 'first.db'}"
    summary = run_into(case, api, store_url, tmp_path, capsys)

    tickets = stored_tickets(store_url)
    messages = sum(len(ticket["messages"]) for ticket in tickets)
    assert summary["deliveries"]["pending"] == 0
    assert summary["deliveries"]["rejected"] == 0
    assert case.ticket_count(api) == len(tickets)
    assert case.comment_count(api) == messages - len(tickets)
    assert all(case.kind in ticket["external"] for ticket in tickets)


def test_running_again_changes_nothing_in_the_system(case, api, tmp_path, capsys):
    store_url = f"sqlite:///{tmp_path / 'first.db'}"
    run_into(case, api, store_url, tmp_path, capsys)
    counts = (case.ticket_count(api), case.comment_count(api))

    run_into(case, api, store_url, tmp_path, capsys)
    assert (case.ticket_count(api), case.comment_count(api)) == counts

    run_into(case, api, f"sqlite:///{tmp_path / 'new.db'}", tmp_path, capsys)
    assert (case.ticket_count(api), case.comment_count(api)) == counts


def test_jira_keys_become_ticket_keys(tmp_path, capsys, monkeypatch):
    case = _jira()
    with case.start() as api:
        monkeypatch.setenv("TICKETFLOW_JIRA_TOKEN", api.token)
        store_url = f"sqlite:///{tmp_path / 'jira.db'}"
        run_into(case, api, store_url, tmp_path, capsys)

        tickets = stored_tickets(store_url)
        assert sorted(ticket["key"] for ticket in tickets) == sorted(api.issues)
        assert all(ticket["external"]["jira"] == ticket["key"] for ticket in tickets)
        # New tickets went out in bulk, not one POST each.
        assert api.requests_to("POST", "/rest/api/2/issue/bulk")
        assert len(api.requests_to("POST", "/rest/api/2/issue")) < len(tickets)


def test_reply_quoting_jira_key_becomes_comment(tmp_path, capsys, monkeypatch):
    case = _jira()
    with case.start() as api:
        monkeypatch.setenv("TICKETFLOW_JIRA_TOKEN", api.token)
        store_url = f"sqlite:///{tmp_path / 'jira.db'}"
        run_into(case, api, store_url, tmp_path, capsys)
        ticket = next(t for t in stored_tickets(store_url) if t["subject"] == "API timeout on POST /charges")
        comments_before = len(api.issues[ticket["key"]].comments)

        later = tmp_path / "later"
        later.mkdir()
        (later / "reply.eml").write_bytes(
            f"From: {ticket['requester']}\r\n"
            "To: acme-support@support.example.com\r\n"
            f"Subject: Re: [{ticket['key']}] still failing\r\n"
            "Message-ID: <later-reply@mail.example.com>\r\n"
            "Date: Mon, 4 May 2026 09:00:00 +0000\r\n"
            "\r\n"
            "It failed again this morning.\r\n".encode()
        )
        config = tmp_path / "jira.toml"
        assert main(["run", "--input", str(later), "--config", str(config), "--store", store_url,
                     "--metrics-port", "0", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

        assert summary["replies_threaded"] == 1
        assert len(api.issues[ticket["key"]].comments) == comments_before + 1
        assert "It failed again this morning." in api.comment_bodies(ticket["key"])[-1]


def test_stored_attachments_are_uploaded_once(tmp_path, capsys, monkeypatch):
    case = _jira()
    with case.start() as api:
        monkeypatch.setenv("TICKETFLOW_JIRA_TOKEN", api.token)
        store_url = f"sqlite:///{tmp_path / 'jira.db'}"
        folder = tmp_path / "files"
        original_table = case.table
        case.table = lambda server: original_table(server) + f'\n[attachments]\nstore = "{folder}"\n'
        run_into(case, api, store_url, tmp_path, capsys)
        run_into(case, api, store_url, tmp_path, capsys)

        uploaded = sorted((key, item.filename) for key, issue in api.issues.items()
                          for item in issue.attachments)
        stored = sorted((ticket["key"], attachment["filename"]) for ticket in stored_tickets(store_url)
                        for message in ticket["messages"] for attachment in message["attachments"]
                        if attachment["download_url"])
        assert stored
        assert uploaded == stored


def closed_port_url() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/hook"


def test_unreachable_system_exits_3_and_deliver_sends_later(tmp_path, capsys, monkeypatch):
    from tests.connectors.webhook_receiver import WebhookReceiver

    monkeypatch.setenv("TICKETFLOW_WEBHOOK_SECRET", "webhook-secret")
    store_url = f"sqlite:///{tmp_path / 'hook.db'}"
    config = tmp_path / "down.toml"
    config.write_text(SAMPLE_CONFIG + '\n[sink]\nkind = "webhook"\nretries = 1\ndrain_timeout = 0.5\n'
                      f'[sink.webhook]\nurl = "{closed_port_url()}"\n', encoding="utf-8")

    status = main(["run", "--input", str(SAMPLE), "--config", str(config), "--store", store_url,
                   "--metrics-port", "0", "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert status == 3
    assert summary["deliveries"]["pending"] == sum(len(t["messages"]) for t in stored_tickets(store_url))
    assert "ticketflow deliver" in captured.err

    with WebhookReceiver(secret=b"webhook-secret") as receiver:
        config.write_text(SAMPLE_CONFIG + '\n[sink]\nkind = "webhook"\n'
                          f'[sink.webhook]\nurl = "{receiver.hook_url}"\n', encoding="utf-8")
        assert main(["deliver", "--config", str(config), "--store", store_url, "--json"]) == 0
        counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert counts["pending"] == 0
        assert len(receiver.tickets) == len(stored_tickets(store_url))


def test_redrive_points_sink_rejections_to_deliver(tmp_path, capsys):
    status = main(["redrive", "--store", f"sqlite:///{tmp_path / 'any.db'}", "--reason", "sink_rejected"])
    assert status == 2
    assert "ticketflow deliver --retry-rejected" in capsys.readouterr().err
