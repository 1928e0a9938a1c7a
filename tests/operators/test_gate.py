"""Tests for the gate: review reasons, automatic and bulk mail, the auto-reply limit."""

import dataclasses
import email.message
import email.utils
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ticketflow.operators.gate import (
    _content_type,
    _report_type,
    AutoReplyLimiter,
    GateDecision,
    automatic_reason,
    bulk_reason,
    gate,
    review_reasons,
)

from ticketflow.config import GateSettings, RoutingSettings, ThreadingSettings

ROUTING = RoutingSettings(inbound_domains=("support.example.com",))
THREADING = ThreadingSettings(
    own_message_id_domains=("Notify.Tickets.Example",), max_references=3
)
GATE = GateSettings()

START = datetime(2026, 4, 30, 12, 0, tzinfo=UTC)


def make_event(
    *,
    sender="alice@customer.example",
    headers=None,
    authentication=None,
    spam=None,
    in_reply_to=None,
    references=(),
):
    """Return a minimal valid event; only the fields the gate reads vary."""
    return {
        "event_id": "evt_test",
        "received_at": "2026-04-30T12:01:22Z",
        "ingested_at": "2026-04-30T12:01:23Z",
        "source": "test",
        "envelope": {
            "from": sender,
            "from_name": "",
            "to": ["acme-support@support.example.com"],
            "cc": [],
            "reply_to": [],
            "subject": "Printer broken",
            "message_id": "<m1@customer.example>",
            "in_reply_to": in_reply_to,
            "references": list(references),
        },
        "headers": dict(headers or {}),
        "authentication": (
            {"spf": "pass", "dkim": "pass", "dmarc": "pass"}
            if authentication is None
            else authentication
        ),
        "spam": {"score": 0.1, "is_spam": False} if spam is None else spam,
        "text": "",
        "html": "",
        "attachments": [],
        "defects": [],
    }


def seconds(count):
    return START + timedelta(seconds=count)


# -- review reasons -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authentication", "spam", "expected"),
    [
        pytest.param(None, None, [], id="all-pass"),
        pytest.param({}, None, [], id="no-results"),
        pytest.param({"spf": "pass", "dkim": "pass", "dmarc": "fail"}, None, ["dmarc_fail"],
                     id="dmarc-fail"),
        pytest.param({"dmarc": "FAIL (p=reject)"}, None, ["dmarc_fail"], id="dmarc-fail-comment"),
        pytest.param({"spf": "fail", "dkim": "fail"}, None, ["spf_dkim_fail"],
                     id="spf-dkim-fail-no-dmarc"),
        pytest.param({"spf": "softfail", "dkim": "fail", "dmarc": "none"}, None,
                     ["spf_dkim_fail"], id="softfail-dkim-fail-dmarc-none"),
        pytest.param({"spf": "fail", "dkim": "fail", "dmarc": "temperror"}, None,
                     ["spf_dkim_fail"], id="dmarc-temperror"),
        pytest.param({"spf": "fail", "dkim": "pass"}, None, [], id="forwarded-spf-only"),
        pytest.param({"spf": "softfail", "dkim": "pass", "dmarc": "pass"}, None, [],
                     id="forwarded-dmarc-pass"),
        pytest.param({"spf": "fail", "dkim": "none"}, None, [], id="spf-fail-unsigned"),
        pytest.param({"spf": "neutral", "dkim": "fail"}, None, [], id="spf-neutral"),
        pytest.param({"spf": "fail", "dkim": "fail", "dmarc": "pass"}, None, [],
                     id="dmarc-pass-overrides"),
        pytest.param({"spf": "fail", "dkim": "fail", "dmarc": "fail"}, None, ["dmarc_fail"],
                     id="dmarc-fail-not-doubled"),
        pytest.param(None, {"score": 0.1, "is_spam": True}, ["spam_flag"], id="spam-flag"),
        pytest.param(None, {"score": 5.0, "is_spam": False}, ["spam_score"],
                     id="score-at-threshold"),
        pytest.param(None, {"score": 4.99, "is_spam": False}, [], id="score-below"),
        pytest.param(None, {"score": 12, "is_spam": False}, ["spam_score"], id="score-int"),
        pytest.param(None, {"score": "7.5", "is_spam": False}, ["spam_score"],
                     id="score-string"),
        pytest.param(None, {"score": "n/a", "is_spam": False}, [], id="score-not-number"),
        pytest.param(None, {"score": float("nan"), "is_spam": False}, [], id="score-nan"),
        pytest.param(None, {"score": True, "is_spam": False}, [], id="score-bool"),
        pytest.param(None, {"score": None, "is_spam": False}, [], id="score-none"),
        pytest.param(None, {"score": None, "is_spam": "yes"}, [], id="flag-not-bool"),
        pytest.param(
            {"spf": "fail", "dkim": "fail", "dmarc": "fail"},
            {"score": 9.0, "is_spam": True},
            ["dmarc_fail", "spam_flag", "spam_score"],
            id="order",
        ),
        pytest.param({"spf": "fail", "dkim": "fail"}, {"score": 9.0, "is_spam": True},
                     ["spf_dkim_fail", "spam_flag", "spam_score"], id="order-without-dmarc"),
    ],
)
def test_review_reasons(authentication, spam, expected):
    event = make_event(authentication=authentication, spam=spam)

    assert review_reasons(event, GATE) == expected


