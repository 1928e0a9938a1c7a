"""The leaves of a MIME tree, and how they become an event's bodies and attachments.

Both MIME walkers (the fast one over fast-mail-parser's tree, the tolerant one
over the stdlib's `email` package) describe a message as the same flat list of
`MimePart`s, built here from each part's header texts and decoded bytes. What
happens next is shared, so the two walkers cannot disagree on anything but the
tree itself:

- `text` is the first text/plain body of the main message and `html` its first
  text/html body. A body is a text/plain or text/html part that is neither
  marked `attachment` nor named by a filename. Only when the main message has
  no body at all do both come from the first embedded message that has one.
- Every other leaf of the main message is an attachment, message/rfc822 parts
  included (as one attachment whose bytes are the embedded message); the parts
  inside an embedded message are not listed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ticketflow.model import Attachment
from ticketflow.operators.mime_charset import decode_text
from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_headers import clean_text
from ticketflow.operators.mime_params import (
    ContentHeader,
    normalize_content_id,
    parse_content_header,
    parse_content_type,
)
from ticketflow.operators.mime_transfer import normalize_transfer_encoding

if TYPE_CHECKING:
    from ticketflow.operators.attachments import AttachmentGovernor

# Multipart nesting deeper than this is not walked (a "nesting_limit" defect);
# real mail nests fewer than ten levels.
MAX_NESTING = 50
# Leaves listed per message; more are dropped with a "part_limit" defect.
MAX_PARTS = 1000

_BODY_TYPES = ("text/plain", "text/html")
_BARE_TRANSFER_ENCODING = re.compile(r"[a-z0-9-]+")
# Media types of an embedded message whose own bodies can stand in for the main ones.
EMBEDDED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})


@dataclass(frozen=True)
class PartHeaders:
    """The four header texts a part is described by, decoded from bytes, or None."""

    content_type: str | None
    content_disposition: str | None
    content_id: str | None
    content_transfer_encoding: str | None

    def media(self, defects: DefectLog, where: str) -> ContentHeader:
        """Return the part's Content-Type, text/plain when missing or invalid."""
        return parse_content_type(self.content_type, defects, where)

    def transfer_encoding(self) -> str:
        """Return the normalized Content-Transfer-Encoding token ("" when absent)."""
        value = self.content_transfer_encoding
        if not value:
            return ""
        # A bare token ("base64", " 7bit ") has no comment, quotes or second word,
        # so the normalization would only strip and lowercase it.
        token = value.strip().lower()
        if _BARE_TRANSFER_ENCODING.fullmatch(token):
            return token
        return normalize_transfer_encoding(value)


@dataclass(frozen=True)
class MimePart:
    """One leaf of a message: what it is, where it sits, and its decoded bytes.

    `embedded` is 0 for parts of the main message and n for parts inside its
    n-th embedded message (counting message/rfc822 attachments of the main
    message from 1). `where` names the part for defect details ("part 1.2").
    """

    content_type: str
    params: dict[str, str]
    disposition: str | None
    filename: str
    content_id: str | None
    content: bytes
    embedded: int
    in_related: bool
    where: str

    def is_body_candidate(self) -> bool:
        """Tell whether the part can be a message body rather than an attachment."""
        return (
            self.content_type in _BODY_TYPES
            and self.disposition != "attachment"
            and not self.filename
        )


def within_limits(defects: DefectLog, depth: int, parts_read: int) -> bool:
    """Tell whether a MIME walk may read one more part; record a defect when it may not."""
    if depth > MAX_NESTING:
        defects.add("nesting_limit", f"MIME parts nested deeper than {MAX_NESTING} not read")
        return False
    if parts_read >= MAX_PARTS:
        defects.add("part_limit", f"more than {MAX_PARTS} MIME parts; the rest not read")
        return False
    return True


def describe_part(
    headers: PartHeaders,
    media: ContentHeader,
    content: bytes,
    *,
    embedded: int,
    in_related: bool,
    where: str,
    defects: DefectLog,
) -> MimePart:
    """Build a `MimePart` from a part's header texts and transfer-decoded bytes."""
    disposition = None
    disposition_params: dict[str, str] = {}
    if headers.content_disposition is not None:
        parsed = parse_content_header(headers.content_disposition, defects, where)
        disposition = parsed.value or None
        disposition_params = parsed.params
    filename = disposition_params.get("filename") or media.params.get("name") or ""
    return MimePart(
        content_type=media.value,
        params=media.params,
        disposition=disposition,
        filename=clean_text(filename, defects, where),
        content_id=normalize_content_id(headers.content_id),
        content=content,
        embedded=embedded,
        in_related=in_related,
        where=where,
    )


