"""ZendeskSink against a local Zendesk API (tests/connectors/zendesk_api.py) over real HTTP."""

from __future__ import annotations

import base64
import doctest
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

import ticketflow.connectors.zendesk_sink as zendesk_module
from tests.connectors.sink_samples import sample_message, sample_ticket, stored
from tests.connectors.zendesk_api import ZendeskApi
from ticketflow.config import (
    ConfigError,
    MappingRule,
    PriorityNames,
    Settings,
    SinkSettings,
    ZendeskSettings,
)
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
from ticketflow.connectors.zendesk_sink import ZendeskSink

TOKEN_ENV = "TICKETFLOW_ZENDESK_TOKEN"


def make_message(event_id: str = "evt_first", **changes: Any) -> SinkMessage:
    return sample_message(event_id, **changes)


def make_ticket(**changes: Any) -> SinkTicket:
    return sample_ticket(**{"first_message": make_message(), **changes})


def reply(event_id: str, text: str = "Still failing.") -> SinkMessage:
    return make_message(event_id, kind="reply", text=text, sender="bob@bluefin.example.com",
                        sender_name="Bob Stone", sent_at="2026-04-30T13:00:00Z")


@pytest.fixture
def api() -> Iterator[ZendeskApi]:
    with ZendeskApi(email="agent@acme.example.com", token="zd-secret-1") as server:
        yield server


def sink_settings(api: ZendeskApi, **zendesk: Any) -> SinkSettings:
    return SinkSettings(kind="zendesk", timeout=5.0, retries=3, backoff=0.001,
                        zendesk=ZendeskSettings(url=api.url, email=api.email, **zendesk))


@pytest.fixture
def sink(api: ZendeskApi) -> Iterator[ZendeskSink]:
    opened = ZendeskSink(sink_settings(api), environ={TOKEN_ENV: api.token})
    yield opened
    opened.close()


def comment_bodies(api: ZendeskApi, ref: str) -> list[str]:
    return [comment["body"] for comment in api.comments[int(ref)]]


# Creating tickets


def test_create_sends_documented_fields(api, sink):
    ref = sink.create_ticket(make_ticket())

    ticket = api.tickets[int(ref)]
    assert ticket["subject"] == "API timeout on POST /charges"
    assert ticket["external_id"] == "tkt_0f3a9c"
    assert ticket["priority"] == "high"
    assert ticket["tags"] == ["ticketflow"]
    assert ticket["group_id"] is None
    requester = api.users["alice@bluefin.example.com"]
    assert ticket["requester_id"] == requester["id"]
    assert requester["name"] == "Alice Moreau"


def test_create_authenticates_with_email_token(api, sink):
    sink.create_ticket(make_ticket())

    header = api.requests_to("POST", r"/api/v2/tickets\.json")[0].headers["authorization"]
    credentials = base64.b64decode(header.removeprefix("Basic "))
    assert credentials == b"agent@acme.example.com/token:zd-secret-1"


def test_description_names_sender_tenant_key_and_trust(api, sink):
    ref = sink.create_ticket(make_ticket())

    description = api.comments[int(ref)][0]
    assert description["public"] is False
    body = description["body"]
    assert body.startswith("POST /charges times out after 30 s since this morning.")
    assert "From: Alice Moreau <alice@bluefin.example.com>" in body
    assert "Tenant: acme" in body
    assert "ticketflow key: ACME-17" in body
    assert "Authentication: SPF pass, DKIM pass, DMARC pass" in body
    assert body.endswith("ticketflow-message:evt_first")
    assert "Held for review" not in body


def test_review_ticket_gets_tag_and_reasons(api, sink):
    review_ticket = make_ticket(status="review", review_reasons=("dmarc_fail", "spam_score"),
                       first_message=make_message(authentication={"spf": "fail", "dmarc": "fail"}))
    ref = sink.create_ticket(review_ticket)

    assert api.tickets[int(ref)]["tags"] == ["ticketflow", "ticketflow-review"]
    body = api.comments[int(ref)][0]["body"]
    assert "Held for review: dmarc_fail, spam_score" in body
    assert "Authentication: SPF fail, DKIM none, DMARC fail" in body