def test_review_reasons_uses_threshold():
    event = make_event(spam={"score": 3.5, "is_spam": False})

    assert review_reasons(event, GateSettings(spam_threshold=3.0)) == ["spam_score"]
    assert review_reasons(event, GateSettings(spam_threshold=4.0)) == []


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({}, id="empty-event"),
        pytest.param({"authentication": None, "spam": None}, id="null-parts"),
        pytest.param({"authentication": {"dmarc": 1}, "spam": []}, id="wrong-types"),
    ],
)
def test_review_reasons_malformed_event(event):
    assert review_reasons(event, GATE) == []


# -- automatic mail -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "headers", "in_reply_to", "references", "expected"),
    [
        pytest.param("alice@customer.example", {}, None, [], None, id="person"),
        pytest.param("alice@customer.example", {"Auto-Submitted": "auto-replied"}, None, [],
                     "auto_submitted", id="auto-replied"),
        pytest.param("alice@customer.example", {"Auto-Submitted": "auto-generated"}, None, [],
                     "auto_submitted", id="auto-generated"),
        pytest.param("alice@customer.example", {"auto-submitted": "Auto-Notified"}, None, [],
                     "auto_submitted", id="auto-notified-lowercase-name"),
        pytest.param("alice@customer.example",
                     {"AUTO-SUBMITTED": "auto-replied; owner-email=alice@customer.example"},
                     None, [], "auto_submitted", id="auto-submitted-with-parameter"),
        pytest.param("alice@customer.example", {"Auto-Submitted": "no"}, None, [], None,
                     id="auto-submitted-no"),
        pytest.param("alice@customer.example", {"Auto-Submitted": "No (human)"}, None, [], None,
                     id="auto-submitted-no-comment"),
        pytest.param("alice@customer.example", {"Auto-Submitted": " "}, None, [], None,
                     id="auto-submitted-empty"),
        pytest.param("alice@customer.example", {"Precedence": "auto_reply"}, None, [],
                     "auto_reply", id="precedence-auto-reply"),
        pytest.param("alice@customer.example", {"X-Autoreply": "yes"}, None, [], "auto_reply",
                     id="x-autoreply"),
        pytest.param("alice@customer.example", {"x-autoreply": "no"}, None, [], None,
                     id="x-autoreply-no"),
        pytest.param("alice@customer.example", {"X-Autorespond": "Vacation message"}, None, [],
                     "auto_reply", id="x-autorespond"),
        pytest.param("alice@customer.example", {"X-Auto-Response-Suppress": "All"}, None, [],
                     None, id="auto-response-suppress-alone"),
        pytest.param(
            "postmaster@mx.customer.example",
            {"Content-Type": "multipart/report; report-type=delivery-status; boundary=x"},
            None, [], "bounce", id="dsn",
        ),
        pytest.param(
            "alice@customer.example",
            {"content-type": 'Multipart/Report; Report-Type="Delivery-Status"; boundary="x"'},
            None, [], "bounce", id="dsn-quoted-mixed-case",
        ),
        pytest.param(
            "alice@customer.example",
            {"Content-Type": "multipart/report; report-type=disposition-notification"},
            None, [], "report", id="read-receipt",
        ),
        pytest.param(
            "abuse@isp.example",
            {"Content-Type": "multipart/report; report-type=feedback-report"},
            None, [], "report", id="abuse-report",
        ),
        pytest.param("alice@customer.example", {"Content-Type": "multipart/mixed; boundary=x"},
                     None, [], None, id="multipart-mixed"),
        pytest.param("alice@customer.example", {"Content-Type": ";;garbage=="}, None, [], None,
                     id="content-type-garbage"),
        pytest.param("postmaster@customer.example", {"Return-Path": "<>"}, None, [], "bounce",
                     id="postmaster-null-return-path"),
        pytest.param("postmaster@customer.example", {"Return-Path": "<<>>"}, None, [],
                     "bounce", id="postmaster-doubled-null-return-path"),
        pytest.param("postmaster@customer.example", {"return-path": " < > "}, None, [],
                     "bounce", id="postmaster-spaced-null-return-path"),
        pytest.param("mailer-daemon@mx.customer.example", {"Return-Path": "<>"}, None, [],
                     "bounce", id="mailer-daemon-null-return-path"),
        pytest.param("mailer-daemon@mx.customer.example",
                     {"Return-Path": "<bounces@mx.customer.example>"}, None, [], "bounce",
                     id="mailer-daemon-any-return-path"),
        pytest.param("postmaster@customer.example",
                     {"Return-Path": "<postmaster@customer.example>"}, None, [], None,
                     id="postmaster-person"),
        pytest.param("alice@customer.example", {"Return-Path": "<>"}, None, [], None,
                     id="null-return-path-alone"),
        pytest.param("alice@customer.example",
                     {"X-Failed-Recipients": "bob@customer.example"}, None, [], "bounce",
                     id="x-failed-recipients"),
        pytest.param(
            "mailer-daemon@mx.customer.example",
            {"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"},
            None, [], "bounce", id="bounce-first",
        ),
        pytest.param(
            "alice@customer.example",
            {"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"},
            None, [], "auto_submitted", id="auto-submitted-before-auto-reply",
        ),
        pytest.param("acme-support@support.example.com", {}, None, [], "echo",
                     id="from-own-mailbox"),
        pytest.param("ACME-Support@Support.Example.com", {}, None, [], "echo",
                     id="from-own-mailbox-uppercase"),
        pytest.param("noreply@eu.support.example.com", {}, None, [], None,
                     id="from-subdomain"),
        pytest.param("alice@customer.example", {}, "<n1@notify.tickets.example>", [], "echo",
                     id="answers-own-message-id"),
        pytest.param("alice@customer.example", {}, "<n1@NOTIFY.tickets.example>", [], "echo",
                     id="own-message-id-case"),
        pytest.param("alice@customer.example", {}, "<m0@customer.example>",
                     ["<m0@customer.example>", "<n1@notify.tickets.example>"], "echo",
                     id="own-message-id-in-references"),
        pytest.param("alice@customer.example", {}, "<m0@customer.example>",
                     ["<a@customer.example>", "<b@customer.example>", "<c@customer.example>",
                      "<n1@notify.tickets.example>"], None,
                     id="own-message-id-beyond-max-references"),
        pytest.param("alice@customer.example", {}, "<m0@customer.example>",
                     ["<m0@customer.example>"], None, id="answers-customer-message"),
        pytest.param("alice@customer.example", {}, "<n1@mail.notify.tickets.example>", [],
                     None, id="own-domain-subdomain"),
    ],
)
def test_automatic_reason(sender, headers, in_reply_to, references, expected):
    event = make_event(
        sender=sender, headers=headers, in_reply_to=in_reply_to, references=references
    )

    assert automatic_reason(event, ROUTING, THREADING) == expected


