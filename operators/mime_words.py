"""Header text: raw 8-bit bytes and RFC 2047 encoded words, decoded leniently.

RFC 2047 encoded words (`=?charset?B|Q?text?=`) are decoded wherever they
appear, as mail clients do, even glued to other text (`[EXT]=?utf-8?B?...?=`)
or inside a quoted string. Whitespace between two adjacent encoded words is
dropped, and the bytes of adjacent words in the same charset are joined before
decoding, so a multi-byte character or a Message-ID split across two words
comes out whole.

Raw 8-bit bytes in a header are read as UTF-8 (RFC 6532 allows it); bytes that
are not UTF-8 are decoded with a guessed charset and a "raw_8bit_header" defect.
"""

from __future__ import annotations

import binascii
import re

from ticketflow.operators.mime_charset import REPAIR_ERRORS, decode_text, guess_charset
from ticketflow.operators.mime_defects import DefectLog

ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([BbQq])\?([^?]*)\?=")

_HEX_DIGITS = "0123456789ABCDEFabcdef"
# Each "=XX" escape of the Q encoding (hex digits in either case) to its byte.
_Q_ESCAPES = {
    f"{high}{low}".encode("ascii"): bytes([int(high + low, 16)])
    for high in _HEX_DIGITS
    for low in _HEX_DIGITS
}
_BASE64_NOISE = re.compile(rb"[^A-Za-z0-9+/=]")
_BASE64_CHUNK = re.compile(rb"([A-Za-z0-9+/]*)(=*)")


def decode_header_bytes(raw: bytes, defects: DefectLog, where: str) -> str:
    """Decode a header value's raw bytes: ASCII, else UTF-8, else a guessed charset."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = guess_charset(raw)
    defects.add("raw_8bit_header", f"{where}: 8-bit bytes that are not UTF-8; decoded as {codec}")
    return raw.decode(codec, errors=REPAIR_ERRORS if codec.startswith("cp125") else "replace")


def _decode_q(text: str) -> bytes:
    """Decode the Q encoding: "_" is a space, "=XX" a byte, any other "=" stays as it is."""
    data = text.replace("_", " ").encode("utf-8")
    if "=" not in text:
        return data
    first, *escaped = data.split(b"=")
    decoded = [first]
    for piece in escaped:
        byte = _Q_ESCAPES.get(piece[:2])
        if byte is None:
            decoded.append(b"=")
            decoded.append(piece)
        else:
            decoded.append(byte)
            decoded.append(piece[2:])
    return b"".join(decoded)


def decode_base64_leniently(text: bytes, defects: DefectLog, where: str) -> bytes:
    """Decode base64, dropping characters outside the alphabet and fixing the padding.

    Padded chunks written one after another (`aGk=aGk=`) are decoded chunk by
    chunk. Records "base64_junk" when characters had to be dropped and
    "base64_padding" when a chunk's length or padding was wrong. Never raises.
    """
    compact = text.translate(None, b" \t\r\n")
    try:
        # Well-formed base64 (alphabet only, padded once at the end) decodes
        # the same either way, with nothing to record.
        return binascii.a2b_base64(compact, strict_mode=True)
    except binascii.Error:
        return _decode_base64_chunks(compact, defects, where)


def _decode_base64_chunks(compact: bytes, defects: DefectLog, where: str) -> bytes:
    """Decode base64 without whitespace chunk by chunk, repairing what is wrong."""
    cleaned = _BASE64_NOISE.sub(b"", compact)
    if len(cleaned) != len(compact):
        defects.add("base64_junk", f"{where}: characters outside the base64 alphabet dropped")

    decoded = bytearray()
    for chunk in _BASE64_CHUNK.finditer(cleaned):
        data, padding = chunk.group(1), chunk.group(2)
        if not data:
            continue
        if len(data) % 4 == 1:
            data = data[:-1]
            defects.add("base64_padding", f"{where}: a dangling base64 character dropped")
        needed = -len(data) % 4
        if len(padding) < needed:
            defects.add("base64_padding", f"{where}: base64 padding missing")
        decoded += binascii.a2b_base64(data + b"=" * needed)
    return bytes(decoded)


def _word_bytes(encoding: str, payload: str, defects: DefectLog, where: str) -> bytes:
    if encoding in "Qq":
        return _decode_q(payload)
    return decode_base64_leniently(payload.encode("utf-8"), defects, where)


class _DefectRecorder(DefectLog):
    """A defect log that keeps every `add` call in order, so the calls can be replayed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def add(self, code: str, detail: str) -> None:
        """Record one call, without de-duplicating or bounding."""
        self.calls.append((code, detail))


# Decoded texts by (text, where), with the defects their decoding recorded.
# Decoding depends on nothing else, so replaying the defects into another log
# has the same effect as decoding again. The same Subject is decoded for the
# envelope and for `headers`, and a sender's name recurs in a thread.
_DECODED_WORDS: dict[tuple[str, str], tuple[str, tuple[tuple[str, str], ...]]] = {}
_MAX_DECODED_WORDS = 2048  # entries; the cache is emptied when full
_MAX_CACHED_TEXT = 1024  # characters; longer texts are decoded every time


def decode_encoded_words(text: str, defects: DefectLog, where: str) -> str:
    """Decode every RFC 2047 encoded word in `text`; other text is kept as it is."""
    if "=?" not in text:
        return text
    if len(text) > _MAX_CACHED_TEXT:
        return _decode_encoded_words(text, defects, where)

    key = (text, where)
    cached = _DECODED_WORDS.get(key)
    if cached is None:
        recorder = _DefectRecorder()
        cached = (_decode_encoded_words(text, recorder, where), tuple(recorder.calls))
        if len(_DECODED_WORDS) >= _MAX_DECODED_WORDS:
            _DECODED_WORDS.clear()
        _DECODED_WORDS[key] = cached
    decoded, calls = cached
    for code, detail in calls:
        defects.add(code, detail)
    return decoded


def _decode_encoded_words(text: str, defects: DefectLog, where: str) -> str:
    pieces: list[str | tuple[str, bytearray]] = []
    position = 0
    for word in ENCODED_WORD.finditer(text):
        gap = text[position : word.start()]
        previous_is_word = bool(pieces) and isinstance(pieces[-1], tuple)
        if gap and not (gap.isspace() and previous_is_word):
            pieces.append(gap)
            previous_is_word = False
        charset = word.group(1).split("*", 1)[0].lower()
        data = _word_bytes(word.group(2), word.group(3), defects, where)
        last = pieces[-1] if pieces else None
        if previous_is_word and isinstance(last, tuple) and last[0] == charset:
            last[1].extend(data)
        else:
            pieces.append((charset, bytearray(data)))
        position = word.end()
    pieces.append(text[position:])

    decoded = []
    for piece in pieces:
        if isinstance(piece, str):
            decoded.append(piece)
        else:
            decoded.append(decode_text(bytes(piece[1]), piece[0], defects, f"{where} encoded word"))
    return "".join(decoded)


def decode_unstructured(raw: bytes, defects: DefectLog, where: str) -> str:
    """Decode an unstructured header value (Subject, Thread-Topic, ...) from its raw bytes."""
    return decode_encoded_words(decode_header_bytes(raw, defects, where), defects, where)
