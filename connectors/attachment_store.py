"""The attachment store: file bytes kept once by SHA-256, and only a link in events.

`AttachmentStore` is the interface the governor writes to and sinks read from:

- `put(data, content_type)` stores the bytes (a no-op when they are stored
  already) and returns a `StoredFile` with the SHA-256 and the link;
- `get(sha256)` returns the bytes, or None when nothing is stored under that hash;
- `url_for(sha256)` returns the link of a stored file.

Implementations raise `AttachmentStoreError` (an `OSError`) when they cannot
store or read, so callers need not know the backend. An object store (S3, GCS)
fits the same interface, keyed by the hex digest, with `content_type` as the
object's metadata.

`LocalAttachmentStore(folder, base_url)` keeps each file at
`folder/ab/cd/<sha256>` (the first two and next two hex digits as directories,
so no directory grows past 65,536 entries). A file is written to a temporary
name in its directory, flushed to disk and renamed into place, so a reader
never sees a partial file and a crash leaves at most a temporary file behind.
Two writers of the same bytes race harmlessly: both renames put the same
content in place. Links are `base_url/ab/cd/<sha256>`, so a static web server
over the folder serves them, or `file://` URIs when `base_url` is empty.
`content_type` is not kept, because the event lists it.

`attachment_governor(settings)` builds the governor the flow uses from
`[attachments]`.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ticketflow.config import AttachmentSettings
from ticketflow.operators.attachments import SCAN_RETRY_SECONDS, AttachmentGovernor, MalwareScanner

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class AttachmentStoreError(OSError):
    """An attachment could not be stored or read; the message names the path or hash."""


@dataclass(frozen=True)
class StoredFile:
    """The SHA-256 (hex) and the link of stored bytes."""

    sha256: str
    url: str


class AttachmentStore(Protocol):
    """Content-addressed storage of attachment bytes (see the module docstring)."""

    def put(self, data: bytes, content_type: str) -> StoredFile:
        """Store `data` once and return its hash and link."""
        ...

    def get(self, sha256: str) -> bytes | None:
        """Return the bytes stored under `sha256`, or None."""
        ...

    def url_for(self, sha256: str) -> str:
        """Return the link of the file stored under `sha256`."""
        ...


def _checked_digest(sha256: str) -> str:
    if not _SHA256_HEX.match(sha256):
        raise ValueError(f"invalid SHA-256 {sha256[:80]!r}: expected 64 lowercase hex digits")
    return sha256


class LocalAttachmentStore:
    """An `AttachmentStore` in a local folder (see the module docstring).

    The folder is created if missing. Raises `AttachmentStoreError` here when it
    cannot be created, naming the folder and the setting.
    """

    def __init__(self, folder: str | Path, base_url: str = "") -> None:
        self.folder = Path(folder).resolve()
        self.base_url = base_url.rstrip("/")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise AttachmentStoreError(
                f"cannot create the attachment folder {self.folder} ({error.strerror}); "
                "set [attachments] store to a writable folder"
            ) from error

    def path_for(self, sha256: str) -> Path:
        """Return the file path of `sha256`, which must be 64 lowercase hex digits (ValueError)."""
        digest = _checked_digest(sha256)
        return self.folder / digest[:2] / digest[2:4] / digest

    def url_for(self, sha256: str) -> str:
        """Return `base_url/ab/cd/<sha256>`, or the file's `file://` URI without a base URL."""
        path = self.path_for(sha256)
        if not self.base_url:
            return path.as_uri()
        return f"{self.base_url}/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def put(self, data: bytes, content_type: str) -> StoredFile:
        """Store `data` unless a file with its hash exists, and return its hash and link."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha256)
        if not path.exists():
            try:
                self._write_atomically(path, data)
            except OSError as error:
                raise AttachmentStoreError(
                    f"cannot store attachment {sha256} in {path.parent}: {error}; "
                    "check the free space and permissions of [attachments] store"
                ) from error
        return StoredFile(sha256, self.url_for(sha256))

    def get(self, sha256: str) -> bytes | None:
        """Return the stored bytes of `sha256`, or None when there is no such file.

        Raises `AttachmentStoreError` when the file cannot be read or its content
        no longer has that hash (the disk changed it).
        """
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise AttachmentStoreError(f"cannot read attachment {path}: {error}") from error
        if hashlib.sha256(data).hexdigest() != sha256:
            raise AttachmentStoreError(
                f"attachment {path} is corrupt: its content no longer has SHA-256 {sha256}"
            )
        return data

    def _write_atomically(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        # Mode 0o644 (before the umask), because a web server serving base_url
        # may run as another user.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_directory(path.parent)


def _sync_directory(folder: Path) -> None:
    """Flush a directory entry to disk, so a rename survives a power loss."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def open_attachment_store(settings: AttachmentSettings) -> LocalAttachmentStore | None:
    """Open the store `[attachments] store` names, or None when it names none."""
    return LocalAttachmentStore(settings.store, settings.base_url) if settings.store else None


def attachment_governor(settings: AttachmentSettings) -> AttachmentGovernor:
    """Build the governor for `[attachments]`, with a local store and clamd when they are set.

    Raises `AttachmentStoreError` when the store folder cannot be created, and
    ValueError for a clamd address of the wrong form.
    """
    store = open_attachment_store(settings)
    scanner: MalwareScanner | None = None
    if settings.clamd:
        from ticketflow.connectors.clamd import ClamdScanner

        scanner = ClamdScanner(settings.clamd, timeout=settings.clamd_timeout)
    # A hanging clamd costs one timeout per pause, so the pause lasts at least that long.
    retry = max(SCAN_RETRY_SECONDS, settings.clamd_timeout)
    return AttachmentGovernor(settings, store=store, scanner=scanner, scan_retry_seconds=retry)
