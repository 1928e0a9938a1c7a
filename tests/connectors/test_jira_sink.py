"""The Jira sink against a local Jira REST API v2 over real HTTP."""

from __future__ import annotations

import doctest
import socket
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import jira.resilientsession
import pytest
import requests

from tests.connectors.jira_api import JiraApi
from ticketflow.config import ConfigError, MappingRule, SinkSettings, settings_from_mapping
from ticketflow.connectors import jira_sink as jira_sink_module
from ticketflow.connectors.jira_sink import JiraSink, comment_body, issue_description
from ticketflow.connectors.sink import (
    RateLimited,
    SinkAttachment,
    SinkMessage,
    SinkRejected,
    SinkTicket,
    SinkUnavailable,
    comment_marker,
    open_sink,
)

USER = "bot@example.com"
TOKEN = "jira-api-token-for-tests"
TICKET_ID = "tkt_0123456789abcdef0123"
ISSUE_PATH = "/rest/api/2/issue"


@pytest.fixture
def api() -> Iterator[JiraApi]:
    with JiraApi(user=USER, token=TOKEN) as server:
        yield server


@pytest.fixture(autouse=True)
def jira_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETFLOW_JIRA_TOKEN", TOKEN)


@pytest.fixture(autouse=True)
def package_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the sleeps of the jira package's ResilientSession; the sink must cause none."""
    sleeps: list[float] = []
    monkeypatch.setattr(jira.resilientsession, "time", SimpleNamespace(sleep=sleeps.append))
    return sleeps


@pytest.fixture
def backoff_sleeps() -> list[float]:
    """Collect the delays the sink waits between tries."""
    return []


@pytest.fixture
def make_sink(backoff_sleeps: list[float]) -> Iterator[Callable[..., JiraSink]]:
    """Build sinks on a given URL (closed after the test); keyword arguments go to the settings."""
    sinks: list[JiraSink] = []

    def make(url: str, **options: Any) -> JiraSink:
        sink = JiraSink(sink_settings(url, **options), sleep=backoff_sleeps.append)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


@pytest.fixture
def sink(api: JiraApi, make_sink: Callable[..., JiraSink]) -> JiraSink:
    return make_sink(api.url)


def sink_settings(
    url: str,
    *,
    retries: int = 3,
    timeout: float = 5.0,
    rules: list[dict[str, Any]] | None = None,
    **jira_options: Any,
) -> SinkSettings:
    """Read `[sink]` settings the way a config file gives them."""
    data = {
        "sink": {
            "kind": "jira",
            "timeout": timeout,
            "retries": retries,
            "backoff": 0.001,
            "jira": {"url": url, "user": USER, **jira_options},
            "rules": rules or [],
        }
    }
    return settings_from_mapping(data).sink


