"""Charset labels to Python codecs, and bytes to text without ever raising.

Mail names its charsets loosely: labels Python does not know (`iso-8859-8-i`,
`windows-874`, `cp-850`), labels that are wrong (UTF-8 declared as `us-ascii`),
and no label at all. `resolve_charset` maps a label through an alias table that
follows the WHATWG Encoding Standard's choices (`iso-8859-1` is read as
windows-1252, `gb2312` as GB18030, `shift_jis` as cp932), and `decode_text`
turns bytes into text with a recorded defect for every repair or guess:

- "charset_alias": the label is unknown to Python and was mapped by the table;
- "charset_repaired": invalid bytes were decoded one by one (windows-1252, else
  Latin-1) or replaced, the rest kept as declared;
- "charset_guessed": the label was missing, unknown or contradicted by the
  bytes, and the charset was chosen from the content.

Guessing is a heuristic over a fixed candidate list (UTF-8, ISO-2022-JP by its
escape sequences, windows-1252, windows-1251, KOI8-R, windows-1253, GB18030,
cp932, cp949, cp950). It separates Western European and Cyrillic text well; among the East
Asian double-byte charsets it prefers by a plausibility score, which can pick
the wrong one for short strings.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache

from ticketflow.operators.mime_defects import DefectLog

# Labels whose WHATWG reading differs from Python's codec of the same name, or
# that Python does not know at all. Keys are normalized labels (see `_normalize`).
CHARSET_ALIASES: dict[str, str] = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "iso8859-1": "cp1252",
    "iso-ir-100": "cp1252",
    "csisolatin1": "cp1252",
    "x-user-defined": "cp1252",
    "iso-8859-8-i": "iso8859-8",
    "iso-8859-8-e": "iso8859-8",
    "iso-8859-6-i": "iso8859-6",
    "iso-8859-6-e": "iso8859-6",
    "logical": "iso8859-8",
    "visual": "iso8859-8",
    "latin-9": "iso8859-15",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
    "gb2312": "gb18030",
    "gb-2312": "gb18030",
    "gb2312-80": "gb18030",
    "gb-2312-80": "gb18030",
    "euc-cn": "gb18030",
    "x-euc-cn": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "chinese": "gb18030",
    "big5": "cp950",
    "x-big5": "cp950",
    "big-5": "cp950",
    "cn-big5": "cp950",
    "shift-jis": "cp932",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "ms-kanji": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "csshiftjis": "cp932",
    "x-euc-jp": "euc_jp",
    "euc-kr": "cp949",
    "x-euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ks-c-5601-1987": "cp949",
    "korean": "cp949",
    "x-windows-949": "cp949",
    "unicode-1-1-utf-7": "utf-7",
    "x-mac-roman": "mac-roman",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-ukrainian": "mac-cyrillic",
    "x-mac-greek": "mac-greek",
    "x-mac-turkish": "mac-turkish",
    "x-mac-ce": "mac-latin2",
    "ucs-2": "utf-16",
    "iso-10646-ucs-2": "utf-16",
    "utf8": "utf-8",
    "utf-8-sig": "utf-8",
}

# Labels that name no charset; the bytes decide.
NO_CHARSET_LABELS = frozenset(
    {"", "unknown", "x-unknown", "unknown-8bit", "x-unknown-8bit", "default", "none", "charset"}
)

# Text codecs Python accepts by name that are no mail charset, or that raise on
# every input ("undefined").
_REFUSED_CODECS = frozenset(
    {"undefined", "unicode_escape", "raw_unicode_escape", "idna", "punycode", "mbcs", "oem"}
)

# Numbered families Python spells differently: "windows-874" is cp874,
# "cp-850" is cp850, "x-cp1250" is cp1250, "ibm-866" is cp866.
_NUMBERED_FAMILY = re.compile(r"^(?:x-)?(?:windows|win|cp|ibm|ms)[-_]?(\d{3,4})$")
_ISO_8859_FAMILY = re.compile(r"^(?:iso)?[-_]?8859[-_](\d{1,2})(?:[-_][a-z]+)?$")

_ISO2022JP_ESCAPES = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b$(D", b"\x1b(I")

# Tried in order when strict decoding with the declared codec fails.
_SUPERSETS: dict[str, tuple[str, ...]] = {
    "iso2022_jp": ("iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3"),
    "euc_jp": ("euc_jis_2004", "cp932"),
    "cp949": ("johab",),
    "cp950": ("big5hkscs",),
    "gb18030": (),
    "ascii": (),
}

_GUESS_CANDIDATES = ("cp1252", "cp1251", "koi8_r", "cp1253", "gb18030", "cp932", "cp949", "cp950")

# How much of a body the guesser reads; the winner decodes all of it.
_GUESS_SAMPLE_BYTES = 32 * 1024

_META_SCAN_BYTES = 4096


@dataclass(frozen=True)
class ResolvedCharset:
    """A label mapped to a Python codec; `codec` is None when the bytes must decide."""

    label: str
    codec: str | None
    status: str  # "absent", "known", "alias" (mapped by the table) or "unknown"


def _cp1252_or_latin1(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(byte)


# Windows-1252 for the bytes it defines, Latin-1 for the five it leaves undefined.
_BYTE_AS_CP1252 = tuple(_cp1252_or_latin1(byte) for byte in range(256))


def _repair_with_cp1252(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    invalid = error.object[error.start : error.end]
    return "".join(_BYTE_AS_CP1252[byte] for byte in invalid), error.end


# Decoding with errors="ticketflow-cp1252" keeps valid sequences and reads each
# invalid byte as windows-1252: how a UTF-8 body with pasted Latin-1 lines is repaired.
REPAIR_ERRORS = "ticketflow-cp1252"
codecs.register_error(REPAIR_ERRORS, _repair_with_cp1252)


def _normalize(label: str) -> str:
    return label.strip().strip("\"'").strip().lower()


def _python_codec(name: str) -> str | None:
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return None
    return info.name


@lru_cache(maxsize=512)
def resolve_charset(label: str | None) -> ResolvedCharset:
    """Map a charset label from a header to the Python codec that should read it."""
    if label is None:
        return ResolvedCharset("", None, "absent")
    normalized = _normalize(label)
    if normalized in NO_CHARSET_LABELS:
        return ResolvedCharset(normalized, None, "absent" if not normalized else "unknown")
    if "*" in normalized:  # RFC 2231 language suffix: "utf-8*en"
        normalized = normalized.split("*", 1)[0]

    python_name = _python_codec(normalized)
    if normalized in CHARSET_ALIASES:
        status = "known" if python_name else "alias"
        return ResolvedCharset(normalized, _python_codec(CHARSET_ALIASES[normalized]), status)
    if python_name:
        return ResolvedCharset(normalized, python_name, "known")

    family = _NUMBERED_FAMILY.match(normalized) or _ISO_8859_FAMILY.match(normalized)
    if family:
        prefix = "cp" if family.re is _NUMBERED_FAMILY else "iso8859-"
        mapped = _python_codec(prefix + family.group(1))
        if mapped:
            return ResolvedCharset(normalized, mapped, "alias")
    return ResolvedCharset(normalized, None, "unknown")


@lru_cache(maxsize=128)
def _is_single_byte(codec: str) -> bool:
    if codec.startswith("utf"):
        return False
    return len(bytes(range(256)).decode(codec, errors="replace")) == 256


def has_iso2022jp_escapes(data: bytes) -> bool:
    """Tell whether 7-bit data switches to JIS X 0208 the way ISO-2022-JP does."""
    return b"\x1b" in data and any(escape in data for escape in _ISO2022JP_ESCAPES)


def is_valid_utf8(data: bytes) -> bool:
    """Tell whether the bytes are strict UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _has_valid_multibyte_utf8(data: bytes) -> bool:
    # Decoding with "ignore" drops the invalid bytes; a non-ASCII character left
    # over proves at least one well-formed multi-byte sequence.
    return not data.decode("utf-8", errors="ignore").isascii()