def test_automatic_reason_no_own_domains_no_echo():
    event = make_event(in_reply_to="<n1@notify.tickets.example>")

    assert automatic_reason(event, ROUTING, ThreadingSettings()) is None


def test_automatic_reason_malformed_event():
    event = {"envelope": {"from": None, "in_reply_to": 5, "references": "x"}, "headers": []}

    assert automatic_reason(event, ROUTING, THREADING) is None


# -- bulk mail ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="person"),
        pytest.param({"List-Id": "Users <users.lists.example>"}, "list", id="list-id"),
        pytest.param({"list-id": "<users.lists.example>"}, "list", id="list-id-lowercase-name"),
        pytest.param({"List-Id": "  "}, None, id="list-id-empty"),
        pytest.param({"Precedence": "list"}, "list", id="precedence-list"),
        pytest.param({"Precedence": "bulk"}, "bulk", id="precedence-bulk"),
        pytest.param({"PRECEDENCE": "Junk"}, "bulk", id="precedence-junk"),
        pytest.param({"Precedence": "auto_reply"}, None, id="precedence-auto-reply"),
        pytest.param({"List-Unsubscribe": "<https://news.example/u?x=1>"}, "bulk",
                     id="list-unsubscribe"),
        pytest.param(
            {"List-Id": "<users.lists.example>", "List-Unsubscribe": "<mailto:u@lists.example>"},
            "list", id="list-id-and-unsubscribe",
        ),
        pytest.param({"Precedence": "bulk", "List-Id": "<users.lists.example>"}, "list",
                     id="list-before-bulk"),
    ],
)
def test_bulk_reason(headers, expected):
    assert bulk_reason(make_event(headers=headers)) == expected


