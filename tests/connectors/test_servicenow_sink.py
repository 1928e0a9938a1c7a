"""The ServiceNow sink against a local instance that follows the Table and Attachment APIs."""

from __future__ import annotations

import base64
import doctest
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from tests.connectors.servicenow_api import ServiceNowApi
from tests.connectors.sink_samples import sample_message, sample_ticket
from ticketflow.config import (
    ConfigError,
    MappingRule,
    PriorityNames,
    ServiceNowSettings,
    Settings,
    SinkSettings,
)
from ticketflow.connectors import servicenow_sink as servicenow_sink_module
from ticketflow.connectors.servicenow_sink import ServiceNowSink
from ticketflow.connectors.sink import (
    RateLimited,
    SinkAttachment,
    SinkMessage,
    SinkRejected,
    SinkTicket,
    SinkUnavailable,
    comment_marker,
    open_sink,
)

USER = "ticketflow.integration"
PASSWORD = "s3cret-pa55"
PASSWORD_ENV = "TICKETFLOW_SERVICENOW_PASSWORD"
INCIDENT = r"/api/now/table/incident"
ONE_INCIDENT = r"/api/now/table/incident/[0-9a-f]{32}"
UNKNOWN_SYS_ID = "0" * 32
RETRIES = 3
INSTANCE = "https://acme.service-now.com"


def sink_settings(url: str, **servicenow: object) -> SinkSettings:
    return SinkSettings(
        kind="servicenow", retries=RETRIES, backoff=0.001, timeout=5.0,
        servicenow=ServiceNowSettings(url=url, user=USER, **servicenow),
    )


def make_message(event_id: str = "evt_first0000000000000001", **changes: Any) -> SinkMessage:
    fields = {"sender": "alice.moreau@bluefin.example.com",
              "text": "POST /charges times out after 30 s since 11:40 UTC.",
              "authentication": {"spf": "pass", "dkim": "pass", "dmarc": "fail"}}
    return sample_message(event_id, **{**fields, **changes})


def make_ticket(external_id: str = "tkt_0123456789abcdef0123", **changes: Any) -> SinkTicket:
    fields = {"external_id": external_id, "requester": "alice.moreau@bluefin.example.com",
              "participants": ("alice.moreau@bluefin.example.com",),
              "reply_address": "acme-support+t-0123456789ab@support.example.com"}
    return sample_ticket(**{"first_message": make_message(), **fields, **changes})


def failure(message: str, detail: str) -> dict[str, object]:
    """Return an error body in the shape ServiceNow's REST APIs use."""
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


def reply(number: int, text: str = "Still failing.") -> SinkMessage:
    return make_message(f"evt_reply{number:016d}", kind="reply", text=text,
                        sent_at=f"2026-04-30T13:{number:02d}:00Z")


@pytest.fixture
def api() -> Iterator[ServiceNowApi]:
    with ServiceNowApi(user=USER, password=PASSWORD) as server:
        yield server


@pytest.fixture
def sink(api: ServiceNowApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowSink]:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    opened = ServiceNowSink(sink_settings(api.url))
    yield opened
    opened.close()


# -- create_ticket ------------------------------------------------------------------------


def test_create_sends_incident_fields(sink, api):
    ref = sink.create_ticket(make_ticket())

    incident = api.incidents[ref]
    assert incident["number"] == "INC0010001"
    assert incident["short_description"] == "API timeout on POST /charges"
    assert incident["correlation_id"] == "tkt_0123456789abcdef0123"
    assert incident["correlation_display"] == "ticketflow"
    assert incident["category"] == "inquiry"
    assert incident["impact"] == "1"
    assert incident["urgency"] == "1"
    assert incident["contact_type"] == "email"
    assert incident["caller_id"] == ""
    assert incident["assignment_group"] == ""


def test_create_description_names_sender_tenant_key_and_trust(sink, api):
    ref = sink.create_ticket(make_ticket())

    description = api.incidents[ref]["description"]
    assert description.startswith("POST /charges times out after 30 s since 11:40 UTC.")
    assert "From: Alice Moreau <alice.moreau@bluefin.example.com>" in description
    assert "Tenant: acme" in description
    assert "ticketflow key: ACME-17 (ticket id tkt_0123456789abcdef0123)" in description
    assert "Authentication: SPF pass, DKIM pass, DMARC fail" in description
    assert "Review: not held" in description
    assert "component payments, environment prod-us-west-2" in description


