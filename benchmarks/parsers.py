"""Compare mail parsers on speed and fidelity, in one run, against the stdlib baseline.

Usage: python benchmarks/parsers.py [--count N] [--seed S]

Speed: N generated multipart messages of about 10 KB (text and HTML
alternatives, about one in five with a 20 KB PDF attachment) are parsed by each
candidate, bodies and attachments extracted, and messages per second reported
with the ratio to the stdlib's `email` with `policy.default` measured in the
same run on the same messages.

Fidelity: the share of the parse fixtures (tests/fixtures/mail/parse, with
the expectations in expected.json) where a candidate gets the subject, the
sender, the Message-ID (brackets and whitespace ignored), the text (the
expected excerpt appears in it) and the attachment filenames all right.

Candidates: ticketflow's parse_message; the stdlib with policy.default and
with compat32 (as a typical caller uses each); mail-parser; eml-parser; and
fast-mail-parser's parse_email alone, without ticketflow's checks.
"""

from __future__ import annotations

import argparse
import email
import json
import logging
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mail" / "parse"
INGESTED = datetime(2026, 5, 1, tzinfo=UTC)

WORDS = (
    "export invoice payment timeout gateway customer account error retry server "
    "database report dashboard login password webhook request response latency "
    "Zahlung Rechnung große Störung café résumé naïve Ärger Überweisung"
).split()


@dataclass(frozen=True)
class Reading:
    """The fields a candidate read from one message, compared for fidelity."""

    subject: str
    sender: str
    message_id: str
    text: str
    filenames: list[str]


def generate_messages(count: int, seed: int) -> list[bytes]:
    """Return `count` well-formed multipart messages of about 10 KB; every fifth has a 20 KB PDF."""
    rng = random.Random(seed)
    messages = []
    for number in range(count):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(8)]
        message = EmailMessage()
        message["From"] = f"Kundin {number} <customer{number}@customer.example>"
        message["To"] = "support@support.example.com"
        message["Subject"] = f"[P{number % 5}] {' '.join(rng.choice(WORDS) for _ in range(6))}"
        message["Date"] = "Tue, 28 Apr 2026 10:00:00 +0000"
        message["Message-ID"] = f"<bench-{number}@customer.example>"
        message.set_content("\n\n".join(paragraphs))
        message.add_alternative(
            "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs), subtype="html"
        )
        if number % 5 == 0:
            pdf = b"%PDF-1.4\n" + rng.randbytes(20 * 1024)
            message.add_attachment(
                pdf, maintype="application", subtype="pdf", filename=f"report-{number}.pdf"
            )
        messages.append(message.as_bytes(policy=policy.SMTP))
    return messages


def read_ticketflow(raw: bytes) -> Reading:
    from ticketflow.operators.parse import parse_message

    event = parse_message(raw, "bench", INGESTED)
    envelope = event["envelope"]
    return Reading(
        envelope["subject"],
        envelope["from"],
        envelope["message_id"],
        event["text"],
        [attachment["filename"] for attachment in event["attachments"] if attachment["filename"]],
    )


def read_policy_default(raw: bytes) -> Reading:
    message = email.message_from_bytes(raw, policy=policy.default)
    body = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    if html is not None:
        html.get_content()
    filenames = []
    for attachment in message.iter_attachments():
        attachment.get_content()
        if attachment.get_filename():
            filenames.append(attachment.get_filename())
    sender = message["From"].addresses[0].addr_spec if message["From"] else ""
    return Reading(
        str(message["Subject"] or ""),
        sender,
        str(message["Message-ID"] or ""),
        body.get_content() if body is not None else "",
        filenames,
    )


def _decoded_header(value: Any) -> str:
    return str(make_header(decode_header(value))) if value is not None else ""


def read_compat32(raw: bytes) -> Reading:
    message = email.message_from_bytes(raw, policy=policy.compat32)
    text = ""
    filenames = []
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename:
            filenames.append(_decoded_header(filename))
        elif part.get_content_type() == "text/plain" and not text:
            text = payload.decode(part.get_content_charset() or "ascii", errors="replace")
    return Reading(
        _decoded_header(message["Subject"]),
        parseaddr(message["From"] or "")[1],
        str(message["Message-ID"] or ""),
        text,
        filenames,
    )


