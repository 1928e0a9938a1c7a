"""The tolerant MIME walk: the stdlib's `email` parser with the compat32 policy.

It is several times slower than the fast walk (see `mime_fast`) but reads
whatever arrives: a multipart without a boundary, base64 of any length, raw
8-bit part headers, boundaries that prefix each other. The stdlib only splits
the tree. Header text, parameters, transfer decoding and charsets are decoded
by the same helpers as on the fast walk, from the raw bytes that the compat32
policy keeps as surrogate escapes.

The bytes of an embedded message/* part are regenerated from the parsed
message with the message's own line ending and no refolding, which gives back
the original bytes for well-formed messages.
"""

from __future__ import annotations

import email
import io
import re
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32

from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_fast import root_part_headers
from ticketflow.operators.mime_headers import HeaderSection
from ticketflow.operators.mime_params import ContentHeader
from ticketflow.operators.mime_parts import (
    within_limits,
    EMBEDDED_MESSAGE_TYPES,
    MimePart,
    PartHeaders,
    describe_part,
    record_truncation,
)
from ticketflow.operators.mime_transfer import decode_transfer_encoding
from ticketflow.operators.mime_words import decode_header_bytes

_FOLD = re.compile(r"\r?\n(?=[ \t])")

# Stdlib defects worth a defect of their own; the others are reported by class name.
_STDLIB_DEFECT_CODES = {"MissingHeaderBodySeparatorDefect": "missing_header_separator"}
# Stdlib defects that the walk reports itself ("missing_boundary", "truncated_multipart")
# or that do not affect the event.
_STDLIB_DEFECTS_IGNORED = frozenset(
    {
        "NoBoundaryInMultipartDefect",
        "StartBoundaryNotFoundDefect",
        "CloseBoundaryNotFoundDefect",
        "MultipartInvariantViolationDefect",
    }
)


def _raw_bytes(text: str) -> bytes:
    # compat32 keeps undecodable bytes as surrogate escapes; this restores them.
    return text.encode("utf-8", "surrogateescape")


def _part_headers(part: Message, defects: DefectLog, where: str) -> PartHeaders:
    mime_fields = ("content-type", "content-disposition", "content-id", "content-transfer-encoding")
    found: dict[str, str] = {}
    for name, value in part.raw_items():
        lowered = name.lower()
        if lowered in mime_fields and lowered not in found:
            unfolded = _FOLD.sub("", str(value)).strip()
            found[lowered] = decode_header_bytes(_raw_bytes(unfolded), defects, f"{where} {name}")
    return PartHeaders(*(found.get(name) for name in mime_fields))


