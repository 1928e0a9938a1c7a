"""The fast paths of the header code give what the general code they skip gives."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticketflow.operators import mime_address, mime_dates, mime_headers, mime_words
from ticketflow.operators.mime_address import message_ids, strip_comments
from ticketflow.operators.mime_dates import parse_mail_date
from ticketflow.operators.mime_defects import MAX_DEFECTS, DefectLog
from ticketflow.operators.mime_headers import MAX_HEADER_LINES, split_header_section
from ticketflow.operators.mime_words import decode_base64_leniently, decode_encoded_words
from ticketflow.operators.parse import parse_message

INGESTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

HEADER_PIECES = [
    b"From", b"Subject", b"X-A", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"value", b"\xe9",
    b"\x00", b"\n\n", b"\r\r\n", b"a b", b"=?", b"\x7f",
]  # fmt: skip
LINE_STARTS = [b"Subject: ", b"X-A:", b"To :", b" ", b"\t", b"", b"not a field", b"\xe9: "]
LINE_ENDS = [b"\n", b"\r\n", b"\r\r\n", b"\r", b""]


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    """Lines shaped like header fields, continuation lines and the odd body line."""
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        start = draw(st.sampled_from(LINE_STARTS))
        value = draw(st.sampled_from([b"", b"a", b" b ", b"\t", b"x\ry", b"\xe9"]))
        lines.append(start + value + draw(st.sampled_from(LINE_ENDS)))
    return b"".join(lines)


def section_facts(section: mime_headers.HeaderSection, defects: DefectLog) -> tuple:
    fields = [(header.name, header.raw) for header in section.fields]
    return fields, section.body_offset, section.ended_by_body_line, defects.codes()


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(HEADER_PIECES), max_size=40).map(b"".join) | header_lines())
def test_header_split_matches_line_by_line(raw: bytes) -> None:
    fast_log, slow_log = DefectLog(), DefectLog()
    fast = split_header_section(raw, fast_log)
    slow = mime_headers._split_line_by_line(raw, mime_headers.header_start(raw), slow_log)
    assert section_facts(fast, fast_log) == section_facts(slow, slow_log)


@pytest.mark.parametrize(
    ("header", "body", "fields"),
    [
        (b"Subject: a\r\n\r\r\n", b"body", [("Subject", b"a")]),
        (b"Subject: a\r\n  b \r\r\n\tc\r\n\r\n", b"body", [("Subject", b"a  b \tc")]),
        (b"Subject: a", b"", [("Subject", b"a")]),
        (b"Subject: a\n", b"", [("Subject", b"a")]),
        (b"Subject: a\n\r", b"", [("Subject", b"a")]),
        (b"\r\n", b"Subject: a\r\n", []),
        (b"X-Empty:\r\nTo : b\r\n\r\n", b"body", [("X-Empty", b""), ("To", b"b")]),
    ],
)
def test_header_split_fields_and_body_offset(
    header: bytes, body: bytes, fields: list[tuple[str, bytes]]
) -> None:
    section = split_header_section(header + body, DefectLog())
    assert [(field.name, field.raw) for field in section.fields] == fields
    assert section.body_offset == len(header)


def test_header_split_stops_at_body_line() -> None:
    defects = DefectLog()
    section = split_header_section(b"Subject: a\nnot a field\nTo: b\n\nbody", defects)
    assert [header.name for header in section.fields] == ["Subject"]
    assert section.ended_by_body_line
    assert section.body_offset == len(b"Subject: a\n")
    assert defects.codes() == ["missing_header_separator"]


def test_header_split_line_limit_still_applies() -> None:
    defects = DefectLog()
    raw = b"X-A: 1\n" * (MAX_HEADER_LINES + 5) + b"\nbody"
    section = split_header_section(raw, defects)
    assert len(section.fields) == MAX_HEADER_LINES
    assert defects.codes() == ["header_limit"]
    assert raw[section.body_offset :] == b"body"


def test_headers_keep_first_spelling_and_order() -> None:
    raw = b"subject: one\r\nX-B: =?utf-8?Q?caf=C3=A9?=\r\nSUBJECT: two\r\nReceived: x\r\n\r\n"
    headers = mime_headers.headers_for_event(split_header_section(raw, DefectLog()), DefectLog())
    assert list(headers) == ["subject", "X-B"]
    assert headers["subject"] == "one"
    assert headers["X-B"] == "café"


@pytest.mark.parametrize(
    ("text", "without_comments"),
    [
        ("a (b (c) d) e", "a  e"),
        ("a (b \\) c) d", "a  d"),
        ('a "q \\" (x)" b', "a  b"),
        ("a (unclosed", "a "),
        ('a "unclosed', "a "),
        ("a ) b", "a ) b"),
        ("a \\(b) c", "a \\ c"),
        ("x (y\\", "x "),
        ('"\\', ""),
        ("no specials", "no specials"),
    ],
)
def test_strip_comments(text: str, without_comments: str) -> None:
    assert strip_comments(text) == without_comments


def comments_removed_one_character_at_a_time(text: str) -> str:
    """Remove comments and quoted strings the way RFC 5322 reads them, as a test oracle."""
    remaining = []
    depth = 0
    quoted = False
    characters = iter(text)
    for character in characters:
        inside = quoted or depth > 0
        if inside and character == "\\":
            next(characters, None)
        elif quoted:
            quoted = character != '"'
        elif depth:
            if character == "(":
                depth += 1
            elif character == ")":
                depth -= 1
        elif character == "(":
            depth = 1
        elif character == '"':
            quoted = True
        else:
            remaining.append(character)
    return "".join(remaining)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["a", " ", "(", ")", '"', "\\", "<x@y>", ";"]), max_size=30))
def test_strip_comments_matches_oracle(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert strip_comments(text) == comments_removed_one_character_at_a_time(text)


SIMPLE_ADDRESS_PIECES = ["a", "b@c.example", "<", ">", ",", " ", "\t", "Name ", "<x@y.example>"]
SIMPLE_ADDRESS_PIECES += ["=?utf-8?B?w4Q=?=", "\u3000", "\x85", "é", "@", "."]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(SIMPLE_ADDRESS_PIECES), max_size=12))
def test_simple_address_list_matches_full_scan(pieces: list[str]) -> None:
    text = "".join(pieces)
    simple_log, scan_log = DefectLog(), DefectLog()
    simple = mime_address._parse_simple_address_list(text, simple_log, "To")
    if simple is None:
        return  # the full scan reads this one anyway
    assert simple == mime_address._scan_address_list(text, scan_log, "To")
    assert simple_log.as_list() == scan_log.as_list()


@pytest.mark.parametrize(
    ("text", "ids", "defect_codes"),
    [
        ("<ab@x.example>", ["<ab@x.example>"], []),
        ("<a\u00a0b@x.example>", ["<ab@x.example>"], ["message_id_whitespace"]),
        ("<a b@x.example>", ["<ab@x.example>"], ["message_id_whitespace"]),
        ("<a\x7fb@x.example>", ["<ab@x.example>"], ["message_id_whitespace"]),
        ("<\u2028>", [], []),
    ],
)
def test_message_id_noise_removed(text: str, ids: list[str], defect_codes: list[str]) -> None:
    defects = DefectLog()
    assert message_ids(text, defects, "References") == ids
    assert defects.codes() == defect_codes


@pytest.mark.parametrize(
    ("payload", "data"),
    [
        ("caf=C3=A9", b"caf\xc3\xa9"),
        ("a_b", b"a b"),
        ("=4a=4A", b"JJ"),
        ("=ZZ=4", b"=ZZ=4"),
        ("==41", b"=A"),
        ("=", b"="),
        ("x=", b"x="),
        ("plain", b"plain"),
    ],
)
def test_q_encoding_decoded(payload: str, data: bytes) -> None:
    assert mime_words._decode_q(payload) == data


def test_encoded_word_defects_recorded_on_every_decode() -> None:
    text = "=?x-no-such-charset?Q?caf=E9?= =?utf-8?B?aGk?="
    mime_words._DECODED_WORDS.clear()
    first, second = DefectLog(), DefectLog()
    assert decode_encoded_words(text, first, "Subject") == "caféhi"
    assert decode_encoded_words(text, second, "Subject") == "caféhi"
    assert first.codes() == ["base64_padding", "charset_guessed"]
    assert second.as_list() == first.as_list()


def test_encoded_word_replay_counts_dropped_defects() -> None:
    # Two words in different charsets, each missing its padding: the same defect twice.
    text = "=?utf-8?B?aGk?= =?iso-8859-1?B?aGk?="
    full_logs = [DefectLog(), DefectLog()]
    for log in full_logs:
        for number in range(MAX_DEFECTS):
            log.add("filler", str(number))
        decode_encoded_words(text, log, "Subject")
    assert full_logs[0].as_list()[-1]["detail"] == "2 further defects not listed"
    assert full_logs[1].as_list() == full_logs[0].as_list()


def test_encoded_word_cache_is_bounded() -> None:
    for number in range(mime_words._MAX_DECODED_WORDS + 10):
        decode_encoded_words(f"=?utf-8?Q?{number}?=", DefectLog(), "Subject")
    assert len(mime_words._DECODED_WORDS) <= mime_words._MAX_DECODED_WORDS

    long_text = "=?utf-8?Q?a?=" + "b" * mime_words._MAX_CACHED_TEXT
    assert decode_encoded_words(long_text, DefectLog(), "Subject") == "a" + "b" * (
        mime_words._MAX_CACHED_TEXT
    )
    assert (long_text, "Subject") not in mime_words._DECODED_WORDS


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_well_formed_base64_decoded_without_defects(data: bytes) -> None:
    encoded = base64.encodebytes(data)  # lines of 76 characters
    defects = DefectLog()
    assert decode_base64_leniently(encoded, defects, "part") == data
    assert defects.codes() == []
    assert mime_words._decode_base64_chunks(base64.b64encode(data), DefectLog(), "part") == data


MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@st.composite
def common_dates(draw: st.DrawFn) -> str:
    weekday = draw(st.sampled_from(["", "Mon, ", "Sun, "]))
    day = draw(st.integers(0, 39))
    day_text = f"{day:02d}" if draw(st.booleans()) else str(day)
    month = draw(st.sampled_from(MONTH_NAMES))
    year = draw(st.integers(1000, 9999))
    hour, minute, second = (draw(st.integers(0, 69)) for _ in range(3))
    zone = f"{draw(st.sampled_from('+-'))}{draw(st.integers(0, 9999)):04d}"
    tail = draw(st.sampled_from(["", " (UTC)", "\t(PDT)", " x y"]))
    return f"{weekday}{day_text} {month} {year} {hour:02d}:{minute:02d}:{second:02d} {zone}{tail}"


@settings(max_examples=2000, deadline=None)
@given(common_dates())
def test_common_date_matches_parsedate_tz(text: str) -> None:
    assert mime_dates._COMMON_DATE.fullmatch(text), "the strategy must reach the fast path"
    assert mime_dates._parse_rfc5322(text) == mime_dates._parse_with_parsedate_tz(text)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("Tue, 28 Apr 2026 10:00:00 +0200", datetime(2026, 4, 28, 8, 0, tzinfo=UTC)),
        ("28 Apr 2026 10:00:00 -0530 (IST)", datetime(2026, 4, 28, 15, 30, tzinfo=UTC)),
        ("Tue, 28 Apr 2026 10:00:00 -0000", datetime(2026, 4, 28, 10, 0, tzinfo=UTC)),
        ("Tue, 31 Feb 2026 10:00:00 +0000", None),
        # parsedate_tz reads a year below 100 as two digits; the fast path leaves it alone.
        ("Tue, 28 Apr 0099 10:00:00 +0000", datetime(1999, 4, 28, 10, 0, tzinfo=UTC)),
    ],
)
def test_parse_mail_date(text: str, moment: datetime | None) -> None:
    assert parse_mail_date(text) == moment


def message_with_body(body: str, *, transfer_encoding: str = "7bit") -> bytes:
    return (
        "From: a@example.com\r\nSubject: s\r\nMessage-ID: <m@example.com>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: {transfer_encoding}\r\n\r\n{body}"
    ).encode()


def test_question_marks_alone_keep_fast_walk() -> None:
    event = parse_message(message_with_body("why? " * 3000), "test", INGESTED)
    assert "fast_parser_rejected" not in [defect["code"] for defect in event["defects"]]


def test_many_encoded_words_take_tolerant_walk() -> None:
    event = parse_message(message_with_body("=?x?Q?y?= " * 2001), "test", INGESTED)
    assert {"code": "fast_parser_rejected", "detail": "more than 2000 encoded words"} in event[
        "defects"
    ]


def test_lower_case_qp_escape_is_no_junk() -> None:
    body = "a=3db and c=3Dd\r\n"
    event = parse_message(
        message_with_body(body, transfer_encoding="quoted-printable"), "t", INGESTED
    )
    assert event["text"].startswith("a=b and c=d")
    assert "qp_junk" not in [defect["code"] for defect in event["defects"]]
