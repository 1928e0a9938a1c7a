"""Tests for tenant, priority, component and environment rules."""

import doctest
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ticketflow.operators import enrich as enrich_module
from ticketflow.operators.enrich import (
    clean_subject,
    component_for,
    enrich,
    environment_for,
    header_value,
    priority_for,
    slug,
    tenants_for,
)

from ticketflow.config import RoutingSettings

ROUTING = RoutingSettings(
    inbound_domains=("support.example.com", "Help.Example.ORG"),
    default_tenant="fallback",
)


def make_event(
    *,
    subject="Printer broken",
    to=("acme-support@support.example.com",),
    cc=(),
    headers=None,
    text="",
):
    """Return a minimal valid event; only the fields these rules read vary."""
    return {
        "event_id": "evt_test",
        "received_at": "2026-04-30T12:01:22Z",
        "ingested_at": "2026-04-30T12:01:23Z",
        "source": "test",
        "envelope": {
            "from": "alice@customer.example",
            "from_name": "Alice",
            "to": list(to),
            "cc": list(cc),
            "reply_to": [],
            "subject": subject,
            "message_id": "<m1@customer.example>",
            "in_reply_to": None,
            "references": [],
        },
        "headers": dict(headers or {}),
        "authentication": {},
        "spam": {"score": None, "is_spam": False},
        "text": text,
        "html": "",
        "attachments": [],
        "defects": [],
    }


def test_enrich_doctests_pass():
    failures, tried = doctest.testmod(enrich_module)

    assert tried > 0
    assert failures == 0


