"""Addresses (RFC 5322 section 3.4) and message identifiers (section 3.6.4).

Both parsers are single passes over the header text that tolerate what real
mail gets wrong: unbalanced quotes and brackets, identifiers without angle
brackets, comments around identifiers, groups, and display names in encoded
words. Encoded words are decoded after the structure is known, so a decoded
display name containing a comma cannot split a mailbox.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_words import decode_encoded_words

_ADDR_SPEC = re.compile(r'^(?:"[^"]*"|[^@\s<>(),;:"]+)@[^@\s<>(),;:"]+$')
# Lists without these characters need no state machine.
_NEEDS_FULL_SCAN = re.compile(r'["()\\:;]')
_SIMPLE_MAILBOX = re.compile(r"^([^<>]*)<([^<>]*)>\s*$")
_BRACKETED_ID = re.compile(r"<([^<>]*)>")
# Characters that end a stretch of text in each state of `strip_comments`.
_COMMENT_OR_QUOTE_START = re.compile(r'[("]')
_COMMENT_SPECIAL = re.compile(r"[()\\]")
_QUOTED_SPECIAL = re.compile(r'["\\]')
# Characters a msg-id cannot contain: whitespace, controls and stray angle brackets.
_ID_NOISE = re.compile(r"[\s\x00-\x1f\x7f<>]+")
# Domain of synthesized Message-IDs; ".invalid" can never be a real domain (RFC 2606).
_SYNTHETIC_ID_DOMAIN = "ticketflow.invalid"


class Mailbox(NamedTuple):
    """One address: the decoded display name and the bare, lowercased address."""

    name: str
    address: str


class _MailboxBuilder:
    """Collects the pieces of one mailbox while the list is scanned."""

    def __init__(self) -> None:
        self.phrase: list[str] = []  # display text, quotes removed
        self.spec: list[str] = []  # the same text with quotes kept, for a bare addr-spec
        self.angle: list[str] | None = None
        self.comments: list[str] = []

    def is_empty(self) -> bool:
        return not (self.phrase or self.spec or self.angle or self.comments)


def _finish(builder: _MailboxBuilder, defects: DefectLog, where: str) -> Mailbox | None:
    if builder.angle is not None:
        address = "".join(builder.angle)
        address = address.rsplit(":", 1)[-1]  # obsolete route: <@relay:user@host>
        name = "".join(builder.phrase)
    else:
        address = "".join(builder.spec)
        name = ""
    if not name.strip() and builder.comments:
        name = builder.comments[0]
    return _mailbox(name, address, defects, where)


def _mailbox(name: str, address: str, defects: DefectLog, where: str) -> Mailbox | None:
    """Normalize one mailbox's display name and address, or return None when both are empty."""
    # Whitespace inside a quoted local part is part of the address. `str.split()`
    # splits at the same characters as the regex class `\s` (checked for every
    # code point on Python 3.11).
    address = (address.strip() if '"' in address else "".join(address.split())).lower()
    if "=?" in name:
        name = decode_encoded_words(name, defects, where)
    name = " ".join(name.split()).strip('"').strip()
    if not address and not name:
        return None
    if not _ADDR_SPEC.match(address):
        defects.add("address_invalid", f"{where}: {address[:80]!r} is no valid address")
    return Mailbox(name, address)


def _parse_simple_address_list(text: str, defects: DefectLog, where: str) -> list[Mailbox] | None:
    """Parse a list without quotes, comments, groups or escapes: `Name <addr>, addr`.

    Returns None, having recorded nothing, for a list that needs the full scan.
    """
    if _NEEDS_FULL_SCAN.search(text):
        return None
    pieces = []
    for chunk in text.split(","):
        found = _SIMPLE_MAILBOX.match(chunk)
        if found:
            pieces.append(found.groups())  # (display name, address); no route without ":"
        elif "<" in chunk or ">" in chunk:
            return None
        else:
            pieces.append(("", chunk))
    mailboxes = []
    for name, address in pieces:
        mailbox = _mailbox(name, address, defects, where)
        if mailbox is not None:
            mailboxes.append(mailbox)
    return mailboxes


def parse_address_list(text: str, defects: DefectLog, where: str) -> list[Mailbox]:
    """Parse an address list (From, To, Cc, Reply-To) into mailboxes, in order.

    Groups are flattened to their members; an empty group gives nothing.
    Invalid addresses are kept as written (lowercased, whitespace removed)
    with an "address_invalid" defect.
    """
    simple = _parse_simple_address_list(text, defects, where)
    if simple is not None:
        return simple
    return _scan_address_list(text, defects, where)


