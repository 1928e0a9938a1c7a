"""Attachment governance: every rule on parsed mail, JSON events and the flow's parse step.

Files are built in the tests (`attachment_samples`) or read from
`tests/fixtures/mail/attachments/`. Malware scanning uses `EicarScanner`, which
finds the EICAR test string; the real clamd is tested with its client.
"""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.operators import attachment_samples as samples
from tests.operators.attachment_samples import EICAR, EICAR_SIGNATURE, EicarScanner
from ticketflow.config import AttachmentSettings, Settings
from ticketflow.connectors.attachment_store import AttachmentStoreError, LocalAttachmentStore
from ticketflow.connectors.clamd import ClamdStreamTooLarge, ClamdUnavailable
from ticketflow.connectors.store import SqliteStore
from ticketflow.flows.main import FlowContext, parse_record
from ticketflow.model import DeadLetter, RawMessage
from ticketflow.operators.attachment_tnef import MAX_FILES as MAX_TNEF_FILES
from ticketflow.operators.attachments import MAX_TNEF_DEPTH, AttachmentGovernor
from ticketflow.operators.parse import _parse_message, decode_record, parse_message
from ticketflow.runner import run_corpus

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mail" / "attachments"
PARSE_FIXTURES = Path(__file__).parents[1] / "fixtures" / "mail" / "parse"
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "ticketflow" / "schemas" / "event.schema.json").read_text()
)
INGESTED = datetime(2026, 5, 5, 9, 30, tzinfo=UTC)
ENTRY_KEYS = {
    "filename", "content_type", "size", "content_id", "disposition", "sha256", "download_url",
    "refused", "quarantined",
}
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

File = tuple[str | None, str, bytes]  # filename, declared content type, bytes


def mail(
    *files: File, html: str | None = None, inline: tuple[tuple[str, bytes], ...] = ()
) -> bytes:
    """Build a message with a text body (and `html` when given) and these attachments.

    `inline` contains (Content-ID, PNG bytes) pairs related to the html body.
    """
    message = EmailMessage()
    message["From"] = "Dana Whitfield <dana@harborview.example.com>"
    message["To"] = "acme-support@support.example.com"
    message["Subject"] = "Files for the refund case"
    message["Date"] = "Tue, 05 May 2026 09:14:00 +0000"
    message["Message-ID"] = "<files.1@harborview.example.com>"
    message.set_content("See the attached files.\n")
    if html is not None:
        message.add_alternative(html, subtype="html")
        html_part = message.get_body(("html",))
        assert isinstance(html_part, EmailMessage)
        for content_id, data in inline:
            html_part.add_related(data, "image", "png", cid=f"<{content_id}>")
    for filename, content_type, data in files:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def governor(
    tmp_path: Path | None = None, scanner: Any = None, **settings: Any
) -> AttachmentGovernor:
    """Build a governor; with `tmp_path`, files go to a local store under it."""
    store = None
    if tmp_path is not None:
        store = LocalAttachmentStore(tmp_path / "files", "https://files.example.com")
    return AttachmentGovernor(AttachmentSettings(**settings), store=store, scanner=scanner)


def parse(raw: bytes, governed_by: AttachmentGovernor) -> dict[str, Any]:
    return dict(parse_message(raw, "test", INGESTED, governor=governed_by))


def codes(event: dict[str, Any]) -> list[str]:
    return [defect["code"] for defect in event["defects"]]


def details(event: dict[str, Any], code: str) -> list[str]:
    return [defect["detail"] for defect in event["defects"] if defect["code"] == code]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- sizes -------------------------------------------------------------------------------------


def test_file_over_cap_refused_and_not_stored(tmp_path: Path) -> None:
    big, small = b"x" * 101, b"y" * 100
    rules = governor(tmp_path, max_file_bytes=100)
    event = parse(mail(("big.txt", "text/plain", big), ("small.txt", "text/plain", small)), rules)
    first, second = event["attachments"]
    assert first["refused"] == "too_large"
    assert first["download_url"] is None
    assert (first["size"], first["sha256"]) == (101, sha(big))
    assert rules.store is not None and rules.store.get(sha(big)) is None
    assert second["refused"] is None
    assert second["download_url"] == rules.store.url_for(sha(small))


