"""The fast MIME walk: fast-mail-parser's tree, checked before it is trusted.

fast-mail-parser (Rust) splits the MIME tree and undoes base64 and
quoted-printable; alone it parsed about 20,000 messages per second in
`benchmarks/parsers.py` on a 2-core x86_64 machine, against 1,400 to 2,500 for
the stdlib with compat32. Where it is known to mangle or lose what the event
needs, the walk raises `FastPathRejected`, and the caller falls back to the
tolerant walk. These are the checks, all measured against fast-mail-parser 0.10.0:

- it raises on base64 of the wrong length or with junk, and on nesting deeper
  than its cap, and it decodes a header line with many encoded words in
  quadratic time;
- a multipart whose boundary is missing or never used comes back with no
  children, and nested boundaries where one is a prefix of the other
  (`X` and `XY`) are split wrongly;
- part headers arrive already decoded: raw 8-bit bytes that are not UTF-8 are
  read as Latin-1, an encoded word glued to other text or in an unknown
  charset is left encoded, and a word split inside a character is replaced
  (U+FFFD); the raw bytes are gone, so such parts go to the tolerant walk;
- the message's own header section is read by `mime_headers` from the raw
  bytes, so fast-mail-parser's view of it is only used for the structure, and
  a header section that ends at a non-header line (which fast-mail-parser
  reads on past) is rejected.

It also leaves a transfer encoding with trailing spaces or a comment
(`base64 (x)`) undecoded; the walk decodes those parts itself.
"""

from __future__ import annotations

import fast_mail_parser

from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_headers import HeaderSection
from ticketflow.operators.mime_parts import (
    EMBEDDED_MESSAGE_TYPES,
    MimePart,
    PartHeaders,
    describe_part,
    record_truncation,
    within_limits,
)
from ticketflow.operators.mime_transfer import decode_transfer_encoding
from ticketflow.operators.mime_words import decode_header_bytes

# The transfer encodings fast-mail-parser 0.10 decodes, as it matches them
# (case-insensitive, leading spaces dropped, nothing after the token).
_DECODED_BY_FAST_PARSER = frozenset({"base64", "quoted-printable"})

# fast-mail-parser 0.10 decodes a header line in time quadratic in its encoded
# words (20,000 words on one line take 0.7 s here, 40,000 take 3 s). Messages
# with more "=?" than this go to the tolerant walk; real mail has a few dozen.
MAX_ENCODED_WORDS = 2000


