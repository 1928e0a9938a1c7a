"""The header section of a message, split from raw bytes (RFC 5322 section 2.2).

The split keeps each field's raw bytes, so 8-bit values can be decoded with a
guessed charset, and it is bounded. A section of fields only, shorter than
`MAX_HEADER_LINES` bytes, is split in one regex pass; any other is read line
by line, at most `MAX_HEADER_LINES` lines, and the rest of an oversized header
section is skipped to its end in one search. A line that is neither a field nor
a continuation ends the header section early (the stdlib does the same), with a
"missing_header_separator" defect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_words import decode_unstructured

# Lines read field by field; hostile input with more is cut with a "header_limit" defect.
MAX_HEADER_LINES = 20_000
# Bounds of the `headers` dict of an event.
MAX_HEADERS = 200
MAX_HEADER_CHARS = 4096
# Raw bytes of one value decoded for the dict; enough for MAX_HEADER_CHARS even
# when every character is spelled as an encoded word.
_MAX_DECODED_VALUE_BYTES = 64 * 1024

# field-name = 1*(%d33-57 / %d59-126), optionally followed by obsolete whitespace.
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_UTF8_BOM = b"\xef\xbb\xbf"
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
# One field with its continuation lines (lines starting with a space or tab),
# or else any other non-empty line. A line is whatever lies between two LFs
# ("." matches any byte but LF). The groups are the name, the first line's
# value, the continuation lines with their line breaks, and the other line.
# The name class is `_FIELD_NAME`'s, spelled as a negation, and the
# quantifiers are possessive: both only make the regex engine faster, since
# giving characters back can never lead to another match here.
_FIELD_OR_OTHER_LINE = re.compile(
    rb"([^\x00- :\x7f-\xff]++)[ \t]*+:(.*+)((?:\n[ \t].*+)*+)(?:\n|\Z)|(.++(?:\n|\Z))"
)
# A line that is empty once its trailing CRs are removed: the end of the header section.
_EMPTY_LINE = re.compile(rb"\r*(?:\n|\Z)")
# The line break before the first empty line, and that line.
_BLANK_LINE_AFTER_FIELD = re.compile(rb"\n\r*(?:\n|\Z)")
_LINE_BREAK = re.compile(rb"\r*\n")

# Transport and signature fields left out of an event's `headers`: they are
# bulky and mean nothing to a helpdesk. Authentication-Results and Received-SPF
# stay, and are also read into the event's `authentication`.
_TRANSPORT_FIELDS = frozenset({"received", "x-received", "dkim-signature", "domainkey-signature"})
_TRANSPORT_PREFIXES = ("arc-", "x-google-", "x-ms-exchange-")


class HeaderField(NamedTuple):
    """One header field: its name as spelled and its unfolded raw value."""

    name: str
    raw: bytes


@dataclass
class HeaderSection:
    """The fields of a message in order, and where its body starts."""

    fields: list[HeaderField]
    body_offset: int
    # True when a line that is no header field ended the section instead of an empty line.
    ended_by_body_line: bool = False
    # Raw values by lowercased name, in the order each name first occurs.
    _index: dict[str, list[bytes]] = field(default_factory=dict, repr=False)
    # The spelling of each lowercased name where it first occurs.
    _first_spelling: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        index = self._index
        for name, raw in self.fields:
            lowered = name.lower()
            values = index.get(lowered)
            if values is None:
                index[lowered] = [raw]
                self._first_spelling[lowered] = name
            else:
                values.append(raw)

    def first(self, name: str) -> bytes | None:
        """Return the raw value of the topmost field called `name` (any case)."""
        values = self._index.get(name.lower())
        return values[0] if values else None

    def all(self, name: str) -> list[bytes]:
        """Return the raw values of every field called `name`, topmost first."""
        return self._index.get(name.lower(), [])


def _next_line(raw: bytes, start: int) -> tuple[bytes, int]:
    end = raw.find(b"\n", start)
    if end == -1:
        return raw[start:], len(raw)
    return raw[start:end], end + 1


def header_start(raw: bytes) -> int:
    """Return where the first header line starts: after a UTF-8 BOM and an mbox "From " line."""
    start = len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0
    if raw.startswith(b"From ", start):
        _, start = _next_line(raw, start)
    return start


def _skip_to_blank_line(raw: bytes, position: int) -> int:
    found = _BLANK_LINE.search(raw, position)
    return found.end() if found else len(raw)


def split_header_section(raw: bytes, defects: DefectLog) -> HeaderSection:
    """Split the header section off `raw`; `fields` is empty when the first line is no field."""
    position = header_start(raw)
    if position and raw.startswith(_UTF8_BOM):
        defects.add("byte_order_mark", "message starts with a UTF-8 byte order mark")

    split = _split_by_fields(raw, position)
    if split is None:
        return _split_line_by_line(raw, position, defects)
    return HeaderSection(*split)


def _without_line_breaks(folded: bytes) -> bytes:
    """Remove each LF with the CRs before it: the lines joined, trailing CRs dropped."""
    folded = folded.replace(b"\r\n", b"\n")
    # `find` rather than `in`: on bytes, `in` first tries the operand as an integer.
    if folded.find(b"\r\n") != -1:  # lines ending in several CRs
        folded = _LINE_BREAK.sub(b"\n", folded)
    return folded.replace(b"\n", b"")


def _split_by_fields(raw: bytes, position: int) -> tuple[list[HeaderField], int] | None:
    """Split a header section whose lines are all fields, in one regex pass.

    Returns the fields and the body offset. Returns None when a line that is
    no field comes before the first empty line, and when the section spans
    `MAX_HEADER_LINES` bytes or more, because it might then reach the line
    limit. The line-by-line split handles those, and gives the same result as
    this one for every other input.
    """
    first_line_blank = _EMPTY_LINE.match(raw, position)
    if first_line_blank is not None:
        return [], first_line_blank.end()
    blank = _BLANK_LINE_AFTER_FIELD.search(raw, position)
    fields_end = blank.start() + 1 if blank else len(raw)
    body_offset = blank.end() if blank else len(raw)
    if fields_end - position >= MAX_HEADER_LINES:
        return None

    fields = []
    for name, value, continuation_lines, other_line in _FIELD_OR_OTHER_LINE.findall(
        raw, position, fields_end
    ):
        if other_line:
            return None
        if continuation_lines:
            value = _without_line_breaks(value + continuation_lines)
        fields.append(HeaderField(name.decode("ascii"), value.rstrip(b"\r").strip(b" \t")))
    return fields, body_offset


def _split_line_by_line(raw: bytes, position: int, defects: DefectLog) -> HeaderSection:
    """Split the header section one line at a time, stopping after `MAX_HEADER_LINES` lines."""
    fields: list[HeaderField] = []
    name = ""
    value_parts: list[bytes] = []
    lines_read = 0
    ended_by_body_line = False
    while position < len(raw):
        line, after = _next_line(raw, position)
        line = line.rstrip(b"\r")
        lines_read += 1
        if lines_read > MAX_HEADER_LINES:
            defects.add(
                "header_limit", f"more than {MAX_HEADER_LINES} header lines; the rest skipped"
            )
            position = _skip_to_blank_line(raw, position)
            break
        if not line:
            position = after
            break
        if line[:1] in (b" ", b"\t") and name:
            value_parts.append(line)
            position = after
            continue
        found = _FIELD_NAME.match(line)
        if not found:
            if name:
                defects.add(
                    "missing_header_separator",
                    "a line that is no header field ends the header section",
                )
                ended_by_body_line = True
            break
        if name:
            fields.append(HeaderField(name, b"".join(value_parts).strip(b" \t")))
        name = found.group(1).decode("ascii")
        value_parts = [line[found.end() :]]
        position = after
    if name:
        fields.append(HeaderField(name, b"".join(value_parts).strip(b" \t")))
    return HeaderSection(fields, position, ended_by_body_line)


def is_transport_field(name: str) -> bool:
    """Tell whether a field is transport or signature data kept out of `headers`."""
    lowered = name.lower()
    return lowered in _TRANSPORT_FIELDS or lowered.startswith(_TRANSPORT_PREFIXES)


def clean_text(text: str, defects: DefectLog, where: str) -> str:
    """Remove NUL characters, which JSON carries but databases reject."""
    if "\x00" not in text:
        return text
    defects.add("nul_character", f"{where}: NUL characters removed")
    return text.replace("\x00", "")


def decode_header_value(raw: bytes, defects: DefectLog, where: str) -> str:
    """Decode one field's value for display: encoded words and 8-bit bytes, no NULs."""
    return clean_text(decode_unstructured(raw, defects, where), defects, where)


