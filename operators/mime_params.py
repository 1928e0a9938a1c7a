"""Content-Type and Content-Disposition values with their parameters.

Parameters follow RFC 2045 section 5.1 (`; name=value`, values as tokens or
quoted strings) with the RFC 2231 extensions: `name*=charset'language'%XX`
values, `name*0=`, `name*1=` continuations, and `name*0*=` extended segments
whose bytes are joined before the charset decodes them. What mail clients send
beyond the standard is read too: encoded words inside a quoted value
(`name="=?utf-8?B?...?="`), also when a continuation splits them, and
apostrophes inside plain segments, which carry no charset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ticketflow.operators.mime_charset import decode_text
from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_words import decode_encoded_words

# Header values longer than this are cut before parsing; no real parameter list comes close.
MAX_PARAMETER_TEXT = 64 * 1024

_PERCENT_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_QUOTED_PAIR = re.compile(r"\\(.)")
_WHITESPACE = re.compile(r"\s+")
_ANGLE_BRACKETED = re.compile(r"<([^<>]+)>")
_BRACKETS_AND_SPACES = re.compile(r"[<>\s]+")
_SECTION_NAME = re.compile(r"^([^*]+)\*(\d+)(\*?)$")
# Parameters that carry display text, where mail clients put encoded words.
_TEXT_PARAMETERS = frozenset({"name", "filename"})
_MEDIA_TYPE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+$")
# One piece of a parameter list: characters other than quotes and semicolons, and
# quoted strings with backslash escapes. A quoted string left open runs to the end
# of the text, semicolons included. The alternatives start with different
# characters, so a match does not backtrack, and it always succeeds (maybe empty).
_TOP_LEVEL_PIECE = re.compile(r'(?:[^";]+|"(?:[^"\\]+|\\.)*(?:"|\\?\Z))*', re.DOTALL)
# A parameter of the common form: `; name=token` or `; name="text"`, with spaces
# or tabs around the parts. Names have no "*" (no RFC 2231 sections), quoted text
# has no backslash or quote, and a token is printable ASCII other than a quote,
# semicolon or backslash. Each part can match in one way only, so a failed match
# ends without backtracking.
_SIMPLE_PARAMETER = (
    r";[ \t]*([!#$%&'+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*"
    r'(?:"([^"\\]*)"|([!#-:<-\[\]-~]*))[ \t]*'
)
_SIMPLE_PARAMETERS = re.compile(_SIMPLE_PARAMETER)
# A whole header value of the common form: a main value with no quote,
# semicolon or backslash, then only simple parameters.
_SIMPLE_CONTENT_HEADER = re.compile(r'([^;"\\]*)((?:' + _SIMPLE_PARAMETER + r")*)")


@dataclass(frozen=True)
class ContentHeader:
    """A header's main value, lowercased, and its decoded parameters by lowercase name."""

    value: str
    params: dict[str, str]


def _split_top_level(text: str) -> list[str]:
    """Split on semicolons outside quoted strings; backslash escapes inside quotes.

    Returns what `_split_top_level_by_character` returns, with one regex match per piece.
    """
    if '"' not in text:
        return text.split(";")
    pieces: list[str] = []
    end = len(text)
    position = 0
    while True:
        piece_end = _TOP_LEVEL_PIECE.match(text, position).end()  # type: ignore[union-attr]
        pieces.append(text[position:piece_end])
        if piece_end == end:
            return pieces
        position = piece_end + 1  # the piece stopped at a semicolon outside quotes


def _split_top_level_by_character(text: str) -> list[str]:
    """Split like `_split_top_level`, one character at a time; the reference for its tests."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif quoted and char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == ";" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"':
        inner = value[1:-1] if value.endswith('"') else value[1:]
        return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner
    return value


def _percent_decode(text: str) -> bytes:
    return _PERCENT_ESCAPE.sub(
        lambda escape: bytes([int(escape.group(1), 16)]), text.encode("utf-8")
    )


def _split_extended(value: str, defects: DefectLog, where: str) -> tuple[str | None, str]:
    """Split `charset'language'text`; a value without both apostrophes has no charset."""
    parts = value.split("'", 2)
    if len(parts) == 3:
        return parts[0] or None, parts[2]
    defects.add("rfc2231_malformed", f"{where}: extended value without charset'language' prefix")
    return None, value


def _assemble(
    name: str, sections: dict[int, tuple[str, bool]], defects: DefectLog, where: str
) -> str:
    """Join RFC 2231 sections in order and decode them with the first section's charset."""
    charset: str | None = None
    data = bytearray()
    expected = 0
    for number in sorted(sections):
        if number != expected:
            defects.add("rfc2231_gap", f"{where}: parameter {name} section {expected} missing")
        expected = number + 1
        text, extended = sections[number]
        if extended:
            if number == 0:
                charset, text = _split_extended(text, defects, where)
            data += _percent_decode(text)
        else:
            data += text.encode("utf-8")
    decoded = decode_text(bytes(data), charset or "utf-8", defects, f"{where} parameter {name}")
    if name in _TEXT_PARAMETERS:
        return decode_encoded_words(decoded, defects, where)
    return decoded


