"""Content-Transfer-Encoding (RFC 2045 section 6), decoded without raising.

Base64 with junk or bad padding and quoted-printable with stray "=" are decoded
as far as they go, with "base64_junk", "base64_padding" or "qp_junk" defects.
Quoted-printable line breaks decode to CRLF, the canonical form RFC 2045
section 6.7 defines, whatever line ending the message used.
"""

from __future__ import annotations

import binascii
import re

from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_words import decode_base64_leniently

# Encodings that leave the bytes as they are.
IDENTITY_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})

_LINE_BREAK = re.compile(rb"\r?\n")
_QP_JUNK = re.compile(rb"=(?![0-9A-Fa-f]{2})")


def normalize_transfer_encoding(value: str | None) -> str:
    """Return the encoding's token, lowercased, without quotes, comments or spaces."""
    if not value:
        return ""
    token = re.sub(r"\([^)]*\)", " ", value).strip().strip("\"'").strip().lower()
    return token.split(None, 1)[0].rstrip(";") if token else ""


def decode_quoted_printable(data: bytes, defects: DefectLog, where: str) -> bytes:
    """Decode quoted-printable: soft breaks joined, trailing whitespace dropped, junk kept."""
    lines = _LINE_BREAK.split(data)
    decoded_lines = []
    for index, line in enumerate(lines):
        line = line.rstrip(b" \t")
        if line.endswith(b"="):
            decoded_lines.append(line[:-1])
        elif index < len(lines) - 1:
            decoded_lines.append(line + b"\r\n")
        else:
            decoded_lines.append(line)
    if len(lines) > 1 and not lines[-1] and lines[-2].rstrip(b" \t").endswith(b"="):
        # A soft break right before the final line ending still ends a line, as
        # fast-mail-parser 0.10 decodes it; both MIME walks must agree.
        decoded_lines.append(b"\r\n")
    joined = b"".join(decoded_lines)
    if _QP_JUNK.search(joined):
        defects.add("qp_junk", f"{where}: '=' not followed by two hex digits kept as text")
    return binascii.a2b_qp(joined)


def decode_transfer_encoding(data: bytes, encoding: str, defects: DefectLog, where: str) -> bytes:
    """Undo a part's transfer encoding (already normalized); unknown ones keep the bytes."""
    if encoding == "base64":
        return decode_base64_leniently(data, defects, where)
    if encoding == "quoted-printable":
        return decode_quoted_printable(data, defects, where)
    if encoding not in IDENTITY_ENCODINGS:
        defects.add("transfer_encoding_unknown", f"{where}: {encoding[:40]!r} left undecoded")
    return data