def headers_for_event(section: HeaderSection, defects: DefectLog) -> dict[str, str]:
    """Build an event's `headers`: the topmost value of each non-transport field, decoded.

    Names keep the spelling of their first occurrence. At most `MAX_HEADERS`
    fields and `MAX_HEADER_CHARS` characters per value are kept, with a
    "header_limit" defect when something is cut.
    """
    headers: dict[str, str] = {}
    # The index contains each name once, in the order of first occurrence.
    for lowered, values in section._index.items():
        # The test of `is_transport_field`, on a name that is lowercase already.
        if lowered in _TRANSPORT_FIELDS or lowered.startswith(_TRANSPORT_PREFIXES):
            continue
        if len(headers) >= MAX_HEADERS:
            defects.add(
                "header_limit", f"more than {MAX_HEADERS} distinct header fields; the rest left out"
            )
            continue
        name = section._first_spelling[lowered]
        raw = values[0][:_MAX_DECODED_VALUE_BYTES]
        # Most values are ASCII without encoded words or NULs, so they are final as read.
        value = raw.decode("ascii") if raw.isascii() else None
        if value is None or "=?" in value or "\x00" in value:
            value = decode_header_value(raw, defects, name)
        if len(value) > MAX_HEADER_CHARS:
            defects.add("header_limit", f"{name}: value cut to {MAX_HEADER_CHARS} characters")
            value = value[:MAX_HEADER_CHARS]
        headers[name] = value
    return headers