def test_message_cap_refuses_files_beyond_total() -> None:
    files = [(f"part{n}.txt", "text/plain", bytes([65 + n]) * 40) for n in range(3)]
    event = parse(mail(*files), governor(max_message_bytes=100))
    assert [a["refused"] for a in event["attachments"]] == [None, None, "message_too_large"]


def test_refused_files_do_not_count_toward_message_cap() -> None:
    files = [
        ("huge.txt", "text/plain", b"h" * 170),
        ("tool.exe", "application/octet-stream", samples.pe_executable()),
        ("a.txt", "text/plain", b"a" * 120),
        ("b.txt", "text/plain", b"b" * 80),
    ]
    event = parse(mail(*files), governor(max_file_bytes=160, max_message_bytes=200))
    assert [a["refused"] for a in event["attachments"]] == [
        "too_large", "type_denied:application/x-dosexec", None, None,
    ]


def test_quarantined_file_does_not_count_toward_message_cap() -> None:
    files = [("eicar.com", "application/octet-stream", EICAR + b" " * 32), ("b.txt", "text/plain",
             b"b" * 90)]
    event = parse(mail(*files), governor(scanner=EicarScanner(), max_message_bytes=100))
    assert [a["quarantined"] for a in event["attachments"]] == [EICAR_SIGNATURE, None]
    assert [a["refused"] for a in event["attachments"]] == [None, None]


# -- types --------------------------------------------------------------------------------------


def test_exe_declared_as_pdf_refused_by_sniffed_type(tmp_path: Path) -> None:
    rules = governor(tmp_path)
    event = parse((FIXTURES / "exe_declared_as_pdf.eml").read_bytes(), rules)
    (attachment,) = event["attachments"]
    assert attachment["content_type"] == "application/x-dosexec"
    assert attachment["refused"] == "type_denied:application/x-dosexec"
    assert attachment["download_url"] is None
    assert rules.store is not None and rules.store.get(attachment["sha256"]) is None
    (mismatch,) = details(event, "attachment_type_mismatch")
    assert "declared application/pdf" in mismatch
    assert "content is application/x-dosexec" in mismatch


def test_declared_type_denied_even_if_content_is_text() -> None:
    event = parse(mail(("run.txt", "application/x-msdownload", b"echo hello\n")), governor())
    (attachment,) = event["attachments"]
    assert attachment["refused"] == "type_denied:application/x-dosexec"


@pytest.mark.parametrize(
    ("data", "denied"),
    [
        (samples.elf_executable(), "application/x-executable"),
        (samples.macho_executable(), "application/x-mach-binary"),
        (samples.jar_archive(), "application/java-archive"),
    ],
)
def test_default_deny_list_refuses_executables(data: bytes, denied: str) -> None:
    event = parse(mail(("setup.bin", "application/octet-stream", data)), governor())
    assert event["attachments"][0]["refused"] == f"type_denied:{denied}"


def test_deny_wildcard_matches_subtypes() -> None:
    files = [("shot.png", "image/png", samples.PNG), ("doc.pdf", "application/pdf", samples.PDF)]
    event = parse(mail(*files), governor(deny_types=("image/*",)))
    assert [a["refused"] for a in event["attachments"]] == ["type_denied:image/png", None]


def test_allow_list_refuses_other_types() -> None:
    files = [
        ("shot.png", "image/png", samples.PNG),
        ("untyped", "application/octet-stream", samples.JPEG),
        ("doc.pdf", "application/pdf", samples.PDF),
        ("fake.png", "image/png", samples.PDF),
        ("blob", "application/octet-stream", bytes(range(256))),
    ]
    event = parse(mail(*files), governor(allow_types=("image/*",)))
    assert [a["refused"] for a in event["attachments"]] == [
        None,
        None,
        "type_not_allowed:application/pdf",
        "type_not_allowed:application/pdf",
        "type_not_allowed:application/octet-stream",
    ]


def test_allow_list_must_cover_sniffed_and_declared() -> None:
    csv = ("orders.csv", "text/csv", b"id,total\n1,20\n")
    narrow = parse(mail(csv), governor(allow_types=("text/csv",)))
    assert narrow["attachments"][0]["refused"] == "type_not_allowed:text/plain"
    wide = parse(mail(csv), governor(allow_types=("text/*",)))
    assert wide["attachments"][0]["refused"] is None
    assert wide["attachments"][0]["content_type"] == "text/csv"


