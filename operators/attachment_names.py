"""Attachment filenames that are safe to show, store and save on any common system.

`safe_filename` keeps what a person would recognize and drops what could
mislead a person or a program:

- compatibility forms: a character whose compatibility form (NFKC) is ASCII
  becomes that form first, so the fullwidth "／..／x.txt" is checked, and
  kept, as "x.txt" and "ＣＯＮ.txt" as "CON.txt". Other characters (CJK,
  accented letters) stay as they are;
- directories: only the last component after "/" or "\\" is kept, so
  "../../etc/passwd" and "C:\\Users\\x\\a.exe" become "passwd" and "a.exe";
- control, format and separator characters (Unicode categories Cc, Cf, Zl, Zp
  and lone surrogates): C0/C1 controls and NUL, and the bidirectional overrides
  that make "invoice\\u202efdp.exe" look like "invoiceexe.pdf";
- characters Windows forbids in names (`<>:"|?*`), each replaced with "_";
- leading dots and spaces (hidden files, "." and ".."), and trailing dots and
  spaces, which Windows drops when it saves the file;
- Windows device names (CON, PRN, AUX, NUL, COM0-9, LPT0-9), with or without an
  extension, which get a "_" in front;
- length: at most `MAX_FILENAME_BYTES` bytes of UTF-8, cut in the stem so the
  extension stays.

A part without a name, or whose name is nothing after cleaning, is called
`attachment-N` plus an extension for its content type (N is its position in the
message's attachment list).

`numbered_filename` gives the second file of a name in a message its own name
("report (2).txt").
"""

from __future__ import annotations

import re
import unicodedata

# Filesystems limit a name to 255 bytes; the rest leaves room for a prefix or a
# copy counter that a ticket system adds.
MAX_FILENAME_BYTES = 200
# A longer suffix after the last dot is no extension and may be cut.
_MAX_EXTENSION_CHARS = 16

_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]')
_WHITESPACE_RUN = re.compile(r"\s+")
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{number}" for port in ("COM", "LPT") for number in "0123456789¹²³"}
)

# Extensions for generated names.
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/csv": ".csv",
    "text/calendar": ".ics",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "application/json": ".json",
    "application/xml": ".xml",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/gzip": ".gz",
    "application/rtf": ".rtf",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.ms-powerpoint": ".ppt",
    "application/vnd.ms-outlook": ".msg",
    "application/vnd.ms-tnef": ".dat",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    "image/svg+xml": ".svg",
}


def extension_for(media_type: str) -> str:
    """Return a filename extension (with its dot) for a canonical media type.

    Types without their own extension get ".txt" when they are text/* or
    message/* (delivery reports, header blocks), else ".bin".
    """
    if media_type in _EXTENSIONS:
        return _EXTENSIONS[media_type]
    return ".txt" if media_type.startswith(("text/", "message/")) else ".bin"


def safe_filename(name: str, media_type: str, position: int) -> str:
    """Return `name` made safe (see the module docstring); `position` counts from 1."""
    name = _compatibility_ascii(unicodedata.normalize("NFC", name))
    cleaned = _without_dropped_characters(_last_component(name))
    cleaned = _WINDOWS_FORBIDDEN.sub("_", cleaned)
    cleaned = _WHITESPACE_RUN.sub(" ", cleaned).strip(". ")
    if not cleaned:
        return f"attachment-{position}{extension_for(media_type)}"
    if _is_windows_device(cleaned):
        cleaned = "_" + cleaned
    return _bounded(cleaned)


def numbered_filename(name: str, number: int) -> str:
    """Return `name` with " (number)" before its extension, within `MAX_FILENAME_BYTES`."""
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) > _MAX_EXTENSION_CHARS:
        stem, extension = name, ""
    suffix = f" ({number})" + ("." + extension if extension else "")
    budget = MAX_FILENAME_BYTES - len(suffix.encode("utf-8"))
    return stem.encode("utf-8")[:budget].decode("utf-8", "ignore") + suffix


def _compatibility_ascii(name: str) -> str:
    """Replace each character whose NFKC form is ASCII ("／", "Ｃ", "¹", "․") with that form."""
    if name.isascii():
        return name
    return "".join(_ascii_form(char) for char in name)


def _ascii_form(char: str) -> str:
    if char.isascii():
        return char
    folded = unicodedata.normalize("NFKC", char)
    return folded if folded.isascii() else char


def _without_dropped_characters(name: str) -> str:
    # str.isprintable is False for every character of the Other and Separator
    # categories but the space, so a printable name has nothing to drop.
    if name.isprintable():
        return name
    return _without_dropped_characters_one_by_one(name)


def _without_dropped_characters_one_by_one(name: str) -> str:
    return "".join(char for char in name if unicodedata.category(char) not in _DROPPED_CATEGORIES)


def _last_component(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def _is_windows_device(name: str) -> bool:
    stem = name.split(".", 1)[0].rstrip(" ")
    return stem.upper() in _WINDOWS_DEVICES


def _bounded(name: str) -> str:
    if len(name.encode("utf-8")) <= MAX_FILENAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) > _MAX_EXTENSION_CHARS:
        stem, extension = name, ""
    suffix = "." + extension if extension else ""
    budget = MAX_FILENAME_BYTES - len(suffix.encode("utf-8"))
    # Cut at a character boundary: drop the bytes of a character split in two.
    cut = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(". ")
    return cut + suffix