def test_create_description_names_review_reasons(sink, api):
    ticket = make_ticket(status="review", review_reasons=("dmarc_fail", "spam_score"))

    ref = sink.create_ticket(ticket)

    assert "Review: held (dmarc_fail, spam_score)" in api.incidents[ref]["description"]


def test_create_description_names_other_requester(sink, api):
    ticket = make_ticket(requester="ops@bluefin.example.com", requester_name="Bluefin Ops")

    ref = sink.create_ticket(ticket)

    assert "Requester: Bluefin Ops <ops@bluefin.example.com>" in api.incidents[ref]["description"]


def test_create_description_of_html_only_mail(sink, api):
    html = ("<html><head><style>p{color:red}</style></head>"
            "<body><p>Refund&nbsp;failed</p><p>Order 42</p></body></html>")
    ticket = make_ticket(first_message=make_message(text="", html=html))

    ref = sink.create_ticket(ticket)

    description = api.incidents[ref]["description"]
    assert description.startswith("Refund failed\nOrder 42\n")
    assert "color:red" not in description


def test_create_description_lists_attachments(sink, api):
    files = (
        SinkAttachment("trace.json", "application/json", 23891, "ab" * 32,
                       download_url="https://files.example.com/ab/trace.json"),
        SinkAttachment("invoice.pdf.exe", "application/x-dosexec", 68, "cd" * 32,
                       quarantined="Eicar-Test-Signature"),
    )
    ticket = make_ticket(first_message=make_message(attachments=files))

    ref = sink.create_ticket(ticket)

    description = api.incidents[ref]["description"]
    link = "https://files.example.com/ab/trace.json"
    assert f"- trace.json (application/json, 23891 bytes) {link}" in description
    assert "- invoice.pdf.exe: quarantined as Eicar-Test-Signature, not uploaded" in description


def test_create_uses_mapped_fields(sink, api):
    mapped = MappingRule(category="network", assignment_group="Payments L2", priority_name="2")

    ref = sink.create_ticket(make_ticket(mapped=mapped))

    incident = api.incidents[ref]
    assert incident["category"] == "network"
    assert incident["assignment_group"] == "Payments L2"
    assert incident["impact"] == "2"
    assert incident["urgency"] == "2"


def test_create_omits_empty_assignment_group(sink, api):
    sink.create_ticket(make_ticket())

    body = api.requests_to("POST", INCIDENT)[0].json()
    assert "assignment_group" not in body
    assert "caller_id" not in body