@pytest.mark.parametrize(
    "declared", ["application/pdf", "image/png", "image/jpeg", DOCX, "application/zip"]
)
def test_declared_type_without_its_signature_fails_allow_list(declared: str) -> None:
    unknown = b"\x00\x01\x02\x03 bytes of no known kind"
    rules = governor(allow_types=("application/pdf", "image/*", DOCX, "application/zip"))
    event = parse(mail(("file.bin", declared, unknown)), rules)
    (attachment,) = event["attachments"]
    assert attachment["content_type"] == "application/octet-stream"
    assert attachment["refused"] == "type_not_allowed:application/octet-stream"
    assert f"declared {declared}, content is application/octet-stream" in details(
        event, "attachment_type_mismatch")[0]


@pytest.mark.parametrize(
    ("folder", "macro_type", "declared"),
    [
        ("xl", "application/vnd.ms-excel.sheet.macroenabled.12",
         "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ("word", "application/vnd.ms-word.document.macroenabled.12", DOCX),
        ("ppt", "application/vnd.ms-powerpoint.presentation.macroenabled.12",
         "application/octet-stream"),
        ("xl", "application/vnd.ms-excel.sheet.macroenabled.12", "application/zip"),
    ],
)
def test_macro_package_denied_whatever_its_declared_type(
    folder: str, macro_type: str, declared: str
) -> None:
    rules = governor(deny_types=(macro_type,))
    event = parse(mail(("report.x", declared, samples.macro_package(folder))), rules)
    (attachment,) = event["attachments"]
    assert attachment["content_type"] == macro_type
    assert attachment["refused"] == f"type_denied:{macro_type}"


def test_compatible_declaration_kept_without_defect() -> None:
    event = parse(mail(("notes.docx", DOCX, samples.zip_archive({"a.txt": b"x"}))), governor())
    assert event["attachments"][0]["content_type"] == DOCX
    assert "attachment_type_mismatch" not in codes(event)


def test_generic_declaration_takes_sniffed_type() -> None:
    event = parse(mail((None, "application/octet-stream", samples.PNG)), governor())
    (attachment,) = event["attachments"]
    assert attachment["content_type"] == "image/png"
    assert attachment["filename"] == "attachment-1.png"
    assert "attachment_type_mismatch" not in codes(event)


# -- names --------------------------------------------------------------------------------------


def test_unsafe_filenames_renamed_with_defects() -> None:
    event = parse((FIXTURES / "path_traversal_filename.eml").read_bytes(), governor())
    assert [a["filename"] for a in event["attachments"]] == [
        "backdoor", "hosts", "invoicefdp.exe", "report[31m.txt", "_CON.txt", "bashrc",
    ]
    renamed = details(event, "unsafe_filename")
    assert len(renamed) == 6
    assert "'../../../etc/cron.d/backdoor' renamed 'backdoor'" in renamed[0]
    assert "\\u202e" in renamed[2]


def test_names_differing_by_case_made_unique() -> None:
    files = [("Report.txt", "text/plain", b"one\n"), ("report.TXT", "text/plain", b"two\n"),
             ("REPORT (2).txt", "text/plain", b"three\n"), ("report.txt", "text/plain", b"4\n")]
    event = parse(mail(*files), governor())
    assert [a["filename"] for a in event["attachments"]] == [
        "Report.txt", "report (2).TXT", "REPORT (2) (2).txt", "report (3).txt",
    ]
    assert len(details(event, "duplicate_filename")) == 3


def test_json_event_names_made_unique() -> None:
    event = decode_record(json_event(entry("a.txt", "text/plain", 1), entry("A.TXT", "text/plain",
                                     1)), "k", INGESTED, governor=governor())
    assert [a["filename"] for a in event["attachments"]] == ["a.txt", "A (2).TXT"]


def test_safe_filename_has_no_defect() -> None:
    event = parse(mail(("Grüße aus Köln.pdf", "application/pdf", samples.PDF)), governor())
    assert event["attachments"][0]["filename"] == "Grüße aus Köln.pdf"
    assert "unsafe_filename" not in codes(event)


# -- malware ------------------------------------------------------------------------------------


def test_eicar_quarantined_not_stored(tmp_path: Path) -> None:
    scanner = EicarScanner()
    rules = governor(tmp_path, scanner=scanner)
    files = [("eicar.com", "application/octet-stream", EICAR), ("log.txt", "text/plain", b"ok\n")]
    event = parse(mail(*files), rules)
    infected, clean = event["attachments"]
    assert infected["quarantined"] == EICAR_SIGNATURE
    assert infected["refused"] is None
    assert infected["download_url"] is None
    assert infected["sha256"] == sha(EICAR)
    assert rules.store is not None and rules.store.get(sha(EICAR)) is None
    assert clean["quarantined"] is None
    assert clean["download_url"] == rules.store.url_for(sha(b"ok\n"))
    assert scanner.scanned == [EICAR, b"ok\n"]


def test_refused_files_are_not_scanned() -> None:
    scanner = EicarScanner()
    files = [("tool.exe", "application/x-dosexec", samples.pe_executable()),
             ("big.txt", "text/plain", b"x" * 50)]
    parse(mail(*files), governor(scanner=scanner, max_file_bytes=40))
    assert scanner.scanned == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unreachable_scanner_refuses_and_pauses(tmp_path: Path) -> None:
    scanner = samples.UnreachableScanner()
    clock = Clock()
    store = LocalAttachmentStore(tmp_path)
    rules = AttachmentGovernor(
        AttachmentSettings(), store=store, scanner=scanner, clock=clock, scan_retry_seconds=10
    )
    files = [("a.txt", "text/plain", b"first\n"), ("b.txt", "text/plain", b"second\n")]

    event = parse(mail(*files), rules)
    assert [a["refused"] for a in event["attachments"]] == ["scan_unavailable"] * 2
    assert [a["download_url"] for a in event["attachments"]] == [None, None]
    assert store.get(sha(b"first\n")) is None
    assert scanner.attempts == 1
    first, second = details(event, "scan_unavailable")
    assert "Connection refused" in first
    assert "failed less than 10s ago" in second

    clock.now += 10
    parse(mail(*files), rules)
    assert scanner.attempts == 2


class TimingOutScanner:
    """A scanner whose daemon times out: each scan moves `clock` on by `timeout` seconds."""

    def __init__(self, clock: Clock, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.attempts = 0

    def scan(self, data: bytes) -> str | None:
        self.attempts += 1
        self.clock.now += self.timeout
        raise ClamdUnavailable(f"clamd timed out after {self.timeout} s reading the reply")


def test_scan_pause_starts_after_a_timed_out_scan() -> None:
    clock = Clock()
    scanner = TimingOutScanner(clock, timeout=30)
    rules = AttachmentGovernor(AttachmentSettings(), scanner=scanner, clock=clock,
                               scan_retry_seconds=10)
    files = [(f"part{n}.txt", "text/plain", f"part {n}\n".encode()) for n in range(5)]
    event = parse(mail(*files), rules)
    assert [a["refused"] for a in event["attachments"]] == ["scan_unavailable"] * 5
    assert scanner.attempts == 1
    clock.now += 10
    parse(mail(*files), rules)
    assert scanner.attempts == 2


class SizeLimitedScanner(samples.EicarScanner):
    """A scanner whose daemon rejects streams longer than `limit` bytes, as clamd does."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def scan(self, data: bytes) -> str | None:
        if len(data) > self.limit:
            raise ClamdStreamTooLarge("clamd rejected the scan: INSTREAM size limit exceeded.")
        return super().scan(data)


def test_file_over_scanner_limit_refused_alone_without_pause() -> None:
    scanner = SizeLimitedScanner(limit=100)
    rules = AttachmentGovernor(AttachmentSettings(), scanner=scanner, clock=Clock())
    files = [("big.txt", "text/plain", b"b" * 101), ("eicar.com", "application/octet-stream",
             EICAR), ("small.txt", "text/plain", b"small\n")]
    event = parse(mail(*files), rules)
    assert [a["refused"] for a in event["attachments"]] == ["scan_too_large", None, None]
    assert [a["quarantined"] for a in event["attachments"]] == [None, EICAR_SIGNATURE, None]
    assert scanner.scanned == [EICAR, b"small\n"]
    assert "INSTREAM size limit exceeded" in details(event, "scan_too_large")[0]
    assert "scan_unavailable" not in codes(event)


# -- store --------------------------------------------------------------------------------------


class BrokenStore:
    def put(self, data: bytes, content_type: str) -> Any:
        raise AttachmentStoreError("cannot store attachment: No space left on device")


def test_store_failure_refuses_file() -> None:
    rules = AttachmentGovernor(AttachmentSettings(), store=BrokenStore())
    event = parse(mail(("a.txt", "text/plain", b"data\n")), rules)
    (attachment,) = event["attachments"]
    assert attachment["refused"] == "store_unavailable"
    assert attachment["download_url"] is None
    assert "No space left on device" in details(event, "store_unavailable")[0]


def test_same_file_twice_stored_once(tmp_path: Path) -> None:
    rules = governor(tmp_path)
    event = parse(mail(("a.pdf", "application/pdf", samples.PDF),
                       ("copy.pdf", "application/pdf", samples.PDF)), rules)
    first, second = event["attachments"]
    assert first["download_url"] == second["download_url"]
    assert len([p for p in (tmp_path / "files").rglob("*") if p.is_file()]) == 1


def test_without_store_no_links() -> None:
    event = parse(mail(("a.pdf", "application/pdf", samples.PDF)), governor())
    assert event["attachments"][0]["download_url"] is None
    assert event["attachments"][0]["refused"] is None


# -- TNEF --------------------------------------------------------------------------------------


def test_winmail_dat_unpacked(tmp_path: Path) -> None:
    rules = governor(tmp_path)
    event = parse((FIXTURES / "winmail_dat.eml").read_bytes(), rules)
    report, chart = event["attachments"]
    assert report["filename"] == "Quarterly report ü.txt"
    assert report["content_type"] == "text/plain"
    assert chart["filename"] == "chart.png"
    assert chart["content_type"] == "image/png"
    assert rules.store is not None
    assert rules.store.get(report["sha256"]) == b"Quarterly numbers: 1,204 orders, 3 refunds.\n"
    assert rules.store.get(chart["sha256"]) == samples.PNG
    assert "winmail.dat" not in [a["filename"] for a in event["attachments"]]


def test_files_in_winmail_dat_are_governed() -> None:
    winmail = samples.tnef_stream([
        samples.TnefAttachment("setup.exe", samples.pe_executable()),
        samples.TnefAttachment("..\\..\\notes.txt", b"a" * 60),
        samples.TnefAttachment("more.txt", b"b" * 60),
    ])
    event = parse(mail(("winmail.dat", "application/ms-tnef", winmail)), governor(
        max_message_bytes=100))
    assert [a["filename"] for a in event["attachments"]] == ["setup.exe", "notes.txt", "more.txt"]
    assert [a["refused"] for a in event["attachments"]] == [
        "type_denied:application/x-dosexec", None, "message_too_large",
    ]


def test_winmail_dat_found_by_signature_alone() -> None:
    winmail = samples.tnef_stream([samples.TnefAttachment("a.txt", b"inside\n")])
    event = parse(mail(("attachment.bin", "application/octet-stream", winmail)), governor())
    assert [a["filename"] for a in event["attachments"]] == ["a.txt"]


def test_unreadable_winmail_dat_refused_with_defect() -> None:
    event = parse((FIXTURES / "winmail_dat_truncated.eml").read_bytes(), governor())
    container, report = event["attachments"]
    assert container["filename"] == "winmail.dat"
    assert container["content_type"] == "application/vnd.ms-tnef"
    assert container["refused"] == "tnef_unreadable"
    assert report["filename"] == "QUARTE~1.TXT"
    assert "declares 96 bytes" in details(event, "tnef_unreadable")[0]


def test_files_read_before_a_tnef_error_are_governed(tmp_path: Path) -> None:
    unknown_type = struct.pack("<I", 1) + struct.pack("<HH", 0x0999, 0x1234)
    winmail = samples.tnef_stream(
        [samples.TnefAttachment("run.exe", samples.pe_executable()),
         samples.TnefAttachment("notes.txt", b"notes\n")],
        extra=samples.tnef_attribute(2, 0x9005, 0x0006, unknown_type),
    )
    rules = governor(tmp_path)
    event = parse(mail(("winmail.dat", "application/ms-tnef", winmail)), rules)
    assert [(a["filename"], a["refused"]) for a in event["attachments"]] == [
        ("winmail.dat", "tnef_unreadable"),
        ("run.exe", "type_denied:application/x-dosexec"),
        ("notes.txt", None),
    ]
    assert rules.store is not None and rules.store.get(sha(winmail)) is None
    assert "unknown MAPI property type 0x0999" in details(event, "tnef_unreadable")[0]


def test_winmail_dat_over_file_limit_refused() -> None:
    files = [samples.TnefAttachment(f"f{n}.txt", b"x") for n in range(MAX_TNEF_FILES)]
    files.append(samples.TnefAttachment("run.exe", samples.pe_executable()))
    event = parse(mail(("winmail.dat", "application/ms-tnef", samples.tnef_stream(files))),
                  governor())
    container = event["attachments"][0]
    assert (container["filename"], container["refused"]) == ("winmail.dat", "tnef_too_many_files")
    assert "run.exe" not in [a["filename"] for a in event["attachments"]]
    assert "tnef_too_many_files" in codes(event)


def nested_winmail(depth: int, innermost: bytes) -> bytes:
    """Return `innermost` wrapped as winmail.dat inside `depth` TNEF streams."""
    stream = samples.tnef_stream([samples.TnefAttachment("run.exe", innermost)])
    for _ in range(depth - 1):
        stream = samples.tnef_stream([samples.TnefAttachment("winmail.dat", stream,
                                                             mime_tag="application/ms-tnef")])
    return stream


def test_nested_winmail_dat_unpacked() -> None:
    winmail = nested_winmail(MAX_TNEF_DEPTH, samples.pe_executable())
    event = parse(mail(("winmail.dat", "application/ms-tnef", winmail)), governor())
    (attachment,) = event["attachments"]
    assert attachment["filename"] == "run.exe"
    assert attachment["refused"] == "type_denied:application/x-dosexec"


def test_winmail_dat_nested_too_deep_refused() -> None:
    winmail = nested_winmail(MAX_TNEF_DEPTH + 1, samples.pe_executable())
    event = parse(mail(("winmail.dat", "application/ms-tnef", winmail)), governor())
    (attachment,) = event["attachments"]
    assert attachment["filename"] == "winmail.dat"
    assert attachment["refused"] == "tnef_too_deep"
    assert "tnef_too_deep" in codes(event)


def test_empty_winmail_dat_leaves_defect() -> None:
    event = parse(mail(("winmail.dat", "application/ms-tnef", samples.tnef_stream([]))),
                  governor())
    assert event["attachments"] == []
    assert "'winmail.dat' carries no files" in details(event, "tnef_empty")[0]


def test_tnef_unpacking_can_be_turned_off() -> None:
    event = parse((FIXTURES / "winmail_dat.eml").read_bytes(), governor(unpack_tnef=False))
    assert [a["filename"] for a in event["attachments"]] == ["winmail.dat"]


def test_tnef_inline_image_linked(tmp_path: Path) -> None:
    winmail = samples.tnef_stream([samples.TnefAttachment("logo.png", samples.PNG,
                                                          content_id="logo@x")])
    rules = governor(tmp_path)
    event = parse(mail(("winmail.dat", "application/ms-tnef", winmail),
                       html='<p><img src="cid:logo@x"></p>'), rules)
    (logo,) = event["attachments"]
    assert logo["disposition"] == "inline"
    assert f'src="{logo["download_url"]}"' in event["html"]


# -- HTML -------------------------------------------------------------------------------------


def test_inline_image_cid_rewritten_to_stored_link(tmp_path: Path) -> None:
    rules = governor(tmp_path)
    event = parse((FIXTURES / "inline_image_cid.eml").read_bytes(), rules)
    (image,) = event["attachments"]
    assert image["content_id"] == "screenshot.001@harborview.example.com"
    assert image["download_url"] is not None
    assert f'src="{image["download_url"]}"' in event["html"]
    assert "cid:" not in event["html"]
    assert "tracker.mailer.example.net" not in event["html"]


def test_cid_of_refused_file_not_linked(tmp_path: Path) -> None:
    rules = governor(tmp_path, deny_types=("image/*",))
    raw = mail(html='<img src="cid:shot@x" alt="shot">', inline=(("shot@x", samples.PNG),))
    event = parse(raw, rules)
    assert event["attachments"][0]["refused"] == "type_denied:image/png"
    assert "https://files.example.com" not in event["html"]


def test_html_with_script_sanitized() -> None:
    event = parse((FIXTURES / "html_with_script.eml").read_bytes(), governor())
    html = event["html"]
    for removed in ("<script", "onload", "onerror", "javascript:", "<iframe", "<form",
                    "data:text/html", "t.example.net", "document.cookie"):
        assert removed not in html
    assert "Your account needs <b>attention</b>." in html
    assert 'href="https://help.example.com/account"' in html


def test_sanitizing_can_be_turned_off(tmp_path: Path) -> None:
    rules = governor(tmp_path, sanitize_html=False)
    raw = mail(html='<script>x()</script><img src="cid:shot@x">', inline=(("shot@x", samples.PNG),))
    event = parse(raw, rules)
    assert "<script>x()</script>" in event["html"]
    assert event["attachments"][0]["download_url"] in event["html"]


# -- the event contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(path.name for path in FIXTURES.glob("*.eml")))
def test_governed_fixture_matches_schema(name: str, tmp_path: Path) -> None:
    event = parse((FIXTURES / name).read_bytes(), governor(tmp_path, scanner=EicarScanner()))
    jsonschema.validate(event, SCHEMA)
    for attachment in event["attachments"]:
        assert set(attachment) == ENTRY_KEYS


@pytest.mark.parametrize("name", sorted(path.name for path in PARSE_FIXTURES.glob("*.eml")))
def test_parse_fixture_governed_matches_schema(name: str) -> None:
    event = parse((PARSE_FIXTURES / name).read_bytes(), governor())
    jsonschema.validate(event, SCHEMA)


def test_without_governor_event_unchanged() -> None:
    raw = (FIXTURES / "html_with_script.eml").read_bytes()
    plain = parse_message(raw, "test", INGESTED)
    assert "<script>" in plain["html"]
    exe = parse_message((FIXTURES / "exe_declared_as_pdf.eml").read_bytes(), "test", INGESTED)
    (attachment,) = exe["attachments"]
    assert attachment["content_type"] == "application/pdf"
    assert "refused" not in attachment


def test_tolerant_walk_governed_alike(tmp_path: Path) -> None:
    raw = (FIXTURES / "winmail_dat.eml").read_bytes()
    rules = governor(tmp_path)
    fast = _parse_message(raw, "t", INGESTED, authserv_ids=(), max_references=200, path="fast",
                          governor=rules)
    tolerant = _parse_message(raw, "t", INGESTED, authserv_ids=(), max_references=200,
                              path="tolerant", governor=rules)
    assert fast["attachments"] == tolerant["attachments"]


# -- JSON events ----------------------------------------------------------------------------------


def json_event(*attachments: dict[str, Any], html: str = "") -> bytes:
    return json.dumps({
        "event_id": "evt_upstream",
        "envelope": {"from": "dana@harborview.example.com", "subject": "Files",
                     "message_id": "<json.1@harborview.example.com>"},
        "html": html,
        "attachments": list(attachments),
    }).encode()


def entry(filename: str, content_type: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"filename": filename, "content_type": content_type, "size": size, "content_id": None,
            "disposition": "attachment", "sha256": "a" * 64,
            "download_url": f"https://upstream.example/{filename}", **extra}


def test_json_event_entries_gain_null_verdicts() -> None:
    event = decode_record(json_event(entry("a.txt", "text/plain", 4)), "k", INGESTED)
    assert event["attachments"][0]["refused"] is None
    assert event["attachments"][0]["quarantined"] is None


def test_json_event_keeps_given_verdicts() -> None:
    given = entry("a.exe", "application/x-dosexec", 4, refused="type_denied:application/x-dosexec",
                  quarantined=None)
    event = decode_record(json_event(given), "k", INGESTED)
    assert event["attachments"][0]["refused"] == "type_denied:application/x-dosexec"


def test_json_event_invalid_verdict_dropped() -> None:
    event = decode_record(json_event(entry("a.txt", "text/plain", 4, quarantined=7)), "k", INGESTED)
    assert event["attachments"][0]["quarantined"] is None
    assert "attachments.quarantined is no string; set to null" in details(dict(event),
                                                                          "invalid_field")


def test_json_event_governed_by_declared_metadata() -> None:
    rules = governor(max_file_bytes=100, max_message_bytes=150)
    event = decode_record(
        json_event(
            entry("../report.txt", "text/plain", 80),
            entry("tool.exe", "application/x-msdownload", 10),
            entry("huge.log", "text/plain", 500),
            entry("more.txt", "text/plain", 80),
            html='<p onclick="x()">hi</p><script>alert(1)</script>',
        ),
        "k",
        INGESTED,
        governor=rules,
    )
    attachments = event["attachments"]
    names = [a["filename"] for a in attachments]
    assert names == ["report.txt", "tool.exe", "huge.log", "more.txt"]
    assert [a["refused"] for a in attachments] == [
        None, "type_denied:application/x-dosexec", "too_large", "message_too_large",
    ]
    assert [a["download_url"] for a in attachments] == [
        "https://upstream.example/../report.txt", None, None, None,
    ]
    assert event["html"] == "<p>hi</p>"
    assert "unsafe_filename" in codes(dict(event))
    jsonschema.validate(event, SCHEMA)


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "file:///etc/passwd", "ftp://upstream.example/a", 7,
            "https://upstream.example/a b"],
)
def test_json_event_non_http_download_url_dropped(url: Any) -> None:
    event = decode_record(json_event(entry("a.png", "image/png", 4, download_url=url)), "k",
                          INGESTED)
    assert event["attachments"][0]["download_url"] is None
    assert any("download_url" in detail for detail in details(dict(event), "invalid_field"))


def test_json_upstream_image_link_dropped() -> None:
    pixel = entry("pixel.png", "image/png", 4, content_id="px@x",
                  download_url="https://tracker.example/p.png")
    html = '<img src="cid:px@x" alt="a"><img src="https://tracker.example/p.png" alt="b">'
    event = decode_record(json_event(pixel, html=html), "k", INGESTED, governor=governor())
    assert "tracker.example" not in event["html"]
    assert event["attachments"][0]["download_url"] == "https://tracker.example/p.png"


def test_json_base_url_image_kept() -> None:
    url = "https://files.example.com/tf/ab/cd/" + "a" * 64
    shot = entry("shot.png", "image/png", 4, content_id="shot@x", download_url=url)
    rules = governor(base_url="https://files.example.com/tf")
    event = decode_record(json_event(shot, html='<img src="cid:shot@x">'), "k", INGESTED,
                          governor=rules)
    assert f'src="{url}"' in event["html"]


def test_json_type_parameters_ignored_by_deny() -> None:
    event = decode_record(json_event(entry("x", "Application/X-DOSEXEC; name=x", 4)), "k",
                          INGESTED, governor=governor())
    (attachment,) = event["attachments"]
    assert attachment["content_type"] == "application/x-dosexec"
    assert attachment["refused"] == "type_denied:application/x-dosexec"


# -- the flow's parse step ----------------------------------------------------------------------


def test_flow_context_builds_governor_from_settings(tmp_path: Path) -> None:
    settings = Settings(attachments=AttachmentSettings(store=str(tmp_path / "files")))
    context = FlowContext(settings=settings, store=None)
    assert context.governor is not None
    assert isinstance(context.governor.store, LocalAttachmentStore)
    record = RawMessage("test", (FIXTURES / "exe_declared_as_pdf.eml").read_bytes(), INGESTED)
    event = parse_record(record, settings, context.governor)
    assert not isinstance(event, DeadLetter)
    assert event["attachments"][0]["refused"] == "type_denied:application/x-dosexec"


def test_corpus_run_stores_governed_attachments(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("exe_declared_as_pdf.eml", "inline_image_cid.eml", "winmail_dat.eml"):
        (corpus / name).write_bytes((FIXTURES / name).read_bytes())
    files = tmp_path / "files"
    settings = Settings(attachments=AttachmentSettings(store=str(files),
                                                       base_url="https://files.example.com"))
    store = SqliteStore(tmp_path / "tickets.db")
    summary = run_corpus(corpus, settings, store)
    assert summary.tickets_created == 3

    by_subject = {ticket["subject"]: ticket["messages"][0] for ticket in store.tickets()}
    (exe,) = by_subject["Invoice 2026-0412 attached"]["attachments"]
    assert exe["refused"] == "type_denied:application/x-dosexec"
    winmail = by_subject["Quarterly report"]["attachments"]
    assert [a["filename"] for a in winmail] == ["Quarterly report ü.txt", "chart.png"]
    local = LocalAttachmentStore(files, "https://files.example.com")
    for attachment in winmail:
        assert attachment["download_url"] == local.url_for(attachment["sha256"])
        assert local.get(attachment["sha256"]) is not None
    inline = by_subject["Checkout button greyed out"]
    assert inline["attachments"][0]["download_url"] in inline["html"]
