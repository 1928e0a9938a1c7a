"""Content types of attachments: sniffed from their bytes, compared with the declared one.

`sniff_content_type` reads the leading bytes of a file (and, for ZIP and OLE2
containers, their directory) and returns a media type, or None when the bytes
match no known signature and are not text. It recognizes:

- documents and images: PDF, PNG, JPEG, GIF, WebP, TIFF, RTF, PostScript;
- containers: ZIP, and inside it Office Open XML (docx, xlsx, pptx, and their
  macro-enabled kinds docm, xlsm, pptm when a `vbaProject.bin` entry is present), OpenDocument
  (the `mimetype` entry) and Java archives; OLE2 compound files, and inside them
  Word, Excel, PowerPoint, Outlook .msg, Visio and Windows Installer files;
  gzip, bzip2, xz, 7-Zip, RAR, ISO 9660 images and MS-TNEF (winmail.dat);
- executables: Windows PE and DOS (`MZ`), ELF, Mach-O (also universal binaries),
  Java class files, Windows shortcuts (.lnk);
- text, when the first 8 KiB contain no NUL byte and decode as UTF-8, as UTF-16
  with a byte order mark, or as mostly printable single-byte text. Text is HTML
  when it starts with one of the WHATWG sniffing prefixes (`<html`, `<script`,
  `<!--`, ...), SVG, XML, JSON (whole files up to 1 MiB that parse) or a shell
  script (`#!`), and text/plain otherwise.

Several names of one type are folded into one canonical name (`canonical_type`),
for comparisons and for allow/deny patterns: `image/jpg` is `image/jpeg`,
`application/x-msdownload` is `application/x-dosexec`, and every ELF kind is
`application/x-executable`.

`effective_type` decides which type an attachment is listed with. The declared
type stays when the sniffer learned nothing, or only something less specific:
a generic container (text, ZIP, OLE2, gzip) of which the declared type is a
kind, or a sibling Office Open XML type (a .dotx sniffs as docx). A generic
declaration (`application/octet-stream`) gives way to the sniffed type. Any
other difference is a mismatch: the sniffed type wins, and the caller records
both. Two cases are mismatches although the sniffer is less specific:

- a declared type whose files always start with a signature (PDF, PNG, JPEG,
  GIF, WebP, ZIP and its kinds) on bytes without it is listed as
  `application/octet-stream`, so an allow list cannot be passed by declaring
  an allowed type on unknown bytes;
- a package with macros (sniffed docm, xlsm, pptm) declared as a kind without
  macros (docx, xlsx, pptx, their templates) is listed as the macro kind.
"""

from __future__ import annotations

import codecs
import json
import struct
import uuid
from dataclasses import dataclass

# Bytes read for the text heuristics.
SNIFF_BYTES = 8192
# Larger files are not parsed as JSON, so a text file that big stays text/plain.
MAX_JSON_SNIFF_BYTES = 1024 * 1024
# Entries of a ZIP central directory or of an OLE2 directory that are read.
MAX_CONTAINER_ENTRIES = 2000

OCTET_STREAM = "application/octet-stream"
TNEF = "application/vnd.ms-tnef"

# Declared types that carry no information about the content.
GENERIC_TYPES = frozenset({
    "",
    OCTET_STREAM,
    "binary/octet-stream",
    "application/unknown",
    "application/x-unknown",
    "application/binary",
    "application/force-download",
    "application/download",
})