def make_message(
    event_id: str = "evt_first",
    *,
    text: str = "POST /charges times out after 30 seconds.",
    sender: str = "alice@example.com",
    sender_name: str = "Alice Doe",
    kind: str = "original",
    attachments: tuple[SinkAttachment, ...] = (),
    authentication: dict[str, Any] | None = None,
) -> SinkMessage:
    return SinkMessage(
        dedupe_key=f"acme/{event_id}",
        event_id=event_id,
        message_id=f"<{event_id}@mail.example.com>",
        sender=sender,
        sender_name=sender_name,
        sent_at="2026-04-30T12:00:00Z",
        received_at="2026-04-30T12:01:22Z",
        kind=kind,
        text=text,
        html="",
        authentication=authentication
        if authentication is not None
        else {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
        attachments=attachments,
    )


def make_ticket(
    external_id: str = TICKET_ID,
    *,
    subject: str = "API timeout on POST /charges",
    priority: str = "P1",
    status: str = "open",
    review_reasons: tuple[str, ...] = (),
    mapped: MappingRule | None = None,
    first_message: SinkMessage | None = None,
) -> SinkTicket:
    return SinkTicket(
        external_id=external_id,
        key="ACME-17",
        tenant="acme",
        subject=subject,
        requester="alice@example.com",
        requester_name="Alice Doe",
        participants=("alice@example.com",),
        priority=priority,
        component="payments",
        environment="prod-us-west-2",
        tier=None,
        status=status,
        review_reasons=review_reasons,
        reply_address="acme-support+t-0123456789ab@support.example.com",
        first_message=first_message or make_message(),
        mapped=mapped or MappingRule(),
    )


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Creating issues.


def test_create_sets_the_mapped_fields(api: JiraApi, make_sink: Callable[..., JiraSink]) -> None:
    sink = make_sink(api.url, reporter_field="customfield_10051")
    ticket = make_ticket(
        mapped=MappingRule(
            project="OPS",
            issue_type="Bug",
            labels=("payments", "prod"),
            components=("payments", "api"),
        )
    )

    key = sink.create_ticket(ticket)

    assert key == "OPS-1"
    fields = api.issues[key].fields
    assert fields["project"]["key"] == "OPS"
    assert fields["issuetype"] == {"name": "Bug"}
    assert fields["summary"] == "API timeout on POST /charges"
    assert fields["priority"] == {"name": "High"}
    assert fields["labels"] == ["payments", "prod", f"ticketflow-{TICKET_ID}"]
    assert fields["components"] == [{"name": "payments"}, {"name": "api"}]
    assert fields["customfield_10051"] == "alice@example.com"


def test_create_uses_settings_without_rules(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket(priority="P4"))

    fields = api.issues[key].fields
    assert key == "SUP-1"
    assert fields["issuetype"] == {"name": "Task"}
    assert fields["priority"] == {"name": "Lowest"}
    assert "components" not in fields
    assert not any(name.startswith("customfield_") for name in fields)


def test_keys_are_numbered_per_project(api: JiraApi, sink: JiraSink) -> None:
    keys = [
        sink.create_ticket(make_ticket("tkt_a")),
        sink.create_ticket(make_ticket("tkt_b", mapped=MappingRule(project="OPS"))),
        sink.create_ticket(make_ticket("tkt_c")),
    ]

    assert keys == ["SUP-1", "OPS-1", "SUP-2"]


def test_priority_names_from_settings_and_rules(
    api: JiraApi, make_sink: Callable[..., JiraSink]
) -> None:
    sink = make_sink(api.url, priorities={"P1": "Highest"})

    from_settings = sink.create_ticket(make_ticket("tkt_a", priority="P1"))
    default_name = sink.create_ticket(make_ticket("tkt_b", priority="P2"))
    from_rule = sink.create_ticket(
        make_ticket("tkt_c", priority="P1", mapped=MappingRule(priority_name="Low"))
    )

    assert api.issues[from_settings].fields["priority"] == {"name": "Highest"}
    assert api.issues[default_name].fields["priority"] == {"name": "Medium"}
    assert api.issues[from_rule].fields["priority"] == {"name": "Low"}


def test_summary_is_one_line_of_255_characters(api: JiraApi, sink: JiraSink) -> None:
    long_key = sink.create_ticket(
        make_ticket("tkt_a", subject="Timeout\n on  charges " + "x" * 300)
    )
    empty_key = sink.create_ticket(make_ticket("tkt_b", subject="  "))

    long_summary = api.issues[long_key].fields["summary"]
    assert len(long_summary) == 255
    assert long_summary.startswith("Timeout on charges xxx")
    assert api.issues[empty_key].fields["summary"] == "(no subject)"


def test_description_names_sender_trust_and_attachments(api: JiraApi, sink: JiraSink) -> None:
    attachments = (
        SinkAttachment(
            "trace.json",
            "application/json",
            23891,
            "ab" * 32,
            download_url="https://files.example.com/ab12/trace.json",
        ),
        SinkAttachment(
            "invoice.pdf.exe",
            "application/octet-stream",
            68,
            "cd" * 32,
            download_url="https://files.example.com/cd34/invoice.pdf.exe",
            quarantined="Eicar-Test-Signature",
        ),
    )
    first = make_message(
        attachments=attachments, authentication={"spf": "pass", "dkim": "fail", "dmarc": "fail"}
    )
    ticket = make_ticket(status="review", review_reasons=("dmarc_fail",), first_message=first)

    key = sink.create_ticket(ticket)

    description = api.issues[key].fields["description"]
    assert "POST /charges times out after 30 seconds." in description
    assert "Alice Doe <alice@example.com>" in description
    assert "*Tenant:* acme" in description
    assert "ACME-17" in description
    assert TICKET_ID in description
    assert "SPF pass, DKIM fail, DMARC fail" in description
    assert "held for review (dmarc_fail)" in description
    assert (
        "trace.json (application/json, 23891 bytes): https://files.example.com/ab12/trace.json"
        in description
    )
    assert "invoice.pdf.exe" in description
    assert "quarantined as Eicar-Test-Signature, not uploaded" in description
    assert "https://files.example.com/cd34/invoice.pdf.exe" not in description
    assert "ticketflow-review" in api.issues[key].fields["labels"]


def test_mail_text_cannot_inject_wiki_markup() -> None:
    text = "Click [here|https://evil.example.com] !https://evil.example.com/x.png!\n{noformat}\n{html}x{html}"
    ticket = make_ticket(first_message=make_message(text=text, sender_name="Eve [admin|http://x]"))

    description = issue_description(ticket)

    assert description.startswith("{noformat}\n")
    # The only unescaped closing tag is the block's own, right after the text.
    assert description.count("{noformat}") == 2
    assert "{ noformat}" in description
    assert r"Eve \[admin\|http://x\]" in description


def test_long_text_is_cut_to_jira_limit(api: JiraApi, sink: JiraSink) -> None:
    text = "😀" * 20_000  # 40,000 UTF-16 code units
    key = sink.create_ticket(make_ticket(first_message=make_message(text=text)))

    description = api.issues[key].fields["description"]
    assert len(description.encode("utf-16-le")) // 2 <= 32_767
    assert "text cut to fit Jira" in description
    assert "*Tenant:* acme" in description


def test_external_id_in_custom_field(api: JiraApi, make_sink: Callable[..., JiraSink]) -> None:
    sink = make_sink(api.url, external_id_field="customfield_10050")

    key = sink.create_ticket(make_ticket())

    assert api.issues[key].fields["customfield_10050"] == TICKET_ID
    assert not any(label.startswith("ticketflow-tkt") for label in api.issues[key].fields["labels"])
    assert sink.find_ticket(make_ticket()) == key
    assert sink.find_ticket(make_ticket("tkt_0123")) is None


# Finding issues.


def test_find_after_create(api: JiraApi, sink: JiraSink) -> None:
    assert sink.find_ticket(make_ticket()) is None

    key = sink.create_ticket(make_ticket())

    assert sink.find_ticket(make_ticket()) == key
    assert sink.find_ticket(make_ticket("tkt_other")) is None
    jql = api.requests_to("GET", "/rest/api/2/search")[0].query["jql"][0]
    assert jql.startswith(f'labels = "ticketflow-{TICKET_ID}"')


def test_find_returns_the_oldest_duplicate(api: JiraApi, sink: JiraSink) -> None:
    first = sink.create_ticket(make_ticket())
    sink.create_ticket(make_ticket())

    assert sink.find_ticket(make_ticket()) == first


def test_find_on_jira_cloud_uses_search_jql(make_sink: Callable[..., JiraSink]) -> None:
    with JiraApi(user=USER, token=TOKEN, deployment="Cloud") as cloud:
        sink = make_sink(cloud.url)
        key = sink.create_ticket(make_ticket())

        assert sink.find_ticket(make_ticket()) == key
        assert sink.find_ticket(make_ticket("tkt_other")) is None
        assert cloud.requests_to("GET", "/rest/api/2/search") == []
        assert len(cloud.requests_to("GET", "/rest/api/2/search/jql")) == 2


# Comments.


def test_comment_has_text_sender_and_marker(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())
    reply = make_message(
        "evt_reply",
        text="Still failing.",
        sender="bob@example.com",
        sender_name="Bob",
        kind="reply",
    )

    sink.add_comment(key, make_ticket(), reply, verify=False)

    [body] = api.comment_bodies(key)
    assert "Still failing." in body
    assert "Bob <bob@example.com>, reply sent 2026-04-30T12:00:00Z" in body
    assert body.splitlines()[-1] == comment_marker(reply)


def test_verified_comment_is_added_once(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())
    reply = make_message("evt_reply", kind="reply")

    sink.add_comment(key, make_ticket(), reply, verify=True)
    sink.add_comment(key, make_ticket(), reply, verify=True)

    assert len(api.comment_bodies(key)) == 1


def test_unverified_comment_is_added_again(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())
    reply = make_message("evt_reply", kind="reply")

    sink.add_comment(key, make_ticket(), reply, verify=False)
    sink.add_comment(key, make_ticket(), reply, verify=False)

    assert len(api.comment_bodies(key)) == 2


def test_verify_reads_every_comment_page(api: JiraApi, sink: JiraSink) -> None:
    api.comment_page_limit = 2
    key = sink.create_ticket(make_ticket())
    replies = [make_message(f"evt_{number}", kind="reply") for number in range(5)]
    for reply in replies:
        sink.add_comment(key, make_ticket(), reply, verify=False)

    sink.add_comment(key, make_ticket(), replies[-1], verify=True)

    assert len(api.comment_bodies(key)) == 5


def test_marker_matches_whole_word_only(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())
    sink.add_comment(key, make_ticket(), make_message("evt_10", kind="reply"), verify=False)

    sink.add_comment(key, make_ticket(), make_message("evt_1", kind="reply"), verify=True)

    assert len(api.comment_bodies(key)) == 2


def test_comment_marks_automatic_reply() -> None:
    body = comment_body(make_message("evt_auto", kind="auto_reply"))

    assert "automatic reply sent" in body


# Attachments.


def test_attachments_are_uploaded_with_bytes_and_name(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())
    trace = SinkAttachment("tracé.json", "application/json", 11, "ab" * 32)
    image = SinkAttachment("screen.png", "image/png", 6, "cd" * 32)
    png_bytes = b"\x89PNG\r\n"

    sink.attach_files(
        key, make_ticket(), make_message(), [(trace, b'{"ok": true}'), (image, png_bytes)]
    )

    uploaded = {item.filename: item.content for item in api.issues[key].attachments}
    assert uploaded == {"tracé.json": b'{"ok": true}', "screen.png": png_bytes}
    for request in api.requests_to("POST", rf"{ISSUE_PATH}/{key}/attachments"):
        assert request.headers["x-atlassian-token"] == "no-check"


def test_quarantined_and_empty_files_are_not_uploaded(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())
    infected = SinkAttachment(
        "invoice.exe", "application/octet-stream", 68, "ab" * 32, quarantined="Eicar-Test-Signature"
    )
    empty = SinkAttachment("empty.txt", "text/plain", 0, "cd" * 32)

    sink.attach_files(key, make_ticket(), make_message(), [(infected, b"X5O!P%@AP"), (empty, b"")])

    assert api.issues[key].attachments == []
    assert api.requests_to("POST", rf"{ISSUE_PATH}/{key}/attachments") == []


def test_attaching_twice_uploads_once(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())
    trace = SinkAttachment("trace.json", "application/json", 4, "ab" * 32)

    sink.attach_files(key, make_ticket(), make_message(), [(trace, b"{ }\n")])
    sink.attach_files(key, make_ticket(), make_message(), [(trace, b"{ }\n")])

    assert [item.filename for item in api.issues[key].attachments] == ["trace.json"]


# Updates.


def test_update_moves_review_label_and_fields(api: JiraApi, sink: JiraSink) -> None:
    held = make_ticket(status="review", review_reasons=("spam_score",))
    key = sink.create_ticket(held)
    api.issues[key].fields["labels"].append("added-in-jira")

    released = make_ticket(status="open", priority="P0", subject="Charges fail in prod")
    sink.update_ticket(key, released)

    fields = api.issues[key].fields
    assert "ticketflow-review" not in fields["labels"]
    assert "added-in-jira" in fields["labels"]
    assert f"ticketflow-{TICKET_ID}" in fields["labels"]
    assert fields["priority"] == {"name": "Highest"}
    assert fields["summary"] == "Charges fail in prod"
    assert "*Review:* not held" in fields["description"]


def test_update_adds_review_label_and_reasons(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())

    sink.update_ticket(
        key, make_ticket(status="review", review_reasons=("dmarc_fail", "spam_flag"))
    )

    fields = api.issues[key].fields
    assert "ticketflow-review" in fields["labels"]
    assert "held for review (dmarc_fail, spam_flag)" in fields["description"]


def test_update_without_change_sends_no_edit(api: JiraApi, sink: JiraSink) -> None:
    key = sink.create_ticket(make_ticket())

    sink.update_ticket(key, make_ticket())

    assert api.requests_to("PUT", rf"{ISSUE_PATH}/.+") == []


# Links.


def test_link_adds_issue_link_and_comments(api: JiraApi, sink: JiraSink) -> None:
    kept = sink.create_ticket(make_ticket("tkt_kept"))
    merged = sink.create_ticket(make_ticket("tkt_merged"))

    sink.link_tickets(kept, merged, make_ticket("tkt_kept"))

    assert api.links == [{"type": "Duplicate", "inward": merged, "outward": kept}]
    [on_kept] = api.comment_bodies(kept)
    [on_merged] = api.comment_bodies(merged)
    assert merged in on_kept
    assert kept in on_merged


def test_link_twice_links_and_comments_once(api: JiraApi, sink: JiraSink) -> None:
    kept = sink.create_ticket(make_ticket("tkt_kept"))
    merged = sink.create_ticket(make_ticket("tkt_merged"))

    sink.link_tickets(kept, merged, make_ticket("tkt_kept"))
    sink.link_tickets(kept, merged, make_ticket("tkt_kept"))

    assert len(api.requests_to("POST", "/rest/api/2/issueLink")) == 1
    assert len(api.comment_bodies(kept)) == 1
    assert len(api.comment_bodies(merged)) == 1


def test_unknown_link_type_falls_back_to_comments(
    api: JiraApi, make_sink: Callable[..., JiraSink]
) -> None:
    sink = make_sink(api.url, link_type="Merged into")
    kept = sink.create_ticket(make_ticket("tkt_kept"))
    merged = sink.create_ticket(make_ticket("tkt_merged"))

    sink.link_tickets(kept, merged, make_ticket("tkt_kept"))

    assert api.links == []
    assert len(api.requests_to("POST", "/rest/api/2/issueLink")) == 1
    assert merged in api.comment_bodies(kept)[0]
    assert kept in api.comment_bodies(merged)[0]


def test_link_to_unknown_issue_is_rejected(api: JiraApi, sink: JiraSink) -> None:
    kept = sink.create_ticket(make_ticket("tkt_kept"))

    with pytest.raises(SinkRejected) as raised:
        sink.link_tickets(kept, "SUP-404", make_ticket("tkt_kept"))

    assert raised.value.status == 404


# Errors.


def test_unknown_project_is_rejected_with_jira_errors(api: JiraApi, sink: JiraSink) -> None:
    with pytest.raises(
        SinkRejected, match=r"HTTP 400: create issue .*project: There is no project"
    ) as raised:
        sink.create_ticket(make_ticket(mapped=MappingRule(project="NOPE")))

    assert raised.value.status == 400
    assert api.issues == {}


def test_unknown_priority_and_issue_type_are_rejected(api: JiraApi, sink: JiraSink) -> None:
    ticket = make_ticket(mapped=MappingRule(issue_type="Epic", priority_name="Blocker"))

    with pytest.raises(SinkRejected) as raised:
        sink.create_ticket(ticket)

    assert "issuetype: The issue type 'Epic' is not valid." in raised.value.answer
    assert "priority:" in raised.value.answer


def test_wrong_token_is_rejected_with_401(api: JiraApi, sink: JiraSink) -> None:
    api.token = "another-token"

    with pytest.raises(SinkRejected, match="Authentication failed") as raised:
        sink.find_ticket(make_ticket())

    assert raised.value.status == 401


def test_comment_on_unknown_issue_is_rejected_with_404(api: JiraApi, sink: JiraSink) -> None:
    with pytest.raises(SinkRejected, match="The issue does not exist") as raised:
        sink.add_comment("SUP-99", make_ticket(), make_message("evt_reply"), verify=False)

    assert raised.value.status == 404


def test_conflict_is_rejected_with_409(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next(
        "POST",
        ISSUE_PATH,
        status=409,
        body={"errorMessages": ["The issue is being edited."], "errors": {}},
    )

    with pytest.raises(SinkRejected, match="The issue is being edited") as raised:
        sink.create_ticket(make_ticket())

    assert raised.value.status == 409
    assert len(api.requests_to("POST", ISSUE_PATH)) == 1


def test_rate_limit_raises_at_once(
    api: JiraApi, sink: JiraSink, package_sleeps: list[float], backoff_sleeps: list[float]
) -> None:
    api.fail_next(
        "POST",
        ISSUE_PATH,
        status=429,
        headers={"Retry-After": "7"},
        body={"errorMessages": ["Rate limit exceeded."], "errors": {}},
    )

    with pytest.raises(RateLimited) as raised:
        sink.create_ticket(make_ticket())

    assert raised.value.retry_after == 7.0
    assert len(api.requests_to("POST", ISSUE_PATH)) == 1
    assert package_sleeps == []
    assert backoff_sleeps == []


def test_rate_limit_without_retry_after_waits_a_second(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next("GET", "/rest/api/2/search", status=429)

    with pytest.raises(RateLimited) as raised:
        sink.find_ticket(make_ticket())

    assert raised.value.retry_after == 1.0


def test_server_error_then_success(
    api: JiraApi, sink: JiraSink, package_sleeps: list[float], backoff_sleeps: list[float]
) -> None:
    key = sink.create_ticket(make_ticket())
    api.fail_next("POST", rf"{ISSUE_PATH}/{key}/comment", status=503, times=2)

    sink.add_comment(key, make_ticket(), make_message("evt_reply"), verify=False)

    assert len(api.comment_bodies(key)) == 1
    assert len(api.requests_to("POST", rf"{ISSUE_PATH}/{key}/comment")) == 3
    # Backoff 0.001 s, doubled per try, each scaled by a jitter factor in [0.5, 1).
    assert len(backoff_sleeps) == 2
    assert 0.0005 <= backoff_sleeps[0] < 0.001
    assert 0.001 <= backoff_sleeps[1] < 0.002
    assert package_sleeps == []


def test_server_error_until_give_up(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next(
        "GET",
        "/rest/api/2/search",
        status=500,
        times=10,
        body={"errorMessages": ["Internal server error"], "errors": {}},
    )

    with pytest.raises(SinkUnavailable, match="HTTP 500: Internal server error"):
        sink.find_ticket(make_ticket())

    assert len(api.requests_to("GET", "/rest/api/2/search")) == 3


def test_create_retry_finds_issue_of_failed_try(api: JiraApi) -> None:
    api.stall_next("POST", ISSUE_PATH, 1.0)
    sink = JiraSink(sink_settings(api.url, timeout=0.3), sleep=lambda _: None)
    try:
        key = sink.create_ticket(make_ticket())
    finally:
        sink.close()

    assert key == "SUP-1"
    assert list(api.issues) == ["SUP-1"]
    assert len(api.requests_to("POST", ISSUE_PATH)) == 1


def test_create_retry_after_502_makes_one_issue(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next("POST", ISSUE_PATH, status=502)

    key = sink.create_ticket(make_ticket())

    assert list(api.issues) == [key]
    assert len(api.requests_to("POST", ISSUE_PATH)) == 2


def test_timeout_gives_up_as_unavailable(make_sink: Callable[..., JiraSink]) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        sink = make_sink(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.2, retries=2)
        with pytest.raises(SinkUnavailable, match="timed out after 0.2s"):
            sink.find_ticket(make_ticket())
    finally:
        silent.close()


def test_server_down_is_unavailable(
    make_sink: Callable[..., JiraSink], backoff_sleeps: list[float]
) -> None:
    sink = make_sink(f"http://127.0.0.1:{unused_port()}")

    with pytest.raises(SinkUnavailable, match="could not connect"):
        sink.create_ticket(make_ticket())

    assert len(backoff_sleeps) == 2


def test_errors_never_contain_the_token(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next("GET", "/rest/api/2/search", status=500, times=10)
    api.token = "rotated"

    for action in (
        lambda: sink.find_ticket(make_ticket()),
        lambda: sink.create_ticket(make_ticket()),
    ):
        with pytest.raises((SinkUnavailable, SinkRejected)) as raised:
            action()
        assert TOKEN not in str(raised.value)
        assert raised.value.__cause__ is None


# Replays.


def deliver(
    sink: JiraSink,
    ticket: SinkTicket,
    replies: list[SinkMessage],
    files: list[tuple[SinkAttachment, bytes]],
    merged_ref: str | None,
) -> str:
    """Run the delivery's operations for one ticket as after a crash: find, verify comments."""
    key = sink.find_ticket(ticket) or sink.create_ticket(ticket)
    for reply in replies:
        sink.add_comment(key, ticket, reply, verify=True)
    sink.attach_files(key, ticket, ticket.first_message, files)
    sink.update_ticket(key, ticket)
    if merged_ref is not None:
        sink.link_tickets(key, merged_ref, ticket)
    return key


def test_replay_twice_makes_each_issue_and_comment_once(api: JiraApi, sink: JiraSink) -> None:
    ticket = make_ticket(status="review", review_reasons=("dmarc_fail",))
    other = make_ticket("tkt_other", subject="Second thread")
    replies = [make_message(f"evt_reply_{number}", kind="reply") for number in range(3)]
    files = [(SinkAttachment("trace.json", "application/json", 4, "ab" * 32), b"{ }\n")]

    for _ in range(2):
        merged = deliver(sink, other, [], [], None)
        kept = deliver(sink, ticket, replies, files, merged)

    assert sorted(api.issues) == ["SUP-1", "SUP-2"]
    assert len(api.comment_bodies(kept)) == len(replies) + 1
    assert len(api.comment_bodies(merged)) == 1
    assert len(api.issues[kept].attachments) == 1
    assert len(api.links) == 1
    assert len(api.requests_to("POST", ISSUE_PATH)) == 2


# Settings.


def test_missing_token_names_the_variable(api: JiraApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKETFLOW_JIRA_TOKEN")

    with pytest.raises(ConfigError, match="export TICKETFLOW_JIRA_TOKEN with the API token"):
        JiraSink(sink_settings(api.url))


def test_token_variable_comes_from_settings(api: JiraApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETFLOW_JIRA_SUPPORT_TOKEN", TOKEN)
    monkeypatch.setenv("TICKETFLOW_JIRA_TOKEN", "wrong")
    sink = JiraSink(sink_settings(api.url, token_env="TICKETFLOW_JIRA_SUPPORT_TOKEN"))
    try:
        assert sink.find_ticket(make_ticket()) is None
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": ""}, r"'sink.jira.url'.*https://example.atlassian.net"),
        ({"url": "example.atlassian.net"}, r"'sink.jira.url'"),
        ({"user": ""}, r"'sink.jira.user'"),
        ({"project": ""}, r"'sink.jira.project'"),
    ],
)
def test_incomplete_settings_raise_config_error(options: dict[str, str], message: str) -> None:
    settings = sink_settings("https://example.atlassian.net")
    data = {"sink": {"kind": "jira", "jira": {"url": settings.jira.url, "user": USER, **options}}}

    with pytest.raises(ConfigError, match=message):
        JiraSink(settings_from_mapping(data).sink)


def test_label_with_space_in_rules_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'sink.rules\[0\].labels'.*'needs-triage'"):
        sink_settings("https://example.atlassian.net", rules=[{"labels": ["needs triage"]}])


def test_construction_sends_no_request(make_sink: Callable[..., JiraSink]) -> None:
    sink = make_sink(f"http://127.0.0.1:{unused_port()}")

    assert sink.name == "jira"
    assert sink.keys_are_human is True


def test_open_sink_builds_the_jira_sink(api: JiraApi) -> None:
    settings = settings_from_mapping(
        {"sink": {"kind": "jira", "jira": {"url": api.url, "user": USER}}}
    )

    sink = open_sink(settings)
    try:
        assert isinstance(sink, JiraSink)
        assert sink.find_ticket(make_ticket()) is None
    finally:
        assert sink is not None
        sink.close()


def test_jira_sink_doctests_pass() -> None:
    failures, tried = doctest.testmod(jira_sink_module)

    assert tried > 0
    assert failures == 0


# Batches: find_tickets and create_tickets.

BULK_PATH = "/rest/api/2/issue/bulk"
SEARCH_PATH = "/rest/api/2/search"


def numbered_tickets(count: int, prefix: str = "tkt_bulk_") -> list[SinkTicket]:
    return [make_ticket(f"{prefix}{number}") for number in range(count)]


def label_owners(api: JiraApi) -> dict[str, list[str]]:
    """Map each ticketflow id label to the keys of the issues that carry it."""
    owners: dict[str, list[str]] = {}
    for key, issue in api.issues.items():
        for label in issue.fields["labels"]:
            if label.startswith("ticketflow-tkt"):
                owners.setdefault(label.removeprefix("ticketflow-"), []).append(key)
    return owners


def bulk_sizes(api: JiraApi) -> list[int]:
    return [len(request.json()["issueUpdates"]) for request in api.requests_to("POST", BULK_PATH)]


def test_bulk_create_of_120_sends_3_requests(api: JiraApi, sink: JiraSink) -> None:
    tickets = numbered_tickets(120)

    results = sink.create_tickets(tickets)

    assert bulk_sizes(api) == [50, 50, 20]
    assert api.requests_to("POST", ISSUE_PATH) == []
    assert len(api.issues) == 120
    assert all(isinstance(result, str) for result in results)
    owners = label_owners(api)
    for ticket, key in zip(tickets, results, strict=True):
        assert owners[ticket.external_id] == [key]


def test_bulk_fields_match_single_create(api: JiraApi, sink: JiraSink) -> None:
    ticket = make_ticket(
        status="review",
        review_reasons=("dmarc_fail",),
        mapped=MappingRule(project="OPS", issue_type="Bug", components=("payments",)),
    )
    single = sink.create_ticket(ticket)

    [bulk] = sink.create_tickets([ticket])

    assert isinstance(bulk, str)
    assert api.issues[bulk].fields == api.issues[single].fields


def test_bulk_partial_failure_keeps_positions(api: JiraApi, sink: JiraSink) -> None:
    tickets = [
        make_ticket("tkt_ok_0"),
        make_ticket("tkt_bad_project", mapped=MappingRule(project="NOPE")),
        make_ticket("tkt_ok_2"),
        make_ticket("tkt_bad_type", mapped=MappingRule(issue_type="Epic")),
        make_ticket("tkt_ok_4"),
    ]

    results = sink.create_tickets(tickets)

    owners = label_owners(api)
    for position in (0, 2, 4):
        key = results[position]
        assert isinstance(key, str)
        assert owners[tickets[position].external_id] == [key]
    bad_project, bad_type = results[1], results[3]
    assert isinstance(bad_project, SinkRejected)
    assert bad_project.status == 400
    assert "tkt_bad_project (bulk element 1)" in bad_project.answer
    assert "project: There is no project" in bad_project.answer
    assert isinstance(bad_type, SinkRejected)
    assert "tkt_bad_type (bulk element 3)" in bad_type.answer
    assert "issuetype: The issue type 'Epic' is not valid." in bad_type.answer
    assert len(api.issues) == 3


def test_bulk_with_every_element_failing(api: JiraApi, sink: JiraSink) -> None:
    tickets = [
        make_ticket("tkt_bad_0", mapped=MappingRule(project="NOPE")),
        make_ticket("tkt_bad_1", mapped=MappingRule(priority_name="Blocker")),
    ]

    results = sink.create_tickets(tickets)

    assert api.issues == {}
    first, second = results
    assert isinstance(first, SinkRejected)
    assert "tkt_bad_0 (bulk element 0): project: There is no project" in first.answer
    assert isinstance(second, SinkRejected)
    assert "tkt_bad_1 (bulk element 1): priority:" in second.answer


def test_bulk_rejected_as_a_whole(api: JiraApi, sink: JiraSink) -> None:
    api.token = "another-token"

    results = sink.create_tickets(numbered_tickets(3))

    assert len(results) == 3
    for result in results:
        assert isinstance(result, SinkRejected)
        assert result.status == 401
        assert "Authentication failed" in result.answer
    assert api.issues == {}


def test_bulk_rejection_covers_one_request(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next(
        "POST",
        BULK_PATH,
        status=403,
        body={"errorMessages": ["You may not create issues in this project."], "errors": {}},
    )

    results = sink.create_tickets(numbered_tickets(60))

    assert len(results) == 60
    assert all(isinstance(result, SinkRejected) for result in results[:50])
    assert all(isinstance(result, str) for result in results[50:])
    assert "You may not create issues" in str(results[0])
    assert len(api.issues) == 10


def test_bulk_rate_limit_raises_without_retry(
    api: JiraApi, sink: JiraSink, package_sleeps: list[float], backoff_sleeps: list[float]
) -> None:
    api.fail_next(
        "POST",
        BULK_PATH,
        status=429,
        headers={"Retry-After": "7"},
        body={"errorMessages": ["Rate limit exceeded."], "errors": {}},
    )

    with pytest.raises(RateLimited) as raised:
        sink.create_tickets(numbered_tickets(3))

    assert raised.value.retry_after == 7.0
    assert len(api.requests_to("POST", BULK_PATH)) == 1
    assert package_sleeps == []
    assert backoff_sleeps == []


def test_bulk_server_error_is_not_retried(
    api: JiraApi, sink: JiraSink, backoff_sleeps: list[float]
) -> None:
    tickets = numbered_tickets(3)
    api.fail_next(
        "POST",
        BULK_PATH,
        status=503,
        body={"errorMessages": ["Service unavailable"], "errors": {}},
    )

    with pytest.raises(SinkUnavailable, match="HTTP 503: Service unavailable"):
        sink.create_tickets(tickets)

    assert len(api.requests_to("POST", BULK_PATH)) == 1
    assert backoff_sleeps == []
    assert sink.find_tickets(tickets) == {}
    results = sink.create_tickets(tickets)
    assert all(isinstance(result, str) for result in results)
    assert sorted(label_owners(api)) == sorted(ticket.external_id for ticket in tickets)


def test_bulk_timeout_then_find_makes_no_duplicates(api: JiraApi) -> None:
    tickets = numbered_tickets(60)
    # The first request of 50 takes effect, but its response arrives after the client timed out.
    api.stall_next("POST", BULK_PATH, 1.0)
    sink = JiraSink(sink_settings(api.url, timeout=0.3), sleep=lambda _: None)
    try:
        with pytest.raises(SinkUnavailable, match="timed out after 0.3s"):
            sink.create_tickets(tickets)
        assert len(api.requests_to("POST", BULK_PATH)) == 1

        found = sink.find_tickets(tickets)
        missing = [ticket for ticket in tickets if ticket.external_id not in found]
        results = sink.create_tickets(missing)
    finally:
        sink.close()

    assert len(found) == 50
    assert len(missing) == 10
    assert all(isinstance(result, str) for result in results)
    owners = label_owners(api)
    assert len(api.issues) == 60
    assert all(len(owners[ticket.external_id]) == 1 for ticket in tickets)
    assert {found[ticket.external_id] for ticket in tickets[:50]} == {
        owners[ticket.external_id][0] for ticket in tickets[:50]
    }


def test_bulk_answer_with_wrong_count_is_unavailable(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next(
        "POST",
        BULK_PATH,
        status=201,
        body={"issues": [{"id": "10001", "key": "SUP-1", "self": "x"}], "errors": []},
    )

    with pytest.raises(SinkUnavailable, match="returned 1 issues and 0 errors for 2 tickets"):
        sink.create_tickets(numbered_tickets(2))


def test_bulk_element_server_error_is_unavailable(api: JiraApi, sink: JiraSink) -> None:
    element_error = {
        "status": 503,
        "elementErrors": {"errorMessages": ["Try again later."], "errors": {}},
        "failedElementNumber": 1,
    }
    api.fail_next(
        "POST",
        BULK_PATH,
        status=201,
        body={"issues": [{"id": "10001", "key": "SUP-1", "self": "x"}], "errors": [element_error]},
    )

    with pytest.raises(SinkUnavailable, match=r"failed for elements \[1\]"):
        sink.create_tickets(numbered_tickets(2))


def test_bulk_answer_without_lists_is_unavailable(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next("POST", BULK_PATH, status=201, body={"created": 2})

    with pytest.raises(SinkUnavailable, match="without 'issues' and 'errors' lists"):
        sink.create_tickets(numbered_tickets(2))


def test_mock_bulk_takes_at_most_50(api: JiraApi) -> None:
    fields: dict[str, Any] = {
        "project": {"key": "SUP"},
        "issuetype": {"name": "Task"},
        "summary": "x",
    }
    updates = [{"fields": fields} for _ in range(51)]

    answer = requests.post(
        f"{api.url}{BULK_PATH}", json={"issueUpdates": updates}, auth=(USER, TOKEN), timeout=5
    )

    assert answer.status_code == 400
    assert "at most 50 issues" in answer.json()["errorMessages"][0]
    assert api.issues == {}


def test_find_tickets_after_bulk_create(api: JiraApi, sink: JiraSink) -> None:
    # Older issues whose labels start with a searched label: ticketflow-tkt_10, ticketflow-tkt_40.
    longer = sink.create_tickets([make_ticket("tkt_10"), make_ticket("tkt_40")])
    created = [make_ticket(f"tkt_{number}") for number in (1, 2, 3)]
    keys = sink.create_tickets(created)
    searched = [*created, make_ticket("tkt_4")]

    found = sink.find_tickets(searched)

    assert found == {ticket.external_id: key for ticket, key in zip(created, keys, strict=True)}
    assert not set(found.values()) & set(longer)
    [search] = api.requests_to("GET", SEARCH_PATH)
    jql = search.query["jql"][0]
    assert jql.startswith('labels in ("ticketflow-tkt_1", "ticketflow-tkt_2", ')
    assert jql.endswith(" ORDER BY created ASC")


def test_find_tickets_in_custom_field(api: JiraApi, make_sink: Callable[..., JiraSink]) -> None:
    sink = make_sink(api.url, external_id_field="customfield_10050")
    # An older issue that the mock's `~` also finds for "tkt_1", as Jira's word search may.
    [longer] = sink.create_tickets([make_ticket("tkt_10")])
    created = [make_ticket(f"tkt_{number}") for number in (1, 2)]
    keys = sink.create_tickets(created)
    searched = [*created, make_ticket("tkt_4")]

    found = sink.find_tickets(searched)

    assert found == {ticket.external_id: key for ticket, key in zip(created, keys, strict=True)}
    assert longer not in found.values()
    [search] = api.requests_to("GET", SEARCH_PATH)
    jql = search.query["jql"][0]
    assert jql.startswith(r'cf[10050] ~ "\"tkt_1\"" OR cf[10050] ~ "\"tkt_2\"" OR ')


def test_find_tickets_chunks_50_ids(api: JiraApi, sink: JiraSink) -> None:
    tickets = numbered_tickets(120)
    existing = tickets[::17]
    keys = sink.create_tickets(existing)

    found = sink.find_tickets(tickets)

    assert found == {ticket.external_id: key for ticket, key in zip(existing, keys, strict=True)}
    queries = [request.query["jql"][0] for request in api.requests_to("GET", SEARCH_PATH)]
    assert [query.count('"ticketflow-tkt_bulk_') for query in queries] == [50, 50, 20]


def test_find_tickets_reads_every_page(api: JiraApi, sink: JiraSink) -> None:
    api.search_page_limit = 7
    tickets = numbered_tickets(20)
    keys = sink.create_tickets(tickets)

    found = sink.find_tickets(tickets)

    assert found == {ticket.external_id: key for ticket, key in zip(tickets, keys, strict=True)}
    starts = [request.query["startAt"][0] for request in api.requests_to("GET", SEARCH_PATH)]
    assert starts == ["0", "7", "14"]


def test_find_tickets_pages_on_jira_cloud(make_sink: Callable[..., JiraSink]) -> None:
    with JiraApi(user=USER, token=TOKEN, deployment="Cloud") as cloud:
        cloud.search_page_limit = 7
        sink = make_sink(cloud.url)
        tickets = numbered_tickets(20)
        keys = sink.create_tickets(tickets)

        found = sink.find_tickets(tickets)

        assert found == {
            ticket.external_id: key for ticket, key in zip(tickets, keys, strict=True)
        }
        pages = cloud.requests_to("GET", "/rest/api/2/search/jql")
        assert len(pages) == 3
        assert "nextPageToken" not in pages[0].query
        assert all("nextPageToken" in page.query for page in pages[1:])


def test_find_tickets_keeps_the_oldest_duplicate(api: JiraApi, sink: JiraSink) -> None:
    api.search_page_limit = 1
    first = sink.create_ticket(make_ticket())
    sink.create_ticket(make_ticket())

    assert sink.find_tickets([make_ticket()]) == {TICKET_ID: first}


def test_find_tickets_retries_a_failed_page(api: JiraApi, sink: JiraSink) -> None:
    api.search_page_limit = 2
    tickets = numbered_tickets(3)
    sink.create_tickets(tickets)
    api.fail_next("GET", SEARCH_PATH, status=502)

    found = sink.find_tickets(tickets)

    assert sorted(found) == sorted(ticket.external_id for ticket in tickets)
    assert len(api.requests_to("GET", SEARCH_PATH)) == 3


def test_find_tickets_rate_limit_raises(api: JiraApi, sink: JiraSink) -> None:
    api.fail_next("GET", SEARCH_PATH, status=429, headers={"Retry-After": "3"})

    with pytest.raises(RateLimited) as raised:
        sink.find_tickets(numbered_tickets(2))

    assert raised.value.retry_after == 3.0


def test_empty_batches_send_no_request(api: JiraApi, sink: JiraSink) -> None:
    assert sink.find_tickets([]) == {}
    assert sink.create_tickets([]) == []
    assert api.requests == []
