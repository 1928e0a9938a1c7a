"""Content sniffing, canonical names, declared-versus-sniffed choice and type patterns."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.operators import attachment_samples as samples
from ticketflow.operators.attachment_types import (
    MAX_JSON_SNIFF_BYTES,
    canonical_type,
    effective_type,
    sniff_content_type,
    type_matches,
)

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
DOCM = "application/vnd.ms-word.document.macroenabled.12"
PPTM = "application/vnd.ms-powerpoint.presentation.macroenabled.12"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (samples.PDF, "application/pdf"),
        (samples.PNG, "image/png"),
        (samples.JPEG, "image/jpeg"),
        (samples.GIF, "image/gif"),
        (samples.WEBP, "image/webp"),
        (b"II*\x00" + b"\x00" * 8, "image/tiff"),
        (samples.GZIP, "application/gzip"),
        (b"BZh91AY&SY" + b"\x00" * 8, "application/x-bzip2"),
        (b"\xfd7zXZ\x00" + b"\x00" * 8, "application/x-xz"),
        (b"7z\xbc\xaf\x27\x1c" + b"\x00" * 8, "application/x-7z-compressed"),
        (b"Rar!\x1a\x07\x01\x00", "application/vnd.rar"),
        (b"{\\rtf1\\ansi hello}", "application/rtf"),
        (b"%!PS-Adobe-3.0\n", "application/postscript"),
        (samples.pe_executable(), "application/x-dosexec"),
        (samples.elf_executable(), "application/x-executable"),
        (samples.macho_executable(), "application/x-mach-binary"),
        (samples.universal_binary(), "application/x-mach-binary"),
        (samples.java_class(), "application/java-vm"),
        (samples.windows_shortcut(), "application/x-ms-shortcut"),
        (samples.tnef_stream([]), "application/vnd.ms-tnef"),
        (b"\x00" * 0x8001 + b"CD001\x01", "application/x-iso9660-image"),
    ],
)
def test_sniffs_signature(data: bytes, expected: str) -> None:
    assert sniff_content_type(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (samples.docx_document(), DOCX),
        (samples.xlsx_workbook(), XLSX),
        (samples.odt_document(), "application/vnd.oasis.opendocument.text"),
        (samples.jar_archive(), "application/java-archive"),
        (samples.zip_archive({"notes.txt": b"hello"}), "application/zip"),
        (b"PK\x05\x06" + b"\x00" * 18, "application/zip"),
        (samples.macro_package("word"), DOCM),
        (samples.macro_package("xl"), "application/vnd.ms-excel.sheet.macroenabled.12"),
        (samples.macro_package("ppt"), PPTM),
    ],
)
def test_sniffs_zip_kind(data: bytes, expected: str) -> None:
    assert sniff_content_type(data) == expected


def test_sniffs_docx_cut_before_central_directory() -> None:
    whole = samples.docx_document()
    cut = whole[: whole.rfind(b"PK\x01\x02")]
    assert sniff_content_type(cut) == DOCX


@pytest.mark.parametrize(
    ("streams", "class_id", "expected"),
    [
        (["WordDocument", "1Table"], None, "application/msword"),
        (["Workbook"], None, "application/vnd.ms-excel"),
        (["Book"], None, "application/vnd.ms-excel"),
        (["PowerPoint Document"], None, "application/vnd.ms-powerpoint"),
        (["__properties_version1.0", "__substg1.0_0037001F"], None, "application/vnd.ms-outlook"),
        (["VisioDocument"], None, "application/vnd.visio"),
        ([], samples.MSI_CLASS_ID, "application/x-msi"),
        (["Contents"], None, "application/x-ole-storage"),
        # Five streams fill a second directory sector, reached through the FAT.
        (["a", "b", "c", "d", "WordDocument"], None, "application/msword"),
    ],
)
def test_sniffs_ole2_kind(streams: list[str], class_id: uuid.UUID | None, expected: str) -> None:
    assert sniff_content_type(samples.ole2_file(streams, class_id)) == expected


def test_ole2_with_broken_directory_is_generic() -> None:
    header_only = samples.ole2_file(["WordDocument"])[:512]
    assert sniff_content_type(header_only) == "application/x-ole-storage"


def test_ole2_directory_loop_ends() -> None:
    data = bytearray(samples.ole2_file(["a", "b", "c", "d", "WordDocument"]))
    # The FAT entry of directory sector 1 points at itself, so sector 2 (with
    # WordDocument) is never reached and the walk must stop on the cycle.
    data[512 + 1 * 4 : 512 + 2 * 4] = (1).to_bytes(4, "little")
    assert sniff_content_type(bytes(data)) == "application/x-ole-storage"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"Hello, the export failed at 12:00.\n", "text/plain"),
        ("Grüße aus Köln\n".encode(), "text/plain"),
        ("Grüße aus Köln\n".encode("latin-1"), "text/plain"),
        ("\ufeffBOM text".encode("utf-8"), "text/plain"),
        ("hello".encode("utf-16"), "text/plain"),
        (b'{"order": 1204, "status": "refunded"}', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"{not json at all", "text/plain"),
        (b"<?xml version='1.0'?><invoice/>", "application/xml"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (b"<svg onload='alert(1)'/>", "image/svg+xml"),
        (b"<!DOCTYPE html><html></html>", "text/html"),
        (b"  \r\n<HTML><body>x</body></HTML>", "text/html"),
        (b"<script>alert(1)</script>", "text/html"),
        (b"<p>paragraph</p>", "text/html"),
        (b"<!-- comment -->", "text/html"),
        (b"<pre>not in the list</pre>", "text/plain"),
        (b"#!/bin/sh\nrm -rf /\n", "text/x-shellscript"),
        (b"MZ Group quarterly report\n", "text/plain"),
    ],
)
def test_sniffs_text_kind(text: bytes, expected: str) -> None:
    assert sniff_content_type(text) == expected


def test_json_over_sniff_limit_is_text() -> None:
    large = json.dumps(["x" * 100] * (MAX_JSON_SNIFF_BYTES // 100)).encode()
    assert len(large) > MAX_JSON_SNIFF_BYTES
    assert sniff_content_type(large) == "text/plain"


def test_binary_without_signature_is_unknown() -> None:
    assert sniff_content_type(bytes(range(256)) * 4) is None
    assert sniff_content_type(b"") is None


def test_dos_program_without_pe_header() -> None:
    dos = b"MZ" + b"\x00\x01\x02\x00" + b"\x00" * 58
    assert sniff_content_type(dos) == "application/x-dosexec"


@given(st.binary(max_size=4096))
def test_sniffer_accepts_any_bytes(data: bytes) -> None:
    result = sniff_content_type(data)
    assert result is None or result == result.lower()


@given(st.binary(min_size=8, max_size=2048))
def test_sniffer_survives_broken_containers(tail: bytes) -> None:
    for head in (b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"MZ", b"\xca\xfe\xba\xbe"):
        result = sniff_content_type(head + tail)
        assert result is None or "/" in result


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("image/jpg", "image/jpeg"),
        ("IMAGE/PJPEG", "image/jpeg"),
        ("application/x-msdownload", "application/x-dosexec"),
        ("application/vnd.microsoft.portable-executable", "application/x-dosexec"),
        ("application/x-sharedlib", "application/x-executable"),
        ("text/xml", "application/xml"),
        ("application/ms-tnef", "application/vnd.ms-tnef"),
        ("application/pdf", "application/pdf"),
        ("Application/X-DOSEXEC; name=x", "application/x-dosexec"),
        ("image/JPG ;charset=binary", "image/jpeg"),
    ],
)
def test_canonical_type(alias: str, canonical: str) -> None:
    assert canonical_type(alias) == canonical


@pytest.mark.parametrize(
    ("declared", "sniffed", "listed", "mismatch"),
    [
        ("application/pdf", "application/x-dosexec", "application/x-dosexec", True),
        ("image/png", "text/plain", "text/plain", True),
        ("text/plain", "text/html", "text/html", True),
        ("application/octet-stream", "image/png", "image/png", False),
        ("", "application/pdf", "application/pdf", False),
        ("image/jpg", "image/jpeg", "image/jpeg", False),
        ("image/png", None, "application/octet-stream", True),
        ("application/pdf", None, "application/octet-stream", True),
        (DOCX, None, "application/octet-stream", True),
        ("application/zip", None, "application/octet-stream", True),
        ("text/csv", None, "text/csv", False),
        ("application/vnd.visio", None, "application/vnd.visio", False),
        (DOCX, DOCM, DOCM, True),
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
         "application/vnd.ms-excel.sheet.macroenabled.12",
         "application/vnd.ms-excel.sheet.macroenabled.12", True),
        ("application/vnd.ms-word.template.macroenabled.12", DOCM,
         "application/vnd.ms-word.template.macroenabled.12", False),
        ("application/zip", DOCM, DOCM, False),
        ("", None, "application/octet-stream", False),
        ("text/csv", "text/plain", "text/csv", False),
        ("message/rfc822", "text/plain", "message/rfc822", False),
        ("application/json", "text/plain", "application/json", False),
        ("text/plain", "application/json", "text/plain", False),
        ("application/msword", "application/x-ole-storage", "application/msword", False),
        ("application/x-ole-storage", "application/msword", "application/msword", False),
        (DOCX, "application/zip", DOCX, False),
        ("application/zip", DOCX, DOCX, False),
        (DOCM, DOCX, DOCM, False),
        (XLSX, DOCX, DOCX, True),
        ("application/msword", "application/x-msi", "application/x-msi", True),
        ("image/svg+xml", "text/plain", "text/plain", True),
        ("application/x-compressed-tar", "application/gzip", "application/x-compressed-tar", False),
    ],
)
def test_effective_type(declared: str, sniffed: str | None, listed: str, mismatch: bool) -> None:
    verdict = effective_type(declared, sniffed)
    assert verdict.content_type == listed
    assert verdict.mismatch is mismatch


@pytest.mark.parametrize(
    ("media_type", "pattern", "matches"),
    [
        ("image/png", "image/*", True),
        ("image/png", "IMAGE/*", True),
        ("text/plain", "image/*", False),
        ("application/x-dosexec", "application/x-msdownload", True),
        ("application/x-dosexec", "application/vnd.microsoft.portable-executable", True),
        ("application/x-executable", "application/x-sharedlib", True),
        ("application/pdf", "*/*", True),
        ("application/pdf", "*", True),
        ("application/pdf", "application/pdfx", False),
        ("image/png", "image", False),
    ],
)
def test_type_matches(media_type: str, pattern: str, matches: bool) -> None:
    assert type_matches(media_type, pattern) is matches