_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-pdf": "application/pdf",
    "application/acrobat": "application/pdf",
    "application/x-gzip": "application/gzip",
    "application/x-zip-compressed": "application/zip",
    "application/x-zip": "application/zip",
    "text/xml": "application/xml",
    "text/rtf": "application/rtf",
    "application/x-rtf": "application/rtf",
    "application/ms-tnef": TNEF,
    "application/x-rar-compressed": "application/vnd.rar",
    "application/x-rar": "application/vnd.rar",
    "application/x-iso-image": "application/x-iso9660-image",
    # Windows PE and DOS executables have many names, and x-dosexec is the canonical one.
    "application/x-msdownload": "application/x-dosexec",
    "application/vnd.microsoft.portable-executable": "application/x-dosexec",
    "application/x-msdos-program": "application/x-dosexec",
    "application/x-ms-dos-executable": "application/x-dosexec",
    "application/x-winexe": "application/x-dosexec",
    "application/x-exe": "application/x-dosexec",
    "application/exe": "application/x-dosexec",
    # Executables, shared objects and position-independent executables are all ELF.
    "application/x-sharedlib": "application/x-executable",
    "application/x-pie-executable": "application/x-executable",
    "application/x-elf": "application/x-executable",
    "application/x-mach-o-executable": "application/x-mach-binary",
    "application/x-mach-o": "application/x-mach-binary",
    "application/x-java-applet": "application/java-vm",
    "application/x-java-archive": "application/java-archive",
    "application/x-msi": "application/x-msi",
    "application/x-ms-installer": "application/x-msi",
}

_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
_DOCM = "application/vnd.ms-word.document.macroenabled.12"
_XLSM = "application/vnd.ms-excel.sheet.macroenabled.12"
_PPTM = "application/vnd.ms-powerpoint.presentation.macroenabled.12"

# Office Open XML types that share a package layout. The sniffer returns the first of each.
_OOXML_SIBLINGS = (
    frozenset({
        _DOCX,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.template",
        "application/vnd.ms-word.document.macroenabled.12",
        "application/vnd.ms-word.template.macroenabled.12",
    }),
    frozenset({
        _XLSX,
        "application/vnd.openxmlformats-officedocument.spreadsheetml.template",
        "application/vnd.ms-excel.sheet.macroenabled.12",
        "application/vnd.ms-excel.template.macroenabled.12",
        "application/vnd.ms-excel.sheet.binary.macroenabled.12",
        "application/vnd.ms-excel.addin.macroenabled.12",
    }),
    frozenset({
        _PPTX,
        "application/vnd.openxmlformats-officedocument.presentationml.template",
        "application/vnd.openxmlformats-officedocument.presentationml.slideshow",
        "application/vnd.ms-powerpoint.presentation.macroenabled.12",
        "application/vnd.ms-powerpoint.slideshow.macroenabled.12",
        "application/vnd.ms-powerpoint.template.macroenabled.12",
        "application/vnd.ms-powerpoint.addin.macroenabled.12",
    }),
)

_OLE_KINDS = frozenset({
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.ms-outlook",
    "application/vnd.visio",
    "application/vnd.ms-project",
    "application/vnd.ms-works",
    "application/x-msi",
})
_ZIP_KINDS = frozenset(
    {
        "application/java-archive",
        "application/epub+zip",
        "application/vnd.android.package-archive",
        "application/x-xpinstall",
        "application/vnd.ms-xpsdocument",
        "application/oxps",
        "application/vnd.ms-visio.drawing",
    }
    | {member for family in _OOXML_SIBLINGS for member in family}
)
_GZIP_KINDS = frozenset({
    "application/x-tar+gzip",
    "application/tar+gzip",
    "application/x-compressed-tar",
    "application/x-gtar",
    "application/x-tgz",
})
# Declared types whose files always start with a signature the sniffer knows.
_SIGNED_TYPES = frozenset(
    {"application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp", "application/zip"}
    | _ZIP_KINDS
)
# Kinds of each sniffed container type that a declaration may name instead.
_CONTAINER_KINDS = {
    "application/zip": _ZIP_KINDS,
    "application/x-ole-storage": _OLE_KINDS,
    "application/gzip": _GZIP_KINDS,
}
# Sniffed types that only mean "some text", so a declared text type is more precise.
_WEAK_TEXT_TYPES = frozenset(
    {"text/plain", "application/json", "application/xml", "text/x-shellscript"}
)
_TEXTUAL_APPLICATION_TYPES = frozenset({
    "application/json",
    "application/xml",
    "application/javascript",
    "application/ecmascript",
    "application/x-javascript",
    "application/x-sh",
    "application/x-shellscript",
    "application/x-yaml",
    "application/yaml",
    "application/csv",
    "application/sql",
    "application/x-sql",
    "application/mbox",
    "application/pgp-signature",
    "application/pgp-keys",
    "application/pgp-encrypted",
    "application/x-pem-file",
    "application/ics",
    "application/x-httpd-php",
    "application/x-perl",
    "application/x-python",
    "application/toml",
    "application/x-ndjson",
})


