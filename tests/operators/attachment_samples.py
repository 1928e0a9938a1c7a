"""Small, valid files of the kinds attachment governance must recognize, built in code.

Each builder writes just enough of its format for the sniffer and the TNEF
reader to see what a real file would show them: headers, directories and
signatures, no real payload. `tnef_stream` and `ole2_file` follow [MS-OXTNEF]
and [MS-CFB]; the executables have real header layouts.
"""

from __future__ import annotations

import io
import struct
import uuid
import zipfile
from dataclasses import dataclass

# The EICAR anti-malware test file, assembled at run time so that no file of
# the repository trips a virus scanner.
EICAR = (
    b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
    + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!"
    + b"$H+H*"
)
EICAR_SIGNATURE = "Eicar-Test-Signature"

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 16
GIF = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 8
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8 " + b"\x00" * 14
PDF = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
GZIP = b"\x1f\x8b\x08\x00" + b"\x00" * 16


class EicarScanner:
    """A malware scanner that finds only the EICAR test string; it records what it saw."""

    def __init__(self) -> None:
        self.scanned: list[bytes] = []

    def scan(self, data: bytes) -> str | None:
        self.scanned.append(data)
        return EICAR_SIGNATURE if EICAR in data else None


class UnreachableScanner:
    """A malware scanner whose daemon cannot be reached; it counts the attempts."""

    def __init__(self) -> None:
        self.attempts = 0

    def scan(self, data: bytes) -> str | None:
        self.attempts += 1
        raise ConnectionRefusedError(111, "Connection refused")


def pe_executable() -> bytes:
    """Return a DOS stub whose header points at a "PE\\0\\0" signature, as every .exe has."""
    header = bytearray(b"MZ" + b"\x90\x00" + b"\x00" * 60)
    struct.pack_into("<I", header, 0x3C, 0x80)
    stub = b"This program cannot be run in DOS mode.\r\r\n$".ljust(0x80 - len(header), b"\x00")
    return bytes(header) + stub + b"PE\x00\x00" + b"\x4c\x01" + b"\x00" * 18


def elf_executable() -> bytes:
    """Return an ELF header of a 64-bit x86-64 shared object (as PIE executables are)."""
    identity = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\x00" * 8
    return identity + struct.pack("<HHI", 3, 0x3E, 1) + b"\x00" * 40


def macho_executable() -> bytes:
    """Return a 64-bit little-endian Mach-O header (MH_EXECUTE)."""
    return b"\xcf\xfa\xed\xfe" + struct.pack("<iiIIII", 0x01000007, 3, 2, 0, 0, 0) + b"\x00" * 8


def universal_binary() -> bytes:
    """Return a Mach-O universal binary header for two architectures."""
    return b"\xca\xfe\xba\xbe" + struct.pack(">I", 2) + b"\x00" * 40


def java_class() -> bytes:
    """Return the start of a Java 17 class file (major version 61)."""
    return b"\xca\xfe\xba\xbe" + struct.pack(">HH", 0, 61) + b"\x00" * 20


def windows_shortcut() -> bytes:
    """Return the header of a Windows .lnk file (ShellLinkHeader size and class id)."""
    class_id = b"\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00F"
    return b"L\x00\x00\x00" + class_id + b"\x00" * 56