@pytest.mark.parametrize(("priority", "expected"), [
    ("P0", "urgent"), ("P1", "high"), ("P2", "normal"), ("P3", "low"), ("P4", "low"),
])
def test_default_priority_names(api, sink, priority, expected):
    ref = sink.create_ticket(make_ticket(priority=priority))
    assert api.tickets[int(ref)]["priority"] == expected


def test_configured_priority_names_win(api):
    settings = sink_settings(api, priorities=PriorityNames(P3="normal"))
    configured = ZendeskSink(settings, environ={TOKEN_ENV: api.token})

    ref = configured.create_ticket(make_ticket(priority="P3"))
    other = configured.create_ticket(make_ticket(external_id="tkt_2", priority="P4"))

    assert api.tickets[int(ref)]["priority"] == "normal"
    assert api.tickets[int(other)]["priority"] == "low"


def test_rule_fields_become_priority_tags_and_group(api, sink):
    mapped = MappingRule(labels=("Checkout Flow", "vip"), group_id="360001", priority_name="urgent")
    ref = sink.create_ticket(make_ticket(priority="P3", mapped=mapped))

    ticket = api.tickets[int(ref)]
    assert ticket["priority"] == "urgent"
    assert ticket["tags"] == ["checkout_flow", "vip", "ticketflow"]
    assert ticket["group_id"] == 360001


def test_requester_without_name_uses_local_part(api, sink):
    sink.create_ticket(make_ticket(requester_name=""))
    assert api.users["alice@bluefin.example.com"]["name"] == "alice"


def test_attachments_listed_and_quarantine_named(api, sink):
    first = make_message(attachments=(
        stored("trace.json", b"{}"),
        stored("invoice.exe", b"MZ", content_type="application/x-msdownload",
               quarantined="Eicar-Test-Signature"),
    ))
    ref = sink.create_ticket(make_ticket(first_message=first))

    body = api.comments[int(ref)][0]["body"]
    assert "- trace.json (application/json, 2 bytes): https://files.example.com/trace.json" in body
    assert ("- invoice.exe (application/x-msdownload, 2 bytes): "
            "quarantined as Eicar-Test-Signature; not uploaded") in body
    assert api.files == {}


def test_html_only_mail_sends_sanitized_html(api, sink):
    first = make_message(text="", html="<p>Checkout <b>broken</b></p><script>alert(1)</script>")
    ref = sink.create_ticket(make_ticket(first_message=first))

    request = api.requests_to("POST", r"/api/v2/tickets\.json")[0].json()
    html_body = request["ticket"]["comment"]["html_body"]
    assert "<b>broken</b>" in html_body
    assert "script" not in html_body
    assert "ticketflow-message:evt_first" in html_body
    assert "ticketflow-message:evt_first" in api.comments[int(ref)][0]["body"]


# Finding tickets


def test_find_ticket_after_create(sink):
    ticket = make_ticket()
    assert sink.find_ticket(ticket) is None

    ref = sink.create_ticket(ticket)

    assert sink.find_ticket(ticket) == ref
    assert sink.find_ticket(make_ticket(external_id="tkt_other")) is None


def test_find_ticket_prefers_oldest_duplicate(sink):
    ticket = make_ticket()
    oldest = sink.create_ticket(ticket)
    sink.create_ticket(ticket)

    assert sink.find_ticket(ticket) == oldest


# Comments


def test_comment_is_private_with_sender_and_marker(api, sink):
    ref = sink.create_ticket(make_ticket())

    sink.add_comment(ref, make_ticket(), reply("evt_reply1"), verify=False)

    comment = api.comments[int(ref)][-1]
    assert comment["public"] is False
    heading = "Reply from Bob Stone <bob@bluefin.example.com>, sent 2026-04-30T13:00:00Z:"
    assert comment["body"].startswith(f"{heading}\n\nStill failing.")
    assert comment["body"].endswith("ticketflow-message:evt_reply1")


def test_verified_comment_is_not_added_twice(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)

    sink.add_comment(ref, ticket, reply("evt_reply1"), verify=True)
    sink.add_comment(ref, ticket, reply("evt_reply1"), verify=True)

    assert len(comment_bodies(api, ref)) == 2