class FastPathRejected(Exception):
    """The fast walk cannot be trusted with this message; `reason` describes why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def root_part_headers(section: HeaderSection, defects: DefectLog) -> PartHeaders:
    """Return the MIME headers of the message itself, decoded from the raw section."""

    def text(name: str) -> str | None:
        raw = section.first(name)
        return None if raw is None else decode_header_bytes(raw, defects, name)

    return PartHeaders(
        text("Content-Type"),
        text("Content-Disposition"),
        text("Content-ID"),
        text("Content-Transfer-Encoding"),
    )


def _needs_raw_bytes(value: str, raw: bytes) -> bool:
    if "=?" in value or "\ufffd" in value:
        return True
    if value.isascii():
        return False
    try:
        as_latin1 = value.encode("latin-1")
    except UnicodeEncodeError:
        return False  # characters beyond Latin-1 come from a real decode
    return as_latin1 in raw  # the raw bytes were read as Latin-1, maybe wrongly


def _node_headers(node: fast_mail_parser.PyMimePart, raw: bytes) -> PartHeaders:
    headers = {name.lower(): values for name, values in node.headers.items()}

    def text(name: str) -> str | None:
        values = headers.get(name)
        if not values:
            return None
        value = values[0]
        if _needs_raw_bytes(value, raw):
            raise FastPathRejected(f"part header {name} needs its raw bytes")
        return value

    return PartHeaders(
        text("content-type"),
        text("content-disposition"),
        text("content-id"),
        text("content-transfer-encoding"),
    )


class _FastWalk:
    """One walk over one tree; collects parts, boundaries and defects."""

    def __init__(self, raw: bytes, defects: DefectLog) -> None:
        self.raw = raw
        self.defects = defects
        self.parts: list[MimePart] = []
        self.main_boundaries: list[str] = []
        self.all_boundaries: list[str] = []
        self.embedded_count = 0
        self.quoted_printable_equals = 0

    def visit(
        self,
        node: fast_mail_parser.PyMimePart,
        headers: PartHeaders,
        *,
        depth: int,
        embedded: int,
        in_related: bool,
        where: str,
    ) -> None:
        if not within_limits(self.defects, depth, len(self.parts)):
            return
        media = headers.media(self.defects, where)
        if node.content is None:
            self._visit_multipart(node, media.value, media.params, depth, embedded, where)
            return
        if media.value.startswith("multipart/"):
            raise FastPathRejected(f"{where}: multipart read as a leaf")

        content = self._content(node, headers, where)
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
        if node.is_message and media.value in EMBEDDED_MESSAGE_TYPES and node.children:
            if embedded == 0:
                self.embedded_count += 1
            inner = node.children[0]
            self.visit(
                inner,
                _node_headers(inner, self.raw),
                depth=depth + 1,
                embedded=embedded or self.embedded_count,
                in_related=False,
                where=f"{where} message",
            )

    def _visit_multipart(
        self,
        node: fast_mail_parser.PyMimePart,
        media_type: str,
        params: dict[str, str],
        depth: int,
        embedded: int,
        where: str,
    ) -> None:
        if not node.children:
            raise FastPathRejected(f"{where}: multipart without parts (missing or unused boundary)")
        boundary = params.get("boundary", "")
        self.all_boundaries.append(boundary)
        if embedded == 0:
            self.main_boundaries.append(boundary)
        for number, child in enumerate(node.children, start=1):
            self.visit(
                child,
                _node_headers(child, self.raw),
                depth=depth + 1,
                embedded=embedded,
                in_related=media_type == "multipart/related",
                where=f"{where}.{number}" if where != "message" else f"part {number}",
            )

    def _content(
        self, node: fast_mail_parser.PyMimePart, headers: PartHeaders, where: str
    ) -> bytes:
        content = node.content or b""
        encoding = headers.transfer_encoding()
        declared = (headers.content_transfer_encoding or "").strip().lower()
        if encoding in _DECODED_BY_FAST_PARSER and declared not in _DECODED_BY_FAST_PARSER:
            content = decode_transfer_encoding(content, encoding, self.defects, where)
        elif encoding == "quoted-printable":
            self.quoted_printable_equals += content.count(b"=")
        return content


def _reject_prefix_boundaries(boundaries: list[str]) -> None:
    # Sorted, a boundary that prefixes another sits right before one it prefixes.
    ordered = sorted(set(boundaries))
    for shorter, longer in zip(ordered, ordered[1:], strict=False):
        if longer.startswith(shorter):
            raise FastPathRejected(f"boundary {shorter!r} is a prefix of {longer!r}")


def _record_quoted_printable_junk(walk: _FastWalk) -> None:
    # Every "=" left in decoded quoted-printable came from "=3D" or from junk.
    # More of them than "=3D" escapes in the whole message proves junk; junk
    # hidden by "=3D" elsewhere (headers, other parts) goes unnoticed.
    if not walk.quoted_printable_equals:
        return
    escapes = walk.raw.count(b"=3D")
    if walk.quoted_printable_equals > escapes:
        escapes += walk.raw.count(b"=3d")  # the rare lower-case spelling, counted only when needed
    if walk.quoted_printable_equals > escapes:
        walk.defects.add(
            "qp_junk", "quoted-printable: '=' not followed by two hex digits kept as text"
        )


def walk_fast(raw: bytes, section: HeaderSection, defects: DefectLog) -> list[MimePart]:
    """Describe every leaf of `raw` using fast-mail-parser's tree.

    Raises `FastPathRejected` when the tree cannot be trusted (see the module
    docstring); `defects` may then hold entries of the abandoned walk, so the
    caller passes a scratch log.
    """
    # Counting one byte is faster than counting two, and there are no more
    # "=?" than "?", so most messages skip the second count.
    if raw.count(b"?") > MAX_ENCODED_WORDS and raw.count(b"=?") > MAX_ENCODED_WORDS:
        raise FastPathRejected(f"more than {MAX_ENCODED_WORDS} encoded words")
    try:
        tree = fast_mail_parser.parse_email_tree(raw)
    except fast_mail_parser.ParseError as error:
        raise FastPathRejected(f"fast-mail-parser: {error}") from error

    walk = _FastWalk(raw, defects)
    walk.visit(
        tree,
        root_part_headers(section, defects),
        depth=0,
        embedded=0,
        in_related=False,
        where="message",
    )
    _reject_prefix_boundaries(walk.all_boundaries)
    record_truncation(raw, walk.main_boundaries, defects)
    _record_quoted_printable_junk(walk)
    return walk.parts
