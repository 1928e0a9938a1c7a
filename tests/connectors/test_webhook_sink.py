"""WebhookSink against a local receiver (tests/connectors/webhook_receiver.py) over real HTTP."""

from __future__ import annotations

import doctest
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

import ticketflow.connectors.webhook_sink as webhook_module
from tests.connectors.sink_samples import sample_message, sample_ticket, stored
from tests.connectors.webhook_receiver import WebhookReceiver
from ticketflow.config import ConfigError, MappingRule, Settings, SinkSettings, WebhookSettings
from ticketflow.connectors.sink import (
    RateLimited,
    SinkAttachment,
    SinkMessage,
    SinkRejected,
    SinkTicket,
    SinkUnavailable,
    open_sink,
)
from ticketflow.connectors.webhook_sink import WebhookSink, verify_signature

SECRET_ENV = "TICKETFLOW_WEBHOOK_SECRET"
SECRET = b"whsec-test-5f2c"


def make_message(event_id: str = "evt_first", **changes: Any) -> SinkMessage:
    fields = {"html": "<p>POST /charges times out</p>",
              "authentication": {"spf": "pass", "dkim": "pass", "dmarc": "fail"}}
    return sample_message(event_id, **{**fields, **changes})


def make_ticket(**changes: Any) -> SinkTicket:
    fields = {"participants": ("alice@bluefin.example.com", "bob@bluefin.example.com"),
              "tier": "gold", "status": "review", "review_reasons": ("dmarc_fail",)}
    return sample_ticket(**{"first_message": make_message(), **fields, **changes})


def reply(event_id: str, text: str = "Still failing.") -> SinkMessage:
    return make_message(event_id, kind="reply", text=text, html="",
                        sender="bob@bluefin.example.com", sender_name="Bob Stone")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as server:
        yield server


def sink_settings(url: str) -> SinkSettings:
    return SinkSettings(kind="webhook", timeout=5.0, retries=3, backoff=0.001,
                        webhook=WebhookSettings(url=url))


def open_webhook(receiver: WebhookReceiver, **options: Any) -> WebhookSink:
    environ = options.pop("environ", {SECRET_ENV: SECRET.decode()})
    return WebhookSink(sink_settings(receiver.hook_url), environ=environ, **options)


@pytest.fixture
def sink(receiver: WebhookReceiver) -> Iterator[WebhookSink]:
    opened = open_webhook(receiver)
    yield opened
    opened.close()


def posts(receiver: WebhookReceiver) -> list[Any]:
    return receiver.requests_to("POST", receiver.path)


# Signing


