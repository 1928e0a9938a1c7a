"""Attachment governance: what of a message's files and HTML may reach a ticket.

`AttachmentGovernor.govern` takes a parsed message's attachments (the event's
entries with their decoded bytes) and its HTML body, and returns both governed.
For each file, in message order:

1. TNEF: a winmail.dat (TNEF signature, an `application/ms-tnef` declaration or
   that name) is replaced by the files inside it, each governed like any other
   file below (`[attachments] unpack_tnef`). A winmail.dat inside one is
   unpacked too, down to `MAX_TNEF_DEPTH` streams; a deeper one is refused
   ("tnef_too_deep"). One that cannot be read in full is listed refused
   ("tnef_unreadable", or "tnef_too_many_files" past the TNEF reader's file
   limit), followed by the files read before the failure, each governed
   on its own. Each refusal is also a defect. One without files is not listed,
   with a "tnef_empty" defect.
2. Type: the content type is sniffed from the bytes (`attachment_types`). When
   it contradicts the declared type, the entry lists the sniffed type and an
   "attachment_type_mismatch" defect names both. A declared type with a fixed
   signature (PDF, PNG, ZIP, ...) on bytes without it is listed as
   application/octet-stream.
3. Name: the filename is made safe (`attachment_names`). A changed name gets an
   "unsafe_filename" defect, and a nameless part gets `attachment-N.ext`. A name
   that an earlier file of the message has, ignoring letter case, gets a number
   ("report (2).TXT") and a "duplicate_filename" defect.
4. Refusal: the first rule that matches puts its reason token into `refused`.
   - "too_large": the file is over `max_file_bytes`.
   - "type_denied:TYPE": the sniffed, declared or listed type matches `deny_types`.
     Parameters of a declared type ("; name=x") are ignored.
   - "type_not_allowed:TYPE": an `allow_types` list is set and one of those types
     misses it. An allow list must therefore cover both the sniffed and the
     declared type, e.g. "text/*" for a text/csv file that sniffs as text/plain.
   - "message_too_large": the files accepted before it plus this one exceed
     `max_message_bytes`.
5. Malware scan, when a scanner is given (`[attachments] clamd`): a signature
   goes into `quarantined`. A scan that fails refuses the file with
   "scan_unavailable" and a defect, so an unscanned file is never accepted.
   After a failure, files are refused without asking the scanner for
   `scan_retry_seconds`, counted from the end of the failed scan, so an
   unreachable or hanging clamd costs one timeout per pause, not one per file.
   A file over clamd's StreamMaxLength (`ClamdStreamTooLarge`) is refused
   alone with "scan_too_large" and starts no pause.
6. Store, when a store is given: an accepted, clean file is stored and its link
   goes into `download_url`. A store that fails refuses it with
   "store_unavailable" and a defect. Refused and quarantined files are never
   stored, but their size and SHA-256 stay listed.

Only accepted files count toward `max_message_bytes`. Every entry keeps the
event's attachment keys and gains `refused` and `quarantined` (null or a string).

The HTML body gets its `cid:` references rewritten to the links of stored files,
then is sanitized (`attachment_html`, `[attachments] sanitize_html`).

`govern_listed` does what can be done without bytes, for JSON events from a
parsing service: names, declared sizes and declared types, the links of
accepted files, and the HTML. It cannot sniff, scan, unpack or store. A listed
link counts as one of the message's own stored files, which the sanitizer
keeps as an image source, only under `[attachments] base_url` or when it is
the store's link for the listed SHA-256; upstream images are dropped like any
remote image.

Limitations: files inside archives, inside attached messages (message/rfc822)
and inside Office documents are not listed or type-checked. They are only
scanned as part of their container. No rule looks at filename extensions, so a
script sent as text (.js, .vbs, .hta) passes as text/plain unless its declared
type is denied.
"""

from __future__ import annotations

