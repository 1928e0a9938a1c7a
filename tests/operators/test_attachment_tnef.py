"""Reading the files out of TNEF (winmail.dat) streams, broken and hostile ones included."""

from __future__ import annotations

import struct

import pytest
import tnefparse
from hypothesis import given
from hypothesis import strategies as st

from tests.operators.attachment_samples import (
    PNG,
    TnefAttachment,
    tnef_attribute,
    tnef_stream,
)
from ticketflow.operators.attachment_tnef import (
    MAX_ATTRIBUTES,
    MAX_FILES,
    TnefFile,
    TnefTooManyFiles,
    TnefUnreadable,
    read_tnef,
)

REPORT = TnefAttachment(
    "QUARTE~1.TXT",
    b"Quarterly numbers\n",
    long_filename="Quarterly report \u00fc.txt",
    mime_tag="Text/Plain",
)
CHART = TnefAttachment("chart.png", PNG, content_id="<chart.001@example.com>")


def attachment_with_properties(properties: list[bytes], data: bytes = b"payload") -> bytes:
    """Return a TNEF stream with one attachment whose attAttachment list is `properties`."""
    mapi = struct.pack("<I", len(properties)) + b"".join(properties)
    return tnef_stream([]) + b"".join([
        tnef_attribute(2, 0x9002, 0x0006, b"\x01\x00" + b"\x00" * 12),
        tnef_attribute(2, 0x800F, 0x0006, data),
        tnef_attribute(2, 0x9005, 0x0006, mapi),
    ])


def unicode_property(property_id: int, text: str) -> bytes:
    raw = text.encode("utf-16-le") + b"\x00\x00"
    return struct.pack("<HHII", 0x001F, property_id, 1, len(raw)) + raw + b"\x00" * (-len(raw) % 4)


def test_reads_files_in_order() -> None:
    files = read_tnef(tnef_stream([REPORT, CHART]))
    assert files == [
        TnefFile("Quarterly report \u00fc.txt", "text/plain", None, b"Quarterly numbers\n"),
        TnefFile("chart.png", None, "chart.001@example.com", PNG),
    ]


def test_agrees_with_tnefparse() -> None:
    stream = tnef_stream([REPORT, CHART])
    reference = tnefparse.TNEF(stream)
    expected = [(item.long_filename(), item.data) for item in reference.attachments]
    assert [(file.filename, file.data) for file in read_tnef(stream)] == expected


def test_title_decoded_with_oem_codepage() -> None:
    files = read_tnef(tnef_stream([TnefAttachment("Bericht-\u00e4.txt", b"x")]))
    assert files[0].filename == "Bericht-\u00e4.txt"


def test_stream_without_files() -> None:
    assert read_tnef(tnef_stream([])) == []


def test_attached_object_data_without_interface_id() -> None:
    inner = tnef_stream([REPORT])
    interface_id = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
    raw = interface_id + inner
    attached = struct.pack("<HHII", 0x000D, 0x3701, 1, len(raw)) + raw + b"\x00" * (-len(raw) % 4)
    files = read_tnef(attachment_with_properties([attached, unicode_property(0x3001, "Forward")],
                                                 data=b""))
    assert files[0].data == inner
    assert files[0].filename == "Forward"


def test_skips_multi_valued_and_named_properties() -> None:
    multi_int = struct.pack("<HHI", 0x1003, 0x0E00, 3) + struct.pack("<3i", 1, 2, 3)
    multi_text = struct.pack("<HHI", 0x101F, 0x0E01, 2) + b"".join(
        struct.pack("<I", 4) + "ab".encode("utf-16-le") for _ in range(2)
    )
    name = "X-Custom".encode("utf-16-le") + b"\x00\x00"
    named = (
        struct.pack("<HH", 0x0003, 0x8001)
        + b"\x11" * 16
        + struct.pack("<II", 1, len(name))
        + name
        + b"\x00" * (-len(name) % 4)
        + struct.pack("<i", 7)
    )
    boolean = struct.pack("<HHHH", 0x000B, 0x0E02, 1, 0)
    files = read_tnef(
        attachment_with_properties(
            [multi_int, multi_text, named, boolean, unicode_property(0x3707, "after-all.txt")]
        )
    )
    assert files[0].filename == "after-all.txt"


