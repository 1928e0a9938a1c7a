"""Reply and forward prefixes and leading tags of a Subject line.

Mail clients write "Re:" and "Fwd:" in the user's language, so the same thread shows
up as "Re: Printer broken", "AW: WG: Printer broken" or "回复：Printer broken". Helpdesks
and mail gateways add bracketed tags in front ("[EXT]", "[SUP-42]", "[P1]"). This module
splits those leading parts off; `enrich` reads the tags and the thread stage compares
what is left.

Prefixes recognized (case-insensitive, each followed by ":" or the full-width "："):

| language | reply | forward |
| --- | --- | --- |
| English, Latin "in re" | Re | Fw, Fwd |
| German | AW, Antwort | WG |
| Dutch | Antw | Doorst |
| Danish, Norwegian, Swedish, Icelandic | SV | VS, VB, FS |
| Finnish | | VL (and VS, above) |
| French | | TR |
| Italian | R, RIF | |
| Spanish | | RV |
| Portuguese | RES | ENC |
| Polish | Odp | PD |
| Czech | Odp | |
| Turkish | YNT | İLT |
| Hungarian | VÁ | |
| Greek | ΑΠ, ΣΧΕΤ | ΠΡΘ |
| Hebrew | השב | הועבר |
| Chinese | 回复, 答复, 回覆 | 转发, 轉寄, 轉發 |
| Japanese | 返信 | 転送 |
| Korean | 회신 | 전달 |

A prefix may carry a reply counter: "Re[2]:", "Re(3):", "Re^4:".

"VS" means reply in Finnish and forward in the Scandinavian languages. It counts as
a forward: a reply taken for a forward can at worst open a ticket of its own, while
a forward taken for a reply could attach new mail to an old ticket.

Left out on purpose: the Italian forward "I:" and the Hungarian forward "TO:", which
are too easily an ordinary word at the start of an English subject.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

REPLY_PREFIXES: tuple[str, ...] = (
    "re", "aw", "antwort", "antw", "sv", "r", "rif", "res", "odp", "ynt", "vá",
    "απ", "σχετ", "השב", "回复", "答复", "回覆", "返信", "회신",
)
FORWARD_PREFIXES: tuple[str, ...] = (
    "fw", "fwd", "wg", "doorst", "vs", "vb", "fs", "vl", "tr", "rv", "enc", "pd", "ilt",
    "πρθ", "הועבר", "转发", "轉寄", "轉發", "転送", "전달",
)

# Maximum number of leading prefixes and tags read from one subject, so a hostile
# subject of thousands of "Re:" costs bounded work. Further ones stay in the remainder.
MAX_LEADING_PARTS = 50

# Maximum length of a bracketed tag's content. A longer bracket is ordinary subject text.
MAX_TAG_LENGTH = 80


def _alternation(words: tuple[str, ...]) -> str:
    # Sorted by length, longest first, so "fwd" is tried before "fw".
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


_PREFIX = re.compile(
    r"\s*(?P<word>" + _alternation(REPLY_PREFIXES + FORWARD_PREFIXES) + r")"
    r"\s*(?:\[\d{1,4}\]|\(\d{1,4}\)|\^\d{1,4})?\s*[:：]",
    re.IGNORECASE,
)
_REPLY_WORDS = frozenset(word.casefold() for word in REPLY_PREFIXES)

_TAG = re.compile(
    rf"\s*(?:\[(?P<square>[^\[\]]{{0,{MAX_TAG_LENGTH}}})\]"
    rf"|【(?P<lenticular>[^【】]{{0,{MAX_TAG_LENGTH}}})】)"
)

# The old forwarding convention puts a "(fwd)" after the subject.
_FWD_SUFFIX = re.compile(r"\s*\(fwd\)\s*$", re.IGNORECASE)

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class LeadingPart:
    """One prefix or tag at the start of a subject.

    `text` is the prefix word as written ("AW") or the tag's content without its
    brackets ("SUP-42").
    """

    kind: Literal["reply", "forward", "tag"]
    text: str


def split_leading_parts(subject: str) -> tuple[list[LeadingPart], str]:
    """Split the reply/forward prefixes and bracketed tags off the start of a subject.

    Returns the parts in the order they appear and the remainder, stripped of
    surrounding whitespace. Prefixes and tags may alternate ("[EXT] RE: [SUP-42] …").
    A tag that itself starts with a prefix, as in the old "[Fwd: Printer broken]"
    form, is unwrapped: the prefix is returned as a part and the tag's content joins
    the remainder. At most `MAX_LEADING_PARTS` parts are read.

    >>> parts, rest = split_leading_parts("AW: [SUP-42] Drucker defekt")
    >>> [(part.kind, part.text) for part in parts], rest
    ([('reply', 'AW'), ('tag', 'SUP-42')], 'Drucker defekt')
    """
    parts: list[LeadingPart] = []
    rest = subject

    while len(parts) < MAX_LEADING_PARTS:
        prefix = _PREFIX.match(rest)
        if prefix:
            parts.append(_prefix_part(prefix.group("word")))
            rest = rest[prefix.end():]
            continue

        tag = _TAG.match(rest)
        if not tag:
            break
        content = tag.group("square")
        if content is None:
            content = tag.group("lenticular")
        after = rest[tag.end():]

        wrapped = _PREFIX.match(content)
        if wrapped:
            parts.append(_prefix_part(wrapped.group("word")))
            rest = content[wrapped.end():] + " " + after
        else:
            parts.append(LeadingPart("tag", content.strip()))
            rest = after

    return parts, rest.strip()


def _prefix_part(word: str) -> LeadingPart:
    kind: Literal["reply", "forward"] = "reply" if word.casefold() in _REPLY_WORDS else "forward"
    return LeadingPart(kind, word)


def normalize_subject(subject: str) -> str:
    """Reduce a subject to the text the subject heuristic compares.

    Steps: apply Unicode NFKC, so full-width "ＲＥ：" reads as "RE:". Remove every
    leading reply/forward prefix and every leading bracketed tag. Ticket keys are
    removed too, so "Re: [SUP-42] Printer broken" matches the original "Printer
    broken". Remove a trailing "(fwd)", casefold, and collapse runs of whitespace to
    one space. Tags after the first word of text stay, ticket keys among them.

    >>> normalize_subject("RE: AW:  [EXT] Printer   BROKEN (fwd)")
    'printer broken'
    """
    _, rest = split_leading_parts(unicodedata.normalize("NFKC", subject))

    rest = _FWD_SUFFIX.sub("", rest)
    return _WHITESPACE.sub(" ", rest.casefold()).strip()


def has_reply_prefix(subject: str) -> bool:
    """Tell whether the outermost prefix of a subject marks a reply.

    Leading tags are skipped, so "[EXT] Re: …" is a reply. The outermost prefix
    decides: "Fwd: Re: …" is a forward of a reply (someone passing a conversation on),
    so it returns False, while "Re: Fwd: …" returns True.

    >>> has_reply_prefix("[EXT] SV: Faktura")
    True
    >>> has_reply_prefix("Fwd: Re: Invoice")
    False
    """
    parts, _ = split_leading_parts(unicodedata.normalize("NFKC", subject))

    for part in parts:
        if part.kind != "tag":
            return part.kind == "reply"
    return False