import hashlib
import logging
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from ticketflow.config import AttachmentSettings
from ticketflow.connectors.clamd import ClamdStreamTooLarge
from ticketflow.model import Attachment, Event
from ticketflow.operators.attachment_html import link_content_ids, sanitize_html
from ticketflow.operators.attachment_names import numbered_filename, safe_filename
from ticketflow.operators.attachment_tnef import (
    TNEF_SIGNATURE,
    TnefFile,
    TnefTooManyFiles,
    TnefUnreadable,
    read_tnef,
)
from ticketflow.operators.attachment_types import (
    GENERIC_TYPES,
    OCTET_STREAM,
    TNEF,
    TypePatterns,
    canonical_type,
    effective_type,
    sniff_content_type,
)
from ticketflow.operators.mime_defects import DefectLog

if TYPE_CHECKING:
    from ticketflow.connectors.attachment_store import AttachmentStore

__all__ = ["AttachmentGovernor", "GovernedBodies", "MalwareScanner"]

log = logging.getLogger(__name__)

# Seconds during which files are refused without a scan after the scanner failed.
SCAN_RETRY_SECONDS = 10.0
# Files listed per message after TNEF unpacking; the rest are dropped with a defect.
MAX_FILES = 1000
# TNEF streams unpacked inside one another; a winmail.dat nested deeper is refused.
MAX_TNEF_DEPTH = 3

TOO_LARGE = "too_large"
MESSAGE_TOO_LARGE = "message_too_large"
SCAN_UNAVAILABLE = "scan_unavailable"
SCAN_TOO_LARGE = "scan_too_large"
STORE_UNAVAILABLE = "store_unavailable"
TNEF_UNREADABLE = "tnef_unreadable"
TNEF_TOO_MANY_FILES = "tnef_too_many_files"
TNEF_TOO_DEEP = "tnef_too_deep"


class MalwareScanner(Protocol):
    """A malware scanner such as `ticketflow.connectors.clamd.ClamdScanner`.

    `scan` returns the name of the signature that matched, or None for a clean
    file. It raises when it could not scan.
    """

    def scan(self, data: bytes) -> str | None:
        """Scan `data` and return the matching signature's name, or None when it is clean."""
        ...


@dataclass(frozen=True)
class GovernedBodies:
    """A message's attachment entries and HTML body after governance."""

    attachments: list[Attachment]
    html: str


@dataclass(frozen=True)
class _File:
    """A file to govern: its event entry, its bytes, and a refusal decided while unpacking."""

    entry: Attachment
    content: bytes
    refusal: str | None = None


class _MessageNames:
    """The filenames given so far in one message, compared case-insensitively."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._next_number: dict[str, int] = {}

    def unique(self, name: str) -> str:
        """Return `name`, or `name` numbered ("report (2).txt") when the message has it already."""
        key = name.casefold()
        number = self._next_number.get(key, 2)
        candidate = name
        while candidate.casefold() in self._taken:
            candidate = numbered_filename(name, number)
            number += 1
        self._next_number[key] = number
        self._taken.add(candidate.casefold())
        return candidate


class _MessageBudget:
    """Bytes of accepted files so far, against `max_message_bytes`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit

    def spend(self, size: int) -> None:
        self.used += size


