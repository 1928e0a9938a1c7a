"""Every parse fixture through both MIME walks, against hand-written expectations.

`tests/fixtures/mail/parse/expected.json` holds, for each fixture, what a reader
of the message finds in it: subject, sender, Message-ID, a text or html excerpt,
attachment filenames and the defects the damage must produce. The same file
feeds the fidelity score of `benchmarks/parsers.py`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import jsonschema
import pytest

from ticketflow.operators.mime_fast import FastPathRejected
from ticketflow.operators.parse import _parse_message, parse_message

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mail" / "parse"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "ticketflow" / "schemas" / "event.schema.json").read_text()
)
INGESTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _parse(name: str, path: str = "auto") -> dict:
    raw = (FIXTURES / name).read_bytes()
    return _parse_message(raw, name, INGESTED, authserv_ids=(), max_references=200, path=path)


def test_every_fixture_has_expectations() -> None:
    on_disk = {path.name for path in FIXTURES.glob("*.eml")}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_reads_as_expected(name: str) -> None:
    expected = EXPECTED[name]
    event = _parse(name)
    envelope = event["envelope"]

    if expected["subject"] is not None:
        assert envelope["subject"] == expected["subject"]
    assert envelope["from"] == expected["sender"]
    assert envelope["message_id"] == expected["message_id"]
    if "from_name" in expected:
        assert envelope["from_name"] == expected["from_name"]
    if "text" in expected:
        assert _squash(expected["text"]) in _squash(event["text"])
    if "html" in expected:
        assert _squash(expected["html"]) in _squash(event["html"])
    named = [
        attachment["filename"] for attachment in event["attachments"] if attachment["filename"]
    ]
    assert named == expected["attachments"]
    codes = [defect["code"] for defect in event["defects"]]
    for code in expected["defects"]:
        assert code in codes
    for key in ("references", "in_reply_to"):
        if key in expected:
            assert envelope[key] == expected[key]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_event_matches_schema(name: str) -> None:
    jsonschema.validate(_parse(name), SCHEMA)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_same_event_on_tolerant_walk(name: str) -> None:
    event = _parse(name)
    tolerant = _parse(name, path="tolerant")
    event_defects = [d for d in event["defects"] if d["code"] != "fast_parser_rejected"]
    event_defect_codes = sorted({d["code"] for d in event_defects})
    tolerant_codes = sorted({d["code"] for d in tolerant["defects"]})

    assert {**event, "defects": []} == {**tolerant, "defects": []}
    if not any(d["code"] == "fast_parser_rejected" for d in event["defects"]):
        assert event_defect_codes == tolerant_codes


# Fixtures whose damage the fast walk must not be trusted with.
FAST_WALK_REJECTS = {
    "body_base64_with_junk.eml",
    "body_base64_wrong_length.eml",
    "bounce_quoting_multipart_without_boundaries.eml",
    "filename_continuation_encoded_word_apostrophe.eml",
    "truncated_multipart.eml",
}


@pytest.mark.parametrize("name", sorted(FAST_WALK_REJECTS))
def test_fast_walk_rejects_damaged_fixture(name: str) -> None:
    with pytest.raises(FastPathRejected):
        _parse(name, path="fast")

    defects = parse_message((FIXTURES / name).read_bytes(), name, INGESTED)["defects"]
    assert "fast_parser_rejected" in [defect["code"] for defect in defects]


def _clean_messages() -> list[bytes]:
    """Well-formed messages written by the stdlib's own generator, in many shapes."""
    messages = []
    png = bytes.fromhex("89504e470d0a1a0a") + bytes(range(200))
    for number in range(12):
        message = EmailMessage()
        message["From"] = f"Kundin Nummer {number} <Kunde.{number}@Customer.example>"
        message["To"] = "support@support.example.com, Ops <ops@support.example.com>"
        message["Cc"] = "lead@customer.example"
        message["Subject"] = f"Störung Nr. {number}: Zahlung – “dringend”"
        message["Date"] = f"Tue, 28 Apr 2026 10:{number:02d}:00 +0200"
        message["Message-ID"] = f"<clean-{number}@customer.example>"
        message["In-Reply-To"] = f"<clean-{number - 1}@customer.example>"
        message["References"] = " ".join(f"<clean-{k}@customer.example>" for k in range(number))
        message["X-Priority"] = "1"
        message.set_content(f"Hallo,\nder Export schlägt fehl ({number}).\n" * (number + 1))
        if number % 2:
            message.add_alternative(f"<p>Der Export schlägt fehl ({number}).</p>", subtype="html")
        if number % 3 == 0:
            message.add_attachment(
                b"col1,col2\n1,2\n" * number,
                maintype="text",
                subtype="csv",
                filename=f"daten-{number}.csv",
            )
        if number % 4 == 1:
            message.add_attachment(
                png, maintype="image", subtype="png", filename="Bildschirmfoto ä.png"
            )
        if number % 5 == 2:
            forwarded = EmailMessage()
            forwarded["From"] = "other@partner.example"
            forwarded["Subject"] = "Original"
            forwarded.set_content("The original text.\n")
            message.add_attachment(forwarded)
        raw = message.as_bytes(policy=SMTP if number % 2 else message.policy)
        messages.append(raw)
    return messages


@pytest.mark.parametrize("raw", _clean_messages(), ids=lambda raw: raw[-40:].hex()[:8])
def test_clean_message_same_event_on_both_walks(raw: bytes) -> None:
    fast = _parse_message(raw, "clean", INGESTED, authserv_ids=(), max_references=200, path="fast")
    tolerant = _parse_message(
        raw, "clean", INGESTED, authserv_ids=(), max_references=200, path="tolerant"
    )

    assert fast == tolerant
    assert fast["defects"] == []
    assert fast["text"].startswith("Hallo,")


def test_related_images_keep_content_ids_and_inline() -> None:
    attachments = _parse("multipart_related_inline_images.eml")["attachments"]
    assert [a["content_id"] for a in attachments] == [
        "image001.png@01DC1234.ABCD5678",
        "part2.ABC@customer.example",
    ]
    assert [a["disposition"] for a in attachments] == ["inline", "inline"]
    assert [a["content_type"] for a in attachments] == ["image/png", "image/png"]


def test_forwarded_message_is_one_attachment() -> None:
    event = _parse("nested_rfc822_forward.eml")
    (attachment,) = event["attachments"]
    assert attachment["content_type"] == "message/rfc822"
    assert attachment["size"] > 0
    assert "The original report." not in event["text"]


def test_trailing_empty_rfc822_listed_with_size_zero() -> None:
    (attachment,) = _parse("trailing_rfc822_empty_transfer_encoding.eml")["attachments"]
    assert attachment["content_type"] == "message/rfc822"
    assert attachment["size"] == 0


def test_bounce_report_type_visible_in_headers() -> None:
    event = _parse("bounce_quoting_multipart_without_boundaries.eml")
    assert "report-type=delivery-status" in event["headers"]["Content-Type"]
    assert event["headers"]["Auto-Submitted"] == "auto-replied"
    assert [a["content_type"] for a in event["attachments"]] == [
        "message/delivery-status",
        "message/rfc822",
    ]


def test_truncated_attachment_keeps_what_arrived() -> None:
    (attachment,) = _parse("truncated_multipart.eml")["attachments"]
    assert attachment["filename"] == "server.log"
    assert 0 < attachment["size"] < 2048