# -- tenants --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "cc", "headers", "expected"),
    [
        pytest.param(["app1-support@support.example.com"], [], {}, ["app1"], id="dash"),
        pytest.param(["acme+billing@support.example.com"], [], {}, ["acme"], id="plus"),
        pytest.param(
            ["acme-support+billing@support.example.com"], [], {}, ["acme"], id="dash-then-plus"
        ),
        pytest.param(
            ["acme+billing-eu@support.example.com"], [], {}, ["acme"], id="plus-then-dash"
        ),
        pytest.param(["support@support.example.com"], [], {}, ["support"], id="bare-local-part"),
        pytest.param(
            ["ACME-Support@Support.Example.COM"], [], {}, ["acme"], id="uppercase-address"
        ),
        pytest.param(["globex-help@help.example.org"], [], {}, ["globex"], id="second-domain"),
        pytest.param(
            ["acme-support@support.example.com"],
            ["beta-support@support.example.com"],
            {},
            ["acme", "beta"],
            id="two-inbound-recipients",
        ),
        pytest.param(
            ["zeta-support@support.example.com", "acme-support@support.example.com"],
            [],
            {},
            ["acme", "zeta"],
            id="sorted",
        ),
        pytest.param(
            ["acme-support@support.example.com", "acme+billing@support.example.com"],
            ["ACME-sales@support.example.com"],
            {},
            ["acme"],
            id="same-tenant-once",
        ),
        pytest.param(
            ["bob@customer.example", "acme-support@support.example.com"],
            [],
            {},
            ["acme"],
            id="outside-recipient-ignored",
        ),
        pytest.param(
            ["acme-support@eu.support.example.com"], [], {}, ["fallback"], id="subdomain"
        ),
        pytest.param(
            ["acme-support@support.example.com.evil.example"],
            [],
            {},
            ["fallback"],
            id="domain-as-prefix",
        ),
        pytest.param(["bob@customer.example"], [], {}, ["fallback"], id="no-inbound-recipient"),
        pytest.param([], [], {}, ["fallback"], id="no-recipients"),
        pytest.param(
            ["-support@support.example.com"], [], {}, ["fallback"], id="empty-tenant-part"
        ),
        pytest.param(
            ['"acme corp"-support@support.example.com'],
            [],
            {},
            ["fallback"],
            id="quoted-local-part",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"X-Tenant-Id": "Globex"},
            ["globex"],
            id="tenant-header-wins",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"x-TENANT-id": " initech "},
            ["initech"],
            id="tenant-header-mixed-case-name",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"X-Tenant-Id": "globex@evil.example"},
            ["acme"],
            id="tenant-header-bad-characters",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"X-Tenant-Id": "../etc"},
            ["acme"],
            id="tenant-header-path",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"X-Tenant-Id": "a" * 65},
            ["acme"],
            id="tenant-header-too-long",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"X-Tenant-Id": ""},
            ["acme"],
            id="tenant-header-empty",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"Delivered-To": "beta-support@support.example.com"},
            ["beta"],
            id="delivered-to-beats-to",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"delivered-to": "Support <beta-support@support.example.com>"},
            ["beta"],
            id="delivered-to-with-display-name",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"X-Original-To": "gamma+x@support.example.com"},
            ["gamma"],
            id="original-to-beats-to",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {
                "Delivered-To": "beta-support@support.example.com",
                "X-Original-To": "gamma-support@support.example.com",
            },
            ["beta"],
            id="delivered-to-beats-original-to",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {
                "Delivered-To": "alice@customer.example",
                "X-Original-To": "gamma-support@support.example.com",
            },
            ["gamma"],
            id="delivered-to-off-domain",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"Delivered-To": "alice@customer.example"},
            ["acme"],
            id="delivered-to-off-domain-falls-to-recipients",
        ),
        pytest.param(
            ["acme-support@support.example.com"],
            [],
            {"Delivered-To": "-support@support.example.com"},
            ["acme"],
            id="delivered-to-no-tenant",
        ),
        pytest.param(
            ["bob@customer.example"],
            [],
            {"X-Tenant-Id": "bad tenant", "Delivered-To": "beta-support@support.example.com"},
            ["beta"],
            id="bad-tenant-header-then-delivered-to",
        ),
    ],
)
def test_tenants_for(to, cc, headers, expected):
    event = make_event(to=to, cc=cc, headers=headers)

    assert tenants_for(event, ROUTING) == expected


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({}, id="empty-event"),
        pytest.param({"envelope": None, "headers": None}, id="null-parts"),
        pytest.param({"envelope": {"to": "acme-support@support.example.com"}}, id="to-not-list"),
        pytest.param({"envelope": {"to": [None, 3]}}, id="to-not-strings"),
        pytest.param({"headers": {"X-Tenant-Id": ["acme"]}}, id="header-not-string"),
    ],
)
def test_tenants_for_malformed_event_gets_default(event):
    assert tenants_for(event, ROUTING) == ["fallback"]


