"""The files inside an MS-TNEF stream (winmail.dat), read with bounded work.

Outlook and Exchange wrap a message's attachments into one `application/ms-tnef`
part named winmail.dat. `read_tnef` returns the files it carries, in order, with
their names, their MIME type and Content-ID when the stream records them.

The format ([MS-OXTNEF]) is a signature, then attributes: a level byte (1 for
the message, 2 for an attachment), a 32-bit id whose high half is the type, a
32-bit length, the data and a checksum. An attachment starts at its
attAttachRendData attribute. Its attAttachTitle contains the short name,
attAttachData the bytes, and attAttachment a list of MAPI properties: the long
filename, the MIME tag, the Content-ID and, for attached Outlook items, the data
object.

tnefparse 1.4 reads the same format, but hostile input makes it slow. Its
`TNEF.__init__` copies the rest of the stream for every attribute (quadratic
time), and its MAPI reader loops once per declared property even past the end
of the data: 2**24 properties in a 60-byte stream took 2.3 s on a 2-core x86_64
machine, so 2**32 would take about ten minutes. Here each count is checked
against the bytes left before it is used, the stream is sliced without copies,
and the work is linear in the stream's size.

Not handled: checksums are not verified. The message body (RTF or HTML inside
the stream) is not extracted. An attached Outlook item is returned as one file
that contains its own TNEF stream; the caller decides whether to read it too.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass, field

TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"
# Attributes read per stream. Each attachment takes a handful (rendering data,
# title, data, MAPI properties, dates).
MAX_ATTRIBUTES = 20_000
# Files returned per stream.
MAX_FILES = 1000

_LEVEL_MESSAGE = 1
_LEVEL_ATTACHMENT = 2

# Attribute ids (the low 16 bits of the attribute).
_ATT_OEM_CODEPAGE = 0x9007
_ATT_ATTACH_REND_DATA = 0x9002
_ATT_ATTACH_TITLE = 0x8010
_ATT_ATTACH_DATA = 0x800F
_ATT_ATTACHMENT = 0x9005

# MAPI property ids of an attachment.
_PR_ATTACH_DATA = 0x3701
_PR_ATTACH_FILENAME = 0x3704
_PR_ATTACH_LONG_FILENAME = 0x3707
_PR_ATTACH_MIME_TAG = 0x370E
_PR_ATTACH_CONTENT_ID = 0x3712
_PR_DISPLAY_NAME = 0x3001
_USED_PROPERTIES = frozenset({
    _PR_ATTACH_DATA,
    _PR_ATTACH_FILENAME,
    _PR_ATTACH_LONG_FILENAME,
    _PR_ATTACH_MIME_TAG,
    _PR_ATTACH_CONTENT_ID,
    _PR_DISPLAY_NAME,
})

# MAPI property types ([MS-OXCDATA] 2.11.1) and the bytes one value occupies in a
# TNEF stream, where 2-byte values are padded to 4.
_FIXED_SIZES = {
    0x0002: 4, 0x0003: 4, 0x0004: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8,
    0x000A: 4, 0x000B: 4, 0x0014: 8, 0x0040: 8, 0x0048: 16,
}
_PT_STRING8 = 0x001E
_PT_UNICODE = 0x001F
_PT_BINARY = 0x0102
_PT_OBJECT = 0x000D
_VARIABLE_TYPES = frozenset({_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT})
_MULTI_VALUE = 0x1000
_NAMED_PROPERTY = 0x8000
# An attached object's data starts with the 16-byte interface id of its kind.
_OBJECT_IID_BYTES = 16


class TnefUnreadable(ValueError):
    """A TNEF stream that cannot be read. The message names where reading failed.

    `files` holds the files found before the failure, the last one possibly
    incomplete, so a caller can still check each of them.
    """

    def __init__(self, message: str, files: list[TnefFile] | None = None) -> None:
        super().__init__(message)
        self.files: list[TnefFile] = files or []


class TnefTooManyFiles(TnefUnreadable):
    """A TNEF stream with more than `MAX_FILES` files; `files` holds the first `MAX_FILES`."""


@dataclass(frozen=True)
class TnefFile:
    """One file carried in a TNEF stream, whose `filename` may be empty."""

    filename: str
    content_type: str | None
    content_id: str | None
    data: bytes


@dataclass
class _Draft:
    title: str = ""
    data: bytes = b""
    properties: dict[int, str | bytes] = field(default_factory=dict)

    def finish(self) -> TnefFile:
        names = (
            self.properties.get(_PR_ATTACH_LONG_FILENAME),
            self.properties.get(_PR_ATTACH_FILENAME),
            self.title,
            self.properties.get(_PR_DISPLAY_NAME),
        )
        filename = next((name for name in names if isinstance(name, str) and name), "")
        return TnefFile(
            filename=filename,
            content_type=self._text(_PR_ATTACH_MIME_TAG).lower() or None,
            content_id=self._text(_PR_ATTACH_CONTENT_ID).strip("<>") or None,
            data=self.data,
        )

    def _text(self, property_id: int) -> str:
        value = self.properties.get(property_id)
        return value.strip() if isinstance(value, str) else ""


def read_tnef(data: bytes) -> list[TnefFile]:
    """Return the files of a TNEF stream in order, or raise `TnefUnreadable` when it is broken.

    A stream that is cut off, has a length that runs past its end, has an
    unknown MAPI property type or more than `MAX_ATTRIBUTES` attributes raises
    `TnefUnreadable`, and one with more than `MAX_FILES` files raises
    `TnefTooManyFiles`. Either carries the files read before the failure.
    """
    if not data.startswith(TNEF_SIGNATURE) or len(data) < 6:
        raise TnefUnreadable("no TNEF signature (78 9F 3E 22) at the start")
    drafts: list[_Draft] = []
    try:
        _read_attachments(memoryview(data), drafts)
    except TnefUnreadable as error:
        files = [draft.finish() for draft in drafts]
        raise type(error)(str(error), files) from None
    return [draft.finish() for draft in drafts]


def _read_attachments(view: memoryview, drafts: list[_Draft]) -> None:
    """Append a draft to `drafts` for each attachment of the stream, as it is read."""
    codepage = "cp1252"
    offset = 6  # the signature and a 16-bit key
    for count in range(MAX_ATTRIBUTES + 1):
        if offset == len(view):
            break
        if count == MAX_ATTRIBUTES:
            raise TnefUnreadable(f"more than {MAX_ATTRIBUTES} attributes")
        level, attribute, value, offset = _attribute(view, offset)
        if level == _LEVEL_MESSAGE and attribute == _ATT_OEM_CODEPAGE:
            codepage = _codepage(value)
        elif level == _LEVEL_ATTACHMENT:
            if attribute == _ATT_ATTACH_REND_DATA or not drafts:
                if len(drafts) >= MAX_FILES:
                    raise TnefTooManyFiles(f"more than {MAX_FILES} attachments")
                drafts.append(_Draft())
            _add_to_attachment(drafts[-1], attribute, value, codepage)


def _attribute(view: memoryview, offset: int) -> tuple[int, int, memoryview, int]:
    """Read the attribute at `offset`: level, id, data, and the offset after its checksum."""
    if offset + 9 > len(view):
        raise TnefUnreadable(f"attribute header cut off at byte {offset}")
    level, attribute, _type, length = struct.unpack_from("<BHHI", view, offset)
    start = offset + 9
    end = start + length
    if end + 2 > len(view):
        raise TnefUnreadable(
            f"attribute {attribute:#06x} at byte {offset} declares {length} bytes; "
            f"only {len(view) - start} follow"
        )
    return level, attribute, view[start:end], end + 2


def _codepage(value: memoryview) -> str:
    if len(value) < 4:
        return "cp1252"
    (number,) = struct.unpack_from("<I", value)
    name = {65001: "utf-8", 20127: "ascii", 28591: "latin-1"}.get(number, f"cp{number}")
    try:
        codecs.lookup(name)
    except LookupError:
        return "cp1252"
    return name


def _add_to_attachment(draft: _Draft, attribute: int, value: memoryview, codepage: str) -> None:
    if attribute == _ATT_ATTACH_TITLE:
        draft.title = bytes(value).decode(codepage, "replace").rstrip("\x00")
    elif attribute == _ATT_ATTACH_DATA:
        draft.data = bytes(value)
    elif attribute == _ATT_ATTACHMENT:
        draft.properties.update(_mapi_properties(value, codepage))
        attached = draft.properties.pop(_PR_ATTACH_DATA, None)
        if isinstance(attached, bytes) and not draft.data:
            draft.data = attached


class _Reader:
    """A cursor over one MAPI property list that never reads past its end."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.offset = 0

    def take(self, size: int) -> memoryview:
        if size < 0 or self.offset + size > len(self.view):
            raise TnefUnreadable(
                f"MAPI property list: {size} bytes expected at byte {self.offset}, "
                f"but the list has {len(self.view)}"
            )
        chunk = self.view[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def uint16(self) -> int:
        return int(struct.unpack_from("<H", self.take(2))[0])

    def uint32(self) -> int:
        return int(struct.unpack_from("<I", self.take(4))[0])

    def count(self, minimum_item_bytes: int) -> int:
        """Read a count, refusing one that the bytes left cannot hold."""
        number = self.uint32()
        left = len(self.view) - self.offset
        if number * minimum_item_bytes > left:
            raise TnefUnreadable(f"MAPI count {number} at byte {self.offset - 4} exceeds the data")
        return number


def _mapi_properties(view: memoryview, codepage: str) -> dict[int, str | bytes]:
    """Read a MAPI property list and return the first value of each property used here."""
    reader = _Reader(view)
    found: dict[int, str | bytes] = {}
    for _ in range(reader.count(minimum_item_bytes=4)):
        property_type = reader.uint16()
        property_id = reader.uint16()
        if property_id >= _NAMED_PROPERTY:
            _skip_property_name(reader)
        values = _property_values(reader, property_type, codepage)
        if property_id in _USED_PROPERTIES and values and property_id not in found:
            found[property_id] = values[0]
    return found


def _skip_property_name(reader: _Reader) -> None:
    reader.take(16)  # the property set's GUID
    kind = reader.uint32()
    if kind == 0:
        reader.take(4)  # a numeric id
    else:
        reader.take(_padded(reader.uint32()))  # a UTF-16 name


def _property_values(reader: _Reader, property_type: int, codepage: str) -> list[str | bytes]:
    base_type = property_type & ~_MULTI_VALUE
    multiple = bool(property_type & _MULTI_VALUE)
    if base_type in _FIXED_SIZES:
        size = _FIXED_SIZES[base_type]
        for _ in range(reader.count(size) if multiple else 1):
            reader.take(size)
        return []
    if base_type not in _VARIABLE_TYPES:
        raise TnefUnreadable(f"unknown MAPI property type {base_type:#06x}")
    values: list[str | bytes] = []
    # A variable-size property has a value count even when it is single-valued.
    for _ in range(reader.count(minimum_item_bytes=4)):
        length = reader.uint32()
        raw = bytes(reader.take(_padded(length))[:length])
        values.append(_property_value(base_type, raw, codepage))
    return values


def _property_value(base_type: int, raw: bytes, codepage: str) -> str | bytes:
    if base_type == _PT_UNICODE:
        return raw.decode("utf-16-le", "replace").rstrip("\x00")
    if base_type == _PT_STRING8:
        return raw.decode(codepage, "replace").rstrip("\x00")
    if base_type == _PT_OBJECT:
        return raw[_OBJECT_IID_BYTES:]
    return raw


def _padded(length: int) -> int:
    return length + (-length % 4)
