"""Hostile and random input: bounded time, and nothing escapes but UnparseableMessage."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ticketflow.operators.parse import UnparseableMessage, parse_message

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mail" / "parse"
FIXTURE_BYTES = [path.read_bytes() for path in sorted(FIXTURES.glob("*.eml"))]
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "ticketflow" / "schemas" / "event.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
INGESTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def parse(raw: bytes) -> dict:
    return parse_message(raw, "hostile", INGESTED)


def seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def codes(event: dict) -> list[str]:
    return [defect["code"] for defect in event["defects"]]


def many_header_lines(count: int) -> bytes:
    lines = b"".join(b"X-Filler-%d: value %d\r\n" % (number, number) for number in range(count))
    return b"From: a@example.com\r\n" + lines + b"\r\nbody\r\n"


def test_ten_thousand_header_lines_are_bounded() -> None:
    event = parse(many_header_lines(10_000))
    assert len(event["headers"]) == 200
    assert "header_limit" in codes(event)
    assert event["text"] == "body\n"


def test_header_time_grows_linearly() -> None:
    small = seconds(lambda: parse(many_header_lines(5_000)))
    large = seconds(lambda: parse(many_header_lines(40_000)))
    assert large < small * 8 * 3  # eight times the input, with room for noise


def nested_multipart(depth: int) -> bytes:
    opening = [b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"]
    for level in range(1, depth):
        opening.append(
            b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (level - 1, level)
        )
    opening.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % (depth - 1))
    closing = [b"--b%d--\r\n" % level for level in range(depth - 1, -1, -1)]
    return b"".join(opening + closing)


def test_nesting_two_hundred_deep_is_capped() -> None:
    event = parse(nested_multipart(200))
    assert "nesting_limit" in codes(event)
    assert event["text"] == ""


def test_nesting_beyond_every_parser_still_gives_event() -> None:
    event = parse(nested_multipart(3000))
    assert "nesting_limit" in codes(event)
    assert event["envelope"]["from"] == "a@example.com"


def test_thousands_of_references_are_cut() -> None:
    ids = b"\r\n ".join(b"<ref-%d@example.com>" % number for number in range(5_000))
    event = parse(b"From: a@example.com\r\nReferences: " + ids + b"\r\n\r\nbody")
    references = event["envelope"]["references"]
    assert len(references) == 200
    assert references[0] == "<ref-0@example.com>"
    assert references[-1] == "<ref-4999@example.com>"


def large_message(megabytes: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    body = line * (megabytes * 1024 * 1024 // len(line))
    return b"From: a@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body


def test_twenty_five_megabyte_body_in_linear_time() -> None:
    small = seconds(lambda: parse(large_message(5)))
    large = seconds(lambda: parse(large_message(25)))
    assert large < small * 5 * 3
    assert large < 20


def test_many_parts_are_capped() -> None:
    parts = b"".join(
        b"--p\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n" for _ in range(3000)
    )
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n"
        + parts
        + b"--p--\r\n"
    )
    event = parse(raw)
    assert len(event["attachments"]) <= 1000
    assert "part_limit" in codes(event)


def check_outcome(raw: bytes) -> None:
    try:
        event = parse(raw)
    except UnparseableMessage as error:
        assert error.reason in {"empty", "not_email"}
        return
    errors = sorted(VALIDATOR.iter_errors(event), key=str)
    assert not errors, errors[0].message
    json.dumps(event)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_parse_or_raise_unparseable(raw: bytes) -> None:
    check_outcome(raw)


@st.composite
def mutated_fixture(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(FIXTURE_BYTES)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "duplicate_line", "delete"]))
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[position:]
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 40))]
        else:
            start = data.rfind(b"\n", 0, position) + 1
            end = data.find(b"\n", position)
            end = len(data) if end == -1 else end + 1
            data[start:start] = data[start:end] * draw(st.integers(1, 50))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_fixture())
def test_mutated_fixtures_parse_or_raise_unparseable(raw: bytes) -> None:
    check_outcome(raw)


def test_five_megabyte_header_lines_are_bounded() -> None:
    words = b" =?utf-8?Q?caf=C3=A9?=" * 250_000
    ids = b" <a@example.com>" * 300_000
    raw = b"From: a@example.com\r\nSubject:" + words + b"\r\nReferences:" + ids + b"\r\n\r\nbody"
    assert len(raw) > 5_000_000
    elapsed = seconds(lambda: parse(raw))
    event = parse(raw)
    assert elapsed < 60  # a quadratic path took 176 s here; linear takes about 1 s
    assert event["envelope"]["references"] == ["<a@example.com>"]
    assert event["envelope"]["subject"].startswith("cafécafé")
    assert len(event["headers"]["Subject"]) == 4096