def parse_params(pieces: list[str], defects: DefectLog, where: str) -> dict[str, str]:
    """Decode `name=value` pieces into a dict, joining RFC 2231 sections."""
    plain: dict[str, str] = {}
    sectioned: dict[str, dict[int, tuple[str, bool]]] = {}
    for piece in pieces:
        name, equals, raw_value = piece.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            if piece.strip():
                defects.add("parameter_invalid", f"{where}: parameter without a value ignored")
            continue
        value = _unquote(raw_value)
        # Section names contain "*", so most names skip the regex.
        section = _SECTION_NAME.match(name) if "*" in name else None
        if section:
            base, number, star = section.group(1), int(section.group(2)), section.group(3)
            sectioned.setdefault(base, {})[number] = (value, bool(star))
        elif name.endswith("*"):
            sectioned.setdefault(name[:-1], {})[0] = (value, True)
        elif name not in plain:
            text_value = name in _TEXT_PARAMETERS
            plain[name] = decode_encoded_words(value, defects, where) if text_value else value

    params = dict(plain)
    for base, sections in sectioned.items():
        params[base] = _assemble(base, sections, defects, where)
    return params


def parse_content_header(text: str, defects: DefectLog, where: str) -> ContentHeader:
    """Parse `value; name=value; ...` (Content-Type, Content-Disposition); never raises."""
    text = text[:MAX_PARAMETER_TEXT]
    simple = _SIMPLE_CONTENT_HEADER.fullmatch(text)
    if simple is not None:
        value, parameters = simple.group(1, 2)
        return ContentHeader(value.strip().lower(), _simple_params(parameters, defects, where))
    return _parse_content_header_in_pieces(text, defects, where)


def _parse_content_header_in_pieces(text: str, defects: DefectLog, where: str) -> ContentHeader:
    """Parse any header value by splitting it into pieces (used for values of uncommon form)."""
    pieces = _split_top_level(text)
    value = pieces[0].strip().lower()
    return ContentHeader(value, parse_params(pieces[1:], defects, where))


def _simple_params(text: str, defects: DefectLog, where: str) -> dict[str, str]:
    """Decode parameters of the common form (`_SIMPLE_PARAMETER`) as `parse_params` does.

    The first of several parameters with one name counts, and only the text
    parameters (name, filename) are searched for encoded words.
    """
    params: dict[str, str] = {}
    for found in _SIMPLE_PARAMETERS.finditer(text):
        name, quoted, token = found.groups()
        name = name.lower()
        if name in params:
            continue
        value = token if quoted is None else quoted
        params[name] = (
            decode_encoded_words(value, defects, where) if name in _TEXT_PARAMETERS else value
        )
    return params


def parse_content_type(text: str | None, defects: DefectLog, where: str) -> ContentHeader:
    """Parse a Content-Type; a missing or invalid media type reads as text/plain."""
    if text is None or not text.strip():
        return ContentHeader("text/plain", {})
    header = parse_content_header(text, defects, where)
    if _MEDIA_TYPE.match(header.value):
        return header  # a valid media type has no whitespace to remove
    media_type = _WHITESPACE.sub("", header.value)
    if not _MEDIA_TYPE.match(media_type):
        defects.add(
            "content_type_invalid", f"{where}: media type {header.value[:60]!r} read as text/plain"
        )
        return ContentHeader("text/plain", header.params)
    return ContentHeader(media_type, header.params)


def normalize_content_id(text: str | None) -> str | None:
    """Return a Content-ID without angle brackets or whitespace (RFC 2392 `cid:` form), or None."""
    if text is None:
        return None
    found = _ANGLE_BRACKETED.search(text)
    inner = found.group(1) if found else text
    inner = _BRACKETS_AND_SPACES.sub("", inner)
    return inner or None