# -- priority -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "headers", "expected"),
    [
        pytest.param("[P0] Checkout down", {}, "P0", id="tag-p0"),
        pytest.param("[p1] Checkout slow", {}, "P1", id="tag-lowercase"),
        pytest.param("[ P2 ] Checkout slow", {}, "P2", id="tag-spaces"),
        pytest.param("[P 3] Checkout slow", {}, "P3", id="tag-space-before-digit"),
        pytest.param("Checkout slow [P4]", {}, "P4", id="tag-at-end"),
        pytest.param("Re: [SUP-42][P1] Checkout slow", {}, "P1", id="tag-after-key"),
        pytest.param("[P2] Checkout [P0]", {}, "P2", id="leftmost-tag"),
        pytest.param("[P5] Checkout", {}, "P3", id="tag-out-of-range"),
        pytest.param("[P1 Checkout", {}, "P3", id="tag-unclosed"),
        pytest.param("[Prio1] Checkout", {}, "P3", id="other-notation"),
        pytest.param("[P4] Checkout", {"X-Priority": "1"}, "P4", id="tag-beats-header"),
        pytest.param("Checkout", {"X-Priority": "1"}, "P1", id="x-priority-1"),
        pytest.param("Checkout", {"X-Priority": "1 (Highest)"}, "P1", id="x-priority-comment"),
        pytest.param("Checkout", {"X-Priority": "2 (High)"}, "P2", id="x-priority-2"),
        pytest.param("Checkout", {"X-Priority": "3 (Normal)"}, "P3", id="x-priority-3"),
        pytest.param("Checkout", {"X-Priority": "4"}, "P4", id="x-priority-4"),
        pytest.param("Checkout", {"X-Priority": "5 (Lowest)"}, "P4", id="x-priority-5"),
        pytest.param("Checkout", {"x-priority": "1"}, "P1", id="x-priority-lowercase-name"),
        pytest.param("Checkout", {"X-PRIORITY": " 2"}, "P2", id="x-priority-uppercase-name"),
        pytest.param("Checkout", {"X-Priority": "0"}, "P3", id="x-priority-0"),
        pytest.param("Checkout", {"X-Priority": "12"}, "P3", id="x-priority-12"),
        pytest.param("Checkout", {"X-Priority": "urgent"}, "P3", id="x-priority-word"),
        pytest.param(
            "Checkout",
            {"X-Priority": "urgent", "Importance": "high"},
            "P2",
            id="bad-x-priority-then-importance",
        ),
        pytest.param(
            "Checkout",
            {"X-Priority": "3 (Normal)", "Importance": "High"},
            "P3",
            id="x-priority-beats-importance",
        ),
        pytest.param("Checkout", {"Importance": "High"}, "P2", id="importance-high"),
        pytest.param("Checkout", {"importance": "low"}, "P4", id="importance-low"),
        pytest.param("Checkout", {"Importance": "normal"}, "P3", id="importance-normal"),
        pytest.param("Checkout", {"Priority": "urgent"}, "P1", id="priority-urgent"),
        pytest.param("Checkout", {"Priority": "Non-Urgent"}, "P4", id="priority-non-urgent"),
        pytest.param(
            "Checkout",
            {"Importance": "high", "Priority": "urgent"},
            "P1",
            id="more-urgent-of-importance-and-priority",
        ),
        pytest.param(
            "Checkout",
            {"Importance": "low", "Priority": "normal"},
            "P4",
            id="importance-with-normal-priority",
        ),
        pytest.param("Checkout", {}, "P3", id="default"),
    ],
)
def test_priority_for(subject, headers, expected):
    event = make_event(subject=subject, headers=headers)

    assert priority_for(event) == expected


