"""The header section of a message, split from raw bytes (RFC 5322 section 2.2).

The split keeps each field's raw bytes, so 8-bit values can be decoded with a
guessed charset, and it is bounded: `MAX_HEADER_LINES` lines are read one by
one, and the rest of an oversized header section is skipped to its end in one
search. A line that is neither a field nor a continuation ends the header
section early (the stdlib does the same), with a "missing_header_separator"
defect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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

# Transport and signature fields left out of an event's `headers`: they are
# bulky and mean nothing to a helpdesk. Authentication-Results and Received-SPF
# stay, and are also read into the event's `authentication`.
_TRANSPORT_FIELDS = frozenset({"received", "x-received", "dkim-signature", "domainkey-signature"})
_TRANSPORT_PREFIXES = ("arc-", "x-google-", "x-ms-exchange-")


@dataclass(frozen=True)
class HeaderField:
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
    _index: dict[str, list[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for header in self.fields:
            self._index.setdefault(header.name.lower(), []).append(header.raw)

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
    seen: set[str] = set()
    for header in section.fields:
        lowered = header.name.lower()
        if lowered in seen or is_transport_field(header.name):
            continue
        seen.add(lowered)
        if len(headers) >= MAX_HEADERS:
            defects.add(
                "header_limit", f"more than {MAX_HEADERS} distinct header fields; the rest left out"
            )
            continue
        value = decode_header_value(header.raw[:_MAX_DECODED_VALUE_BYTES], defects, header.name)
        if len(value) > MAX_HEADER_CHARS:
            defects.add(
                "header_limit", f"{header.name}: value cut to {MAX_HEADER_CHARS} characters"
            )
            value = value[:MAX_HEADER_CHARS]
        headers[header.name] = value
    return headers