@dataclass(frozen=True)
class Bodies:
    """The decoded bodies and the attachment list of one message."""

    text: str
    html: str
    attachments: list[Attachment]


def _first_of_type(parts: list[MimePart], media_type: str) -> MimePart | None:
    for part in parts:
        if part.content_type == media_type and part.is_body_candidate():
            return part
    return None


def _choose_bodies(parts: list[MimePart]) -> tuple[MimePart | None, MimePart | None]:
    main = [part for part in parts if part.embedded == 0]
    text, html = _first_of_type(main, "text/plain"), _first_of_type(main, "text/html")
    if text or html:
        return text, html
    for number in sorted({part.embedded for part in parts if part.embedded}):
        embedded = [part for part in parts if part.embedded == number]
        text, html = _first_of_type(embedded, "text/plain"), _first_of_type(embedded, "text/html")
        if text or html:
            return text, html
    return None, None


def _decode_body(part: MimePart | None, defects: DefectLog) -> str:
    if part is None:
        return ""
    is_html = part.content_type == "text/html"
    text = decode_text(part.content, part.params.get("charset"), defects, part.where, html=is_html)
    return clean_text(text.replace("\r\n", "\n"), defects, part.where)


def _disposition(part: MimePart) -> str:
    if part.disposition in ("attachment", "inline"):
        return part.disposition
    if part.disposition is None and (part.in_related or part.content_id):
        return "inline"
    if part.disposition is None and part.content_type.startswith("image/") and not part.filename:
        return "inline"
    return "attachment"


def describe_attachment(part: MimePart) -> Attachment:
    """Describe a part as an event attachment; the bytes themselves stay out of the event."""
    return {
        "filename": part.filename,
        "content_type": part.content_type,
        "size": len(part.content),
        "content_id": part.content_id,
        "disposition": _disposition(part),
        "sha256": hashlib.sha256(part.content).hexdigest(),
        "download_url": None,
    }


def assemble_bodies(
    parts: list[MimePart], defects: DefectLog, governor: AttachmentGovernor | None = None
) -> Bodies:
    """Choose the text and html bodies among `parts` and list the rest as attachments.

    With a `governor`, the attachments and the html body come out governed
    (`ticketflow.operators.attachments`). Without one they are listed as found.
    """
    text_part, html_part = _choose_bodies(parts)
    listed = [
        part
        for part in parts
        if part.embedded == 0 and part is not text_part and part is not html_part
    ]
    attachments = [describe_attachment(part) for part in listed]
    text = _decode_body(text_part, defects)
    html = _decode_body(html_part, defects)
    if governor is None:
        return Bodies(text, html, attachments)
    governed = governor.govern(
        [(entry, part.content) for entry, part in zip(attachments, listed, strict=True)],
        html,
        defects,
    )
    return Bodies(text, governed.html, governed.attachments)


# A close delimiter line: "--" boundary "--", then optional transport padding.
_CLOSE_DELIMITER = re.compile(rb"^--(.+?)--[ \t]*\r?$", re.MULTILINE)
# Close delimiters remembered from one message; hostile input may have more lines.
_MAX_CLOSE_DELIMITERS = 10_000
# Up to this many distinct boundaries are searched one by one.
_FEW_BOUNDARIES = 8


def unclosed_boundaries(raw: bytes, boundaries: list[str]) -> list[str]:
    """Return the boundaries whose close delimiter (`--boundary--`) never appears in `raw`.

    A multipart whose close delimiter is missing was cut off: its last part is
    whatever arrived. One pass over the message, whatever the number of boundaries.
    """
    if not boundaries:
        return []
    boundary_bytes = {
        boundary.encode("utf-8", "surrogateescape").rstrip() for boundary in boundaries
    }
    if len(boundary_bytes) <= _FEW_BOUNDARIES:
        # A search per boundary runs at memchr speed; the scan below is for many.
        closed = {
            boundary for boundary in boundary_bytes if raw.find(b"--" + boundary + b"--") != -1
        }
        return [
            b for b in boundaries if b.encode("utf-8", "surrogateescape").rstrip() not in closed
        ]
    closed = set()
    for count, found in enumerate(_CLOSE_DELIMITER.finditer(raw)):
        if count >= _MAX_CLOSE_DELIMITERS:
            break
        closed.add(found.group(1).rstrip())
    return [
        boundary
        for boundary in boundaries
        if boundary.encode("utf-8", "surrogateescape").rstrip() not in closed
    ]


def record_truncation(raw: bytes, boundaries: list[str], defects: DefectLog) -> None:
    """Add a "truncated_multipart" defect for each multipart that was never closed."""
    for boundary in unclosed_boundaries(raw, boundaries):
        defects.add(
            "truncated_multipart", f"multipart with boundary {boundary[:70]!r} never closed"
        )