def zip_archive(entries: dict[str, bytes], *, stored_first: bool = False) -> bytes:
    """Return a ZIP archive with `entries` in order (the first stored uncompressed if asked)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (name, data) in enumerate(entries.items()):
            method = zipfile.ZIP_STORED if stored_first and index == 0 else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def docx_document() -> bytes:
    """Return the package layout of a Word document (Office Open XML)."""
    return zip_archive({
        "[Content_Types].xml": b"<Types/>",
        "_rels/.rels": b"<Relationships/>",
        "word/document.xml": b"<w:document/>",
    })


def xlsx_workbook() -> bytes:
    """Return the package layout of an Excel workbook (Office Open XML)."""
    return zip_archive({
        "[Content_Types].xml": b"<Types/>",
        "xl/workbook.xml": b"<workbook/>",
    })


def macro_package(folder: str) -> bytes:
    """Return an Office Open XML package with a VBA project in `folder` ("word", "xl", "ppt")."""
    return zip_archive({
        "[Content_Types].xml": b"<Types/>",
        f"{folder}/document.xml": b"<document/>",
        f"{folder}/vbaProject.bin": b"\xd0\xcf\x11\xe0 macros",
    })


def odt_document() -> bytes:
    """Return an OpenDocument text: its uncompressed `mimetype` entry comes first."""
    return zip_archive(
        {"mimetype": b"application/vnd.oasis.opendocument.text", "content.xml": b"<x/>"},
        stored_first=True,
    )


def jar_archive() -> bytes:
    """Return a Java archive: a manifest and a class file."""
    return zip_archive({"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\n", "App.class": b"x"})


# -- OLE2 compound files ([MS-CFB]) -------------------------------------------------------------

_FREE_SECTOR = 0xFFFFFFFF
_END_OF_CHAIN = 0xFFFFFFFE
_FAT_SECTOR = 0xFFFFFFFD
_NO_STREAM = 0xFFFFFFFF
MSI_CLASS_ID = uuid.UUID("000c1084-0000-0000-c000-000000000046")


def _directory_entry(
    name: str,
    entry_type: int,
    class_id: uuid.UUID | None = None,
    *,
    right: int = _NO_STREAM,
    child: int = _NO_STREAM,
) -> bytes:
    encoded = name.encode("utf-16-le") + b"\x00\x00"
    entry = bytearray(128)
    entry[: len(encoded)] = encoded
    struct.pack_into("<HBB", entry, 64, len(encoded), entry_type, 1)
    struct.pack_into("<III", entry, 68, _NO_STREAM, right, child)
    if class_id is not None:
        entry[80:96] = class_id.bytes_le
    struct.pack_into("<I", entry, 116, _END_OF_CHAIN)  # starting sector: no data
    return bytes(entry)


def ole2_file(stream_names: list[str], root_class_id: uuid.UUID | None = None) -> bytes:
    """Return a version-3 compound file (512-byte sectors) with these empty streams.

    Sector 0 contains the FAT. The directory follows in as many chained sectors
    as its entries need (four per sector), so the reader must follow the FAT.
    """
    # The root's child is the first stream; each stream's right sibling is the next.
    count = len(stream_names)
    entries = [_directory_entry("Root Entry", 5, root_class_id, child=1 if count else _NO_STREAM)]
    entries += [
        _directory_entry(name, 2, right=number + 1 if number < count else _NO_STREAM)
        for number, name in enumerate(stream_names, start=1)
    ]
    while len(entries) % 4:
        entries.append(b"\x00" * 128)
    directory_sectors = len(entries) // 4

    fat = [_FAT_SECTOR]
    for number in range(1, directory_sectors + 1):
        fat.append(number + 1 if number < directory_sectors else _END_OF_CHAIN)
    fat += [_FREE_SECTOR] * (128 - len(fat))

    header = bytearray(512)
    header[0:8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    struct.pack_into("<HHHHH", header, 24, 0x3E, 3, 0xFFFE, 9, 6)
    # Directory sector count (0 in version 3), FAT sector count, first directory sector.
    struct.pack_into("<III", header, 40, 0, 1, 1)
    struct.pack_into("<IIIIII", header, 52, 0, 4096, _END_OF_CHAIN, 0, _END_OF_CHAIN, 0)
    difat = [0] + [_FREE_SECTOR] * 108
    struct.pack_into("<109I", header, 76, *difat)
    return bytes(header) + struct.pack("<128I", *fat) + b"".join(entries)


# -- TNEF ([MS-OXTNEF]) -------------------------------------------------------------------------

TNEF_SIGNATURE = 0x223E9F78


@dataclass(frozen=True)
class TnefAttachment:
    """One file to put into a TNEF stream."""

    title: str
    data: bytes
    long_filename: str | None = None
    mime_tag: str | None = None
    content_id: str | None = None


def tnef_attribute(level: int, attribute_id: int, attribute_type: int, data: bytes) -> bytes:
    """Return one TNEF attribute: level, id, type, length, data and checksum."""
    header = struct.pack("<BHHI", level, attribute_id, attribute_type, len(data))
    return header + data + struct.pack("<H", sum(data) & 0xFFFF)


def _mapi_string8(property_id: int, text: str) -> bytes:
    raw = text.encode("cp1252") + b"\x00"
    return struct.pack("<HHII", 0x001E, property_id, 1, len(raw)) + raw + b"\x00" * (-len(raw) % 4)


def _mapi_unicode(property_id: int, text: str) -> bytes:
    raw = text.encode("utf-16-le") + b"\x00\x00"
    return struct.pack("<HHII", 0x001F, property_id, 1, len(raw)) + raw + b"\x00" * (-len(raw) % 4)


def mapi_properties(attachment: TnefAttachment) -> bytes:
    """Return the attAttachment MAPI property list for an attachment's optional fields."""
    properties = [struct.pack("<HHI", 0x0003, 0x3705, 1)]  # PR_ATTACH_METHOD: by value
    if attachment.long_filename is not None:
        properties.append(_mapi_unicode(0x3707, attachment.long_filename))
    if attachment.mime_tag is not None:
        properties.append(_mapi_string8(0x370E, attachment.mime_tag))
    if attachment.content_id is not None:
        properties.append(_mapi_string8(0x3712, attachment.content_id))
    return struct.pack("<I", len(properties)) + b"".join(properties)


def tnef_stream(attachments: list[TnefAttachment], *, extra: bytes = b"") -> bytes:
    """Return a winmail.dat holding `attachments`, as Outlook writes one (`extra` is appended)."""
    parts = [
        struct.pack("<IH", TNEF_SIGNATURE, 0x0001),
        tnef_attribute(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000)),  # attTnefVersion
        tnef_attribute(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0)),  # attOemCodepage
        tnef_attribute(1, 0x8008, 0x0007, b"IPM.Microsoft Mail.Note\x00"),  # attMessageClass
    ]
    for attachment in attachments:
        parts += [
            tnef_attribute(2, 0x9002, 0x0006, struct.pack("<HiHHI", 1, -1, 0, 0, 0)),
            tnef_attribute(2, 0x8010, 0x0001, attachment.title.encode("cp1252") + b"\x00"),
            tnef_attribute(2, 0x800F, 0x0006, attachment.data),
            tnef_attribute(2, 0x9005, 0x0006, mapi_properties(attachment)),
        ]
    return b"".join(parts) + extra