def _scan_address_list(text: str, defects: DefectLog, where: str) -> list[Mailbox]:
    """Parse any address list character by character: quotes, comments, groups, escapes."""
    mailboxes: list[Mailbox] = []
    builder = _MailboxBuilder()
    quoted = escaped = in_angle = False
    comment_depth = 0
    comment: list[str] = []

    def finish() -> None:
        nonlocal builder
        mailbox = _finish(builder, defects, where)
        if mailbox is not None:
            mailboxes.append(mailbox)
        builder = _MailboxBuilder()

    for char in text:
        if escaped:
            (comment if comment_depth else builder.phrase).append(char)
            if not comment_depth:
                builder.spec.append(char)
            escaped = False
        elif char == "\\" and (quoted or comment_depth):
            escaped = True
        elif comment_depth:
            if char == "(":
                comment_depth += 1
            elif char == ")":
                comment_depth -= 1
                if not comment_depth:
                    builder.comments.append("".join(comment).strip())
                    comment = []
                    continue
            comment.append(char)
        elif quoted:
            if char == '"':
                quoted = False
                builder.spec.append(char)
            else:
                builder.phrase.append(char)
                builder.spec.append(char)
        elif in_angle:
            if char == ">":
                in_angle = False
            elif builder.angle is not None:
                builder.angle.append(char)
        elif char == ">":
            builder.phrase.append(" ")  # a stray closing bracket
        elif char == '"':
            quoted = True
            builder.spec.append(char)
        elif char == "(":
            comment_depth = 1
        elif char == "<":
            builder.angle = []
            in_angle = True
        elif char in ",;":
            finish()
            in_angle = False
        elif char == ":" and builder.angle is None:
            builder = _MailboxBuilder()  # a group's name is no mailbox
        else:
            builder.phrase.append(char)
            builder.spec.append(char)

    if quoted or comment_depth or in_angle:
        defects.add("address_unbalanced", f"{where}: unclosed quote, comment or angle bracket")
    if not builder.is_empty():
        finish()
    return mailboxes


def strip_comments(text: str) -> str:
    """Remove comments and quoted strings, the parts of an id list that carry no id."""
    if "(" not in text and '"' not in text:
        return text
    kept: list[str] = []
    position = 0
    while True:
        opening = _COMMENT_OR_QUOTE_START.search(text, position)
        if opening is None:
            kept.append(text[position:])
            return "".join(kept)
        kept.append(text[position : opening.start()])
        if opening.group() == "(":
            position = _comment_end(text, opening.end())
        else:
            position = _quoted_string_end(text, opening.end())


def _comment_end(text: str, position: int) -> int:
    """Return where the comment opened before `position` ends (nested, with escapes)."""
    depth = 1
    while True:
        found = _COMMENT_SPECIAL.search(text, position)
        if found is None:
            return len(text)  # unclosed: the comment runs to the end
        position = found.end()
        char = found.group()
        if char == "\\":
            position += 1
        elif char == "(":
            depth += 1
        else:
            depth -= 1
            if not depth:
                return position


def _quoted_string_end(text: str, position: int) -> int:
    """Return where the quoted string opened before `position` ends (with escapes)."""
    while True:
        found = _QUOTED_SPECIAL.search(text, position)
        if found is None:
            return len(text)  # unclosed: the string runs to the end
        position = found.end()
        if found.group() == "\\":
            position += 1
        else:
            return position


def _bracketed(inner: str, defects: DefectLog, where: str) -> str | None:
    # Every whitespace character but the space is unprintable, and so are the
    # controls (checked for every code point on Python 3.11): a printable id
    # without spaces or brackets has no noise to remove.
    if inner and inner.isprintable() and " " not in inner and "<" not in inner and ">" not in inner:
        return f"<{inner}>"
    compact = _ID_NOISE.sub("", inner)
    if not compact:
        return None
    if compact != inner:
        defects.add(
            "message_id_whitespace",
            f"{where}: whitespace or control characters inside a message id removed",
        )
    return f"<{compact}>"


def message_ids(text: str, defects: DefectLog, where: str) -> list[str]:
    """Return every msg-id in `text` as `<...>`, in order, comments ignored.

    When no bracketed id is present, whitespace-separated tokens containing
    "@" are taken as ids, with a "message_id_brackets" defect.
    """
    cleaned = strip_comments(decode_encoded_words(text, defects, where))
    ids = []
    for found in _BRACKETED_ID.finditer(cleaned):
        message_id = _bracketed(found.group(1), defects, where)
        if message_id:
            ids.append(message_id)
    if ids:
        return ids
    bare = [_ID_NOISE.sub("", token) for token in cleaned.split() if "@" in token]
    bare = [token for token in bare if token]
    if bare:
        defects.add("message_id_brackets", f"{where}: message id without angle brackets")
    return [f"<{token}>" for token in bare]


def own_message_id(text: str, defects: DefectLog) -> str | None:
    """Return the message's Message-ID as `<...>`, or None when it names none.

    An id without brackets is accepted even without "@", with a defect.
    """
    ids = message_ids(text, defects, "Message-ID")
    if ids:
        return ids[0]
    tokens = strip_comments(decode_encoded_words(text, defects, "Message-ID")).split()
    token = _ID_NOISE.sub("", tokens[0]) if tokens else ""
    if not token:
        return None
    defects.add("message_id_brackets", "Message-ID: message id without angle brackets")
    return f"<{token}>"


def thread_references(text: str, max_references: int, defects: DefectLog) -> list[str]:
    """Return the References ids in order without duplicates, at most `max_references`.

    When cut, the first id (the thread root) and the last `max_references - 1`
    are kept, with a "references_truncated" defect.
    """
    unique = list(dict.fromkeys(message_ids(text, defects, "References")))
    limit = max(1, max_references)
    if len(unique) <= limit:
        return unique
    defects.add(
        "references_truncated",
        f"References: {len(unique)} ids cut to {limit} (the root and the most recent)",
    )
    return [unique[0], *unique[len(unique) - (limit - 1) :]] if limit > 1 else [unique[0]]


def synthetic_message_id(sender: str, subject: str, text: str, html: str) -> str:
    """Return a Message-ID derived from the content, for mail that has none.

    The same sender, subject and decoded bodies always give the same id, so a
    second delivery of the same content is recognized.
    """
    content = "\x00".join((sender, subject, text, html)).encode("utf-8", "surrogatepass")
    return f"<{hashlib.sha256(content).hexdigest()[:32]}@{_SYNTHETIC_ID_DOMAIN}>"
