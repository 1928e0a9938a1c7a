"""Tenant, priority, component and environment of one event.

Every function here is pure: it reads the event dict (the parser's output, see
`ticketflow.model.Event`) and settings, and returns plain values. Missing or
malformed fields never raise; they read as absent, so the next rule applies.

Header names are matched case-insensitively, because the event keeps them in the
spelling the sender used ("X-PRIORITY", "x-tenant-id"). A step that reads many
headers of one event builds `header_map(event)` once and passes it as `headers=`,
so each lookup is one dict access instead of a scan of every header.

Limitations:
- The body rules ("component: …", "env: …") read the plain-text body only; an
  HTML-only message has no such lines.
- X-Tenant-Id is trusted as it arrives. The receiving MTA must remove a copy that
  the sender wrote, or a sender can file mail under any tenant.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from email.utils import getaddresses
from functools import lru_cache
from itertools import islice
from typing import Any, Literal, TypeAlias, TypedDict

from ticketflow.operators.subject import split_leading_parts

from ticketflow.config import RoutingSettings

DEFAULT_PRIORITY = "P3"

# A tenant id is used in keys, metric labels and store rows, so only this shape passes.
_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

# "[P1]", "[p1]", "[ P1 ]" and "[P 1]" all count; "[P5]" and "[Prio1]" do not.
_PRIORITY_TAG = re.compile(r"\[\s*p\s*([0-4])\s*\]", re.IGNORECASE)

# Tags that name a priority or severity in other notations are never components.
_PRIORITY_LIKE = re.compile(r"(?:p|prio|priority|sev|severity)\s*-?\s*\d+", re.IGNORECASE)

# Ticket keys of any tracker ("ABC-123", "sup-42"); matched whatever the configured
# key pattern is, because a key of another system is not a component either.
_KEY_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9]*-\d+")

# A component tag starts with a letter and contains letters, digits, spaces and
# "._-/&+". So "[#ff0000]", "[Ticket#123]" and "[Fwd: …]" are not components.
_COMPONENT_NAME = re.compile(r"[^\W\d_][\w .&/+-]{0,39}")

# Three digits in a row mark a reference number ("[Case 12345]", "[INC0012345]").
_REFERENCE_NUMBER = re.compile(r"\d{3}")

# Tags that gateways, filters and other mail tools put in front of a subject.
BANNER_TAGS = frozenset({
    "ext", "extern", "external", "externe", "external email", "external sender",
    "spam", "suspected spam", "possible spam", "suspicious", "phishing", "caution",
    "warning", "fw", "fwd", "re", "urgent", "important", "secure", "encrypt",
    "encrypted", "confidential", "sensitive", "bulk", "ad", "adv", "advertisement",
    "newsletter", "marketing", "ooo", "out of office", "auto-reply", "autoreply",
    "ticket",
})

# The body rules read this many non-empty lines from the top of the plain-text body,
# within this many characters, so a huge body costs bounded work.
BODY_FIELD_LINES = 5
BODY_FIELD_CHARS = 8192

_BODY_FIELD = re.compile(r"(?P<name>[A-Za-z]+)\s*:\s*(?P<value>\S.*)")

_X_PRIORITY = re.compile(r"\s*([1-5])(?!\d)")
_X_PRIORITY_LEVELS = {"1": "P1", "2": "P2", "3": "P3", "4": "P4", "5": "P4"}
_IMPORTANCE_LEVELS = {"high": "P2", "low": "P4"}
_PRIORITY_HEADER_LEVELS = {"urgent": "P1", "non-urgent": "P4"}

_SLUG_SEPARATORS = re.compile(r"[^\w.]+")

# A bare addr-spec of dot-atoms ("acme-support@support.example.com"), the usual shape
# of Delivered-To. For it `getaddresses` returns the text unchanged, so the tenant rule
# skips the full RFC 5322 address parser. Any other shape still goes through it.
_BARE_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)

# An event's headers by casefolded name (see `header_map`).
HeaderMap: TypeAlias = Mapping[str, str | None]
_WHITESPACE = re.compile(r"\s+")


class Enrichment(TypedDict):
    """Ticket fields that `enrich` sets."""

    priority: str
    component: str | None
    environment: str | None
    tier: str | None


def enrich(
    event: Mapping[str, Any], routing: RoutingSettings, *, headers: HeaderMap | None = None
) -> Enrichment:
    """Return the priority, component, environment and customer tier of an event.

    `headers` is `header_map(event)` when the caller already built it. The tier is
    always None for now.
    """
    # NOTE: `routing` is unused until customer tiers are configured per tenant; the
    # parameter keeps the flow's call the same when they are.
    if headers is None:
        headers = header_map(event)
    return {
        "priority": priority_for(event, headers=headers),
        "component": component_for(event),
        "environment": environment_for(event, headers=headers),
        "tier": None,
    }


# -- headers and addresses ----------------------------------------------------------


def header_map(event: Mapping[str, Any]) -> dict[str, str | None]:
    """Map each header name of an event, casefolded, to its value.

    Lookups must use casefolded names ("x-priority"). When two spellings of one
    name are present, the first in the event's order wins, as in `header_value`.
    A value that is not a string (a malformed JSON event) maps to None, and a
    name that is not a string is left out. The map is a new dict that the caller
    owns, so worker threads never share one.
    """
    headers = event.get("headers")
    if not isinstance(headers, Mapping):
        return {}

    folded: dict[str, str | None] = {}
    for key, value in headers.items():
        if isinstance(key, str):
            folded.setdefault(key.casefold(), value if isinstance(value, str) else None)
    return folded


def header_value(event: Mapping[str, Any], name: str) -> str | None:
    """Return the value of header `name`, matched case-insensitively, or None.

    A value that is not a string (a malformed JSON event) reads as absent. For
    several lookups on one event, build `header_map` once instead.
    """
    headers = event.get("headers")
    if not isinstance(headers, Mapping):
        return None

    wanted = name.casefold()
    for key, value in headers.items():
        if isinstance(key, str) and key.casefold() == wanted:
            return value if isinstance(value, str) else None
    return None


def envelope_field(event: Mapping[str, Any], name: str) -> Any:
    """Return one envelope field, or None when the envelope or the field is missing."""
    envelope = event.get("envelope")
    if not isinstance(envelope, Mapping):
        return None
    return envelope.get(name)


def address_domain(address: str) -> str:
    """Return the lowercased domain after the last "@", without a trailing dot; "" if none."""
    _, at, domain = address.rpartition("@")
    if not at:
        return ""
    return domain.strip().rstrip(".").lower()


def is_inbound_address(address: str, routing: RoutingSettings) -> bool:
    """Tell whether an address is on one of the inbound domains (exactly, not a subdomain)."""
    domain = address_domain(address)
    if not domain:
        return False
    return domain in _normalized_domains(routing.inbound_domains)


@lru_cache(maxsize=64)
def _normalized_domains(domains: tuple[str, ...]) -> frozenset[str]:
    return frozenset(domain.strip().rstrip(".").lower() for domain in domains)


# -- tenant -------------------------------------------------------------------------


def tenants_for(
    event: Mapping[str, Any], routing: RoutingSettings, *, headers: HeaderMap | None = None
) -> list[str]:
    """Return the tenants an event belongs to, sorted and unique, never empty.

    `headers` is `header_map(event)` when the caller already built it.

    Rules, first match wins:
    1. X-Tenant-Id, lowercased: one tenant.
    2. Delivered-To, else X-Original-To: the addresses in it that are on an inbound domain.
    3. Every To and Cc address on an inbound domain.
    4. `routing.default_tenant`.

    When `routing.allowed_tenants` is set, a tenant outside it does not count
    (the next rule applies), and one message makes at most
    `routing.max_tenants_per_message` copies.

    From an address, the tenant is the local part up to the first "-" or "+",
    lowercased: "app1-support@…" and "acme+billing@…" give "app1" and "acme". A
    tenant id must be 1 to 64 characters of a-z, 0-9, "_", "." and "-", starting
    with a letter or digit. A value of another shape is skipped, so the next
    address or rule applies.

    >>> routing = RoutingSettings(inbound_domains=("support.example.com",))
    >>> event = {"envelope": {"to": ["app1-support@support.example.com"], "cc": []}}
    >>> tenants_for(event, routing)
    ['app1']
    """
    if headers is None:
        headers = header_map(event)

    tenant = _tenant_id(headers.get("x-tenant-id") or "")
    if tenant and _allowed([tenant], routing):
        return [tenant]

    for name in ("delivered-to", "x-original-to"):
        addresses = _addresses_in(headers.get(name) or "")
        tenants = _allowed(_tenants_from_addresses(addresses, routing), routing)
        if tenants:
            return tenants

    recipients = _address_list(envelope_field(event, "to")) + _address_list(
        envelope_field(event, "cc")
    )
    tenants = _allowed(_tenants_from_addresses(recipients, routing), routing)
    if tenants:
        return tenants

    return [routing.default_tenant]


def _addresses_in(value: str) -> list[str]:
    """Return the addr-specs of an address-list header value, as `getaddresses` reads them."""
    bare = value.strip()
    if _BARE_ADDRESS.fullmatch(bare):
        return [bare]
    return [address for _, address in getaddresses([value])]


def _allowed(tenants: list[str], routing: RoutingSettings) -> list[str]:
    """Keep the tenants `routing.allowed_tenants` permits, at most `max_tenants_per_message`."""
    if routing.allowed_tenants:
        tenants = [tenant for tenant in tenants if tenant in routing.allowed_tenants]
    return tenants[: routing.max_tenants_per_message]


def tenant_from_address(address: str) -> str | None:
    """Return the tenant named by an address's local part, or None when it is no tenant id.

    >>> tenant_from_address("Acme-Support+billing@support.example.com")
    'acme'
    """
    local, at, _ = address.rpartition("@")
    if not at:
        return None
    return _tenant_id(re.split(r"[-+]", local, maxsplit=1)[0])


def _tenants_from_addresses(addresses: Iterable[str], routing: RoutingSettings) -> list[str]:
    tenants = set()
    for address in addresses:
        if not is_inbound_address(address, routing):
            continue
        tenant = tenant_from_address(address)
        if tenant:
            tenants.add(tenant)
    return sorted(tenants)


def _tenant_id(text: str) -> str | None:
    candidate = text.strip().lower()
    return candidate if _TENANT_ID.fullmatch(candidate) else None


def _address_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [address for address in value if isinstance(address, str)]


# -- priority -----------------------------------------------------------------------


def priority_for(event: Mapping[str, Any], *, headers: HeaderMap | None = None) -> str:
    """Return the priority "P0" (highest) to "P4" of an event.

    `headers` is `header_map(event)` when the caller already built it.

    Rules, first match wins:
    1. A tag "[P0]" to "[P4]" anywhere in the subject, the leftmost one. The tag is
       case-insensitive and may have spaces inside the brackets ("[p1]", "[ P1 ]").
    2. X-Priority: 1 gives P1, 2 P2, 3 P3, 4 and 5 P4; a comment after the number
       ("1 (Highest)") is ignored. Only a tag can give P0.
    3. Importance (high P2, low P4) and Priority (urgent P1, non-urgent P4); when both
       are present, the more urgent one.
    4. "P3".

    >>> priority_for({"envelope": {"subject": "Checkout down [P0]"}})
    'P0'
    >>> priority_for({"envelope": {"subject": "x"}, "headers": {"X-Priority": "1 (Highest)"}})
    'P1'
    """
    tagged = priority_from_subject(_subject(event))
    if tagged:
        return tagged

    if headers is None:
        headers = header_map(event)
    return (
        _priority_from_x_priority(headers.get("x-priority"))
        or _priority_from_importance(headers)
        or DEFAULT_PRIORITY
    )


def priority_from_subject(subject: str) -> str | None:
    """Return the priority of the leftmost "[P0]" to "[P4]" tag in a subject, or None."""
    tag = _PRIORITY_TAG.search(subject)
    return f"P{tag.group(1)}" if tag else None


def _priority_from_x_priority(value: str | None) -> str | None:
    number = _X_PRIORITY.match(value or "")
    return _X_PRIORITY_LEVELS[number.group(1)] if number else None


def _priority_from_importance(headers: HeaderMap) -> str | None:
    levels = [
        _IMPORTANCE_LEVELS.get(_first_word(headers.get("importance"))),
        _PRIORITY_HEADER_LEVELS.get(_first_word(headers.get("priority"))),
    ]
    present = [level for level in levels if level]
    return min(present) if present else None


def _first_word(value: str | None) -> str:
    words = (value or "").split()
    return words[0].casefold() if words else ""


# -- component and environment --------------------------------------------------------


def component_for(event: Mapping[str, Any]) -> str | None:
    """Return the component an event is about, as a slug, or None.

    Rules, first match wins:
    1. The first component tag among the tags at the start of the subject
       ("[P1][Payments] API timeout" gives "payments"). A component tag starts with a
       letter and has at most 40 characters of letters, digits, spaces and "._-/&+".
       It is not a priority tag, a ticket key ("[ABC-123]"), a reference number
       (three digits in a row), or one of the banner tags in `BANNER_TAGS`.
    2. A line "component: NAME" among the first 5 non-empty lines of the plain-text
       body, with NAME following the same rule.

    >>> component_for({"envelope": {"subject": "[EXT] Re: [Billing API] Refund failed"}})
    'billing-api'
    """
    for part in split_leading_parts(_subject(event))[0]:
        if part.kind == "tag":
            component = component_name(part.text)
            if component:
                return component

    value = body_field(_text(event), ("component",))
    return component_name(value) if value else None


def component_name(text: str) -> str | None:
    """Return the slug of a component name, or None when `text` cannot be one."""
    name = _WHITESPACE.sub(" ", text.strip())
    if _tag_kind(name) != "component":
        return None
    return slug(name)


def environment_for(event: Mapping[str, Any], *, headers: HeaderMap | None = None) -> str | None:
    """Return the environment an event is about, as a lowercase token, or None.

    Rules, first match wins: the X-Environment header, then a line "env: NAME" or
    "environment: NAME" among the first 5 non-empty lines of the plain-text body. The
    value becomes a slug ("Prod US-West-2" gives "prod-us-west-2"); a value with no
    letters or digits, or a slug longer than 64 characters, reads as absent.
    `headers` is `header_map(event)` when the caller already built it.

    >>> environment_for({"headers": {"x-environment": "Prod US-West-2"}})
    'prod-us-west-2'
    """
    if headers is None:
        headers = header_map(event)
    header = slug(headers.get("x-environment") or "")
    if header:
        return header

    value = body_field(_text(event), ("env", "environment"))
    return slug(value) if value else None


def body_field(text: str, names: tuple[str, ...]) -> str | None:
    """Return the value of the first "NAME: value" line at the top of a body.

    Only the first `BODY_FIELD_LINES` non-empty lines within the first
    `BODY_FIELD_CHARS` characters are read; `names` are matched case-insensitively.
    A quoted line ("> component: x") does not count.
    """
    lines = (line.strip() for line in text[:BODY_FIELD_CHARS].splitlines())
    wanted = {name.casefold() for name in names}

    for line in islice((line for line in lines if line), BODY_FIELD_LINES):
        field = _BODY_FIELD.fullmatch(line)
        if field and field.group("name").casefold() in wanted:
            return field.group("value").strip()
    return None


def slug(text: str) -> str | None:
    """Return `text` as a lowercase slug, or None when nothing usable is left.

    Accents are dropped ("Facturación" gives "facturacion"), letters of other scripts
    are kept, and every run of characters other than letters, digits, "_" and "." becomes
    one "-". A slug longer than 64 characters is None, not truncated, so two long names
    never collapse into one.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    without_marks = "".join(char for char in decomposed if unicodedata.category(char) != "Mn")
    folded = unicodedata.normalize("NFC", without_marks).casefold()

    result = _SLUG_SEPARATORS.sub("-", folded).strip("-._")
    if not result or len(result) > 64:
        return None
    return result