def canonical_type(media_type: str) -> str:
    """Return the canonical lowercase name of `media_type` (`image/jpg` → `image/jpeg`).

    Parameters are dropped: `Application/X-DOSEXEC; name=x` is `application/x-dosexec`.
    """
    lowered = media_type.partition(";")[0].strip().lower()
    return _ALIASES.get(lowered, lowered)


def is_textual(media_type: str) -> bool:
    """Tell whether a (canonical) media type names text: text/*, message/*, JSON, XML and kin."""
    main, _, subtype = media_type.partition("/")
    return (
        main in ("text", "message")
        or media_type in _TEXTUAL_APPLICATION_TYPES
        or subtype.endswith(("+xml", "+json"))
    ) and media_type != "image/svg+xml"


def _ooxml_siblings(first: str, second: str) -> bool:
    return any(first in family and second in family for family in _OOXML_SIBLINGS)


def _is_macro_enabled(media_type: str) -> bool:
    return media_type.endswith(".macroenabled.12")


@dataclass(frozen=True)
class TypeVerdict:
    """The type an attachment is listed with, and whether it contradicts the declaration."""

    content_type: str
    mismatch: bool


def effective_type(declared: str, sniffed: str | None) -> TypeVerdict:
    """Choose between a declared and a sniffed type (see the module docstring)."""
    declared = canonical_type(declared)
    if sniffed is None:
        if declared in _SIGNED_TYPES:
            return TypeVerdict(OCTET_STREAM, mismatch=True)
        return TypeVerdict(declared or OCTET_STREAM, mismatch=False)
    if declared in GENERIC_TYPES or declared == sniffed:
        return TypeVerdict(sniffed, mismatch=False)
    if declared in _CONTAINER_KINDS.get(sniffed, ()):
        return TypeVerdict(declared, mismatch=False)
    if sniffed in _CONTAINER_KINDS.get(declared, ()):
        return TypeVerdict(sniffed, mismatch=False)
    if sniffed in _WEAK_TEXT_TYPES and is_textual(declared):
        return TypeVerdict(declared, mismatch=False)
    if _ooxml_siblings(sniffed, declared):
        if _is_macro_enabled(sniffed) and not _is_macro_enabled(declared):
            return TypeVerdict(sniffed, mismatch=True)
        return TypeVerdict(declared, mismatch=False)
    return TypeVerdict(sniffed, mismatch=True)


class TypePatterns:
    """An allow or deny list of media type patterns, prepared for matching.

    A pattern is a media type (any of its names, see `canonical_type`), `type/*`,
    or `*/*` (also `*`), compared case-insensitively.
    """

    def __init__(self, patterns: tuple[str, ...] | list[str]) -> None:
        self.patterns = tuple(patterns)
        self._everything = False
        self._types: set[str] = set()
        self._main_types: set[str] = set()
        for pattern in self.patterns:
            lowered = pattern.strip().lower()
            if lowered in ("*", "*/*"):
                self._everything = True
            elif lowered.endswith("/*"):
                self._main_types.add(lowered[:-2])
            else:
                self._types.add(canonical_type(lowered))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, media_type: str) -> bool:
        """Tell whether a canonical media type matches one of the patterns."""
        return (
            self._everything
            or media_type in self._types
            or media_type.partition("/")[0] in self._main_types
        )


def type_matches(media_type: str, pattern: str) -> bool:
    """Tell whether a canonical media type matches one pattern (see `TypePatterns`)."""
    return TypePatterns([pattern]).match(media_type)


# -- the sniffer -------------------------------------------------------------------------------


def sniff_content_type(data: bytes) -> str | None:
    """Return the media type the bytes show, or None for empty or unrecognized binary data."""
    if not data:
        return None
    return _sniff_binary(data) or _sniff_text(data)