def _han_plausibility(char: str, codec: str) -> float:
    # A double-byte character spends two bytes, so it earns about twice a
    # Cyrillic letter. Simplified text read as GB18030 stays mostly inside
    # GB2312 level 1 (lead bytes below 0xD8), the 3,755 common characters.
    if codec == "gb18030":
        try:
            encoded = char.encode("gb2312")
        except UnicodeEncodeError:
            return 0.0
        return 4.0 if encoded[0] < 0xD8 else 1.0
    if codec == "cp949":
        return 1.0  # Korean text seldom uses Hanja
    return 3.5


def _hangul_plausibility(char: str, codec: str) -> float:
    if codec != "cp949":
        return -3.0
    # KS X 1001 contains the 2,350 syllables in common use; Python's euc_kr spells
    # any other syllable as an eight-byte jamo sequence.
    if len(char.encode("euc_kr", errors="replace")) != 2:
        return -1.0
    return 4.5


def _char_plausibility(char: str, neighbours: str, codec: str) -> float:
    code = ord(char)
    if 0xC0 <= code <= 0x24F and char.isalpha():
        return 1.0
    if 0x370 <= code <= 0x4FF and char.isalpha():
        if any(near.isascii() and near.isalpha() for near in neighbours):
            return -4.0  # a Greek or Cyrillic letter glued to a Latin one
        if char.isupper() and neighbours[0].isalpha() and neighbours[0].islower():
            return -2.0  # "пРИВЕТ": the case pattern of a wrong Cyrillic table
        return 2.0 if char.islower() else 1.0
    if 0x3040 <= code <= 0x30FF:
        return 5.0 if codec == "cp932" else -3.0
    if 0xAC00 <= code <= 0xD7A3:
        return _hangul_plausibility(char, codec)
    if 0x4E00 <= code <= 0x9FFF:
        return _han_plausibility(char, codec)
    if 0x2010 <= code <= 0x206F or code in (0xA0, 0xAB, 0xBB, 0xB0, 0x2116, 0x3000, 0x3001, 0x3002):
        return 0.5
    return -3.0


