"""The fast paths of the MIME walk, the parse step and governance match the code they skip."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticketflow.config import AttachmentSettings
from ticketflow.model import format_timestamp
from ticketflow.operators import attachment_names, mime_params, parse
from ticketflow.operators.attachment_html import link_content_ids, sanitize_html
from ticketflow.operators.attachments import AttachmentGovernor
from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_parts import PartHeaders
from ticketflow.operators.mime_transfer import normalize_transfer_encoding
from ticketflow.operators.parse import UnparseableMessage, parse_message

INGESTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

# Pieces of Content-Type and Content-Disposition values, common and broken.
HEADER_PIECES = [
    "text/plain", "Multipart/Mixed", "attachment", "inline", ";", "; ", ";\t", " ", "\t", "=",
    " = ", '"', "\\", "charset", "Charset", "name", "NAME", "filename", "boundary", "utf-8",
    "----=_Part_1.2", "=?utf-8?Q?caf=C3=A9?=", "*", "*0", "*1*", "utf-8''%C3%A9", "é", "\n",
    ",", "a b", "\x00", "\u00a0", "\u212a",
]  # fmt: skip
PARAMETER_NAMES = ["charset", "Charset", "boundary", "name", "filename", "format", "x-y", "a*"]
PARAMETER_VALUES = [
    '"utf-8"', "us-ascii", '"----=_Part_1.2"', "----=_Part_1.2", '""', "", '"a;b"', '"a b"',
    '"=?utf-8?B?w6k=?="', '"=?utf-8?B?broken?="', '"x\\"y"', '"unclosed', "é", "a b", "flowed",
    "text/html", '"tab\tinside"',
]  # fmt: skip
SPACES = ["", " ", "\t", "  ", "\n"]


@st.composite
def content_headers(draw: st.DrawFn) -> str:
    """Header values of the form `value; name=value ...`, mostly the common one."""
    text = draw(st.sampled_from(["text/plain", "TEXT/HTML", "attachment", " inline ", "a/b c"]))
    for _ in range(draw(st.integers(0, 4))):
        text += ";" + draw(st.sampled_from(SPACES)) + draw(st.sampled_from(PARAMETER_NAMES))
        text += draw(st.sampled_from(SPACES)) + "=" + draw(st.sampled_from(SPACES))
        text += draw(st.sampled_from(PARAMETER_VALUES)) + draw(st.sampled_from(SPACES))
    return text


def content_header_facts(
    parse_header: object, text: str
) -> tuple[str, list[tuple[str, str]], list[object]]:
    defects = DefectLog()
    header = parse_header(text, defects, "part 1")  # type: ignore[operator]
    return header.value, list(header.params.items()), defects.as_list()


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(['"', ";", "\\", "a", " ", "\n", "=", "é"]), max_size=16))
def test_top_level_split_matches_character_scan(characters: list[str]) -> None:
    text = "".join(characters)
    assert mime_params._split_top_level(text) == mime_params._split_top_level_by_character(text)


@settings(max_examples=3000, deadline=None)
@given(content_headers() | st.lists(st.sampled_from(HEADER_PIECES), max_size=20).map("".join))
def test_content_header_matches_pieces(text: str) -> None:
    fast = content_header_facts(mime_params.parse_content_header, text)
    slow = content_header_facts(mime_params._parse_content_header_in_pieces, text)
    assert fast == slow


@pytest.mark.parametrize(
    "text",
    [
        'text/plain; charset="utf-8"',
        'multipart/alternative;\tboundary="----=_Part_1_2.3"',
        'multipart/related; type="multipart/alternative"; boundary="b1"',
        'text/plain; charset=us-ascii; name="api.log"',
        'attachment; filename="report.pdf"',
        "attachment",
    ],
)
def test_common_content_headers_take_fast_path(text: str) -> None:
    assert mime_params._SIMPLE_CONTENT_HEADER.fullmatch(text), "the fast path must be reached"
    fast = content_header_facts(mime_params.parse_content_header, text)
    assert fast == content_header_facts(mime_params._parse_content_header_in_pieces, text)


def content_type_by_pieces(text: str, defects: DefectLog) -> mime_params.ContentHeader:
    """Parse a Content-Type without any fast path, to compare `parse_content_type` with."""
    if not text.strip():
        return mime_params.ContentHeader("text/plain", {})
    header = mime_params._parse_content_header_in_pieces(text, defects, "part 1")
    media_type = re.sub(r"\s+", "", header.value)
    if not mime_params._MEDIA_TYPE.match(media_type):
        defects.add(
            "content_type_invalid", f"part 1: media type {header.value[:60]!r} read as text/plain"
        )
        return mime_params.ContentHeader("text/plain", header.params)
    return mime_params.ContentHeader(media_type, header.params)


@settings(max_examples=2000, deadline=None)
@given(content_headers() | st.lists(st.sampled_from(HEADER_PIECES), max_size=20).map("".join))
def test_content_type_matches_pieces(text: str) -> None:
    fast_log, slow_log = DefectLog(), DefectLog()
    fast = mime_params.parse_content_type(text, fast_log, "part 1")
    slow = content_type_by_pieces(text, slow_log)
    assert (fast.value, fast.params) == (slow.value, slow.params)
    assert fast_log.as_list() == slow_log.as_list()


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.sampled_from(["base64", "7BIT", "Quoted-Printable", " ", "\t", "(", ")", '"', "'",
                         ";", "x", "-", "\u212a", "é", "\n"]),
        max_size=8,
    ).map("".join)
)  # fmt: skip
def test_transfer_encoding_matches_normalization(value: str) -> None:
    headers = PartHeaders(None, None, None, value)
    assert headers.transfer_encoding() == normalize_transfer_encoding(value)


@settings(max_examples=2000, deadline=None)
@given(
    # hypothesis takes naive bounds; a day inside them keeps astimezone from overflowing.
    st.datetimes(
        min_value=datetime(1, 1, 2),  # noqa: DTZ001
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    ),
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23)),
)
def test_timestamp_matches_strftime(moment: datetime, offset: timedelta) -> None:
    aware = moment.replace(tzinfo=timezone(offset))
    expected = aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert format_timestamp(aware) == expected


def test_timestamp_of_early_year_uses_strftime() -> None:
    moment = datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert format_timestamp(moment) == moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 3).map(lambda size: b"x" * (65536 - 2 + size)),
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a: b", b" "]), max_size=6).map(b"".join),
    st.booleans(),
)
def test_bare_cr_check_reads_first_64_kib(padding: bytes, lines: bytes, lines_first: bool) -> None:
    raw = lines + padding if lines_first else padding + lines
    head = raw[:65536]
    expected = not (b"\n" in head or b"\r" not in head)
    defects = DefectLog()
    converted = parse._with_line_feeds(raw, defects)
    assert ("bare_cr_line_endings" in defects.codes()) == expected
    assert converted == (raw.replace(b"\r", b"\r\n") if expected else raw)


@pytest.mark.parametrize("byte", range(256))
def test_empty_message_is_what_strips_to_nothing(byte: int) -> None:
    raw = bytes([byte]) * 3
    with pytest.raises(UnparseableMessage) as raised:
        parse_message(raw, "test", INGESTED)
    assert (raised.value.reason == "empty") == (not raw.strip())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["<p>", "text", "<script>x</script>", '<img src="cid:a@b">', "&", "", " ",
                         '<a href="javascript:x">', "<!-- c -->"]),
        max_size=6,
    ).map("".join)
)  # fmt: skip
def test_governor_without_files_governs_html(html: str) -> None:
    defects = DefectLog()
    governed = AttachmentGovernor(AttachmentSettings()).govern([], html, defects)
    assert governed.attachments == []
    assert governed.html == sanitize_html(link_content_ids(html, {}))
    assert defects.as_list() == []


def test_printable_names_have_nothing_to_drop() -> None:
    # Every code point: a printable one never belongs to a category the filter drops.
    for code_point in range(sys.maxunicode + 1):
        character = chr(code_point)
        if character.isprintable():
            assert attachment_names._without_dropped_characters_one_by_one(character) == character


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=12) | st.sampled_from(["report.pdf", "a\u202efdp.exe", "x\x00y", "é b"]))
def test_safe_filename_filter_matches_one_by_one(name: str) -> None:
    expected = attachment_names._without_dropped_characters_one_by_one(name)
    assert attachment_names._without_dropped_characters(name) == expected
