"""The parse step's public contract: event fields, errors, records and header blocks."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

import ticketflow.operators.parse as parse_module
from ticketflow.operators.parse import (
    UnparseableMessage,
    decode_record,
    header_block,
    parse_message,
)

INGESTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def mail(*header_lines: str, body: str = "Hello.\n") -> bytes:
    return ("\r\n".join(header_lines) + "\r\n\r\n" + body).encode("utf-8")


def parse(raw: bytes, **options: object) -> dict:
    return parse_message(raw, "test", INGESTED, **options)  # type: ignore[arg-type]


def codes(event: dict) -> list[str]:
    return [defect["code"] for defect in event["defects"]]


def test_public_surface_is_pinned() -> None:
    assert sorted(parse_module.__all__) == [
        "UnparseableMessage",
        "decode_record",
        "header_block",
        "parse_message",
    ]


def test_event_id_is_sha256_of_raw_bytes() -> None:
    raw = mail("From: a@example.com", "Message-ID: <x@example.com>")
    event = parse(raw)
    assert event["event_id"] == "evt_" + hashlib.sha256(raw).hexdigest()[:24]
    assert parse(raw)["event_id"] == event["event_id"]


def test_same_bytes_give_same_event() -> None:
    raw = mail("From: a@example.com", "Subject: Same")
    assert parse(raw) == parse(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"  \r\n\r\n", "empty"),
        (b"Hello, this is no email\r\n", "not_email"),
        (b"\r\nFrom: a@example.com\r\n\r\nbody", "not_email"),
        (b" folded first line\r\nFrom: a@example.com\r\n\r\n", "not_email"),
    ],
)
def test_input_that_is_no_email_raises(raw: bytes, reason: str) -> None:
    with pytest.raises(UnparseableMessage) as raised:
        parse(raw)
    assert raised.value.reason == reason
    assert raised.value.detail


def test_received_at_prefers_topmost_received() -> None:
    raw = mail(
        "Received: from b by mx.example.com; Tue, 28 Apr 2026 10:00:05 +0200",
        "Received: from a by b; Tue, 28 Apr 2026 07:00:00 +0000",
        "Date: Tue, 28 Apr 2026 09:00:00 +0200",
        "From: a@example.com",
    )
    event = parse(raw)
    assert event["received_at"] == "2026-04-28T08:00:05Z"
    assert event["ingested_at"] == "2026-05-01T12:00:00Z"


def test_received_at_falls_back_to_date_then_ingest() -> None:
    with_date = parse(mail("From: a@example.com", "Date: Tue, 28 Apr 2026 09:00:00 -0500"))
    without = parse(mail("From: a@example.com"))
    assert with_date["received_at"] == "2026-04-28T14:00:00Z"
    assert without["received_at"] == "2026-05-01T12:00:00Z"


def test_bad_dates_are_defects() -> None:
    event = parse(mail("Received: from a by b; yesterday", "From: a@example.com", "Date: soon"))
    assert event["received_at"] == "2026-05-01T12:00:00Z"
    assert codes(event).count("bad_date") == 2


def test_naive_ingest_time_reads_as_utc() -> None:
    event = parse_message(mail("From: a@example.com"), "t", datetime(2026, 5, 1, 12, 0))  # noqa: DTZ001
    assert event["ingested_at"] == "2026-05-01T12:00:00Z"


def test_envelope_addresses_are_bare_and_lowercased() -> None:
    event = parse(
        mail(
            "From: =?utf-8?Q?Jos=C3=A9_P=C3=A9rez?= <Jose.Perez@Example.COM>",
            'To: "Support, EU" <Support@Support.Example.com>, ops@support.example.com',
            "Cc: team: a@x.example, b@y.example;",
            "Reply-To: <Replies@Example.com>",
        )
    )
    envelope = event["envelope"]
    assert envelope["from"] == "jose.perez@example.com"
    assert envelope["from_name"] == "José Pérez"
    assert envelope["to"] == ["support@support.example.com", "ops@support.example.com"]
    assert envelope["cc"] == ["a@x.example", "b@y.example"]
    assert envelope["reply_to"] == ["replies@example.com"]


def test_invalid_address_kept_with_defect() -> None:
    event = parse(mail("From: MAILER-DAEMON", "To: support@example.com"))
    assert event["envelope"]["from"] == "mailer-daemon"
    assert "address_invalid" in codes(event)


def test_subject_unfolded_and_collapsed() -> None:
    event = parse(mail("From: a@example.com", "Subject: Export\r\n   fails\r\n\tagain  "))
    assert event["envelope"]["subject"] == "Export fails again"


def test_missing_message_id_is_synthesized_from_content() -> None:
    first = parse(mail("From: a@example.com", "Subject: Hi", "X-Trace: 1"))
    second = parse(mail("From: A@Example.com", "Subject: Hi", "X-Trace: 2"))
    other = parse(mail("From: a@example.com", "Subject: Different"))

    assert first["envelope"]["message_id"].endswith("@ticketflow.invalid>")
    assert first["envelope"]["message_id"] == second["envelope"]["message_id"]
    assert first["envelope"]["message_id"] != other["envelope"]["message_id"]
    assert "missing_message_id" in codes(first)


def test_references_keep_root_and_latest_when_cut() -> None:
    ids = [f"<id{number}@example.com>" for number in range(300)]
    event = parse(
        mail("From: a@example.com", "References: " + "\r\n ".join(ids)), max_references=50
    )
    references = event["envelope"]["references"]
    assert len(references) == 50
    assert references[0] == "<id0@example.com>"
    assert references[1:] == ids[-49:]
    assert "references_truncated" in codes(event)


def test_references_deduplicated_in_order() -> None:
    event = parse(mail("From: a@example.com", "References: <a@x> <b@x> <a@x> <c@x>"))
    assert event["envelope"]["references"] == ["<a@x>", "<b@x>", "<c@x>"]


def test_in_reply_to_takes_first_id_without_comments() -> None:
    event = parse(mail("From: a@example.com", 'In-Reply-To: "Bob" (x <no@x>) <p1@x> <p2@x>'))
    assert event["envelope"]["in_reply_to"] == "<p1@x>"
    assert parse(mail("From: a@example.com"))["envelope"]["in_reply_to"] is None


def test_headers_skip_transport_fields_and_keep_first_spelling() -> None:
    event = parse(
        mail(
            "Received: from a by b; Tue, 28 Apr 2026 10:00:05 +0000",
            "DKIM-Signature: v=1; a=rsa-sha256; b=abc",
            "ARC-Seal: i=1; cv=none",
            "X-Google-Smtp-Source: xyz",
            "Return-Path: <bounce@example.com>",
            "X-TENANT-ID: acme",
            "x-tenant-id: other",
            "From: a@example.com",
            "Date: Tue, 28 Apr 2026 10:00:00 +0000",
            "Subject: =?utf-8?B?w6l0w6k=?=",
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b",
            body="--b\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n--b--\r\n",
        )
    )
    headers = event["headers"]
    assert "Received" not in headers
    assert "DKIM-Signature" not in headers
    assert "ARC-Seal" not in headers
    assert "X-Google-Smtp-Source" not in headers
    assert headers["Return-Path"] == "<bounce@example.com>"
    assert headers["X-TENANT-ID"] == "acme"
    assert "x-tenant-id" not in headers
    assert headers["Subject"] == "été"
    assert headers["Date"] == "Tue, 28 Apr 2026 10:00:00 +0000"
    assert "report-type=delivery-status" in headers["Content-Type"]


def test_headers_bounded_in_count_and_length() -> None:
    fields = [f"X-Field-{number}: value" for number in range(250)]
    event = parse(mail("From: a@example.com", "X-Long: " + "x" * 5000, *fields))
    assert len(event["headers"]) == 200
    assert len(event["headers"]["X-Long"]) == 4096
    assert "header_limit" in codes(event)


@pytest.mark.parametrize(
    ("fields", "trusted", "expected"),
    [
        (
            [
                "Authentication-Results: mx.ours.example; spf=pass; dkim=pass; dmarc=pass",
                "Authentication-Results: mx.theirs.example; spf=fail; dkim=fail; dmarc=fail",
            ],
            (),
            {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
        ),
        (
            [
                "Authentication-Results: forged.example; spf=pass; dkim=pass; dmarc=pass",
                "Authentication-Results: mx.ours.example; spf=softfail (x); dkim=fail; dmarc=none",
            ],
            ("mx.ours.example",),
            {"spf": "softfail", "dkim": "fail", "dmarc": "none"},
        ),
        (
            [
                "Authentication-Results: mx.ours.example; dkim=fail header.d=a; dkim=pass",
                "Received-SPF: neutral (mx: no policy) client-ip=192.0.2.1",
            ],
            (),
            {"dkim": "pass", "spf": "neutral"},
        ),
        (
            ["Authentication-Results: mx.ours.example; none"],
            (),
            {},
        ),
    ],
)
def test_authentication_results(
    fields: list[str], trusted: tuple[str, ...], expected: dict
) -> None:
    event = parse(mail(*fields, "From: a@example.com"), authserv_ids=trusted)
    assert event["authentication"] == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            ["X-Spam-Status: Yes, score=7.1 required=5.0 tests=BAYES_99"],
            {"score": 7.1, "is_spam": True},
        ),
        (["X-Spam-Status: No, score=-0.2 required=5.0"], {"score": -0.2, "is_spam": False}),
        (["X-Spam-Score: 12.5", "X-Spam-Flag: YES"], {"score": 12.5, "is_spam": True}),
        (["X-Spam-Level: ******"], {"score": 6.0, "is_spam": False}),
        ([], {"score": None, "is_spam": False}),
    ],
)
def test_spam_verdict(fields: list[str], expected: dict) -> None:
    assert parse(mail(*fields, "From: a@example.com"))["spam"] == expected


def test_text_is_not_derived_from_html() -> None:
    event = parse(
        mail("From: a@example.com", "Content-Type: text/html; charset=utf-8", body="<p>Hi</p>")
    )
    assert event["text"] == ""
    assert event["html"] == "<p>Hi</p>"


def test_mbox_from_line_and_bom_are_skipped() -> None:
    raw = b"From sender@example.com Tue Apr 28 10:00:00 2026\n" + mail(
        "From: a@example.com", "Subject: mbox"
    )
    assert parse(raw)["envelope"]["subject"] == "mbox"
    with_bom = parse(b"\xef\xbb\xbf" + mail("From: a@example.com", "Subject: bom"))
    assert with_bom["envelope"]["subject"] == "bom"
    assert "byte_order_mark" in codes(with_bom)


def test_body_line_in_header_section_is_salvaged() -> None:
    raw = b"From: a@example.com\nSubject: early body\nthis line is body\nmore body\n"
    event = parse(raw)
    assert "this line is body" in event["text"]
    assert "missing_header_separator" in codes(event)
    assert "fast_parser_rejected" in codes(event)


def test_decode_record_parses_raw_mail() -> None:
    raw = mail("From: a@example.com", "Subject: raw")
    assert decode_record(raw, "kafka://t#0@1", INGESTED)["envelope"]["subject"] == "raw"
    typed = decode_record(raw, "kafka://t#0@1", INGESTED, content_type="message/rfc822")
    assert typed["envelope"]["subject"] == "raw"


def json_event(**overrides: object) -> bytes:
    document = {
        "event_id": "evt_upstream",
        "received_at": "2026-04-30T12:01:22+02:00",
        "envelope": {
            "from": "Alice <Alice@Example.com>",
            "to": ["Support@Support.Example.com"],
            "subject": "  API   timeout ",
            "message_id": "CA+12345@mail.example.com",
            "in_reply_to": None,
            "references": ["root@mail.example.com", "<p@mail.example.com>"],
        },
        "text": "body",
        "attachments": [
            {
                "filename": "a.txt",
                "content_type": "TEXT/PLAIN",
                "size": 4,
                "content_id": "<c1@x>",
                "disposition": "attachment",
                "sha256": "a" * 64,
                "download_url": None,
            }
        ],
    }
    document.update(overrides)
    return json.dumps(document).encode()


def test_decode_record_normalizes_json_event() -> None:
    event = decode_record(json_event(), "kafka://t#0@2", INGESTED)
    envelope = event["envelope"]
    assert event["event_id"] == "evt_upstream"
    assert event["source"] == "kafka://t#0@2"
    assert event["received_at"] == "2026-04-30T10:01:22Z"
    assert envelope["from"] == "alice@example.com"
    assert envelope["from_name"] == "Alice"
    assert envelope["to"] == ["support@support.example.com"]
    assert envelope["subject"] == "API timeout"
    assert envelope["message_id"] == "<CA+12345@mail.example.com>"
    assert envelope["references"] == ["<root@mail.example.com>", "<p@mail.example.com>"]
    assert event["attachments"][0]["content_id"] == "c1@x"
    assert event["attachments"][0]["content_type"] == "text/plain"
    assert event["html"] == ""
    assert "message_id_brackets" in codes(event)
    missing = [d["detail"] for d in event["defects"] if d["code"] == "missing_field"]
    assert any(detail.startswith("html ") for detail in missing)
    assert any(detail.startswith("envelope.cc ") for detail in missing)


def test_decode_record_json_without_event_id_derives_one() -> None:
    value = json_event(event_id=None)
    event = decode_record(value, "s", INGESTED, content_type="application/json")
    assert event["event_id"] == "evt_" + hashlib.sha256(value).hexdigest()[:24]
    assert "missing_field" in codes(event)


def test_decode_record_json_without_message_id_synthesizes() -> None:
    value = json.dumps({"envelope": {"from": "a@example.com", "subject": "s"}}).encode()
    event = decode_record(value, "s", INGESTED)
    assert event["envelope"]["message_id"].endswith("@ticketflow.invalid>")
    assert "missing_message_id" in codes(event)


@pytest.mark.parametrize(
    "value",
    [b"{not json", b"[1, 2]", b'{"envelope": "text"}', b'{"subject": "no envelope"}'],
)
def test_decode_record_rejects_unusable_json(value: bytes) -> None:
    with pytest.raises(UnparseableMessage) as raised:
        decode_record(value, "s", INGESTED, content_type="application/json; charset=utf-8")
    assert raised.value.reason == "invalid_event"


def test_decode_record_sniffed_json_without_envelope_is_invalid() -> None:
    with pytest.raises(UnparseableMessage) as raised:
        decode_record(b'{"subject": "no envelope"}', "s", INGESTED)
    assert raised.value.reason == "invalid_event"


def test_decode_record_brace_that_is_no_json_reads_as_mail() -> None:
    event = decode_record(b"{Weird: header\r\nFrom: a@example.com\r\n\r\nbody", "s", INGESTED)
    assert event["envelope"]["from"] == "a@example.com"


def test_header_block_returns_header_text_only() -> None:
    raw = mail("From: a@example.com", "Subject: caf\u00e9", body="x" * 1000)
    block = header_block(raw)
    assert block.startswith("From: a@example.com")
    assert "Subject: café" in block
    assert "xxx" not in block


def test_header_block_cut_at_line_end() -> None:
    raw = mail(*[f"X-Field-{number}: {'v' * 50}" for number in range(100)])
    block = header_block(raw, max_bytes=1000)
    assert len(block.encode()) <= 1000
    assert block.endswith("\r\n")


def test_header_block_of_no_email_is_empty() -> None:
    assert header_block(b"just text") == ""