def _plausibility(text: str, codec: str) -> float:
    score = 0.0
    padded = f" {text} "
    for index in range(1, len(padded) - 1):
        char = padded[index]
        if char.isascii():
            continue
        neighbours = padded[index - 1] + padded[index + 1]
        score += _char_plausibility(char, neighbours, codec)
    return score


def guess_charset(data: bytes) -> str:
    """Choose the codec that most plausibly wrote `data`; never fails.

    Order: ASCII, ISO-2022-JP (by its escape sequences), strict UTF-8, then the
    best-scoring candidate among windows-1252, windows-1251, KOI8-R and the East
    Asian double-byte charsets; windows-1252 when nothing scores.
    """
    if data.isascii():
        return "iso2022_jp" if has_iso2022jp_escapes(data) else "ascii"
    sample = data[:_GUESS_SAMPLE_BYTES]
    if is_valid_utf8(data):
        return "utf-8"
    best_codec, best_score = "cp1252", float("-inf")
    for codec in _GUESS_CANDIDATES:
        try:
            text = sample.decode(codec)
        except UnicodeDecodeError as error:
            # A sample cut inside a double-byte character fails only at its end.
            if error.start < len(sample) - 4:
                continue
            text = sample[: error.start].decode(codec, errors="replace")
        score = _plausibility(text, codec)
        if score > best_score:
            best_codec, best_score = codec, score
    return best_codec


def _decode_guessed(data: bytes, reason: str, defects: DefectLog, where: str) -> str:
    codec = guess_charset(data)
    if codec != "ascii":
        defects.add("charset_guessed", f"{where}: {reason}; decoded as {codec}")
    return _decode_strictly_or_repair(data, codec, defects, where)


