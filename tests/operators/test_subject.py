"""Tests for reply/forward prefixes and leading tags of subjects."""

import doctest
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ticketflow.operators import subject as subject_module
from ticketflow.operators.subject import (
    MAX_LEADING_PARTS,
    has_reply_prefix,
    normalize_subject,
    split_leading_parts,
)


def test_subject_doctests_pass():
    failures, tried = doctest.testmod(subject_module)

    assert tried > 0
    assert failures == 0


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Printer broken", "printer broken"),
        ("Re: Printer broken", "printer broken"),
        ("RE: re: Fwd: Printer broken", "printer broken"),
        ("Re:Re:Re:Printer broken", "printer broken"),
        ("FW: Printer broken", "printer broken"),
        ("AW: WG: Drucker defekt", "drucker defekt"),
        ("Antwort: Drucker defekt", "drucker defekt"),
        ("Antw: Doorst: Printer kapot", "printer kapot"),
        ("SV: VS: VB: Faktura", "faktura"),
        ("VL: Lasku", "lasku"),
        ("FS: Reikningur", "reikningur"),
        ("TR: Facture impayée", "facture impayée"),
        ("RE : Facture impayée", "facture impayée"),
        ("R: RIF: Fattura", "fattura"),
        ("RV: Factura", "factura"),
        ("RES: ENC: Fatura", "fatura"),
        ("Odp: PD: Faktura", "faktura"),
        ("YNT: İLT: Fatura", "fatura"),
        ("VÁ: Számla", "számla"),
        ("ΑΠ: ΠΡΘ: Τιμολόγιο", "τιμολόγιο"),
        ("ΣΧΕΤ: Τιμολόγιο", "τιμολόγιο"),
        ("השב: הועבר: חשבונית", "חשבונית"),
        ("回复：转发：发票问题", "发票问题"),
        ("答复: 发票问题", "发票问题"),
        ("回覆：轉寄：發票", "發票"),
        ("返信：転送：請求書", "請求書"),
        ("회신: 전달: 청구서", "청구서"),
        ("Re[2]: Printer broken", "printer broken"),
        ("Re(3): Printer broken", "printer broken"),
        ("Re^4: Printer broken", "printer broken"),
        ("ＲＥ：Printer broken", "printer broken"),
        ("[EXT] Re: [SUP-42] Printer broken", "printer broken"),
        ("[P1][Payments] API timeout", "api timeout"),
        ("Re: [Ticket#123] Export fails", "export fails"),
        ("【外部】 Printer broken", "printer broken"),
        ("[Fwd: Printer broken]", "printer broken"),
        ("Printer broken (fwd)", "printer broken"),
        ("  Printer \t  broken  ", "printer broken"),
        ("PRINTER Broken", "printer broken"),
        ("Straße gesperrt", "strasse gesperrt"),
        ("Printer [SUP-42] broken", "printer [sup-42] broken"),
        ("Request: new account", "request: new account"),
        ("Reply needed: invoice", "reply needed: invoice"),
        ("Re", "re"),
        ("Re:", ""),
        ("", ""),
    ],
)
def test_normalize_subject(subject, expected):
    assert normalize_subject(subject) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Printer broken", True),
        ("RE: Printer broken", True),
        ("AW: Drucker defekt", True),
        ("SV: Faktura", True),
        ("R: Fattura", True),
        ("回复：发票问题", True),
        ("ＲＥ：Printer broken", True),
        ("Re[2]: Printer broken", True),
        ("[EXT] Re: Printer broken", True),
        ("Re: Fwd: Printer broken", True),
        ("Fwd: Re: Printer broken", False),
        ("Fwd: Printer broken", False),
        ("WG: Drucker defekt", False),
        ("VS: Faktura", False),
        ("[Fwd: Printer broken]", False),
        ("[SUP-42] Printer broken", False),
        ("Printer broken", False),
        ("Re Printer broken", False),
        ("Request: new account", False),
        ("Printer broken Re: again", False),
        ("", False),
    ],
)
def test_has_reply_prefix(subject, expected):
    assert has_reply_prefix(subject) is expected


@pytest.mark.parametrize(
    ("subject", "expected_parts", "expected_rest"),
    [
        ("Printer broken", [], "Printer broken"),
        (
            "[EXT] RE: [SUP-42][P1] Printer broken",
            [("tag", "EXT"), ("reply", "RE"), ("tag", "SUP-42"), ("tag", "P1")],
            "Printer broken",
        ),
        ("Fwd: AW: Drucker", [("forward", "Fwd"), ("reply", "AW")], "Drucker"),
        ("[ Payments ] Refund", [("tag", "Payments")], "Refund"),
        ("[] Empty tag", [("tag", "")], "Empty tag"),
        ("[Fwd: Printer broken] see below", [("forward", "Fwd")], "Printer broken  see below"),
        ("[unclosed tag Printer", [], "[unclosed tag Printer"),
        ("【外部】Printer", [("tag", "外部")], "Printer"),
    ],
)
def test_split_leading_parts(subject, expected_parts, expected_rest):
    parts, rest = split_leading_parts(subject)

    assert [(part.kind, part.text) for part in parts] == expected_parts
    assert rest == expected_rest


def test_split_leading_parts_long_tag_is_text():
    subject = "[" + "x" * 200 + "] Printer broken"

    parts, rest = split_leading_parts(subject)

    assert parts == []
    assert rest == subject


def test_split_leading_parts_bounded_on_prefix_flood():
    subject = "Re: " * 100_000 + "Printer broken"

    started = time.perf_counter()
    parts, rest = split_leading_parts(subject)
    elapsed = time.perf_counter() - started

    assert len(parts) == MAX_LEADING_PARTS
    assert rest.endswith("Printer broken")
    assert elapsed < 1.0


@given(st.text(max_size=60))
def test_normalize_subject_ignores_reply_prefix(text):
    assert normalize_subject("Re: " + text) == normalize_subject(text.lstrip())


@given(st.text(max_size=60))
def test_normalize_subject_idempotent(text):
    once = normalize_subject(text)

    assert normalize_subject(once) == once


@given(st.text(max_size=60))
def test_has_reply_prefix_after_re(text):
    assert has_reply_prefix("Re: " + text)