def test_create_uses_configured_group(api, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    settings = sink_settings(api.url, assignment_group="Service Desk", category="software")
    sink = ServiceNowSink(settings)

    ref = sink.create_ticket(make_ticket())

    assert api.incidents[ref]["assignment_group"] == "Service Desk"
    assert api.incidents[ref]["category"] == "software"


@pytest.mark.parametrize(
    ("priority", "impact"), [("P0", "1"), ("P1", "1"), ("P2", "2"), ("P3", "3"), ("P4", "3")]
)
def test_create_default_impact_per_priority(sink, api, priority, impact):
    ref = sink.create_ticket(make_ticket(priority=priority))

    assert api.incidents[ref]["impact"] == impact
    assert api.incidents[ref]["urgency"] == impact


def test_create_configured_impact(api, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    sink = ServiceNowSink(sink_settings(api.url, impacts=PriorityNames(P2="1")))

    p2 = sink.create_ticket(make_ticket("tkt_p2", priority="P2"))
    p3 = sink.create_ticket(make_ticket("tkt_p3", priority="P3"))

    assert api.incidents[p2]["impact"] == "1"
    assert api.incidents[p3]["impact"] == "3"


def test_create_cuts_short_description(sink, api):
    subject = "Checkout fails " * 30

    ref = sink.create_ticket(make_ticket(subject=subject))

    short = api.incidents[ref]["short_description"]
    assert len(short) == 160
    assert short.endswith("…")
    assert short.startswith("Checkout fails Checkout fails")


def test_create_empty_subject(sink, api):
    ref = sink.create_ticket(make_ticket(subject="  "))

    assert api.incidents[ref]["short_description"] == "(no subject)"


def test_create_numbers_incidents(sink, api):
    first = sink.create_ticket(make_ticket("tkt_a"))
    second = sink.create_ticket(make_ticket("tkt_b"))

    assert api.incidents[first]["number"] == "INC0010001"
    assert api.incidents[second]["number"] == "INC0010002"


def test_requests_use_basic_auth_and_json(sink, api):
    sink.create_ticket(make_ticket())

    request = api.requests_to("POST", INCIDENT)[0]
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert request.headers["authorization"] == expected
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"


def test_create_logs_number_not_password(sink, api, caplog):
    caplog.set_level(logging.DEBUG)

    ref = sink.create_ticket(make_ticket())

    assert f"INC0010001 (sys_id {ref})" in caplog.text
    assert PASSWORD not in caplog.text


# -- find_ticket ---------------------------------------------------------------------------


def test_find_after_create(sink):
    ref = sink.create_ticket(make_ticket())

    assert sink.find_ticket(make_ticket()) == ref


def test_find_unknown_ticket_is_none(sink):
    sink.create_ticket(make_ticket("tkt_other"))

    assert sink.find_ticket(make_ticket("tkt_missing")) is None


def test_find_query_names_correlation_id(sink, api):
    sink.find_ticket(make_ticket())

    request = api.requests_to("GET", INCIDENT)[0]
    assert request.query["sysparm_query"] == ["correlation_id=tkt_0123456789abcdef0123"]
    assert request.query["sysparm_limit"] == ["1"]
    assert set(request.query["sysparm_fields"][0].split(",")) >= {"sys_id", "number"}


# -- add_comment ---------------------------------------------------------------------------


def test_comment_becomes_work_note(sink, api):
    ref = sink.create_ticket(make_ticket())

    sink.add_comment(ref, make_ticket(), reply(1, "Still failing at 13:01."), verify=False)

    notes = api.work_notes(ref)
    assert len(notes) == 1
    sender = "Alice Moreau <alice.moreau@bluefin.example.com>"
    assert f"Email from {sender}, sent 2026-04-30T13:01:00Z:" in notes[0]
    assert "Still failing at 13:01." in notes[0]
    assert notes[0].endswith(comment_marker(reply(1)))
    assert api.journal_entries(ref, "comments") == []


def test_comment_of_auto_reply_says_so(sink, api):
    ref = sink.create_ticket(make_ticket())
    message = replace(reply(1, "I am out of office."), kind="auto_reply")

    sink.add_comment(ref, make_ticket(), message, verify=False)

    assert api.work_notes(ref)[0].startswith("Automatic reply from Alice Moreau")


def test_comment_verify_does_not_duplicate(sink, api):
    ref = sink.create_ticket(make_ticket())
    sink.add_comment(ref, make_ticket(), reply(1), verify=False)

    sink.add_comment(ref, make_ticket(), reply(1), verify=True)

    assert len(api.work_notes(ref)) == 1


def test_comment_verify_adds_missing_note(sink, api):
    ref = sink.create_ticket(make_ticket())

    sink.add_comment(ref, make_ticket(), reply(1), verify=True)

    assert len(api.work_notes(ref)) == 1


def test_comment_verify_reads_journal(sink, api):
    ref = sink.create_ticket(make_ticket())

    sink.add_comment(ref, make_ticket(), reply(1), verify=True)

    query = api.requests_to("GET", r"/api/now/table/sys_journal_field")[0].query["sysparm_query"][0]
    assert query.startswith(f"element_id={ref}^element=work_notes")


def test_comment_verify_needs_whole_marker(sink, api):
    ref = sink.create_ticket(make_ticket())
    longer = make_message("evt_12", kind="reply")
    shorter = make_message("evt_1", kind="reply")
    sink.add_comment(ref, make_ticket(), longer, verify=False)

    sink.add_comment(ref, make_ticket(), shorter, verify=True)

    assert len(api.work_notes(ref)) == 2


def test_comment_verify_looks_at_own_incident(sink, api):
    first = sink.create_ticket(make_ticket("tkt_a"))
    second = sink.create_ticket(make_ticket("tkt_b"))
    sink.add_comment(first, make_ticket("tkt_a"), reply(1), verify=False)

    sink.add_comment(second, make_ticket("tkt_b"), reply(1), verify=True)

    assert len(api.work_notes(second)) == 1


# -- attach_files ---------------------------------------------------------------------------


def test_attach_files_stores_bytes(sink, api):
    ref = sink.create_ticket(make_ticket())
    trace = SinkAttachment("trace.json", "application/json", 13, "ab" * 32)
    image = SinkAttachment("screen.png", "image/png", 6, "cd" * 32)
    message = make_message(attachments=(trace, image))

    files = [(trace, b'{"ok": false}'), (image, b"\x89PNG\r\n")]

    sink.attach_files(ref, make_ticket(), message, files)

    stored = api.attachments_of(ref)
    assert [(item.file_name, item.content_type, item.content) for item in stored] == [
        ("trace.json", "application/json", b'{"ok": false}'),
        ("screen.png", "image/png", b"\x89PNG\r\n"),
    ]


def test_attach_files_skips_quarantined(sink, api):
    ref = sink.create_ticket(make_ticket())
    bad = SinkAttachment("eicar.com", "application/octet-stream", 68, "ef" * 32,
                         quarantined="Eicar-Test-Signature")
    refused = SinkAttachment("setup.exe", "application/x-dosexec", 4, "aa" * 32,
                             refused="type application/x-dosexec")

    sink.attach_files(ref, make_ticket(), make_message(attachments=(bad, refused)),
                      [(bad, b"X5O!P%@AP"), (refused, b"MZ\x90\x00")])

    assert api.attachments_of(ref) == []


def test_attach_files_twice_uploads_once(sink, api):
    ref = sink.create_ticket(make_ticket())
    trace = SinkAttachment("trace.json", "application/json", 13, "ab" * 32)
    message = make_message(attachments=(trace,))

    sink.attach_files(ref, make_ticket(), message, [(trace, b'{"ok": false}')])
    sink.attach_files(ref, make_ticket(), message, [(trace, b'{"ok": false}')])

    assert len(api.attachments_of(ref)) == 1


def test_attach_files_names_unnamed_file(sink, api):
    ref = sink.create_ticket(make_ticket())
    unnamed = SinkAttachment("", "text/plain", 2, "0123456789ab" + "0" * 52)

    sink.attach_files(ref, make_ticket(), make_message(attachments=(unnamed,)), [(unnamed, b"hi")])

    assert api.attachments_of(ref)[0].file_name == "attachment-0123456789ab"


def test_attach_to_unknown_incident_is_rejected(sink):
    trace = SinkAttachment("trace.json", "application/json", 2, "ab" * 32)

    with pytest.raises(SinkRejected) as caught:
        sink.attach_files(UNKNOWN_SYS_ID, make_ticket(), make_message(), [(trace, b"{}")])

    assert caught.value.status == 404
    assert "does not exist" in caught.value.answer


# -- update_ticket ---------------------------------------------------------------------------


def test_update_sends_priority_and_subject(sink, api):
    ref = sink.create_ticket(make_ticket())

    sink.update_ticket(ref, make_ticket(priority="P3", subject="Charges time out (EU only)"))

    incident = api.incidents[ref]
    assert incident["impact"] == "3"
    assert incident["urgency"] == "3"
    assert incident["priority"] == "5"
    assert incident["short_description"] == "Charges time out (EU only)"
    assert api.work_notes(ref) == []


def test_update_in_review_adds_note(sink, api):
    ref = sink.create_ticket(make_ticket())

    sink.update_ticket(ref, make_ticket(status="review", review_reasons=("dmarc_fail",)))

    notes = api.work_notes(ref)
    assert len(notes) == 1
    assert "held (dmarc_fail)" in notes[0]


def test_update_without_note_is_retried(sink, api):
    ref = sink.create_ticket(make_ticket())
    api.fail_next("PATCH", ONE_INCIDENT, status=503, body=failure("Service Unavailable", "busy"))

    sink.update_ticket(ref, make_ticket(priority="P2"))

    assert api.incidents[ref]["impact"] == "2"
    assert len(api.requests_to("PATCH", ONE_INCIDENT)) == 2


# -- link_tickets ---------------------------------------------------------------------------


def test_link_notes_both_and_sets_parent(sink, api):
    surviving = sink.create_ticket(make_ticket("tkt_a"))
    merged = sink.create_ticket(make_ticket("tkt_b"))

    sink.link_tickets(surviving, merged, make_ticket("tkt_a"))

    assert "INC0010002" in api.work_notes(surviving)[0]
    assert "INC0010001" in api.work_notes(merged)[0]
    assert api.incidents[merged]["parent_incident"] == surviving
    assert api.incidents[surviving]["parent_incident"] == ""


def test_link_twice_notes_once(sink, api):
    surviving = sink.create_ticket(make_ticket("tkt_a"))
    merged = sink.create_ticket(make_ticket("tkt_b"))

    sink.link_tickets(surviving, merged, make_ticket("tkt_a"))
    sink.link_tickets(surviving, merged, make_ticket("tkt_a"))

    assert len(api.work_notes(surviving)) == 1
    assert len(api.work_notes(merged)) == 1


def test_link_to_missing_surviving_incident(sink, api):
    merged = sink.create_ticket(make_ticket("tkt_b"))

    sink.link_tickets(UNKNOWN_SYS_ID, merged, make_ticket("tkt_a"))

    assert UNKNOWN_SYS_ID in api.work_notes(merged)[0]
    assert api.incidents[merged]["parent_incident"] == ""


def test_link_of_two_missing_incidents_is_rejected(sink):
    with pytest.raises(SinkRejected) as caught:
        sink.link_tickets(UNKNOWN_SYS_ID, "1" * 32, make_ticket())

    assert caught.value.status == 404


# -- errors ------------------------------------------------------------------------------------


def test_missing_mandatory_field_is_rejected(api, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    api.mandatory_fields = ("short_description", "caller_id")
    sink = ServiceNowSink(sink_settings(api.url))

    with pytest.raises(SinkRejected) as caught:
        sink.create_ticket(make_ticket())

    assert caught.value.status == 400
    assert "Mandatory field missing" in caught.value.answer
    assert "caller_id" in caught.value.answer
    assert api.incidents == {}


def test_invalid_field_answer_is_in_error(sink, api):
    api.fail_next("POST", INCIDENT, status=400,
                  body=failure("Invalid field", "Field 'u_tenant' does not exist"))

    with pytest.raises(SinkRejected) as caught:
        sink.create_ticket(make_ticket())

    assert caught.value.status == 400
    assert "Invalid field" in caught.value.answer
    assert "u_tenant" in caught.value.answer


def test_wrong_password_is_rejected(api, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    sink = ServiceNowSink(sink_settings(api.url))

    with pytest.raises(SinkRejected) as caught:
        sink.find_ticket(make_ticket())

    assert caught.value.status == 401
    assert "User Not Authenticated" in caught.value.answer


def test_acl_denial_is_rejected(sink, api):
    api.deny("POST", "incident")

    with pytest.raises(SinkRejected) as caught:
        sink.create_ticket(make_ticket())

    assert caught.value.status == 403
    assert "ACL Exception Insert Failed" in caught.value.answer
    assert api.incidents == {}


def test_comment_on_unknown_incident_is_rejected(sink):
    with pytest.raises(SinkRejected) as caught:
        sink.add_comment(UNKNOWN_SYS_ID, make_ticket(), reply(1), verify=False)

    assert caught.value.status == 404
    assert "No Record found" in caught.value.answer


def test_conflict_is_rejected(sink, api):
    # ServiceNow documents no 409 for these calls; any 4xx but 429 must still be a rejection.
    ref = sink.create_ticket(make_ticket())
    api.fail_next("PATCH", ONE_INCIDENT, status=409,
                  body=failure("Conflict", "Record was updated by another transaction"))

    with pytest.raises(SinkRejected) as caught:
        sink.update_ticket(ref, make_ticket())

    assert caught.value.status == 409
    assert "updated by another transaction" in caught.value.answer


def test_rate_limit_raises_with_retry_after(sink, api):
    api.limit_rate(0, retry_after=17)

    with pytest.raises(RateLimited) as caught:
        sink.create_ticket(make_ticket())

    assert caught.value.retry_after == 17
    assert api.incidents == {}
    assert len(api.requests_to("POST", INCIDENT)) == 1


def test_rate_limit_lifted_then_create(sink, api):
    api.limit_rate(1, retry_after=5)
    first = sink.create_ticket(make_ticket("tkt_a"))
    with pytest.raises(RateLimited):
        sink.create_ticket(make_ticket("tkt_b"))

    api.reset_rate_limit()
    second = sink.create_ticket(make_ticket("tkt_b"))

    assert set(api.incidents) == {first, second}


def test_server_error_then_success(sink, api):
    ref = sink.create_ticket(make_ticket())
    api.fail_next("GET", INCIDENT, status=503, times=2,
                  body=failure("Service Unavailable", "node restarting"))

    assert sink.find_ticket(make_ticket()) == ref
    assert len(api.requests_to("GET", INCIDENT)) == 3


def test_server_error_until_give_up(sink, api):
    api.fail_next("GET", INCIDENT, status=500, times=10,
                  body=failure("Internal Server Error", "Transaction cancelled"))

    with pytest.raises(SinkUnavailable) as caught:
        sink.find_ticket(make_ticket())

    assert "HTTP 500" in str(caught.value)
    assert "Transaction cancelled" in str(caught.value)
    assert len(api.requests_to("GET", INCIDENT)) == RETRIES


def test_create_after_server_error_is_not_repeated(sink, api):
    api.fail_next("POST", INCIDENT, status=502)

    with pytest.raises(SinkUnavailable):
        sink.create_ticket(make_ticket())

    assert len(api.requests_to("POST", INCIDENT)) == 1


def test_work_note_after_server_error_is_not_repeated(sink, api):
    ref = sink.create_ticket(make_ticket())
    api.fail_next("PATCH", ONE_INCIDENT, status=500)

    with pytest.raises(SinkUnavailable):
        sink.add_comment(ref, make_ticket(), reply(1), verify=False)

    assert len(api.requests_to("PATCH", ONE_INCIDENT)) == 1


def test_html_page_answer_is_unavailable(sink, api):
    page = b"<html><body>Your instance is hibernating</body></html>"
    api.fail_next("GET", INCIDENT, status=200, body=page)

    with pytest.raises(SinkUnavailable) as caught:
        sink.find_ticket(make_ticket())

    assert "without a JSON result" in str(caught.value)
    assert "hibernating" in str(caught.value)


# -- replay ---------------------------------------------------------------------------------


def deliver_thread(sink: ServiceNowSink) -> str:
    """Deliver one ticket with two replies and a file, as the delivery does after a crash."""
    ticket = make_ticket()
    ref = sink.find_ticket(ticket) or sink.create_ticket(ticket)
    for number in (1, 2):
        sink.add_comment(ref, ticket, reply(number), verify=True)
    trace = SinkAttachment("trace.json", "application/json", 13, "ab" * 32)
    sink.attach_files(ref, ticket, make_message(attachments=(trace,)), [(trace, b'{"ok": false}')])
    return ref


def test_replay_makes_everything_once(api, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    first_run = ServiceNowSink(sink_settings(api.url))
    second_run = ServiceNowSink(sink_settings(api.url))

    ref = deliver_thread(first_run)
    again = deliver_thread(second_run)

    assert again == ref
    assert list(api.incidents) == [ref]
    assert len(api.work_notes(ref)) == 2
    assert len(api.attachments_of(ref)) == 1


def test_replay_after_lost_create_answer(sink, api):
    # The instance created the incident, but a proxy lost the response (a 504).
    created = sink.create_ticket(make_ticket())
    api.fail_next("POST", INCIDENT, status=504)

    ref = deliver_thread(sink)

    assert ref == created
    assert list(api.incidents) == [created]


# -- settings ---------------------------------------------------------------------------------


def test_missing_password_names_variable(api, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)

    with pytest.raises(ConfigError, match=f"export {PASSWORD_ENV} with the password"):
        ServiceNowSink(sink_settings(api.url))


def test_missing_custom_password_variable(api, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.delenv("TICKETFLOW_SNOW_PROD", raising=False)

    with pytest.raises(ConfigError, match="TICKETFLOW_SNOW_PROD"):
        ServiceNowSink(sink_settings(api.url, password_env="TICKETFLOW_SNOW_PROD"))


def test_empty_user_is_config_error(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    settings = SinkSettings(kind="servicenow", servicenow=ServiceNowSettings(url=INSTANCE))

    with pytest.raises(ConfigError, match="'sink.servicenow.user' is empty"):
        ServiceNowSink(settings)


def test_invalid_impact_is_config_error(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)

    with pytest.raises(ConfigError, match=r"sink\.servicenow\.impacts\.P2.*'High'"):
        ServiceNowSink(sink_settings(INSTANCE, impacts=PriorityNames(P2="High")))


def test_invalid_rule_priority_is_config_error(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    settings = replace(sink_settings(INSTANCE),
                       rules=(MappingRule(), MappingRule(priority_name="urgent")))

    with pytest.raises(ConfigError, match=r"sink\.rules\[1\]\.priority_name.*'urgent'"):
        ServiceNowSink(settings)


def test_open_sink_builds_servicenow_sink(api, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)

    sink = open_sink(Settings(sink=sink_settings(api.url)))

    assert isinstance(sink, ServiceNowSink)
    assert sink.name == "servicenow"
    assert sink.keys_are_human is False


def test_servicenow_sink_doctests_pass():
    failures, tried = doctest.testmod(servicenow_sink_module)

    assert tried > 0
    assert failures == 0
