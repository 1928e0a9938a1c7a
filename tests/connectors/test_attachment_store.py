"""The local attachment store: content-addressed, atomic, stored once; and the governor factory."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.connectors.clamd_daemon import EICAR, EICAR_SIGNATURE, ClamdDaemon, free_port
from ticketflow.config import AttachmentSettings
from ticketflow.connectors import attachment_store as store_module
from ticketflow.connectors.attachment_store import (
    AttachmentStoreError,
    LocalAttachmentStore,
    attachment_governor,
)
from ticketflow.connectors.clamd import ClamdScanner
from ticketflow.operators.mime_defects import DefectLog

DATA = b"Quarterly numbers: 1,204 orders, 3 refunds.\n"
DIGEST = hashlib.sha256(DATA).hexdigest()


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


def test_put_stores_under_hash(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path / "files", "https://files.example.com/att/")
    stored = store.put(DATA, "text/plain")
    path = tmp_path / "files" / DIGEST[:2] / DIGEST[2:4] / DIGEST
    assert stored.sha256 == DIGEST
    assert stored.url == f"https://files.example.com/att/{DIGEST[:2]}/{DIGEST[2:4]}/{DIGEST}"
    assert path.read_bytes() == DATA
    assert leftovers(tmp_path) == []


def test_put_twice_stores_once(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    first = store.put(DATA, "text/plain")
    before = os.stat(store.path_for(DIGEST))
    second = store.put(DATA, "application/octet-stream")
    after = os.stat(store.path_for(DIGEST))
    assert first == second
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len([path for path in tmp_path.rglob("*") if path.is_file()]) == 1


def test_url_without_base_is_file_uri(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    url = store.put(DATA, "text/plain").url
    assert url.startswith("file:///")
    assert url == store.path_for(DIGEST).as_uri()


def test_get_returns_bytes_or_none(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    store.put(DATA, "text/plain")
    assert store.get(DIGEST) == DATA
    assert store.get(hashlib.sha256(b"other").hexdigest()) is None


def test_get_detects_corruption(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    store.put(DATA, "text/plain")
    store.path_for(DIGEST).write_bytes(b"changed on disk")
    with pytest.raises(AttachmentStoreError, match="is corrupt"):
        store.get(DIGEST)


@pytest.mark.parametrize(
    "digest",
    ["../../etc/passwd", DIGEST.upper(), DIGEST[:63], DIGEST + "0", "", "g" * 64],
)
def test_invalid_digest_rejected(tmp_path: Path, digest: str) -> None:
    store = LocalAttachmentStore(tmp_path)
    with pytest.raises(ValueError, match="expected 64 lowercase hex digits"):
        store.get(digest)
    with pytest.raises(ValueError, match="expected 64 lowercase hex digits"):
        store.url_for(digest)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalAttachmentStore(tmp_path)

    def full_disk(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", full_disk)
    with pytest.raises(AttachmentStoreError, match="No space left on device"):
        store.put(DATA, "text/plain")
    assert not store.path_for(DIGEST).exists()
    assert leftovers(tmp_path) == []


def test_store_error_is_os_error() -> None:
    assert issubclass(AttachmentStoreError, OSError)


def test_concurrent_puts_store_one_file(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    payload = os.urandom(256 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    errors: list[BaseException] = []

    def put() -> None:
        try:
            store.put(payload, "application/octet-stream")
        except BaseException as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.get(digest) == payload
    assert leftovers(tmp_path) == []


def test_file_readable_by_others(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    store.put(DATA, "text/plain")
    umask = os.umask(0)
    os.umask(umask)
    assert store.path_for(DIGEST).stat().st_mode & 0o777 == 0o644 & ~umask


def test_unusable_folder_names_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(AttachmentStoreError, match=r"set \[attachments\] store"):
        LocalAttachmentStore(blocker / "files")


def test_governor_from_default_settings() -> None:
    governor = attachment_governor(AttachmentSettings())
    assert governor.store is None
    assert governor.scanner is None


def test_governor_with_store_and_clamd(tmp_path: Path) -> None:
    settings = AttachmentSettings(
        store=str(tmp_path / "files"),
        base_url="https://files.example.com",
        clamd="tcp://127.0.0.1:3310",
    )
    governor = attachment_governor(settings)
    assert isinstance(governor.store, LocalAttachmentStore)
    assert governor.store.folder == (tmp_path / "files").resolve()
    assert governor.store.base_url == "https://files.example.com"
    assert isinstance(governor.scanner, ClamdScanner)
    assert governor.scanner.address.port == 3310


def test_governor_rejects_bad_clamd_address() -> None:
    with pytest.raises(ValueError, match="invalid clamd address"):
        attachment_governor(AttachmentSettings(clamd="127.0.0.1:3310"))


# -- the governor with a real clamd ---------------------------------------------------------------


def governed_files(settings: AttachmentSettings, files: list[tuple[str, bytes]]) -> list[Any]:
    """Govern files through `attachment_governor(settings)`; return the entries."""
    governor = attachment_governor(settings)
    listed = [
        (
            {
                "filename": name,
                "content_type": "application/octet-stream",
                "size": len(data),
                "content_id": None,
                "disposition": "attachment",
                "sha256": hashlib.sha256(data).hexdigest(),
                "download_url": None,
            },
            data,
        )
        for name, data in files
    ]
    return list(governor.govern(listed, "", DefectLog()).attachments)


def test_real_clamd_quarantines_eicar(clamd: ClamdDaemon, tmp_path: Path) -> None:
    settings = AttachmentSettings(store=str(tmp_path / "files"), clamd=clamd.tcp_address)
    infected, clean = governed_files(settings, [("eicar.com", EICAR), ("notes.txt", DATA)])
    assert infected["quarantined"] == f"{EICAR_SIGNATURE}.UNOFFICIAL"
    assert infected["download_url"] is None
    assert clean["quarantined"] is None
    assert clean["refused"] is None
    store = LocalAttachmentStore(tmp_path / "files")
    assert store.get(hashlib.sha256(EICAR).hexdigest()) is None
    assert store.get(DIGEST) == DATA


def test_unreachable_clamd_refuses_files(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = AttachmentSettings(store=str(tmp_path / "files"), clamd=f"tcp://127.0.0.1:{port}")
    (entry,) = governed_files(settings, [("notes.txt", DATA)])
    assert entry["refused"] == "scan_unavailable"
    assert entry["download_url"] is None
    assert LocalAttachmentStore(tmp_path / "files").get(DIGEST) is None