_SIMPLE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"%PDF-", "application/pdf"),
    (b"{\\rtf", "application/rtf"),
    (b"%!PS-Adobe-", "application/postscript"),
    (b"\x1f\x8b\x08", "application/gzip"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"\x7fELF", "application/x-executable"),
    (b"\xfe\xed\xfa\xce", "application/x-mach-binary"),
    (b"\xfe\xed\xfa\xcf", "application/x-mach-binary"),
    (b"\xce\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\x78\x9f\x3e\x22", TNEF),
    (b"L\x00\x00\x00\x01\x14\x02\x00", "application/x-ms-shortcut"),
)
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_OLE_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# The primary volume descriptor of an ISO 9660 image sits at byte 32769.
_ISO9660_OFFSET = 0x8001


def _sniff_binary(data: bytes) -> str | None:
    for signature, media_type in _SIMPLE_SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data.startswith(b"BZh") and data[3:4].isdigit() and data[3:4] != b"0":
        return "application/x-bzip2"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(_ZIP_SIGNATURES):
        return _zip_kind(data)
    if data.startswith(_OLE_SIGNATURE):
        return _ole_kind(data)
    if data.startswith(b"MZ") and _is_dos_executable(data):
        return "application/x-dosexec"
    if data.startswith((b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")):
        return _universal_binary_or_class(data)
    if data[_ISO9660_OFFSET : _ISO9660_OFFSET + 5] == b"CD001":
        return "application/x-iso9660-image"
    return None


def _is_dos_executable(data: bytes) -> bool:
    """Tell an `MZ` executable from text that starts with "MZ".

    A PE file has "PE\\0\\0" where the 32-bit field at 0x3C points. A plain DOS
    program has binary header fields, so its first 64 bytes contain NUL bytes.
    """
    if len(data) >= 0x40:
        (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
        if data[pe_offset : pe_offset + 4] == b"PE\x00\x00":
            return True
    return b"\x00" in data[:64]


def _universal_binary_or_class(data: bytes) -> str:
    """Split the shared 0xCAFEBABE magic: a Mach-O universal binary or a Java class file.

    Both are big-endian. A universal binary stores its architecture count next
    (a handful), and a class file stores its version there (45 or more for every
    Java release).
    """
    if len(data) < 8:
        return OCTET_STREAM
    (count,) = struct.unpack_from(">I", data, 4)
    return "application/x-mach-binary" if count < 30 else "application/java-vm"


# -- ZIP ----------------------------------------------------------------------------------------

_ODF_PREFIX = "application/vnd.oasis.opendocument."


def _zip_kind(data: bytes) -> str:
    """Name a ZIP archive by its entries: Office Open XML, OpenDocument, Java, or plain ZIP."""
    odf = _opendocument_type(data)
    if odf is not None:
        return odf
    names = _zip_entry_names(data)
    if "[Content_Types].xml" in names:
        macros = any(name.lower().endswith("vbaproject.bin") for name in names)
        for prefix, plain, with_macros in (
            ("word/", _DOCX, _DOCM), ("xl/", _XLSX, _XLSM), ("ppt/", _PPTX, _PPTM),
        ):
            if any(name.startswith(prefix) for name in names):
                return with_macros if macros else plain
    if "META-INF/MANIFEST.MF" in names and any(name.endswith(".class") for name in names):
        return "application/java-archive"
    return "application/zip"


def _opendocument_type(data: bytes) -> str | None:
    """Return the OpenDocument type stored, uncompressed, as the archive's first entry."""
    if len(data) < 30 or not data.startswith(b"PK\x03\x04"):
        return None
    method, = struct.unpack_from("<H", data, 8)
    size, name_length, extra_length = struct.unpack_from("<I4xHH", data, 18)
    name_start = 30
    if method != 0 or data[name_start : name_start + name_length] != b"mimetype":
        return None
    content_start = name_start + name_length + extra_length
    media_type = data[content_start : content_start + min(size, 100)].decode("ascii", "replace")
    return media_type if media_type.startswith(_ODF_PREFIX) else None


def _zip_entry_names(data: bytes) -> set[str]:
    """Return the entry names of the central directory, or of the local headers when it is lost.

    At most `MAX_CONTAINER_ENTRIES` names are read. An archive truncated before
    its central directory is read from its local headers until one whose size
    is only known after its data (bit 3 of the flags).
    """
    names = _central_directory_names(data)
    return names if names else _local_header_names(data)


_END_OF_CENTRAL_DIRECTORY = b"PK\x05\x06"
# The end record is 22 bytes plus a comment of at most 65535.
_END_RECORD_SEARCH = 22 + 65535


def _central_directory_names(data: bytes) -> set[str]:
    end = data.rfind(_END_OF_CENTRAL_DIRECTORY, max(0, len(data) - _END_RECORD_SEARCH))
    if end < 0 or end + 22 > len(data):
        return set()
    # After the signature: disk numbers and per-disk count (6 bytes), then the
    # total entry count, the directory's size and its offset.
    count, _size, offset = struct.unpack_from("<HII", data, end + 10)
    names: set[str] = set()
    position = offset
    for _ in range(min(count, MAX_CONTAINER_ENTRIES)):
        if data[position : position + 4] != b"PK\x01\x02" or position + 46 > len(data):
            break
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, position + 28)
        start = position + 46
        names.add(data[start : start + name_length].decode("utf-8", "replace"))
        position = start + name_length + extra_length + comment_length
    return names


def _local_header_names(data: bytes) -> set[str]:
    names: set[str] = set()
    position = 0
    for _ in range(MAX_CONTAINER_ENTRIES):
        if data[position : position + 4] != b"PK\x03\x04" or position + 30 > len(data):
            break
        flags, = struct.unpack_from("<H", data, position + 6)
        compressed, _, name_length, extra_length = struct.unpack_from("<IIHH", data, position + 18)
        start = position + 30
        names.add(data[start : start + name_length].decode("utf-8", "replace"))
        if flags & 0x08:
            break  # the size follows the data, so the next header cannot be found
        position = start + name_length + extra_length + compressed
    return names


# -- OLE2 compound files ---------------------------------------------------------------------

# Class ids of the root storage of Windows Installer databases, patches and transforms.
_MSI_CLASS_IDS = frozenset(
    uuid.UUID(text)
    for text in (
        "000c1084-0000-0000-c000-000000000046",
        "000c1086-0000-0000-c000-000000000046",
        "000c1082-0000-0000-c000-000000000046",
    )
)
_END_OF_CHAIN = 0xFFFFFFFE
# Directory sectors followed per file. 64 sectors of 4 KiB contain 2048 entries.
_MAX_DIRECTORY_SECTORS = 64


@dataclass(frozen=True)
class _OleDirectory:
    root_class_id: uuid.UUID | None
    names: frozenset[str]


def _ole_kind(data: bytes) -> str:
    """Name an OLE2 compound file by its root class id and its stream names."""
    directory = _ole_directory(data)
    if directory is None:
        return "application/x-ole-storage"
    names = directory.names
    if directory.root_class_id in _MSI_CLASS_IDS:
        return "application/x-msi"
    if "WordDocument" in names:
        return "application/msword"
    if "Workbook" in names or "Book" in names:
        return "application/vnd.ms-excel"
    if "PowerPoint Document" in names:
        return "application/vnd.ms-powerpoint"
    if "__properties_version1.0" in names or any(n.startswith("__substg1.0_") for n in names):
        return "application/vnd.ms-outlook"
    if "VisioDocument" in names:
        return "application/vnd.visio"
    return "application/x-ole-storage"


def _ole_directory(data: bytes) -> _OleDirectory | None:
    """Read the directory entries of a compound file ([MS-CFB] 2.2 and 2.6), or None.

    Follows the directory's sector chain through the FAT sectors that the header
    lists. These are the first 109, enough for files up to about 7 MB with
    512-byte sectors. A chain that leaves them, loops or points outside the file
    ends the walk with the entries read so far.
    """
    if len(data) < 512:
        return None
    sector_shift, = struct.unpack_from("<H", data, 30)
    if sector_shift not in (9, 12):
        return None
    sector_size = 1 << sector_shift
    first_directory_sector, = struct.unpack_from("<I", data, 48)
    fat_sectors = struct.unpack_from("<109I", data, 76)

    def sector_offset(number: int) -> int:
        return (number + 1) * sector_size

    def next_sector(number: int) -> int:
        per_fat_sector = sector_size // 4
        index, slot = divmod(number, per_fat_sector)
        if index >= len(fat_sectors):
            return _END_OF_CHAIN
        offset = sector_offset(fat_sectors[index]) + slot * 4
        if offset + 4 > len(data):
            return _END_OF_CHAIN
        return int(struct.unpack_from("<I", data, offset)[0])

    names: set[str] = set()
    root_class_id = None
    sector = first_directory_sector
    visited: set[int] = set()
    while sector < _END_OF_CHAIN and sector not in visited:
        if len(visited) >= _MAX_DIRECTORY_SECTORS or len(names) >= MAX_CONTAINER_ENTRIES:
            break
        visited.add(sector)
        start = sector_offset(sector)
        if start + sector_size > len(data):
            break
        for entry in range(start, start + sector_size, 128):
            name_length, entry_type = struct.unpack_from("<HB", data, entry + 64)
            if entry_type == 0 or not 2 <= name_length <= 64:
                continue  # an unused entry
            name = data[entry : entry + name_length - 2].decode("utf-16-le", "replace")
            if entry_type == 5:
                root_class_id = uuid.UUID(bytes_le=data[entry + 80 : entry + 96])
            names.add(name)
        sector = next_sector(sector)
    if not names:
        return None
    return _OleDirectory(root_class_id, frozenset(names))


# -- text ----------------------------------------------------------------------------------------

# The WHATWG MIME Sniffing Standard's HTML prefixes (section 7.1), each followed
# by a space or ">".
_HTML_PREFIXES = (
    "<!doctype html", "<html", "<head", "<script", "<iframe", "<h1", "<div", "<font",
    "<table", "<a", "<style", "<title", "<b", "<body", "<br", "<p", "<!--",
)
# Control characters that text files contain: tab, line feed, vertical tab, form
# feed, carriage return and escape. More than 1 % of other control bytes means binary.
_TEXT_CONTROLS = frozenset(b"\t\n\x0b\x0c\r\x1b")


def _sniff_text(data: bytes) -> str | None:
    head = _text_head(data[:SNIFF_BYTES])
    if head is None:
        return None
    stripped = head.lstrip("\ufeff \t\r\n\x0c").lower()
    if _starts_with_html(stripped):
        return "text/html"
    if stripped.startswith("<?xml") or stripped.startswith("<svg"):
        return _xml_kind(stripped[:1024])
    if stripped.startswith(("{", "[")) and _is_json(data):
        return "application/json"
    if stripped.startswith("#!"):
        return "text/x-shellscript"
    return "text/plain"


def _text_head(head: bytes) -> str | None:
    """Decode the first bytes of a file as text, or return None when they are binary."""
    for bom, encoding in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if head.startswith(bom):
            return codecs.getincrementaldecoder(encoding)("replace").decode(head[2:])
    if b"\x00" in head:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        pass
    controls = sum(1 for byte in head if byte < 0x20 and byte not in _TEXT_CONTROLS)
    if controls * 100 > len(head):
        return None
    return head.decode("latin-1")


def _starts_with_html(text: str) -> bool:
    for prefix in _HTML_PREFIXES:
        if text.startswith(prefix) and text[len(prefix) : len(prefix) + 1] in (" ", ">"):
            return True
    return False


def _xml_kind(head: str) -> str:
    if "<svg" in head:
        return "image/svg+xml"
    if "<html" in head:
        return "text/html"
    return "application/xml"


def _is_json(data: bytes) -> bool:
    if len(data) > MAX_JSON_SNIFF_BYTES:
        return False
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True