# -- the decision ---------------------------------------------------------------------


def test_gate_person_may_open_ticket():
    decision = gate(make_event(), ROUTING, THREADING, GATE)

    assert decision == GateDecision()
    assert decision.may_open_ticket
    assert decision.no_ticket_reason is None
    assert decision.status == "open"
    assert decision.may_auto_respond
    assert decision.message_kind(is_reply=False) == "original"
    assert decision.message_kind(is_reply=True) == "reply"


def test_gate_automatic_may_only_join():
    event = make_event(headers={"Auto-Submitted": "auto-replied"})

    decision = gate(event, ROUTING, THREADING, GATE)

    assert decision.automatic == "auto_submitted"
    assert not decision.may_open_ticket
    assert decision.no_ticket_reason == "auto_submitted"
    assert not decision.may_auto_respond
    assert decision.message_kind(is_reply=True) == "auto_reply"


def test_gate_bulk_review_policy():
    event = make_event(
        headers={"List-Id": "<users.lists.example>"},
        authentication={"spf": "pass", "dkim": "pass", "dmarc": "fail"},
    )

    decision = gate(event, ROUTING, THREADING, GateSettings(bulk_policy="review"))

    assert decision.bulk == "list"
    assert decision.review_reasons == ("dmarc_fail", "bulk")
    assert decision.may_open_ticket
    assert decision.status == "review"
    assert not decision.may_auto_respond


def test_gate_bulk_suppress_policy():
    event = make_event(headers={"Precedence": "bulk"})

    decision = gate(event, ROUTING, THREADING, GateSettings(bulk_policy="suppress"))

    assert decision.suppress
    assert not decision.may_open_ticket
    assert decision.no_ticket_reason == "bulk"
    assert decision.review_reasons == ()
    assert decision.message_kind(is_reply=True) == "reply"


def test_gate_bulk_open_policy():
    event = make_event(headers={"Precedence": "bulk"})

    decision = gate(event, ROUTING, THREADING, GateSettings(bulk_policy="open"))

    assert decision.bulk == "bulk"
    assert not decision.suppress
    assert decision.may_open_ticket
    assert decision.status == "open"


def test_gate_policy_ignored_for_person():
    decision = gate(make_event(), ROUTING, THREADING, GateSettings(bulk_policy="suppress"))

    assert not decision.suppress
    assert decision.may_open_ticket


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("All", False),
        ("OOF, AutoReply", False),
        ("DR, NDR, RN, NRN, OOF", True),
        ("None", True),
        ("", True),
    ],
)
def test_gate_auto_response_suppress(value, expected):
    event = make_event(headers={"X-Auto-Response-Suppress": value})

    decision = gate(event, ROUTING, THREADING, GATE)

    assert decision.may_auto_respond is expected
    assert decision.may_open_ticket


def test_gate_decision_frozen():
    decision = GateDecision()

    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.automatic = "echo"


# -- auto-reply limiter ---------------------------------------------------------------


