"""What receiving servers recorded about a message: authentication results and spam scores.

Authentication comes from Authentication-Results fields (RFC 8601). Any
server on the path can add one, so when trusted authserv-ids are configured
only fields naming one of them count, topmost first; without them the topmost
field counts alone, since it was added by the last hop, normally our own
server. Received-SPF (RFC 7208 section 9.1) fills in SPF when no
Authentication-Results field gave it.

Spam verdicts come from SpamAssassin-style fields, in the header's own units:
X-Spam-Status (`Yes, score=7.1 required=5.0 ...`), X-Spam-Score, X-Spam-Flag
and X-Spam-Level (one `*` per point).
"""

from __future__ import annotations

import math

import re
from typing import Any

from ticketflow.operators.mime_address import strip_comments
from ticketflow.operators.mime_defects import DefectLog
from ticketflow.operators.mime_headers import HeaderSection
from ticketflow.operators.mime_words import decode_header_bytes

AUTH_METHODS = ("spf", "dkim", "dmarc")
AUTH_RESULTS = frozenset(
    {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"}
)
# Older spellings (RFC 5451, RFC 4408 implementations) of the same results.
_RESULT_ALIASES = {"hardfail": "fail", "temperr": "temperror", "permerr": "permerror"}

_METHOD_RESULT = re.compile(r"^\s*([a-z0-9_-]+)(?:/[0-9]+)?\s*=\s*([a-z]+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_SPAM_STATUS_SCORE = re.compile(r"\b(?:score|hits)\s*=\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE)

# Fields of this size or more are cut before parsing; real ones are far smaller.
_MAX_VERDICT_TEXT = 16 * 1024


def _result_token(text: str) -> str | None:
    token = text.strip().lower()
    token = _RESULT_ALIASES.get(token, token)
    return token if token in AUTH_RESULTS else None


def parse_authentication_results(text: str) -> tuple[str, dict[str, str]]:
    """Return the authserv-id (lowercased) and the spf, dkim and dmarc results of one field.

    Several DKIM results (one per signature) combine to "pass" when any passed,
    else to the first one; SPF and DMARC keep the first.
    """
    statements = strip_comments(text[:_MAX_VERDICT_TEXT]).split(";")
    authserv_words = statements[0].split()
    authserv_id = authserv_words[0].lower() if authserv_words else ""
    results: dict[str, str] = {}
    for statement in statements[1:]:
        found = _METHOD_RESULT.match(statement)
        if not found:
            continue
        method, result = found.group(1).lower(), _result_token(found.group(2))
        if method not in AUTH_METHODS or result is None:
            continue
        if method not in results or (method == "dkim" and result == "pass"):
            results[method] = result
    return authserv_id, results


def authentication_verdicts(
    section: HeaderSection, authserv_ids: tuple[str, ...], defects: DefectLog
) -> dict[str, str]:
    """Combine Authentication-Results and Received-SPF into `{"spf", "dkim", "dmarc"}`.

    A method no trusted field reports is left out.
    """
    trusted = {authserv_id.lower() for authserv_id in authserv_ids}
    verdicts: dict[str, str] = {}
    for raw in section.all("Authentication-Results"):
        authserv_id, results = parse_authentication_results(
            decode_header_bytes(raw, defects, "Authentication-Results")
        )
        if trusted and authserv_id not in trusted:
            continue
        for method, result in results.items():
            verdicts.setdefault(method, result)
        if not trusted:
            break  # only the topmost field, added by the last hop, counts

    received_spf = section.first("Received-SPF")
    if "spf" not in verdicts and received_spf is not None:
        words = decode_header_bytes(received_spf, defects, "Received-SPF").split()
        spf = _result_token(words[0]) if words else None
        if spf:
            verdicts["spf"] = spf
    return {method: verdicts[method] for method in AUTH_METHODS if method in verdicts}


def _first_number(text: str) -> float | None:
    found = _NUMBER.search(text)
    return float(found.group(0)) if found else None


def spam_verdict(section: HeaderSection, defects: DefectLog) -> dict[str, Any]:
    """Return `{"score": float | None, "is_spam": bool}` from the topmost spam fields."""

    def field_text(name: str) -> str | None:
        raw = section.first(name)
        return None if raw is None else decode_header_bytes(raw[:_MAX_VERDICT_TEXT], defects, name)

    score: float | None = None
    is_spam = False

    status = field_text("X-Spam-Status")
    if status is not None:
        is_spam = status.strip().lower().startswith("yes")
        found = _SPAM_STATUS_SCORE.search(status)
        if found:
            score = float(found.group(1))

    score_text = field_text("X-Spam-Score")
    if score is None and score_text is not None:
        score = _first_number(score_text)
        if score is None:
            defects.add("spam_score_invalid", f"X-Spam-Score: {score_text[:40]!r} is no number")

    flag = field_text("X-Spam-Flag")
    if flag is not None and flag.strip().lower().startswith("yes"):
        is_spam = True

    level = field_text("X-Spam-Level")
    if score is None and level is not None and "*" in level:
        score = float(level.count("*"))

    if score is not None and not math.isfinite(score):
        # A 400-digit score reads as infinity, which JSON cannot carry.
        defects.add("spam_score_invalid", "the spam score is not a finite number; ignored")
        score = None
    return {"score": score, "is_spam": is_spam}