# -- component ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "text", "expected"),
    [
        pytest.param("[P1][Payments] API timeout", "", "payments", id="after-priority"),
        pytest.param("[Billing API] Refund failed", "", "billing-api", id="two-words"),
        pytest.param("[billing_api] Refund failed", "", "billing_api", id="underscore"),
        pytest.param("[Web 2.0] Layout", "", "web-2.0", id="version-dot"),
        pytest.param("[Facturación] Error", "", "facturacion", id="accent"),
        pytest.param("[支付] 错误", "", "支付", id="other-script"),
        pytest.param("Re: [SUP-42] [Payments] Refund", "", "payments", id="after-reply-and-key"),
        pytest.param("[EXTERNAL] [Payments] Refund", "", "payments", id="after-banner"),
        pytest.param("[Payments][API] Refund", "", "payments", id="first-component"),
        pytest.param("[Ticket#123] Refund failed", "", None, id="other-system-ticket"),
        pytest.param("[#ff0000] header colour", "", None, id="css-colour-tag"),
        pytest.param("[ABC-123] Refund failed", "", None, id="ticket-key"),
        pytest.param("[abc-123] Refund failed", "", None, id="ticket-key-lowercase"),
        pytest.param("[Case 12345] Refund failed", "", None, id="case-number"),
        pytest.param("[INC0012345] Refund failed", "", None, id="incident-number"),
        pytest.param("[EXT] Refund failed", "", None, id="banner-ext"),
        pytest.param("[SPAM] Refund failed", "", None, id="banner-spam"),
        pytest.param("[Suspected  Spam] Refund", "", None, id="banner-two-words"),
        pytest.param("[FWD] Refund failed", "", None, id="banner-fwd"),
        pytest.param("[Sev1] Refund failed", "", None, id="severity"),
        pytest.param("[P5] Refund failed", "", None, id="priority-out-of-range"),
        pytest.param("[P1] Refund failed", "", None, id="priority-only"),
        pytest.param("[Fwd: Refund failed]", "", None, id="old-forward-form"),
        pytest.param("[a@b] Refund failed", "", None, id="at-sign"),
        pytest.param("[" + "x" * 41 + "] Refund", "", None, id="too-long"),
        pytest.param("Refund failed [Payments]", "", None, id="not-leading"),
        pytest.param("Refund failed", "Component: Payments\n\nHello", "payments", id="body"),
        pytest.param(
            "Refund failed", "  component :  Billing API \n", "billing-api", id="body-spaced"
        ),
        pytest.param(
            "Refund failed",
            "Hello\n\n\nteam,\n\nline 3\nline 4\ncomponent: payments",
            "payments",
            id="body-fifth-non-empty-line",
        ),
        pytest.param(
            "Refund failed",
            "Hello\nline 2\nline 3\nline 4\nline 5\ncomponent: payments",
            None,
            id="body-sixth-line",
        ),
        pytest.param("Refund failed", "> component: payments", None, id="body-quoted"),
        pytest.param("Refund failed", "color: #ff0000", None, id="body-css-colour"),
        pytest.param("Refund failed", "component: #ff0000", None, id="body-component-colour"),
        pytest.param("Refund failed", "component:", None, id="body-empty-value"),
        pytest.param("[Payments] Refund", "component: api", "payments", id="subject-beats-body"),
        pytest.param("[EXT] Refund", "component: api", "api", id="banner-then-body"),
        pytest.param("Refund failed", "", None, id="absent"),
    ],
)
def test_component_for(subject, text, expected):
    event = make_event(subject=subject, text=text)

    assert component_for(event) == expected


# -- environment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "text", "expected"),
    [
        pytest.param({"X-Environment": "prod-us-west-2"}, "", "prod-us-west-2", id="header"),
        pytest.param({"X-Environment": "Prod US-West-2"}, "", "prod-us-west-2", id="header-slug"),
        pytest.param({"x-environment": "staging"}, "", "staging", id="header-lowercase-name"),
        pytest.param({"X-Environment": "!!!"}, "env: qa", "qa", id="unusable-header-then-body"),
        pytest.param({"X-Environment": "prod"}, "env: qa", "prod", id="header-beats-body"),
        pytest.param({}, "env: staging\nHello", "staging", id="body-env"),
        pytest.param({}, "Environment: Production EU", "production-eu", id="body-environment"),
        pytest.param({}, "ENV: Prod_EU.2", "prod_eu.2", id="body-keeps-underscore-and-dot"),
        pytest.param({}, "\n\nHi\n\nenv: dev", "dev", id="body-after-blank-lines"),
        pytest.param({}, "a\nb\nc\nd\ne\nenv: dev", None, id="body-sixth-line"),
        pytest.param({}, "environments: dev", None, id="other-field-name"),
        pytest.param({"X-Environment": "x" * 65}, "", None, id="header-too-long"),
        pytest.param({}, "", None, id="absent"),
    ],
)
def test_environment_for(headers, text, expected):
    event = make_event(headers=headers, text=text)

    assert environment_for(event) == expected


# -- subject --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("RE: [P1][Payments] API timeout on POST /charges", "API timeout on POST /charges"),
        ("Re: [EXT] [SUP-42][Payments] Timeout", "[SUP-42] Timeout"),
        ("AW: WG: Drucker defekt", "Drucker defekt"),
        ("Checkout down [P0]", "Checkout down"),
        ("Checkout [p1] down", "Checkout down"),
        ("[Ticket#123] Re: Export fails", "[Ticket#123] Export fails"),
        ("[#ff0000] header colour wrong", "[#ff0000] header colour wrong"),
        ("[Sev1] Outage", "[Sev1] Outage"),
        ("Re:   lots   of    space", "lots of space"),
        ("Request: new account", "Request: new account"),
        ("Outage in [Payments]", "Outage in [Payments]"),
        ("[P1]", ""),
        ("", ""),
    ],
)
def test_clean_subject(subject, expected):
    assert clean_subject(subject) == expected