def test_limiter_refuses_over_limit():
    limiter = AutoReplyLimiter(limit=2, window_seconds=60)

    assert limiter.allow("bot@customer.example", seconds(0))
    assert limiter.allow("bot@customer.example", seconds(10))
    assert not limiter.allow("bot@customer.example", seconds(20))


def test_limiter_allows_after_oldest_leaves_window():
    limiter = AutoReplyLimiter(limit=2, window_seconds=60)
    limiter.allow("bot@customer.example", seconds(0))
    limiter.allow("bot@customer.example", seconds(10))

    assert limiter.allow("bot@customer.example", seconds(61))
    assert not limiter.allow("bot@customer.example", seconds(65))


def test_limiter_window_excludes_its_start():
    limiter = AutoReplyLimiter(limit=1, window_seconds=60)
    limiter.allow("bot@customer.example", seconds(0))

    assert not limiter.allow("bot@customer.example", seconds(59))
    assert limiter.allow("bot@customer.example", seconds(60))


def test_limiter_does_not_count_refused():
    limiter = AutoReplyLimiter(limit=1, window_seconds=60)
    limiter.allow("bot@customer.example", seconds(0))
    limiter.allow("bot@customer.example", seconds(30))

    assert limiter.allow("bot@customer.example", seconds(61))


def test_limiter_senders_independent():
    limiter = AutoReplyLimiter(limit=1, window_seconds=60)
    limiter.allow("bot@customer.example", seconds(0))

    assert limiter.allow("other-bot@customer.example", seconds(1))
    assert not limiter.allow("bot@customer.example", seconds(2))


def test_limiter_sender_case_insensitive():
    limiter = AutoReplyLimiter(limit=1, window_seconds=60)
    limiter.allow("Bot@Customer.Example", seconds(0))

    assert not limiter.allow("bot@customer.example ", seconds(1))


def test_limiter_zero_limit_refuses_all():
    limiter = AutoReplyLimiter(limit=0, window_seconds=60)

    assert not limiter.allow("bot@customer.example", seconds(0))
    assert len(limiter) == 0


def test_limiter_zero_window_limits_nothing():
    limiter = AutoReplyLimiter(limit=1, window_seconds=0)

    assert limiter.allow("bot@customer.example", seconds(0))
    assert limiter.allow("bot@customer.example", seconds(0))


def test_limiter_late_event_counts_against_newer():
    limiter = AutoReplyLimiter(limit=2, window_seconds=60)
    limiter.allow("bot@customer.example", seconds(100))
    limiter.allow("bot@customer.example", seconds(110))

    assert not limiter.allow("bot@customer.example", seconds(50))


def test_limiter_forgets_expired_senders():
    limiter = AutoReplyLimiter(limit=5, window_seconds=60)
    for number in range(100):
        limiter.allow(f"bot{number}@customer.example", seconds(number % 10))

    limiter.allow("late@customer.example", seconds(200))

    assert len(limiter) == 1


def test_limiter_refused_sender_keeps_order():
    limiter = AutoReplyLimiter(limit=1, window_seconds=60)
    limiter.allow("a@customer.example", seconds(0))
    limiter.allow("b@customer.example", seconds(10))
    limiter.allow("a@customer.example", seconds(20))

    limiter.allow("c@customer.example", seconds(65))

    assert len(limiter) == 2


def test_limiter_caps_tracked_senders():
    limiter = AutoReplyLimiter(limit=1, window_seconds=3600, max_senders=3)
    for number in range(5):
        limiter.allow(f"bot{number}@customer.example", seconds(number))

    assert len(limiter) == 3
    assert limiter.allow("bot0@customer.example", seconds(10))
    assert not limiter.allow("bot4@customer.example", seconds(10))


def test_limiter_from_settings():
    settings = GateSettings(auto_reply_limit=1, auto_reply_window=30.0)

    limiter = AutoReplyLimiter.from_settings(settings)

    assert limiter.allow("bot@customer.example", seconds(0))
    assert not limiter.allow("bot@customer.example", seconds(29))
    assert limiter.allow("bot@customer.example", seconds(30))


def test_limiter_rejects_naive_time():
    limiter = AutoReplyLimiter(limit=1, window_seconds=60)

    with pytest.raises(ValueError, match="has no timezone"):
        limiter.allow("bot@customer.example", datetime(2026, 4, 30, 12, 0))  # noqa: DTZ001


