"""Attachment governance: what of a message's files and HTML may reach a ticket.

`AttachmentGovernor.govern` takes a parsed message's attachments (the event's
entries with their decoded bytes) and its HTML body, and returns both governed.
For each file, in message order:

1. TNEF: a winmail.dat (TNEF signature, an `application/ms-tnef` declaration or
   that name) is replaced by the files inside it, each governed like any other
   file below (`[attachments] unpack_tnef`). One that cannot be read stays as
   one file, with a "tnef_unreadable" defect.
2. Type: the content type is sniffed from the bytes (`attachment_types`). When
   it contradicts the declared type, the entry lists the sniffed type and an
   "attachment_type_mismatch" defect names both.
3. Name: the filename is made safe (`attachment_names`). A changed name gets an
   "unsafe_filename" defect, and a nameless part gets `attachment-N.ext`.
4. Refusal: the first rule that matches puts its reason token into `refused`.
   - "too_large": the file is over `max_file_bytes`.
   - "type_denied:TYPE": the sniffed, declared or listed type matches `deny_types`.
   - "type_not_allowed:TYPE": an `allow_types` list is set and one of those types
     misses it. An allow list must therefore cover both the sniffed and the
     declared type, e.g. "text/*" for a text/csv file that sniffs as text/plain.
   - "message_too_large": the files accepted before it plus this one exceed
     `max_message_bytes`.
5. Malware scan, when a scanner is given (`[attachments] clamd`): a signature
   goes into `quarantined`. A scan that fails refuses the file with
   "scan_unavailable" and a defect, so an unscanned file is never accepted.
   After a failure, files are refused without asking the scanner for
   `scan_retry_seconds`, so an unreachable clamd costs one timeout per pause,
   not one per file.
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
accepted files, and the HTML. It cannot sniff, scan, unpack or store.

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
from ticketflow.model import Attachment, Event
from ticketflow.operators.attachment_html import link_content_ids, sanitize_html
from ticketflow.operators.attachment_names import safe_filename
from ticketflow.operators.attachment_tnef import (
    TNEF_SIGNATURE,
    TnefFile,
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

TOO_LARGE = "too_large"
MESSAGE_TOO_LARGE = "message_too_large"
SCAN_UNAVAILABLE = "scan_unavailable"
STORE_UNAVAILABLE = "store_unavailable"


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
            return GovernedBodies([], self._govern_html(html, []))
        if self.settings.unpack_tnef:
            files = self._unpack_tnef(files, defects)
        budget = _MessageBudget(self.settings.max_message_bytes)
        attachments = [
            self._govern_file(entry, content, position, budget, defects)
            for position, (entry, content) in enumerate(files, start=1)
        ]
        return GovernedBodies(attachments, self._govern_html(html, attachments))

    def govern_listed(
        self, attachments: Sequence[Attachment], html: str, defects: DefectLog
    ) -> GovernedBodies:
        """Govern attachment entries without their bytes, as a JSON event lists them."""
        budget = _MessageBudget(self.settings.max_message_bytes)
        governed = [
            self._govern_listed_file(entry, position, budget, defects)
            for position, entry in enumerate(attachments, start=1)
        ]
        return GovernedBodies(governed, self._govern_html(html, governed))

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
        entry: Attachment,
        content: bytes,
        position: int,
        budget: _MessageBudget,
        defects: DefectLog,
    ) -> Attachment:
        declared = canonical_type(entry["content_type"])
        sniffed = sniff_content_type(content)
        verdict = effective_type(declared, sniffed)
        filename = self._safe_name(entry["filename"], verdict.content_type, position, defects)
        label = f"attachment {position} {filename!r}"
        if verdict.mismatch:
            defects.add(
                "attachment_type_mismatch", f"{label}: declared {declared}, content is {sniffed}"
            )
        governed = _entry(entry, filename=filename, content_type=verdict.content_type)

        refusal = self._refusal(len(content), [sniffed, declared, verdict.content_type], budget)
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
        self, entry: Attachment, position: int, budget: _MessageBudget, defects: DefectLog
    ) -> Attachment:
        declared = canonical_type(entry["content_type"]) or OCTET_STREAM
        filename = self._safe_name(entry["filename"], declared, position, defects)
        listed = cast(dict[str, Any], entry)
        governed = _entry(entry, filename=filename, content_type=declared)
        governed["download_url"] = entry["download_url"]
        governed["refused"] = listed.get("refused")
        governed["quarantined"] = listed.get("quarantined")
        if governed["refused"] is None and governed["quarantined"] is None:
            governed["refused"] = self._refusal(entry["size"], [declared], budget)
        if governed["refused"] is not None or governed["quarantined"] is not None:
            governed["download_url"] = None
        else:
            budget.spend(entry["size"])
        return cast(Attachment, governed)

    def _safe_name(self, name: str, media_type: str, position: int, defects: DefectLog) -> str:
        safe = safe_filename(name, media_type, position)
        if name and safe != unicodedata.normalize("NFC", name):
            defects.add("unsafe_filename", f"attachment {position}: {name[:80]!r} renamed {safe!r}")
        return safe

    def _refusal(
        self, size: int, types: list[str | None], budget: _MessageBudget
    ) -> str | None:
        """Return why a file of `size` bytes and these types is refused, or None.

        `types` are the sniffed, declared and listed types; None and generic
        declarations (application/octet-stream) are skipped.
        """
        if size > self.settings.max_file_bytes:
            return TOO_LARGE
        checked = [t for t in dict.fromkeys(types) if t and t not in GENERIC_TYPES]
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
        """Scan a file and set `quarantined` on a match; return "scan_unavailable" on failure."""
        assert self.scanner is not None
        now = self._clock()
        if now < self._scans_paused_until:
            defects.add(
                SCAN_UNAVAILABLE,
                f"{label} not scanned: the malware scanner failed less than "
                f"{self._scan_retry_seconds:g}s ago; refused",
            )
            return SCAN_UNAVAILABLE
        try:
            signature = self.scanner.scan(content)
        # Every failure refuses the file, whatever the scanner raises, because
        # an unscanned file is never accepted.
        except Exception as error:  # noqa: BLE001
            self._scans_paused_until = now + self._scan_retry_seconds
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
    ) -> list[tuple[Attachment, bytes]]:
        unpacked: list[tuple[Attachment, bytes]] = []
        for entry, content in files:
            if not _is_tnef(entry, content):
                unpacked.append((entry, content))
                continue
            try:
                inner = read_tnef(content)
            except TnefUnreadable as error:
                defects.add(
                    "tnef_unreadable", f"{entry['filename']!r}: {error}; kept as one file"
                )
                unpacked.append((entry, content))
                continue
            unpacked.extend((_tnef_entry(file), file.data) for file in inner)
        if len(unpacked) > MAX_FILES:
            defects.add(
                "part_limit",
                f"{len(unpacked)} attachments after unpacking TNEF; only the first "
                f"{MAX_FILES} listed",
            )
            unpacked = unpacked[:MAX_FILES]
        return unpacked

    def _govern_html(self, html: str, attachments: Sequence[Attachment]) -> str:
        links = {
            entry["content_id"]: entry["download_url"]
            for entry in attachments
            if entry["content_id"] and entry["download_url"]
        }
        html = link_content_ids(html, links)
        if self.settings.sanitize_html:
            html = sanitize_html(html, links.values())
        return html


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