def test_attribute_before_render_data_opens_file() -> None:
    stream = tnef_stream([]) + tnef_attribute(2, 0x800F, 0x0006, b"orphan data")
    assert read_tnef(stream) == [TnefFile("", None, None, b"orphan data")]


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"", "no TNEF signature"),
        (b"PK\x03\x04 not tnef", "no TNEF signature"),
        (b"\x78\x9f\x3e\x22", "no TNEF signature"),
        (tnef_stream([REPORT])[:-3], "declares"),
        (tnef_stream([]) + b"\x02\x0f\x80", "cut off"),
    ],
)
def test_broken_stream_unreadable(stream: bytes, message: str) -> None:
    with pytest.raises(TnefUnreadable, match=message):
        read_tnef(stream)


def test_property_count_beyond_data_unreadable() -> None:
    # tnefparse 1.4 loops 2**32 times over such a list; the count must be refused.
    hostile = struct.pack("<I", 0xFFFFFFFF) + struct.pack("<HHII", 0x0102, 0x3701, 1, 0x7FFFFFF0)
    stream = tnef_stream([]) + tnef_attribute(2, 0x9002, 0x0006, b"\x00" * 14) + tnef_attribute(
        2, 0x9005, 0x0006, hostile
    )
    with pytest.raises(TnefUnreadable, match="MAPI count 4294967295"):
        read_tnef(stream)


def test_value_length_beyond_data_unreadable() -> None:
    long_value = struct.pack("<HHII", 0x0102, 0x3701, 1, 0x7FFFFFF0) + b"short"
    with pytest.raises(TnefUnreadable, match="MAPI property list"):
        read_tnef(attachment_with_properties([long_value]))


def test_multi_value_count_beyond_data_unreadable() -> None:
    many = struct.pack("<HHI", 0x1014, 0x0E00, 0x10000000) + b"\x00" * 8
    with pytest.raises(TnefUnreadable, match="MAPI count"):
        read_tnef(attachment_with_properties([many]))


def test_unknown_property_type_unreadable() -> None:
    with pytest.raises(TnefUnreadable, match="unknown MAPI property type 0x0099"):
        read_tnef(attachment_with_properties([struct.pack("<HHI", 0x0099, 0x0E00, 0)]))


def test_too_many_attributes_unreadable() -> None:
    empty_attribute = tnef_attribute(1, 0x8008, 0x0007, b"")
    stream = tnef_stream([]) + empty_attribute * (MAX_ATTRIBUTES + 1)
    with pytest.raises(TnefUnreadable, match=f"more than {MAX_ATTRIBUTES} attributes"):
        read_tnef(stream)


def test_unreadable_stream_carries_files_read_before() -> None:
    unknown_type = struct.pack("<I", 1) + struct.pack("<HH", 0x0999, 0x1234)
    stream = tnef_stream([REPORT, CHART]) + tnef_attribute(2, 0x9005, 0x0006, unknown_type)
    with pytest.raises(TnefUnreadable, match="unknown MAPI property type 0x0999") as raised:
        read_tnef(stream)
    assert [file.data for file in raised.value.files] == [REPORT.data, PNG]


def test_too_many_files_carries_the_first_ones() -> None:
    files = [TnefAttachment(f"f{number}.txt", b"x") for number in range(MAX_FILES + 1)]
    with pytest.raises(TnefTooManyFiles, match=f"more than {MAX_FILES} attachments") as raised:
        read_tnef(tnef_stream(files))
    assert len(raised.value.files) == MAX_FILES
    assert raised.value.files[-1].filename == f"f{MAX_FILES - 1}.txt"


@given(st.binary(max_size=600))
def test_any_tail_reads_or_is_unreadable(tail: bytes) -> None:
    try:
        files = read_tnef(tnef_stream([REPORT]) + tail)
    except TnefUnreadable:
        return
    assert files
    assert all(isinstance(file, TnefFile) for file in files)


@given(st.binary(max_size=300))
def test_any_property_list_reads_or_is_unreadable(mapi: bytes) -> None:
    stream = tnef_stream([]) + tnef_attribute(2, 0x9005, 0x0006, mapi)
    try:
        read_tnef(stream)
    except TnefUnreadable:
        pass