class _TolerantWalk:
    """One walk over one stdlib message tree; collects parts and boundaries."""

    def __init__(self, defects: DefectLog, linesep: str) -> None:
        self.defects = defects
        self.linesep = linesep
        self.generator_policy = compat32.clone(linesep=linesep, max_line_length=0)
        self.parts: list[MimePart] = []
        self.main_boundaries: list[str] = []
        self.embedded_count = 0

    def visit(
        self,
        part: Message,
        headers: PartHeaders,
        *,
        depth: int,
        embedded: int,
        in_related: bool,
        where: str,
    ) -> None:
        if not within_limits(self.defects, depth, len(self.parts)):
            return
        self._record_stdlib_defects(part, where)
        media = headers.media(self.defects, where)
        # The stored payload, not get_payload(): for 8-bit text that method
        # decodes with the declared charset and replaces what it cannot read.
        payload = part._payload  # type: ignore[attr-defined]

        if isinstance(payload, list) and media.value.startswith("message/"):
            self._visit_message(part, payload, headers, media, depth, embedded, in_related, where)
        elif isinstance(payload, list):
            boundary = media.params.get("boundary", "")
            if embedded == 0:
                self.main_boundaries.append(boundary)
            for number, child in enumerate(payload, start=1):
                child_where = f"{where}.{number}" if where != "message" else f"part {number}"
                self.visit(
                    child,
                    _part_headers(child, self.defects, child_where),
                    depth=depth + 1,
                    embedded=embedded,
                    in_related=media.value == "multipart/related",
                    where=child_where,
                )
        else:
            self._visit_leaf(payload, headers, media, embedded, in_related, where)

    def _visit_leaf(
        self,
        payload: object,
        headers: PartHeaders,
        media: ContentHeader,
        embedded: int,
        in_related: bool,
        where: str,
    ) -> None:
        content = _raw_bytes(payload if isinstance(payload, str) else "")
        if media.value.startswith("multipart/"):
            # The stdlib found none of the parts: the body is read as plain text.
            self.defects.add(
                "missing_boundary", f"{where}: multipart without usable boundary read as text"
            )
            media = ContentHeader("text/plain", {})
        content = decode_transfer_encoding(
            content, headers.transfer_encoding(), self.defects, where
        )
        self.parts.append(
            describe_part(
                headers,
                media,
                content,
                embedded=embedded,
                in_related=in_related,
                where=where,
                defects=self.defects,
            )
        )

    def _visit_message(
        self,
        part: Message,
        payload: list[Message],
        headers: PartHeaders,
        media: ContentHeader,
        depth: int,
        embedded: int,
        in_related: bool,
        where: str,
    ) -> None:
        content = self._message_bytes(part, media.value, where)
        self.parts.append(
            describe_part(
                headers,
                media,
                content,
                embedded=embedded,
                in_related=in_related,
                where=where,
                defects=self.defects,
            )
        )
        if media.value in EMBEDDED_MESSAGE_TYPES and payload:
            if embedded == 0:
                self.embedded_count += 1
            inner = payload[0]
            self.visit(
                inner,
                _part_headers(inner, self.defects, f"{where} message"),
                depth=depth + 1,
                embedded=embedded or self.embedded_count,
                in_related=False,
                where=f"{where} message",
            )

    def _flatten(self, message: Message) -> bytes:
        buffer = io.BytesIO()
        generator = BytesGenerator(buffer, mangle_from_=False, policy=self.generator_policy)
        generator.flatten(message, unixfrom=False)
        return buffer.getvalue()

    def _message_bytes(self, part: Message, media_type: str, where: str) -> bytes:
        try:
            if media_type in EMBEDDED_MESSAGE_TYPES:
                inner = part.get_payload(0)
                if not isinstance(inner, Message):
                    return b""
                flattened = self._flatten(inner)
                # An empty embedded message regenerates as a lone line ending.
                return b"" if flattened == self.linesep.encode("ascii") else flattened
            # Other message/* bodies (delivery-status blocks) are regenerated with
            # the part's own headers, which are cut off again here.
            whole = self._flatten(part)
        except (RecursionError, LookupError, ValueError, TypeError, IndexError) as error:
            self.defects.add("embedded_message_unreadable", f"{where}: {type(error).__name__}")
            return b""
        separator = (self.linesep * 2).encode("ascii")
        _, _, body = whole.partition(separator)
        return body.removesuffix(self.linesep.encode("ascii"))

    def _record_stdlib_defects(self, part: Message, where: str) -> None:
        for defect in part.defects:
            name = type(defect).__name__
            if name in _STDLIB_DEFECTS_IGNORED:
                continue
            if where == "message" and name == "MissingHeaderBodySeparatorDefect":
                continue  # the header split reports this for the message itself
            code = _STDLIB_DEFECT_CODES.get(name, "mime_defect")
            self.defects.add(code, f"{where}: {name}")


def walk_tolerant(raw: bytes, section: HeaderSection, defects: DefectLog) -> list[MimePart]:
    """Describe every leaf of `raw` using the stdlib's compat32 parser; never raises.

    `raw` starts at the first header line (no byte order mark or mbox "From " line).
    """
    try:
        message = email.message_from_bytes(raw, policy=compat32)
    except RecursionError:
        defects.add(
            "nesting_limit", "MIME structure too deep for the tolerant parser; body not read"
        )
        return []
    first_break = raw.find(b"\n")
    linesep = "\r\n" if first_break > 0 and raw[first_break - 1] == 0x0D else "\n"
    walk = _TolerantWalk(defects, linesep)
    walk.visit(
        message,
        root_part_headers(section, defects),
        depth=0,
        embedded=0,
        in_related=False,
        where="message",
    )
    record_truncation(raw, walk.main_boundaries, defects)
    return walk.parts