def test_verify_reads_every_comment_page(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    for number in range(1, 250):
        api.add_agent_comment(int(ref), f"Agent note {number}")
    sink.add_comment(ref, ticket, reply("evt_late"), verify=False)
    assert len(api.comments[int(ref)]) == 251

    sink.add_comment(ref, ticket, reply("evt_late"), verify=True)

    assert len(api.comments[int(ref)]) == 251
    assert len(api.requests_to("GET", r"/api/v2/tickets/\d+/comments\.json")) == 3


def test_verify_does_not_match_marker_prefix(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    sink.add_comment(ref, ticket, reply("evt_r12"), verify=False)

    sink.add_comment(ref, ticket, reply("evt_r1"), verify=True)

    assert comment_bodies(api, ref)[-1].endswith("ticketflow-message:evt_r1")


def test_lost_comment_response_not_resent(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    api.lose_next_answer("PUT", rf"/api/v2/tickets/{ref}\.json", status=504)

    sink.add_comment(ref, ticket, reply("evt_reply1"), verify=False)

    markers = [body for body in comment_bodies(api, ref) if body.endswith("evt_reply1")]
    assert len(markers) == 1
    assert len(api.requests_to("PUT", rf"/api/v2/tickets/{ref}\.json")) == 1


def test_failed_comment_is_sent_again(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    api.fail_next("PUT", rf"/api/v2/tickets/{ref}\.json", status=502, body=b"bad gateway")

    sink.add_comment(ref, ticket, reply("evt_reply1"), verify=False)

    assert comment_bodies(api, ref)[-1].endswith("ticketflow-message:evt_reply1")
    assert len(api.requests_to("PUT", rf"/api/v2/tickets/{ref}\.json")) == 2


def test_comment_gives_up_after_retries(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    api.fail_next("PUT", rf"/api/v2/tickets/{ref}\.json", status=503, times=3)

    with pytest.raises(SinkUnavailable, match="HTTP 503"):
        sink.add_comment(ref, ticket, reply("evt_reply1"), verify=False)

    assert len(api.comments[int(ref)]) == 1
    assert len(api.requests_to("PUT", rf"/api/v2/tickets/{ref}\.json")) == 3


# Attachments


def test_attach_uploads_bytes_in_private_comment(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    trace, log = b'{"trace": 1}', b"line 1\n"
    files = [(stored("trace.json", trace), trace),
             (stored("app.log", log, content_type="text/plain"), log)]

    sink.attach_files(ref, ticket, ticket.first_message, files)

    comment = api.comments[int(ref)][-1]
    assert comment["public"] is False
    assert [found["file_name"] for found in comment["attachments"]] == ["trace.json", "app.log"]
    assert [api.files[found["id"]] for found in comment["attachments"]] == [trace, log]
    assert comment["attachments"][1]["content_type"] == "text/plain"
    assert hashlib.sha256(trace).hexdigest() in comment["body"]
    assert comment["body"].endswith("ticketflow-attachments:evt_first")


def test_attach_twice_uploads_once(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    data = b"{}"
    files = [(stored("trace.json", data), data)]

    sink.attach_files(ref, ticket, ticket.first_message, files)
    sink.attach_files(ref, ticket, ticket.first_message, files)

    assert len(api.requests_to("POST", r"/api/v2/uploads\.json")) == 1
    assert len(api.comments[int(ref)]) == 2


def test_attach_adds_only_missing_files(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    first, second = b"one", b"two"
    sink.attach_files(ref, ticket, ticket.first_message, [(stored("a.txt", first), first)])

    sink.attach_files(ref, ticket, ticket.first_message,
                      [(stored("a.txt", first), first), (stored("b.txt", second), second)])

    latest = api.comments[int(ref)][-1]
    assert [found["file_name"] for found in latest["attachments"]] == ["b.txt"]


def test_quarantined_file_is_never_uploaded(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    bad = b"X5O!P%@AP"

    sink.attach_files(ref, ticket, ticket.first_message,
                      [(stored("eicar.com", bad, quarantined="Eicar-Test-Signature"), bad)])

    assert api.requests_to("POST", r"/api/v2/uploads\.json") == []
    assert len(api.comments[int(ref)]) == 1


def test_upload_5xx_then_success(api, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    api.fail_next("POST", r"/api/v2/uploads\.json", status=500)

    sink.attach_files(ref, ticket, ticket.first_message, [(stored("a.txt", b"a"), b"a")])

    assert len(api.comments[int(ref)][-1]["attachments"]) == 1


# Updates and links


def test_update_sends_priority_subject_and_review_tag(api, sink):
    ref = sink.create_ticket(make_ticket())
    api.tickets[int(ref)]["tags"].append("agent_escalated")

    sink.update_ticket(ref, make_ticket(subject="Charges fail", priority="P0", status="review",
                                        review_reasons=("spam_score",)))
    ticket = api.tickets[int(ref)]
    assert ticket["subject"] == "Charges fail"
    assert ticket["priority"] == "urgent"
    assert ticket["tags"] == ["ticketflow", "agent_escalated", "ticketflow-review"]

    sink.update_ticket(ref, make_ticket(status="open"))
    assert api.tickets[int(ref)]["tags"] == ["ticketflow", "agent_escalated"]
    assert api.tickets[int(ref)]["priority"] == "high"


def test_link_notes_both_tickets_once(api, sink):
    kept_ref = sink.create_ticket(make_ticket())
    merged = sink.create_ticket(make_ticket(external_id="tkt_merged", key="ACME-18"))

    sink.link_tickets(kept_ref, merged, make_ticket())
    sink.link_tickets(kept_ref, merged, make_ticket())

    kept_notes = comment_bodies(api, kept_ref)[1:]
    merged_notes = comment_bodies(api, merged)[1:]
    assert len(kept_notes) == 1
    assert len(merged_notes) == 1
    assert f"Ticket #{merged} is the same email thread" in kept_notes[0]
    assert f"continues on ticket #{kept_ref}" in merged_notes[0]
    assert all(comment["public"] is False for comment in api.comments[int(merged)])


# Errors


def test_400_rejected_with_response(api, sink):
    api.fail_next("POST", r"/api/v2/tickets\.json", status=400,
                  body={"error": "InvalidJSON", "description": "unexpected token"})

    with pytest.raises(SinkRejected, match="unexpected token") as raised:
        sink.create_ticket(make_ticket())
    assert raised.value.status == 400


def test_wrong_token_is_rejected_401(api):
    wrong = ZendeskSink(sink_settings(api), environ={TOKEN_ENV: "not-the-token"})

    with pytest.raises(SinkRejected, match="Couldn't authenticate you") as raised:
        wrong.find_ticket(make_ticket())
    assert raised.value.status == 401


def test_unknown_ticket_is_rejected_404(sink):
    with pytest.raises(SinkRejected, match="RecordNotFound") as raised:
        sink.update_ticket("9999", make_ticket())
    assert raised.value.status == 404


def test_validation_error_is_rejected_422(sink):
    with pytest.raises(SinkRejected, match="Group: is invalid") as raised:
        sink.create_ticket(make_ticket(mapped=MappingRule(group_id="42")))
    assert raised.value.status == 422
    assert "RecordInvalid" in raised.value.answer


def test_closed_ticket_rejects_update(api, sink):
    ref = sink.create_ticket(make_ticket())
    api.tickets[int(ref)]["status"] = "closed"

    with pytest.raises(SinkRejected, match="closed prevents ticket update"):
        sink.update_ticket(ref, make_ticket())


def test_edit_conflict_409_is_unavailable(api, sink):
    ref = sink.create_ticket(make_ticket())
    api.fail_next("PUT", rf"/api/v2/tickets/{ref}\.json", status=409,
                  body={"error": "UpdateConflict", "description": "ticket was updated meanwhile"})

    with pytest.raises(SinkUnavailable, match="edit conflict.*ticket was updated meanwhile"):
        sink.update_ticket(ref, make_ticket())


def test_429_raises_rate_limited_without_retry(api, sink):
    api.fail_next("GET", r"/api/v2/tickets\.json", status=429, headers={"Retry-After": "7"},
                  body={"error": "TooManyRequests"})

    with pytest.raises(RateLimited) as raised:
        sink.find_ticket(make_ticket())
    assert raised.value.retry_after == 7.0
    assert len(api.requests_to("GET", r"/api/v2/tickets\.json")) == 1


def test_5xx_then_success_is_retried(api, sink):
    ref = sink.create_ticket(make_ticket())
    api.fail_next("GET", r"/api/v2/tickets\.json", status=503, times=2)

    assert sink.find_ticket(make_ticket()) == ref
    assert len(api.requests_to("GET", r"/api/v2/tickets\.json")) == 3


def test_5xx_until_give_up_is_unavailable(api, sink):
    api.fail_next("GET", r"/api/v2/tickets\.json", status=500, times=3, body={"error": "boom"})

    with pytest.raises(SinkUnavailable, match="HTTP 500"):
        sink.find_ticket(make_ticket())
    assert len(api.requests_to("GET", r"/api/v2/tickets\.json")) == 3


def test_create_is_not_retried_after_5xx(api, sink):
    api.fail_next("POST", r"/api/v2/tickets\.json", status=502)

    with pytest.raises(SinkUnavailable):
        sink.create_ticket(make_ticket())
    assert len(api.requests_to("POST", r"/api/v2/tickets\.json")) == 1
    assert api.tickets == {}


def test_response_without_json_unavailable(api, sink):
    api.fail_next("GET", r"/api/v2/tickets\.json", status=200, body=b"<html>maintenance</html>")

    with pytest.raises(SinkUnavailable, match="without JSON"):
        sink.find_ticket(make_ticket())


# Settings


def test_missing_token_names_variable():
    settings = SinkSettings(kind="zendesk", zendesk=ZendeskSettings(
        url="https://acme.zendesk.com", email="agent@acme.example.com"))

    with pytest.raises(ConfigError, match=f"export {TOKEN_ENV} with the Zendesk API token"):
        ZendeskSink(settings, environ={})


def test_token_is_read_from_environment(api, monkeypatch):
    monkeypatch.setenv("TICKETFLOW_ZD_OTHER", api.token)
    settings = SinkSettings(kind="zendesk", backoff=0.001,
                            zendesk=ZendeskSettings(url=api.url, email=api.email,
                                                    token_env="TICKETFLOW_ZD_OTHER"))
    opened = open_sink(replace(Settings(), sink=settings))

    assert isinstance(opened, ZendeskSink)
    assert opened.find_ticket(make_ticket()) is None


@pytest.mark.parametrize(("zendesk", "rules", "message"), [
    ({"url": ""}, (), "sink.zendesk.url must be the Zendesk site's URL"),
    ({"email": "agent"}, (), "sink.zendesk.email must be the address"),
    ({"priorities": PriorityNames(P1="critical")}, (),
     "invalid value for sink.zendesk.priorities.P1: 'critical'; use one of urgent"),
    ({}, (MappingRule(group_id="support"),), r"sink.rules\[0\].group_id: 'support'"),
    ({}, (MappingRule(), MappingRule(priority_name="Highest")), r"sink.rules\[1\].priority_name"),
])
def test_invalid_settings_are_config_errors(zendesk, rules, message):
    values = {"url": "https://acme.zendesk.com", "email": "agent@acme.example.com", **zendesk}
    settings = SinkSettings(kind="zendesk", zendesk=ZendeskSettings(**values), rules=rules)

    with pytest.raises(ConfigError, match=message):
        ZendeskSink(settings, environ={TOKEN_ENV: "t"})


# Replay


def deliver(sink: ZendeskSink, ticket: SinkTicket, replies: list[SinkMessage],
            files: list[tuple[SinkAttachment, bytes]]) -> str:
    """Run the delivery's sequence, as after a crash: find before create, verify comments."""
    ref = sink.find_ticket(ticket) or sink.create_ticket(ticket)
    sink.attach_files(ref, ticket, ticket.first_message, files)
    for message in replies:
        sink.add_comment(ref, ticket, message, verify=True)
    sink.update_ticket(ref, replace(ticket, priority="P0"))
    return ref


def test_replay_makes_each_ticket_and_comment_once(api, sink):
    ticket = make_ticket()
    replies = [reply("evt_r1"), reply("evt_r2", "Fixed after the deploy.")]
    data = b"{}"
    files = [(stored("trace.json", data), data)]

    first = deliver(sink, ticket, replies, files)
    again = deliver(sink, ticket, replies, files)

    assert again == first
    assert list(api.tickets) == [int(first)]
    bodies = comment_bodies(api, first)
    for marker in ("ticketflow-message:evt_first", "ticketflow-attachments:evt_first",
                   comment_marker(replies[0]), comment_marker(replies[1])):
        assert sum(body.endswith(marker) for body in bodies) == 1, marker
    assert len(bodies) == 4
    assert len(api.files) == 1


def test_doctests_pass():
    failures, tried = doctest.testmod(zendesk_module)
    assert tried >= 3
    assert failures == 0