# -- helpers and the whole step -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Payments", "payments"),
        ("  Billing -- API  ", "billing-api"),
        ("Crème brûlée", "creme-brulee"),
        ("prod_eu.1", "prod_eu.1"),
        ("---", None),
        ("", None),
        ("a" * 64, "a" * 64),
        ("a" * 65, None),
    ],
)
def test_slug(text, expected):
    assert slug(text) == expected


def test_header_value_ignores_name_case():
    event = make_event(headers={"X-Environment": "prod", "content-TYPE": "text/plain"})

    assert header_value(event, "x-environment") == "prod"
    assert header_value(event, "Content-Type") == "text/plain"
    assert header_value(event, "X-Missing") is None


def test_enrich_combines_rules():
    event = make_event(
        subject="Re: [P1][Payments] API timeout",
        headers={"X-Environment": "prod-us-west-2", "X-Priority": "5"},
    )

    assert enrich(event, ROUTING) == {
        "priority": "P1",
        "component": "payments",
        "environment": "prod-us-west-2",
        "tier": None,
    }


def test_enrich_defaults_for_plain_mail():
    assert enrich(make_event(), ROUTING) == {
        "priority": "P3",
        "component": None,
        "environment": None,
        "tier": None,
    }


def test_enrich_malformed_event_reads_as_absent():
    event = {"envelope": {"subject": None}, "headers": "not a mapping", "text": 7}

    assert enrich(event, ROUTING) == {
        "priority": "P3",
        "component": None,
        "environment": None,
        "tier": None,
    }


ENRICH_HEADERS = [
    "X-Tenant-Id", "x-tenant-id", "Delivered-To", "X-Original-To", "X-Priority",
    "Importance", "Priority", "X-Environment",
]
ADDRESSES = st.one_of(
    st.text(max_size=30),
    st.builds(lambda local: f"{local}@support.example.com", st.text(max_size=20)),
)


@given(
    headers=st.dictionaries(st.sampled_from(ENRICH_HEADERS), st.text(max_size=40)),
    subject=st.text(max_size=80),
    text=st.text(max_size=200),
    to=st.lists(ADDRESSES, max_size=3),
)
def test_rules_total_on_arbitrary_input(headers, subject, text, to):
    event = make_event(subject=subject, to=to, headers=headers, text=text)

    tenants = tenants_for(event, ROUTING)
    result = enrich(event, ROUTING)

    assert tenants == sorted(set(tenants))
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", tenant) for tenant in tenants)
    assert result["priority"] in {"P0", "P1", "P2", "P3", "P4"}
    for value in (result["component"], result["environment"]):
        assert value is None or slug(value) == value
    assert isinstance(clean_subject(subject), str)


def test_allowed_tenants_stop_minting_tenants():
    from ticketflow.config import RoutingSettings
    from ticketflow.operators.enrich import tenants_for

    routing = RoutingSettings(inbound_domains=("support.example.com",), allowed_tenants=("acme",))
    event = {"envelope": {"to": ["evil-support@support.example.com", "acme-support@support.example.com"],
                          "cc": []}, "headers": {"X-Tenant-Id": "globex"}}
    assert tenants_for(event, routing) == ["acme"]


def test_tenant_copies_are_capped():
    from ticketflow.config import RoutingSettings
    from ticketflow.operators.enrich import tenants_for

    routing = RoutingSettings(inbound_domains=("support.example.com",), max_tenants_per_message=3)
    event = {"envelope": {"to": [f"t{n}-support@support.example.com" for n in range(50)], "cc": []},
             "headers": {}}
    assert tenants_for(event, routing) == ["t0", "t1", "t10"]