def test_signature_matches_independent_hmac(receiver, sink):
    sink.create_ticket(make_ticket())

    request = posts(receiver)[0]
    timestamp = request.headers["x-ticketflow-timestamp"]
    expected = hmac.new(SECRET, f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-ticketflow-signature"] == f"v1={expected}"
    assert abs(int(timestamp) - time.time()) < 3600
    signature = request.headers["x-ticketflow-signature"]
    assert verify_signature(SECRET, timestamp, request.body, signature)


def test_tampered_body_is_refused(receiver, sink):
    sink.create_ticket(make_ticket())
    original = posts(receiver)[0]
    tampered = original.body.replace(b"API timeout", b"API timeouT")
    headers = {name: original.headers[name] for name in
               ("x-ticketflow-timestamp", "x-ticketflow-signature", "content-type")}
    headers["idempotency-key"] = "another-key"

    response = requests.post(receiver.hook_url, data=tampered, headers=headers, timeout=5)

    assert response.status_code == 401
    assert response.json() == {"error": "invalid signature"}
    subjects = [ticket["subject"] for ticket in receiver.tickets.values()]
    assert subjects == ["API timeout on POST /charges"]


def test_stale_timestamp_is_refused(receiver):
    late = open_webhook(receiver, clock=lambda: time.time() - 301)

    with pytest.raises(SinkRejected, match="stale timestamp") as raised:
        late.create_ticket(make_ticket())
    assert raised.value.status == 401
    assert receiver.tickets == {}


def test_wrong_secret_is_refused(receiver):
    wrong = open_webhook(receiver, environ={SECRET_ENV: "not-the-secret"})

    with pytest.raises(SinkRejected, match="invalid signature") as raised:
        wrong.create_ticket(make_ticket())
    assert raised.value.status == 401


def test_verify_signature_accepts_rotated_secrets():
    body = b'{"action":"update"}'
    old = hmac.new(b"old", b"1700000000." + body, hashlib.sha256).hexdigest()
    new = hmac.new(b"new", b"1700000000." + body, hashlib.sha256).hexdigest()
    header = f"v1={old}, v1={new}"

    assert verify_signature(b"new", "1700000000", body, header, now=1700000000)
    assert verify_signature(b"old", "1700000000", body, header, now=1700000000)
    assert not verify_signature(b"other", "1700000000", body, header, now=1700000000)


@pytest.mark.parametrize(("timestamp", "signature_version", "now"), [
    ("1700000000", "v0", 1700000000),      # unknown scheme
    ("soon", "v1", 1700000000),            # timestamp not a number
    ("1700000000", "v1", 1699999000),      # signed in the future, beyond the tolerance
    ("1700000000", "v1", 1700000301),      # stale
])
def test_verify_signature_refuses(timestamp, signature_version, now):
    body = b"{}"
    digest = hmac.new(SECRET, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()

    assert not verify_signature(SECRET, timestamp, body, f"{signature_version}={digest}", now=now)


def test_verify_signature_honours_tolerance():
    body = b"{}"
    digest = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()

    assert verify_signature(SECRET, "1700000000", body, f"v1={digest}", now=1700000900,
                            tolerance=900)
    assert not verify_signature(SECRET, "1700000000", body, f"v1={digest}", now=1700000901,
                                tolerance=900)


# Operations


def test_create_posts_ticket_and_first_message(receiver, sink):
    quarantined = stored("evil.exe", b"MZ", quarantined="Eicar-Test-Signature")
    first = make_message(attachments=(quarantined,))
    ticket = make_ticket(first_message=first, mapped=MappingRule(labels=("vip",),
                                                                 priority_name="Highest"))

    ref = sink.create_ticket(ticket)

    assert ref == "WH-1"
    request = posts(receiver)[0]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == "tkt_0f3a9c:evt_first:create"
    document = request.json()
    assert document["action"] == "create"
    assert "ref" not in document
    assert document["files"] == []
    sent = document["ticket"]
    assert sent["external_id"] == "tkt_0f3a9c"
    assert sent["key"] == "ACME-17"
    assert sent["tenant"] == "acme"
    assert sent["requester"] == "alice@bluefin.example.com"
    assert sent["priority"] == "P1"
    assert sent["priority_name"] == "Highest"
    assert sent["labels"] == ["vip"]
    assert sent["status"] == "review"
    assert sent["review_reasons"] == ["dmarc_fail"]
    message = document["message"]
    assert message["event_id"] == "evt_first"
    assert message["authentication"]["dmarc"] == "fail"
    assert message["attachments"][0]["quarantined"] == "Eicar-Test-Signature"
    assert receiver.tickets["WH-1"]["description"]["text"] == first.text


def test_create_without_ref_returns_external_id():
    with WebhookReceiver(secret=SECRET, answer_ref=False) as quiet:
        sink = open_webhook(quiet)
        ref = sink.create_ticket(make_ticket())
        sink.add_comment(ref, make_ticket(), reply("evt_r1"), verify=False)

        assert ref == "tkt_0f3a9c"
        assert [message["event_id"] for message in quiet.comments[ref]] == ["evt_r1"]


def test_find_ticket_is_always_none(receiver, sink):
    ticket = make_ticket()
    sink.create_ticket(ticket)

    assert sink.find_ticket(ticket) is None
    assert len(posts(receiver)) == 1


def test_comment_attach_update_and_link(receiver, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    merged = sink.create_ticket(make_ticket(external_id="tkt_merged",
                                            first_message=make_message("evt_other")))
    data = b'{"trace": 1}'

    sink.add_comment(ref, ticket, reply("evt_r1"), verify=False)
    sink.attach_files(ref, ticket, ticket.first_message, [(stored("trace.json", data), data)])
    sink.update_ticket(ref, replace(ticket, priority="P0", status="open", review_reasons=()))
    sink.link_tickets(ref, merged, ticket)

    assert [message["text"] for message in receiver.comments[ref]] == ["Still failing."]
    assert receiver.files[ref] == [{
        "filename": "trace.json", "content_type": "application/json", "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "download_url": "https://files.example.com/trace.json",
        "quarantined": None, "refused": None,
    }]
    assert receiver.tickets[ref]["priority"] == "P0"
    assert receiver.tickets[ref]["status"] == "open"
    assert receiver.links == [(ref, merged)]
    keys = [request.headers["idempotency-key"] for request in posts(receiver)[2:]]
    assert keys[0] == "tkt_0f3a9c:evt_r1:comment"
    assert keys[1].startswith("tkt_0f3a9c:evt_first:attach:")
    assert keys[2].startswith("tkt_0f3a9c:update:")
    assert keys[3] == f"tkt_0f3a9c:link:{merged}"


def test_attach_sends_no_bytes(receiver, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)
    data = b"secret-bytes-of-the-file"

    sink.attach_files(ref, ticket, ticket.first_message, [(stored("a.txt", data), data)])

    assert data not in posts(receiver)[-1].body


def test_priority_can_change_back(receiver, sink):
    ticket = make_ticket()
    ref = sink.create_ticket(ticket)

    for priority in ("P1", "P2", "P1"):
        sink.update_ticket(ref, replace(ticket, priority=priority))

    assert [update["priority"] for _, update in receiver.updates] == ["P1", "P2", "P1"]
    assert receiver.tickets[ref]["priority"] == "P1"


# Idempotency


def deliver(sink: WebhookSink, ticket: SinkTicket, replies: list[SinkMessage],
            files: list[tuple[SinkAttachment, bytes]], merged_ref: str) -> str:
    """Run the delivery's sequence, as after a crash: find first, verify comments."""
    ref = sink.find_ticket(ticket) or sink.create_ticket(ticket)
    sink.attach_files(ref, ticket, ticket.first_message, files)
    for message in replies:
        sink.add_comment(ref, ticket, message, verify=True)
    sink.link_tickets(ref, merged_ref, ticket)
    return ref


def test_replay_makes_each_ticket_and_comment_once(receiver, sink):
    merged = sink.create_ticket(make_ticket(external_id="tkt_merged",
                                            first_message=make_message("evt_other")))
    ticket = make_ticket()
    replies = [reply("evt_r1"), reply("evt_r2", "Fixed after the deploy.")]
    data = b"{}"
    files = [(stored("trace.json", data), data)]

    first = deliver(sink, ticket, replies, files, merged)
    again = deliver(sink, ticket, replies, files, merged)

    assert again == first
    assert sorted(receiver.tickets) == sorted([first, merged])
    assert [message["event_id"] for message in receiver.comments[first]] == ["evt_r1", "evt_r2"]
    assert len(receiver.files[first]) == 1
    assert receiver.links == [(first, merged)]
    keys = [request.headers["idempotency-key"] for request in posts(receiver)]
    assert len(keys) == 11
    assert keys[6:] == keys[1:6]


def test_repeated_create_returns_first_ref(receiver, sink):
    ticket = make_ticket()

    refs = [sink.create_ticket(ticket) for _ in range(3)]

    assert refs == ["WH-1", "WH-1", "WH-1"]
    assert list(receiver.tickets) == ["WH-1"]


def test_lost_response_retried_with_same_key(receiver, sink):
    receiver.lose_next_answer(status=504)

    ref = sink.create_ticket(make_ticket())

    assert ref == "WH-1"
    assert list(receiver.tickets) == ["WH-1"]
    sent = posts(receiver)
    assert len(sent) == 2
    assert sent[0].headers["idempotency-key"] == sent[1].headers["idempotency-key"]
    assert sent[0].body == sent[1].body


# Errors


def test_400_rejected_with_response(receiver, sink):
    receiver.fail_next("POST", receiver.path, status=400, body={"error": "subject too long"})

    with pytest.raises(SinkRejected, match="subject too long") as raised:
        sink.create_ticket(make_ticket())
    assert raised.value.status == 400


def test_404_for_unknown_ref_is_rejected(sink):
    with pytest.raises(SinkRejected, match="unknown ticket 'WH-404'") as raised:
        sink.add_comment("WH-404", make_ticket(), reply("evt_r1"), verify=False)
    assert raised.value.status == 404


def test_409_in_progress_is_unavailable(receiver, sink):
    receiver.fail_next("POST", receiver.path, status=409,
                       body={"error": "a request with this key is in progress"})

    with pytest.raises(SinkUnavailable, match="still processing.*tkt_0f3a9c:evt_first:create"):
        sink.create_ticket(make_ticket())
    assert len(posts(receiver)) == 1


def test_429_raises_rate_limited(receiver, sink):
    receiver.fail_next("POST", receiver.path, status=429, headers={"Retry-After": "12"})

    with pytest.raises(RateLimited) as raised:
        sink.create_ticket(make_ticket())
    assert raised.value.retry_after == 12.0
    assert len(posts(receiver)) == 1


def test_5xx_then_success(receiver, sink):
    receiver.fail_next("POST", receiver.path, status=503, times=2)

    assert sink.create_ticket(make_ticket()) == "WH-1"
    assert len(posts(receiver)) == 3


def test_5xx_until_give_up_is_unavailable(receiver, sink):
    receiver.fail_next("POST", receiver.path, status=500, times=3, body={"error": "db down"})

    with pytest.raises(SinkUnavailable, match="HTTP 500"):
        sink.create_ticket(make_ticket())
    assert len(posts(receiver)) == 3
    assert receiver.tickets == {}


def test_unreadable_response_uses_external_id(receiver, sink):
    receiver.fail_next("POST", receiver.path, status=200, body=b"accepted")

    assert sink.create_ticket(make_ticket()) == "tkt_0f3a9c"


# Settings


def test_missing_secret_names_variable():
    with pytest.raises(ConfigError, match=f"export {SECRET_ENV} with the webhook's HMAC key"):
        WebhookSink(sink_settings("https://tickets.example.com/hook"), environ={})


@pytest.mark.parametrize("url", ["", "tickets.example.com/hook", "ftp://tickets.example.com/"])
def test_invalid_url_is_config_error(url):
    with pytest.raises(ConfigError, match="sink.webhook.url must be the receiver's http"):
        WebhookSink(sink_settings(url), environ={SECRET_ENV: "s"})


def test_open_sink_reads_secret_from_environment(receiver, monkeypatch):
    monkeypatch.setenv("TICKETFLOW_HOOK_KEY", SECRET.decode())
    settings = SinkSettings(kind="webhook", backoff=0.001,
                            webhook=WebhookSettings(url=receiver.hook_url,
                                                    secret_env="TICKETFLOW_HOOK_KEY"))

    opened = open_sink(replace(Settings(), sink=settings))

    assert isinstance(opened, WebhookSink)
    assert opened.create_ticket(make_ticket()) == "WH-1"


def test_body_is_utf8_json(receiver, sink):
    sink.create_ticket(make_ticket(subject="Ошибка оплаты"))

    body = posts(receiver)[0].body
    assert "Ошибка оплаты".encode() in body
    assert json.loads(body)["ticket"]["subject"] == "Ошибка оплаты"


def test_doctests_pass():
    failures, tried = doctest.testmod(webhook_module)
    assert tried >= 4
    assert failures == 0