def read_mail_parser(raw: bytes) -> Reading:
    import mailparser

    message = mailparser.parse_from_bytes(raw)
    sender = message.from_[0][1] if message.from_ else ""
    return Reading(
        message.subject or "",
        sender,
        message.message_id or "",
        message.text_plain[0] if message.text_plain else "",
        [
            attachment["filename"]
            for attachment in message.attachments
            if attachment.get("filename")
        ],
    )


def read_eml_parser(raw: bytes) -> Reading:
    import eml_parser

    parser = eml_parser.EmlParser(include_raw_body=True, include_attachment_data=True)
    parsed = parser.decode_email_bytes(raw)
    header = parsed["header"]
    bodies = [
        body
        for body in parsed.get("body", [])
        if body.get("content_type", "").startswith("text/plain")
    ]
    message_ids = header.get("header", {}).get("message-id", [""])
    return Reading(
        header.get("subject", ""),
        header.get("from", ""),
        message_ids[0],
        bodies[0].get("content", "") if bodies else "",
        [
            attachment.get("filename", "")
            for attachment in parsed.get("attachment", [])
            if attachment.get("filename")
        ],
    )


def read_fast_mail_parser(raw: bytes) -> Reading:
    import fast_mail_parser

    message = fast_mail_parser.parse_email(raw)
    message_ids = message.headers.get("Message-ID") or message.headers.get("Message-Id") or [""]
    return Reading(
        message.subject,
        message.from_.address if message.from_ else "",
        message_ids[0],
        message.text_plain[0] if message.text_plain else "",
        [attachment.filename for attachment in message.attachments if attachment.filename],
    )


CANDIDATES: dict[str, Callable[[bytes], Reading]] = {
    "stdlib policy.default": read_policy_default,
    "ticketflow parse_message": read_ticketflow,
    "stdlib compat32": read_compat32,
    "mail-parser": read_mail_parser,
    "eml-parser": read_eml_parser,
    "fast-mail-parser (raw)": read_fast_mail_parser,
}
BASELINE = "stdlib policy.default"


def _squash(text: str) -> str:
    return " ".join(str(text).split())


def _bare_id(message_id: str) -> str:
    return "".join(message_id.split()).strip("<>")


def reads_fixture_right(reading: Reading, expected: dict[str, Any]) -> bool:
    """Tell whether a candidate got subject, sender, id, text and filenames of one fixture right."""
    if expected["subject"] is not None and _squash(reading.subject) != expected["subject"]:
        return False
    if reading.sender.strip().lower() != expected["sender"]:
        return False
    if _bare_id(reading.message_id) != _bare_id(expected["message_id"]):
        return False
    if _squash(expected.get("text", "")) not in _squash(reading.text):
        return False
    return reading.filenames == expected["attachments"]


def fidelity(read: Callable[[bytes], Reading], expectations: dict[str, Any]) -> float:
    """Return the share of fixtures the candidate reads right; an exception counts as wrong."""
    right = 0
    for name, expected in expectations.items():
        try:
            reading = read((FIXTURES / name).read_bytes())
        except Exception:  # noqa: BLE001 - a crash is a wrong reading, whatever its kind
            continue
        right += reads_fixture_right(reading, expected)
    return right / len(expectations)


def throughput(read: Callable[[bytes], Reading], messages: list[bytes]) -> float:
    """Return messages per second over `messages`, after a short warm-up."""
    for raw in messages[:20]:
        read(raw)
    start = time.perf_counter()
    for raw in messages:
        read(raw)
    return len(messages) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Run every candidate and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="generated messages per candidate")
    parser.add_argument("--seed", type=int, default=7, help="seed of the message generator")
    arguments = parser.parse_args(argv)
    # mail-parser and eml-parser log a warning for every part type they skip.
    logging.disable(logging.WARNING)

    messages = generate_messages(arguments.count, arguments.seed)
    expectations = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
    average_kb = sum(map(len, messages)) / len(messages) / 1024
    results = {
        name: (throughput(read, messages), fidelity(read, expectations))
        for name, read in CANDIDATES.items()
    }

    baseline = results[BASELINE][0]
    print(f"{len(messages)} messages, {average_kb:.1f} KB on average;", end=" ")
    print(f"{len(expectations)} fidelity fixtures")
    print(f"Python {platform.python_version()} on {platform.machine()}, one process\n")
    print("| parser | messages/s | vs policy.default | fidelity |")
    print("| --- | ---: | ---: | ---: |")
    for name, (rate, share) in results.items():
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.1f}x | {share:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
