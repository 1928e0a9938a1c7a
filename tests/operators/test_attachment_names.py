"""Safe attachment filenames: no directories, hidden characters, devices or endless names."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ticketflow.operators.attachment_names import (
    MAX_FILENAME_BYTES,
    extension_for,
    numbered_filename,
    safe_filename,
)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("Grüße.txt", "Grüße.txt"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("C:\\Users\\Public\\run.bat", "run.bat"),
        ("/var/tmp/x.sh", "x.sh"),
        ("..", "attachment-3.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("a\u2066b\u2069c.txt", "abc.txt"),
        ("zero\u200bwidth.txt", "zerowidth.txt"),
        ("bell\x07\x1b[0m.txt", "bell[0m.txt"),
        ("line\nbreak\r.txt", "linebreak.txt"),
        ("nul\x00byte.txt", "nulbyte.txt"),
        ("lone\udcffsurrogate.txt", "lonesurrogate.txt"),
        ("\uff0f..\uff0fx.txt", "x.txt"),
        ("..\uff3c..\uff3cboot.ini", "boot.ini"),
        ("\uff23\uff2f\uff2e.txt", "_CON.txt"),
        ("\u2024\u2024", "attachment-3.txt"),
        ("\u65e5\u672c\uff0d\u8a9e.txt", "\u65e5\u672c-\u8a9e.txt"),
        ('what?<is>"this"|*.txt', "what__is__this___.txt"),
        ("file.txt:hidden-stream", "file.txt_hidden-stream"),
        (".bashrc", "bashrc"),
        ("...hidden", "hidden"),
        ("  spaced   out  .txt", "spaced out .txt"),
        ("evil.exe.", "evil.exe"),
        ("evil.exe . . ", "evil.exe"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("Aux.tar.gz", "_Aux.tar.gz"),
        ("COM1.log", "_COM1.log"),
        ("lpt9", "_lpt9"),
        ("COM¹.txt", "_COM1.txt"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("", "attachment-3.txt"),
        ("\u202e", "attachment-3.txt"),
    ],
)
def test_safe_filename(name: str, safe: str) -> None:
    assert safe_filename(name, "text/plain", 3) == safe


def test_nameless_part_named_by_type() -> None:
    assert safe_filename("", "image/png", 1) == "attachment-1.png"
    assert safe_filename("", "message/rfc822", 2) == "attachment-2.eml"
    assert safe_filename("", "application/x-unheard-of", 4) == "attachment-4.bin"


def test_long_name_keeps_extension() -> None:
    safe = safe_filename("a" * 400 + ".pdf", "application/pdf", 1)
    assert safe.endswith(".pdf")
    assert len(safe.encode("utf-8")) == MAX_FILENAME_BYTES


def test_long_name_cut_on_character_boundary() -> None:
    safe = safe_filename("日本語" * 100 + ".xlsx", "application/zip", 1)
    assert safe.endswith(".xlsx")
    assert len(safe.encode("utf-8")) <= MAX_FILENAME_BYTES
    # 200 bytes minus ".xlsx" leave 195 bytes: 65 characters of 3 bytes each.
    assert safe.removesuffix(".xlsx") == "日本語" * 21 + "日本"


def test_long_suffix_is_no_extension() -> None:
    safe = safe_filename("report." + "x" * 300, "text/plain", 1)
    assert len(safe.encode("utf-8")) <= MAX_FILENAME_BYTES
    assert safe.startswith("report.x")


def test_decomposed_name_normalized() -> None:
    assert safe_filename("Cafe\u0301.txt", "text/plain", 1) == "Caf\u00e9.txt"


@pytest.mark.parametrize(
    ("name", "number", "numbered"),
    [
        ("report.TXT", 2, "report (2).TXT"),
        ("archive.tar.gz", 3, "archive.tar (3).gz"),
        ("README", 2, "README (2)"),
        ("a." + "x" * 30, 2, "a." + "x" * 30 + " (2)"),
    ],
)
def test_numbered_filename(name: str, number: int, numbered: str) -> None:
    assert numbered_filename(name, number) == numbered


def test_numbered_long_name_stays_bounded() -> None:
    numbered = numbered_filename("a" * 200 + ".pdf", 12)
    assert numbered.endswith("a (12).pdf")
    assert len(numbered.encode("utf-8")) == MAX_FILENAME_BYTES


def test_extension_for_known_types() -> None:
    assert extension_for("application/pdf") == ".pdf"
    assert extension_for("image/jpeg") == ".jpg"
    assert extension_for("message/delivery-status") == ".txt"
    assert extension_for("text/rfc822-headers") == ".txt"
    assert extension_for("video/mp4") == ".bin"


_UNSAFE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


@given(st.text(max_size=300), st.integers(min_value=1, max_value=1000))
def test_any_name_becomes_safe(name: str, position: int) -> None:
    safe = safe_filename(name, "text/plain", position)
    assert safe
    assert "/" not in safe
    assert "\\" not in safe
    assert not safe.startswith((".", " "))
    assert not safe.endswith((".", " "))
    assert len(safe.encode("utf-8")) <= MAX_FILENAME_BYTES
    assert not any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in safe)
    assert not any(char in '<>:"|?*' for char in safe)
    assert safe.split(".", 1)[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
