"""The decoding helpers of the parse step: charsets, encoded words, parameters, addresses."""

from __future__ import annotations

import pytest

from ticketflow.operators.mime_address import message_ids, parse_address_list
from ticketflow.operators.mime_charset import decode_text, guess_charset, resolve_charset
from ticketflow.operators.mime_defects import MAX_DEFECTS, DefectLog
from ticketflow.operators.mime_headers import split_header_section
from ticketflow.operators.mime_params import normalize_content_id, parse_content_header
from ticketflow.operators.mime_transfer import decode_quoted_printable, normalize_transfer_encoding
from ticketflow.operators.mime_words import decode_base64_leniently, decode_encoded_words


@pytest.mark.parametrize(
    ("label", "codec", "status"),
    [
        ("iso-8859-8-i", "iso8859-8", "alias"),
        ("windows-874", "cp874", "alias"),
        ("cp-850", "cp850", "alias"),
        ("x-cp1250", "cp1250", "alias"),
        ("x-unknown", None, "unknown"),
        ("unknown", None, "unknown"),
        ("", None, "absent"),
        (None, None, "absent"),
        ('"UTF-8"', "utf-8", "known"),
        ("iso-8859-1", "cp1252", "known"),
        ("gb2312", "gb18030", "known"),
        ("base64", None, "unknown"),
        ("undefined", None, "unknown"),
    ],
)
def test_resolve_charset(label: str | None, codec: str | None, status: str) -> None:
    resolved = resolve_charset(label)
    assert resolved.codec == codec
    assert resolved.status == status


@pytest.mark.parametrize(
    ("text", "codec"),
    [
        ("Здравствуйте, не могу войти".encode("koi8-r"), "koi8_r"),
        ("Здравствуйте, не могу войти".encode("cp1251"), "cp1251"),
        ("Déjà vu, café crème".encode("cp1252"), "cp1252"),
        ("お世話になっております".encode("cp932"), "cp932"),
        ("请查收附件".encode("gb2312"), "gb18030"),
        ("안녕하세요 고객님".encode("cp949"), "cp949"),
        ("日本語".encode("iso-2022-jp"), "iso2022_jp"),
        ("naïve".encode(), "utf-8"),
        (b"plain", "ascii"),
    ],
)
def test_guess_charset(text: bytes, codec: str) -> None:
    assert guess_charset(text) == codec


def test_decode_text_never_raises_on_any_label() -> None:
    data = bytes(range(256))
    for label in (
        "utf-8",
        "us-ascii",
        "shift_jis",
        "iso-2022-jp",
        "utf-16",
        "x-unknown",
        "koi8-r",
        "utf-7",
    ):
        defects = DefectLog()
        assert isinstance(decode_text(data, label, defects, "part"), str)


def test_utf8_repair_keeps_valid_sequences() -> None:
    defects = DefectLog()
    data = "Grüße\n".encode() + "Grüße\n".encode("latin-1")
    assert decode_text(data, "utf-8", defects, "part") == "Grüße\nGrüße\n"
    assert defects.codes() == ["charset_repaired"]


def test_utf8_label_on_pure_legacy_text_is_guessed() -> None:
    defects = DefectLog()
    assert decode_text("Привет мир".encode("koi8-r"), "utf-8", defects, "part") == "Привет мир"
    assert defects.codes() == ["charset_guessed"]


def test_html_meta_charset_used_without_label() -> None:
    defects = DefectLog()
    html = '<meta charset="koi8-r"><p>Привет</p>'.encode("koi8-r")
    assert "Привет" in decode_text(html, None, defects, "part", html=True)
    assert defects.codes() == ["charset_guessed"]


@pytest.mark.parametrize(
    ("header", "decoded"),
    [
        ("=?utf-8?Q?a?=  =?utf-8?Q?b?= c =?utf-8?Q?d?=", "ab c d"),
        ("[EXT]=?utf-8?B?w6l0w6k=?=", "[EXT]été"),
        ("=?utf-8?B??= x", " x"),
        ("=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=", "日本語"),
        ("=?koi8-r?Q?=F0=D2=C9=D7=C5=D4?=", "Привет"),
        ("=?utf-8*en?Q?lang?=", "lang"),
        ("=?us-ascii?Q?<root@exa?= =?us-ascii?Q?mple.com>?=", "<root@example.com>"),
        ("no words here", "no words here"),
    ],
)
def test_decode_encoded_words(header: str, decoded: str) -> None:
    assert decode_encoded_words(header, DefectLog(), "Subject") == decoded


def test_adjacent_words_join_split_character() -> None:
    raw = "–".encode()
    header = f"=?utf-8?Q?={raw[0]:02X}?= =?utf-8?Q?={raw[1]:02X}=={raw[2]:02X}?="
    assert decode_encoded_words(header.replace("==", "="), DefectLog(), "Subject") == "–"