class AttachmentGovernor:
    """Apply `[attachments]` settings to each message's files and HTML (module docstring).

    `store` keeps accepted files. Without one no bytes are kept, so
    `download_url` stays null. `scanner` scans them, and None scans nothing.
    `clock` returns the seconds that time the scan retry pause. One governor
    serves every message of a run and may be shared by threads.
    """

    def __init__(
        self,
        settings: AttachmentSettings,
        *,
        store: AttachmentStore | None = None,
        scanner: MalwareScanner | None = None,
        clock: Callable[[], float] = time.monotonic,
        scan_retry_seconds: float = SCAN_RETRY_SECONDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.scanner = scanner
        self._deny = TypePatterns(settings.deny_types)
        self._allow = TypePatterns(settings.allow_types)
        self._clock = clock
        self._scan_retry_seconds = scan_retry_seconds
        self._scans_paused_until = float("-inf")

    def govern(
        self, files: Sequence[tuple[Attachment, bytes]], html: str, defects: DefectLog
    ) -> GovernedBodies:
        """Govern a parsed message's attachments (entry and bytes each) and its HTML body."""
        if not files:
            return GovernedBodies([], self._govern_html(html, [], []))
        if self.settings.unpack_tnef:
            queue = self._unpack_tnef(files, defects)
        else:
            queue = [_File(entry, content) for entry, content in files]
        budget = _MessageBudget(self.settings.max_message_bytes)
        names = _MessageNames()
        attachments = [
            self._govern_file(file, position, budget, names, defects)
            for position, file in enumerate(queue, start=1)
        ]
        own_links = [entry["download_url"] for entry in attachments if entry["download_url"]]
        return GovernedBodies(attachments, self._govern_html(html, attachments, own_links))

    def govern_listed(
        self, attachments: Sequence[Attachment], html: str, defects: DefectLog
    ) -> GovernedBodies:
        """Govern attachment entries without their bytes, as a JSON event lists them."""
        budget = _MessageBudget(self.settings.max_message_bytes)
        names = _MessageNames()
        governed = [
            self._govern_listed_file(entry, position, budget, names, defects)
            for position, entry in enumerate(attachments, start=1)
        ]
        own_links = [
            entry["download_url"]
            for entry in governed
            if entry["download_url"] and self._is_own_link(entry["download_url"], entry["sha256"])
        ]
        return GovernedBodies(governed, self._govern_html(html, governed, own_links))

    def _is_own_link(self, url: str, sha256: str) -> bool:
        """Tell whether a listed link points into this run's store: under `base_url`, or its own."""
        base_url = self.settings.base_url.rstrip("/")
        if base_url and url.startswith(base_url + "/"):
            return True
        if self.store is None:
            return False
        try:
            return url == self.store.url_for(sha256)
        except ValueError:  # no valid SHA-256 listed
            return False

    def govern_event(self, event: Event) -> Event:
        """Return a JSON event with its attachments and HTML governed (see `govern_listed`)."""
        defects = DefectLog()
        for defect in event["defects"]:
            defects.add(defect["code"], defect["detail"])
        governed = self.govern_listed(event["attachments"], event["html"], defects)
        return cast(
            Event,
            {
                **event,
                "attachments": governed.attachments,
                "html": governed.html,
                "defects": defects.as_list(),
            },
        )

    # -- one file -------------------------------------------------------------------------

    def _govern_file(
        self,
        file: _File,
        position: int,
        budget: _MessageBudget,
        names: _MessageNames,
        defects: DefectLog,
    ) -> Attachment:
        entry, content = file.entry, file.content
        declared = canonical_type(entry["content_type"])
        sniffed = sniff_content_type(content)
        verdict = effective_type(declared, sniffed)
        filename = self._safe_name(
            entry["filename"], verdict.content_type, position, names, defects
        )
        label = f"attachment {position} {filename!r}"
        found = [sniffed]
        if verdict.mismatch:
            defects.add(
                "attachment_type_mismatch",
                f"{label}: declared {declared}, content is {sniffed or verdict.content_type}",
            )
            # The listed type is a finding about the bytes, so it is checked even
            # when it is application/octet-stream (a declared PDF without "%PDF-").
            found.append(verdict.content_type)
        governed = _entry(entry, filename=filename, content_type=verdict.content_type)

        refusal = file.refusal or self._refusal(len(content), found, [declared], budget)
        if refusal is None and self.scanner is not None:
            refusal = self._scan(content, governed, label, defects)
        if refusal is not None:
            governed["refused"] = refusal
        if refusal is not None or governed["quarantined"] is not None:
            return cast(Attachment, governed)

        budget.spend(len(content))
        if self.store is not None:
            self._store(content, governed, label, defects)
        return cast(Attachment, governed)

    def _govern_listed_file(
        self,
        entry: Attachment,
        position: int,
        budget: _MessageBudget,
        names: _MessageNames,
        defects: DefectLog,
    ) -> Attachment:
        declared = canonical_type(entry["content_type"]) or OCTET_STREAM
        filename = self._safe_name(entry["filename"], declared, position, names, defects)
        listed = cast(dict[str, Any], entry)
        governed = _entry(entry, filename=filename, content_type=declared)
        governed["download_url"] = entry["download_url"]
        governed["refused"] = listed.get("refused")
        governed["quarantined"] = listed.get("quarantined")
        if governed["refused"] is None and governed["quarantined"] is None:
            governed["refused"] = self._refusal(entry["size"], [], [declared], budget)
        if governed["refused"] is not None or governed["quarantined"] is not None:
            governed["download_url"] = None
        else:
            budget.spend(entry["size"])
        return cast(Attachment, governed)

    def _safe_name(
        self,
        name: str,
        media_type: str,
        position: int,
        names: _MessageNames,
        defects: DefectLog,
    ) -> str:
        safe = safe_filename(name, media_type, position)
        if name and safe != unicodedata.normalize("NFC", name):
            defects.add("unsafe_filename", f"attachment {position}: {name[:80]!r} renamed {safe!r}")
        unique = names.unique(safe)
        if unique != safe:
            defects.add(
                "duplicate_filename",
                f"attachment {position}: {safe!r} renamed {unique!r}; an earlier file of the "
                "message has that name (letter case ignored)",
            )
        return unique

    def _refusal(
        self,
        size: int,
        found: list[str | None],
        declared: list[str | None],
        budget: _MessageBudget,
    ) -> str | None:
        """Return why a file of `size` bytes and these types is refused, or None.

        `found` are the types learned from the bytes (None when nothing was) and
        `declared` the declared ones, of which generic declarations
        (application/octet-stream) are skipped. A file with no type left is
        checked as application/octet-stream.
        """
        if size > self.settings.max_file_bytes:
            return TOO_LARGE
        specific = [t for t in declared if t not in GENERIC_TYPES]
        checked = [t for t in dict.fromkeys([*found, *specific]) if t]
        checked = checked or [OCTET_STREAM]
        for media_type in checked:
            if self._deny.match(media_type):
                return f"type_denied:{media_type}"
        if self._allow:
            for media_type in checked:
                if not self._allow.match(media_type):
                    return f"type_not_allowed:{media_type}"
        if not budget.fits(size):
            return MESSAGE_TOO_LARGE
        return None

    def _scan(
        self, content: bytes, governed: dict[str, Any], label: str, defects: DefectLog
    ) -> str | None:
        """Scan a file and set `quarantined` on a match, or return why it was not scanned.

        A file too large for the scanner is refused alone ("scan_too_large").
        Any other failure refuses the file ("scan_unavailable") and pauses scans
        for `scan_retry_seconds` from the moment the failed scan ended.
        """
        assert self.scanner is not None
        if self._clock() < self._scans_paused_until:
            defects.add(
                SCAN_UNAVAILABLE,
                f"{label} not scanned: the malware scanner failed less than "
                f"{self._scan_retry_seconds:g}s ago; refused",
            )
            return SCAN_UNAVAILABLE
        try:
            signature = self.scanner.scan(content)
        except ClamdStreamTooLarge as error:
            # clamd is up; only this file is over its StreamMaxLength.
            log.warning(
                "attachment sha256=%s too large to scan: %s", governed["sha256"], error
            )
            defects.add(SCAN_TOO_LARGE, f"{label} not scanned ({error}); refused")
            return SCAN_TOO_LARGE
        # Every failure refuses the file, whatever the scanner raises, because
        # an unscanned file is never accepted.
        except Exception as error:  # noqa: BLE001
            # Timed from the end of the failed scan, which may have waited for a timeout.
            self._scans_paused_until = self._clock() + self._scan_retry_seconds
            log.warning(
                "malware scan of attachment sha256=%s failed: %s", governed["sha256"], error
            )
            defects.add(SCAN_UNAVAILABLE, f"{label} not scanned ({error}); refused")
            return SCAN_UNAVAILABLE
        governed["quarantined"] = signature
        return None

    def _store(
        self, content: bytes, governed: dict[str, Any], label: str, defects: DefectLog
    ) -> None:
        assert self.store is not None
        try:
            stored = self.store.put(content, governed["content_type"])
        except OSError as error:
            log.warning("storing attachment sha256=%s failed: %s", governed["sha256"], error)
            defects.add(STORE_UNAVAILABLE, f"{label} not stored ({error}); refused")
            governed["refused"] = STORE_UNAVAILABLE
            return
        governed["download_url"] = stored.url

    # -- TNEF and HTML ----------------------------------------------------------------------

    def _unpack_tnef(
        self, files: Sequence[tuple[Attachment, bytes]], defects: DefectLog
    ) -> list[_File]:
        unpacked: list[_File] = []
        for entry, content in files:
            _add_unpacked(entry, content, 1, unpacked, defects)
        if len(unpacked) > MAX_FILES:
            defects.add(
                "part_limit",
                f"more than {MAX_FILES} attachments after unpacking TNEF; only the first "
                f"{MAX_FILES} listed",
            )
            unpacked = unpacked[:MAX_FILES]
        return unpacked

    def _govern_html(
        self, html: str, attachments: Sequence[Attachment], own_links: Sequence[str]
    ) -> str:
        """Link `cid:` references to the attachments' links, then sanitize.

        Only `own_links` (links into this run's store) may stay as image sources.
        """
        links = {
            entry["content_id"]: entry["download_url"]
            for entry in attachments
            if entry["content_id"] and entry["download_url"]
        }
        html = link_content_ids(html, links)
        if self.settings.sanitize_html:
            html = sanitize_html(html, own_links)
        return html


def _add_unpacked(
    entry: Attachment, content: bytes, depth: int, unpacked: list[_File], defects: DefectLog
) -> None:
    """Append a file to `unpacked`, or, for a TNEF stream, the files it carries.

    `depth` is 1 for a file of the message and one more for each TNEF stream
    around it. A stream that cannot be read in full, has too many files or
    lies deeper than `MAX_TNEF_DEPTH` is listed refused, followed by the files
    read from it, each governed on its own.
    """
    if not _is_tnef(entry, content):
        unpacked.append(_File(entry, content))
        return
    name = entry["filename"]
    if depth > MAX_TNEF_DEPTH:
        defects.add(
            TNEF_TOO_DEEP,
            f"{name!r} is a TNEF stream inside {MAX_TNEF_DEPTH} others; refused unread",
        )
        unpacked.append(_File(entry, content, TNEF_TOO_DEEP))
        return
    try:
        inner = read_tnef(content)
    except TnefUnreadable as error:
        reason = TNEF_TOO_MANY_FILES if isinstance(error, TnefTooManyFiles) else TNEF_UNREADABLE
        defects.add(
            reason,
            f"{name!r}: {error}; refused, and each of the {len(error.files)} file(s) read "
            "before that is checked on its own",
        )
        unpacked.append(_File(entry, content, reason))
        inner = error.files
    else:
        if not inner:
            defects.add("tnef_empty", f"{name!r} carries no files; not listed")
    for file in inner:
        if len(unpacked) > MAX_FILES:
            return  # the caller cuts the list and notes it
        _add_unpacked(_tnef_entry(file), file.data, depth + 1, unpacked, defects)


def _entry(entry: Attachment, *, filename: str, content_type: str) -> dict[str, Any]:
    """Copy an event entry with new name and type, no link, and no verdict yet."""
    return {
        **entry,
        "filename": filename,
        "content_type": content_type,
        "download_url": None,
        "refused": None,
        "quarantined": None,
    }


def _is_tnef(entry: Attachment, content: bytes) -> bool:
    return (
        content.startswith(TNEF_SIGNATURE)
        or canonical_type(entry["content_type"]) == TNEF
        or entry["filename"].strip().lower() == "winmail.dat"
    )


def _tnef_entry(file: TnefFile) -> Attachment:
    """Describe a file from a TNEF stream as an event entry, as the parser describes a part."""
    return {
        "filename": file.filename,
        "content_type": file.content_type or OCTET_STREAM,
        "size": len(file.data),
        "content_id": file.content_id,
        "disposition": "inline" if file.content_id else "attachment",
        "sha256": hashlib.sha256(file.data).hexdigest(),
        "download_url": None,
    }
