"""Log lines as text or JSON, with personal data and secrets masked before they are written.

`configure_logging` installs one handler on the root logger, so every module's
logger (``logging.getLogger(__name__)``) goes through it:

- ``[logging] format = "text"`` (the default) writes
  ``2026-05-04 08:00:01,123 INFO ticketflow.runner: run started: …``, which reads
  best in a terminal, where the CLI is mostly run by hand;
- ``format = "json"`` writes one JSON object per line with ``time`` (RFC 3339, UTC,
  milliseconds), ``level``, ``logger`` and ``message``, plus ``event_id``,
  ``ticket_id`` and ``source`` when the call passes them in ``extra``, and
  ``exception`` with the traceback. Log collectors read this without parsing rules.

Both formats mask what `[logging] mask` names (all four by default) in the whole
line, arguments and tracebacks included:

- ``addresses``: email addresses keep their domain, ``***@example.com``;
- ``tokens``: the value after ``Bearer``/``Basic``, after ``api_key=``,
  ``token:``, ``password=`` and similar names, and keys of well-known shapes
  (``sk_live_…``, ``ghp_…``, ``xoxb-…``, ``AKIA…``, JSON Web Tokens);
- ``cards``: 13 to 19 digits, optionally grouped by spaces or dashes, that pass
  the Luhn check, keeping the last four (``****1111``);
- ``urls``: the password of ``scheme://user:password@host``.

Masking errs towards hiding: a Message-ID looks like an address and loses its
left part, and a 13 to 19 digit number that passes the Luhn check by chance
(about one in ten) is masked like a card number.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any

from ticketflow.config import MASK_KINDS, LoggingSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a log call may pass in `extra`, copied into the JSON object when present.
CONTEXT_FIELDS = ("event_id", "ticket_id", "source")
MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]+@")

_TOKEN_AFTER_SCHEME = re.compile(r"(?i)\b(?P<prefix>(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}")
_TOKEN_AFTER_NAME = re.compile(
    r"(?i)(?P<prefix>\b(?:api[_-]?key|x-api-key|apikey|access[_-]?key|secret[_-]?key|"
    r"access[_-]?token|auth[_-]?token|refresh[_-]?token|id[_-]?token|token|client[_-]?secret|"
    r"secret|password|passwd|pwd|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"(?!\*\*\*)(?!(?:bearer|basic)\s)[^\s\"',;&<>]+"
)
_TOKEN_SHAPES = re.compile(
    r"\b(?:"
    r"(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub
    r"|github_pat_[A-Za-z0-9_]{30,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"  # JSON Web Token
    r")"
)

_CARD_LIKE = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")

_ADDRESS = re.compile(
    r"(?:\"[^\"\r\n@]+\"|[\w.!#$%&'*+/=?^`{|}~-]+)@(?P<domain>[\w-]+(?:\.[\w-]+)+)"
)


def luhn_valid(digits: str) -> bool:
    """Return whether a string of digits passes the Luhn check, as payment card numbers do.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _mask_urls(text: str) -> str:
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(lambda match: f"{match['prefix']}{MASK}@", text)


def _mask_tokens(text: str) -> str:
    text = _TOKEN_AFTER_SCHEME.sub(lambda match: f"{match['prefix']}{MASK}", text)
    text = _TOKEN_AFTER_NAME.sub(lambda match: f"{match['prefix']}{MASK}", text)
    return _TOKEN_SHAPES.sub(MASK, text)


def _mask_cards(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if luhn_valid(digits):
            return f"****{digits[-4:]}"
        return match.group(0)

    return _CARD_LIKE.sub(replace, text)


def _mask_addresses(text: str) -> str:
    if "@" not in text:
        return text
    return _ADDRESS.sub(lambda match: f"{MASK}@{match['domain']}", text)


# In this order: a URL's password would otherwise read as an address's local part.
_MASKERS: dict[str, Callable[[str], str]] = {
    "urls": _mask_urls,
    "tokens": _mask_tokens,
    "cards": _mask_cards,
    "addresses": _mask_addresses,
}


class Masker:
    """Replace the kinds of personal data and secrets named in `kinds` (see the module docstring).

    >>> Masker(["addresses"]).mask("from alice@example.com")
    'from ***@example.com'
    """

    def __init__(self, kinds: Iterable[str] = MASK_KINDS) -> None:
        chosen = set(kinds)
        unknown = chosen - set(_MASKERS)
        if unknown:
            raise ValueError(
                f"unknown mask kind(s) {sorted(unknown)}; use {', '.join(MASK_KINDS)}"
            )
        self._steps = [step for kind, step in _MASKERS.items() if kind in chosen]

    def mask(self, text: str) -> str:
        """Return `text` with every chosen kind masked."""
        for step in self._steps:
            text = step(text)
        return text


class MaskingTextFormatter(logging.Formatter):
    """The plain text format, masked after the line is complete."""

    def __init__(self, masker: Masker) -> None:
        super().__init__(TEXT_FORMAT)
        self._masker = masker

    def format(self, record: logging.LogRecord) -> str:
        """Format `record` as one masked text line (more when it carries a traceback)."""
        return self._masker.mask(super().format(record))


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record, on one line, every string in it masked."""

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self._masker = masker

    def format(self, record: logging.LogRecord) -> str:
        """Format `record` as a JSON object without newlines inside."""
        mask = self._masker.mask
        document: dict[str, Any] = {
            "time": _rfc3339_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = mask(str(value))
        if record.exc_info:
            document["exception"] = mask(self.formatException(record.exc_info))
        if record.stack_info:
            document["stack"] = mask(self.formatStack(record.stack_info))
        return json.dumps(document, ensure_ascii=False)


def _rfc3339_millis(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def build_formatter(settings: LoggingSettings) -> logging.Formatter:
    """Return the formatter `settings` choose, masking what they name."""
    masker = Masker(settings.mask)
    if settings.format == "json":
        return JsonLinesFormatter(masker)
    return MaskingTextFormatter(masker)


def configure_logging(
    settings: LoggingSettings, *, verbose: bool = False, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every logger's records to `stream` (default: standard error) as `settings` choose.

    Replaces the handler an earlier call installed and leaves other handlers
    (a test runner's, for instance) alone. `verbose` lowers the level to DEBUG.
    Returns the new handler, so a caller can remove it again.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ticketflow", False):
            root.removeHandler(handler)
            handler.close()

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(build_formatter(settings))
    handler._ticketflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else settings.level.upper())
    return handler