@pytest.mark.parametrize(
    ("encoded", "decoded", "defect_codes"),
    [
        (b"aGk=aGk=", b"hihi", []),
        (b"aGk", b"hi", ["base64_padding"]),
        (b"aGVs!!bG8=", b"hello", ["base64_junk"]),
        (b"aGVsbG8gQ", b"hello ", ["base64_padding"]),
    ],
)
def test_decode_base64_leniently(encoded: bytes, decoded: bytes, defect_codes: list[str]) -> None:
    defects = DefectLog()
    assert decode_base64_leniently(encoded, defects, "part")[: len(decoded)] == decoded
    assert defects.codes() == defect_codes


def test_quoted_printable_junk_kept_as_text() -> None:
    defects = DefectLog()
    assert decode_quoted_printable(b"a=ZZb=3D=\nc\n", defects, "part") == b"a=ZZb=c\r\n"
    assert defects.codes() == ["qp_junk"]


@pytest.mark.parametrize(
    ("value", "token"),
    [("Base64 ", "base64"), ('"base64"', "base64"), ("base64 (comment)", "base64"), (None, "")],
)
def test_normalize_transfer_encoding(value: str | None, token: str) -> None:
    assert normalize_transfer_encoding(value) == token


@pytest.mark.parametrize(
    ("header", "filename"),
    [
        (
            "attachment; filename*0*=utf-8''%E6%97%A5%E6%9C%AC; filename*1*=%E8%AA%9E.pdf",
            "日本語.pdf",
        ),
        ("attachment; filename*=iso-8859-1'en'%E9t%E9.bin", "été.bin"),
        ("attachment; filename*1*=b.txt; filename*0*=utf-8''a", "ab.txt"),
        ('attachment; filename="a\\"b.txt"', 'a"b.txt'),
        ('attachment; filename*0="=?utf-8?Q?caf"; filename*1="=C3=A9?=.txt"', "café.txt"),
        ('attachment; filename*0="it\'s "; filename*1="done.txt"', "it's done.txt"),
    ],
)
def test_filename_parameters(header: str, filename: str) -> None:
    assert parse_content_header(header, DefectLog(), "part").params["filename"] == filename


def test_boundary_parameter_is_not_word_decoded() -> None:
    params = parse_content_header('multipart/mixed; boundary="=?x?Q?y?="', DefectLog(), "m").params
    assert params["boundary"] == "=?x?Q?y?="


@pytest.mark.parametrize(
    ("raw", "content_id"),
    [("<<part1.x@y>>", "part1.x@y"), (" <a@b> ", "a@b"), ("a@b>", "a@b"), ("", None), ("<>", None)],
)
def test_normalize_content_id(raw: str, content_id: str | None) -> None:
    assert normalize_content_id(raw) == content_id


def test_address_list_with_group_comment_and_encoded_name() -> None:
    defects = DefectLog()
    mailboxes = parse_address_list(
        'team: "Doe, John" <J@X.example>, bob@y.example (Bob);, =?utf-8?Q?Z=C3=B6e?= <z@z.example>',
        defects,
        "To",
    )
    assert [(m.name, m.address) for m in mailboxes] == [
        ("Doe, John", "j@x.example"),
        ("Bob", "bob@y.example"),
        ("Zöe", "z@z.example"),
    ]
    assert defects.codes() == []


def test_message_ids_ignore_comments_and_quotes() -> None:
    ids = message_ids('"quoted <no@x>" (comment <no2@x>) <yes@x>', DefectLog(), "In-Reply-To")
    assert ids == ["<yes@x>"]


def test_header_split_unfolds_and_keeps_raw_bytes() -> None:
    section = split_header_section(b"Subject: a\r\n b\r\nX-Raw: \xe9\r\n\r\nbody", DefectLog())
    assert section.first("subject") == b"a b"
    assert section.first("X-RAW") == b"\xe9"
    assert section.body_offset == len(b"Subject: a\r\n b\r\nX-Raw: \xe9\r\n\r\n")


def test_defect_log_is_bounded() -> None:
    defects = DefectLog()
    for number in range(MAX_DEFECTS + 10):
        defects.add("address_invalid", f"address {number}")
    listed = defects.as_list()
    assert len(listed) == MAX_DEFECTS + 1
    assert listed[-1]["code"] == "defect_limit"


def test_bare_cr_line_endings_are_read_as_lines() -> None:
    from datetime import UTC, datetime

    from ticketflow.operators.parse import parse_message

    raw = b"From: a@customer.example\rTo: acme-support@support.example.com\rSubject: old mac\r\rbody\r"
    event = parse_message(raw, "/cr.eml", datetime(2026, 1, 1, tzinfo=UTC))
    assert event["envelope"]["subject"] == "old mac"
    assert event["envelope"]["to"] == ["acme-support@support.example.com"]
    assert "bare_cr_line_endings" in [defect["code"] for defect in event["defects"]]


def test_overflowing_spam_score_is_dropped() -> None:
    from datetime import UTC, datetime

    from ticketflow.operators.parse import parse_message

    raw = b"From: a@x\nSubject: s\nX-Spam-Score: 1" + b"0" * 400 + b"\n\nbody\n"
    event = parse_message(raw, "/inf.eml", datetime(2026, 1, 1, tzinfo=UTC))
    assert event["spam"]["score"] is None
    assert "spam_score_invalid" in [defect["code"] for defect in event["defects"]]