@pytest.mark.parametrize(
    ("limit", "window", "max_senders", "message"),
    [
        (-1, 60, 10, r"auto_reply_limit"),
        (1, -5, 10, r"auto_reply_window"),
        (1, float("nan"), 10, r"auto_reply_window"),
        (1, 60, 0, r"max_senders 0"),
    ],
)
def test_limiter_rejects_bad_settings(limit, window, max_senders, message):
    with pytest.raises(ValueError, match=message):
        AutoReplyLimiter(limit, window, max_senders=max_senders)


@given(
    limit=st.integers(min_value=0, max_value=4),
    window=st.integers(min_value=1, max_value=100),
    gaps=st.lists(st.integers(min_value=0, max_value=60), max_size=40),
)
def test_limiter_matches_sliding_window(limit, window, gaps):
    limiter = AutoReplyLimiter(limit, window)
    allowed_times = []
    moment = 0
    for gap in gaps:
        moment += gap
        counted = [start for start in allowed_times if moment - window < start <= moment]

        allowed = limiter.allow("bot@customer.example", seconds(moment))

        assert allowed is (len(counted) < limit)
        if allowed:
            allowed_times.append(moment)


GATE_HEADERS = [
    "Auto-Submitted", "Precedence", "X-Autoreply", "X-Autorespond", "Content-Type",
    "Return-Path", "X-Failed-Recipients", "List-Id", "List-Unsubscribe",
    "X-Auto-Response-Suppress",
]
AUTH_RESULTS = st.one_of(st.none(), st.sampled_from(["pass", "fail", "softfail", "none"]),
                         st.text(max_size=10))


@given(
    headers=st.dictionaries(st.sampled_from(GATE_HEADERS), st.text(max_size=60)),
    sender=st.text(max_size=40),
    spf=AUTH_RESULTS,
    dkim=AUTH_RESULTS,
    dmarc=AUTH_RESULTS,
    score=st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=5)),
    in_reply_to=st.one_of(st.none(), st.text(max_size=40)),
    policy=st.sampled_from(["review", "open", "suppress"]),
)
def test_gate_total_on_arbitrary_input(
    headers, sender, spf, dkim, dmarc, score, in_reply_to, policy
):
    authentication = {
        method: result
        for method, result in (("spf", spf), ("dkim", dkim), ("dmarc", dmarc))
        if result is not None
    }
    event = make_event(
        sender=sender,
        headers=headers,
        authentication=authentication,
        spam={"score": score, "is_spam": False},
        in_reply_to=in_reply_to,
    )

    decision = gate(event, ROUTING, THREADING, GateSettings(bulk_policy=policy))

    assert decision.automatic in {None, "bounce", "report", "auto_submitted", "auto_reply", "echo"}
    assert decision.bulk in {None, "list", "bulk"}
    assert set(decision.review_reasons) <= {
        "dmarc_fail", "spf_dkim_fail", "spam_flag", "spam_score", "bulk"
    }
    assert decision.may_open_ticket is (decision.no_ticket_reason is None)


# -- Content-Type read as the stdlib reads it -------------------------------------------

_CONTENT_TYPE_PIECES = st.lists(
    st.sampled_from([
        "multipart/report", "Multipart/Report", "text/plain", "message/delivery-status", "x",
        "a/b/c", ";", " ", "\t", "report-type=", "report-type", "Report-Type", "=",
        "delivery-status", '"delivery-status"', '"', "'", "\\", "charset=utf-8", "*",
        "report-type*=utf-8''x", "é", "(comment)",
    ]),
    max_size=10,
).map("".join)


def _stdlib_reading(value: str) -> tuple[str, str]:
    message = email.message.Message()
    message["Content-Type"] = value
    report_type = message.get_param("report-type")
    if isinstance(report_type, tuple):
        report_type = email.utils.collapse_rfc2231_value(report_type)
    return message.get_content_type(), (report_type or "").lower()


@hypothesis_settings(max_examples=400, deadline=None)
@given(_CONTENT_TYPE_PIECES)
def test_content_type_reading_matches_the_stdlib(value):
    media_type, report_type = _stdlib_reading(value)
    assert _content_type(value) == (media_type if value else "")
    assert _report_type(value) == report_type