# -- subject ------------------------------------------------------------------------


def clean_subject(subject: str) -> str:
    """Return a subject for a ticket summary.

    Removes the leading reply/forward prefixes, the priority tags "[P0]" to "[P4]"
    (anywhere), and the component and banner tags at the start. Ticket keys and
    other leading tags are kept, in their order ("Re: [EXT] [SUP-42][Payments] Timeout"
    gives "[SUP-42] Timeout"). Whitespace runs become one space. Returns "" when
    nothing is left.

    >>> clean_subject("RE: [P1][Payments] API timeout on POST /charges")
    'API timeout on POST /charges'
    """
    parts, rest = split_leading_parts(subject)

    kept_tags = [
        f"[{part.text}]"
        for part in parts
        if part.kind == "tag" and _tag_kind(part.text) in ("key", "other")
    ]
    rest = _PRIORITY_TAG.sub(" ", rest)

    return _WHITESPACE.sub(" ", " ".join([*kept_tags, rest])).strip()


TagKind = Literal["priority", "key", "banner", "component", "other"]


def _tag_kind(text: str) -> TagKind:
    """Classify the content of a bracketed subject tag."""
    name = _WHITESPACE.sub(" ", text.strip())

    if _PRIORITY_TAG.fullmatch(f"[{name}]"):
        return "priority"
    if _KEY_LIKE.fullmatch(name):
        return "key"
    if name.casefold() in BANNER_TAGS:
        return "banner"
    if (
        _COMPONENT_NAME.fullmatch(name)
        and not _PRIORITY_LIKE.fullmatch(name)
        and not _REFERENCE_NUMBER.search(name)
        and slug(name)
    ):
        return "component"
    return "other"


def _subject(event: Mapping[str, Any]) -> str:
    subject = envelope_field(event, "subject")
    return subject if isinstance(subject, str) else ""


def _text(event: Mapping[str, Any]) -> str:
    text = event.get("text")
    return text if isinstance(text, str) else ""