def _decode_strictly_or_repair(data: bytes, codec: str, defects: DefectLog, where: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    for superset in _SUPERSETS.get(codec, ()):
        try:
            return data.decode(superset)
        except UnicodeDecodeError:
            continue
    if codec == "utf-8" or _is_single_byte(codec):
        defects.add("charset_repaired", f"{where}: bytes invalid in {codec} read as windows-1252")
        return data.decode(codec, errors=REPAIR_ERRORS)
    defects.add("charset_repaired", f"{where}: bytes invalid in {codec} replaced")
    return data.decode(codec, errors="replace")


def sniff_meta_charset(html: bytes) -> str | None:
    """Return the charset an HTML document names in a <meta> tag near its start."""
    head = html[:_META_SCAN_BYTES]
    lowered = head.lower()
    start = lowered.find(b"<meta")
    while start != -1:
        end = lowered.find(b">", start, start + 1024)
        tag = lowered[start : end if end != -1 else start + 1024]
        found = re.search(rb"charset\s*=\s*[\"']?\s*([a-z0-9_.:\-]+)", tag)
        if found:
            return found.group(1).decode("ascii")
        start = lowered.find(b"<meta", start + 5)
    return None


def decode_text(
    data: bytes, label: str | None, defects: DefectLog, where: str, *, html: bool = False
) -> str:
    """Decode a text body with its declared charset, repairing or guessing as needed.

    `where` names the part in defect details ("text/plain part 1"). With
    `html=True` a charset named only in the document's <meta> is used when the
    MIME label is missing or unknown. Never raises.
    """
    charset = resolve_charset(label)
    if charset.status == "alias":
        defects.add("charset_alias", f"{where}: charset {charset.label!r} read as {charset.codec}")
    codec = charset.codec
    if codec is None and html:
        named = sniff_meta_charset(data)
        meta_codec = resolve_charset(named).codec if named else None
        if meta_codec:
            defects.add(
                "charset_guessed", f"{where}: charset {named} named only in the HTML <meta>"
            )
            return _decode_declared(data, meta_codec, defects, where)
    if codec is None:
        if data.isascii() and not has_iso2022jp_escapes(data):
            if charset.status == "unknown":
                defects.add(
                    "charset_guessed", f"{where}: unknown charset {charset.label!r}; read as ASCII"
                )
            return data.decode("ascii")
        reason = (
            f"unknown charset {charset.label!r}"
            if charset.status == "unknown"
            else "no charset label"
        )
        return _decode_guessed(data, reason, defects, where)
    return _decode_declared(data, codec, defects, where)


def _is_ascii_compatible(codec: str) -> bool:
    return not codec.startswith(("utf-16", "utf-32", "utf-7", "iso2022"))


def _decode_declared(data: bytes, codec: str, defects: DefectLog, where: str) -> str:
    if data.isascii() and _is_ascii_compatible(codec):
        if has_iso2022jp_escapes(data):
            defects.add(
                "charset_guessed", f"{where}: declared {codec} but ISO-2022-JP escapes found"
            )
            return _decode_strictly_or_repair(data, "iso2022_jp", defects, where)
        return data.decode("ascii")
    if codec == "ascii":
        return _decode_guessed(data, "declared us-ascii but contains 8-bit bytes", defects, where)
    if codec == "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        if _has_valid_multibyte_utf8(data):
            defects.add("charset_repaired", f"{where}: invalid UTF-8 bytes read as windows-1252")
            return data.decode("utf-8", errors=REPAIR_ERRORS)
        return _decode_guessed(data, "declared utf-8 but no valid UTF-8", defects, where)
    if _is_single_byte(codec) and _has_valid_multibyte_utf8(data) and is_valid_utf8(data):
        defects.add("charset_guessed", f"{where}: declared {codec} but content is valid UTF-8")
        return data.decode("utf-8")
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        if not _is_single_byte(codec) and is_valid_utf8(data) and not codec.startswith("utf"):
            defects.add("charset_guessed", f"{where}: declared {codec} but content is valid UTF-8")
            return data.decode("utf-8")
    return _decode_strictly_or_repair(data, codec, defects, where)
