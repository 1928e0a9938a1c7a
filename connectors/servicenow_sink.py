"""ServiceNow incidents as a ticketflow sink, over the Table API and the Attachment API.

Each contract operation becomes these requests (basic auth, JSON, `Accept: application/json`):

- `create_ticket`: `POST /api/now/table/incident` with the short description,
  description, `correlation_id` (the ticket's external id), `correlation_display`
  "ticketflow", category, impact, urgency, assignment group and contact type
  "email". The reference returned is the incident's sys_id; its number
  (INC0010001) is logged. `caller_id` is left empty because a sender is rarely a
  ServiceNow user, so the description names the requester instead.
- `find_ticket`: `GET /api/now/table/incident` with `sysparm_query=correlation_id=<id>`.
- `add_comment`: `PATCH /api/now/table/incident/<sys_id>` with `work_notes`, so
  mail never reaches the caller as a customer-visible comment. With `verify`, the
  incident's journal (`GET /api/now/table/sys_journal_field`) is searched for the
  comment marker first.
- `attach_files`: `POST /api/now/attachment/file` with the raw bytes, after
  listing the incident's attachments so a file already there is not sent again.
- `update_ticket`: `PATCH` of impact, urgency and short description, with a work
  note naming the review reasons while the ticket is held for review.
- `link_tickets`: a work note on each incident naming the other's number, and the
  merged incident's `parent_incident` set to the surviving one.

Idempotency: after a 5xx or a timeout the HTTP client repeats only reads and
field updates without a work note. A create, a work note or an upload that
failed that way raises `SinkUnavailable` at once, because the instance may have
carried out the first request. The delivery then retries with `find_ticket` or
`verify=True`, which detect what the first request did.

Limitations:

- `verify` and `link_tickets` read sys_journal_field, so the integration account
  needs read access to that table, not only to incident.
- An attachment counts as already uploaded when the incident has a file with the
  same name and size. A different file with the same name and size is skipped.
- `update_ticket` adds its review note on every call while the ticket is in
  review; the delivery calls it only when the status or priority changed.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import requests

from ticketflow.config import ConfigError, PriorityNames, ServiceNowSettings, SinkSettings
from ticketflow.connectors.http_client import SinkHttpClient
from ticketflow.connectors.sink import (
    SinkAttachment,
    SinkMessage,
    SinkRejected,
    SinkTicket,
    SinkUnavailable,
    comment_marker,
    message_text,
    read_secret,
)

log = logging.getLogger(__name__)

INCIDENT_PATH = "/api/now/table/incident"
JOURNAL_PATH = "/api/now/table/sys_journal_field"
ATTACHMENT_PATH = "/api/now/attachment"
# Short descriptions are cut to this many characters, the max_length task.short_description
# usually has. An instance does not enforce max_length (ServiceNow KB0685779), so the cut
# only keeps incident lists and notification subjects readable.
SHORT_DESCRIPTION_CHARS = 160
# Impact and urgency (1 high, 3 low) per priority where [sink.servicenow.impacts] sets none.
DEFAULT_IMPACTS = PriorityNames(P0="1", P1="1", P2="2", P3="3", P4="3")
IMPACT_VALUES = ("1", "2", "3")
CORRELATION_DISPLAY = "ticketflow"


class ServiceNowSink:
    """A `TicketSink` writing incidents; see the module docstring for the requests it sends."""

    name = "servicenow"
    keys_are_human = False

    def __init__(self, sink_settings: SinkSettings) -> None:
        settings = sink_settings.servicenow
        _check_settings(settings)
        _check_rule_priorities(sink_settings)
        password = _password(settings)
        self._settings = settings
        self._client = SinkHttpClient(
            self.name,
            settings.url,
            timeout=sink_settings.timeout,
            retries=sink_settings.retries,
            backoff=sink_settings.backoff,
            headers={"Accept": "application/json"},
            auth=(settings.user, password),
        )

    def find_ticket(self, ticket: SinkTicket) -> str | None:
        """Return the sys_id of the incident whose correlation_id is the ticket's external id."""
        params = {
            "sysparm_query": f"correlation_id={_query_value(ticket.external_id)}",
            "sysparm_fields": "sys_id,number,correlation_id",
            "sysparm_limit": "1",
        }
        response = self._client.request("GET", INCIDENT_PATH, params=params)
        rows = _rows(self._result(response, "GET", INCIDENT_PATH))
        # An instance ignores a query condition it cannot apply and then returns any
        # incident, so the match is checked here too.
        found = [row for row in rows if row.get("correlation_id") == ticket.external_id]
        if not found:
            return None
        log.info("servicenow found incident %s (sys_id %s) for ticket %s",
                 found[0].get("number"), found[0].get("sys_id"), ticket.key)
        return str(found[0]["sys_id"])

    def create_ticket(self, ticket: SinkTicket) -> str:
        """Insert the incident and return its sys_id; the request is never repeated here."""
        response = self._client.request("POST", INCIDENT_PATH, json=self.incident_fields(ticket))
        incident = self._record(response, "POST", INCIDENT_PATH)
        log.info("servicenow created incident %s (sys_id %s) for ticket %s",
                 incident.get("number"), incident["sys_id"], ticket.key)
        return str(incident["sys_id"])

    def add_comment(self, ref: str, ticket: SinkTicket, message: SinkMessage, verify: bool) -> None:
        """Add `message` as a work note; with `verify`, skip it if the journal has its marker."""
        marker = comment_marker(message)
        if verify and self._has_work_note(ref, marker):
            log.info("servicenow incident %s already has the work note of %s; skipped it",
                     ref, message.event_id)
            return
        incident = self._update(ref, {"work_notes": work_note_text(message, marker)})
        log.info("servicenow added the work note of %s to incident %s (ticket %s)",
                 message.event_id, incident.get("number"), ticket.key)

    def attach_files(
        self,
        ref: str,
        ticket: SinkTicket,
        message: SinkMessage,
        files: list[tuple[SinkAttachment, bytes]],
    ) -> None:
        """Upload each file not quarantined, not refused and not attached yet to incident `ref`."""
        present = self._attached_files(ref)
        for attachment, content in files:
            name = attachment_name(attachment)
            if attachment.quarantined or attachment.refused:
                log.warning("servicenow skipped the upload of %s of %s: quarantined %s, refused %s",
                            name, message.event_id, attachment.quarantined, attachment.refused)
                continue
            if (name, len(content)) in present:
                log.info("servicenow incident %s already has %s; skipped its upload", ref, name)
                continue
            self._upload(ref, name, attachment.content_type, content)
            present.add((name, len(content)))
            log.info("servicenow attached %s (%d bytes) of %s to incident %s (ticket %s)",
                     name, len(content), message.event_id, ref, ticket.key)

    def update_ticket(self, ref: str, ticket: SinkTicket) -> None:
        """Send impact, urgency and short description, and a work note while in review."""
        impact = self.impact_of(ticket)
        fields = {
            "impact": impact,
            "urgency": impact,
            "short_description": short_description(ticket.subject),
        }
        if ticket.status == "review":
            fields["work_notes"] = review_note(ticket)
        incident = self._update(ref, fields)
        log.info("servicenow updated incident %s (ticket %s): status %s, impact %s",
                 incident.get("number"), ticket.key, ticket.status, impact)

    def link_tickets(self, ref: str, merged_ref: str, ticket: SinkTicket) -> None:
        """Note on both incidents that they are one thread, and make `ref` the merged one's parent.

        Each note carries a marker naming both sys_ids, so calling this again adds
        no second note. When one of the incidents no longer exists, only the
        other gets its note; when neither exists, SinkRejected with status 404.
        """
        surviving = self._incident_or_none(ref)
        merged = self._incident_or_none(merged_ref)
        if surviving is None and merged is None:
            raise SinkRejected(self.name, 404, f"incidents {ref} and {merged_ref} were not found")

        marker = f"ticketflow-link:{merged_ref}>{ref}"
        merged_name = merged["number"] if merged else merged_ref
        surviving_name = surviving["number"] if surviving else ref
        if surviving is not None and not self._has_work_note(ref, marker):
            note = (f"Incident {merged_name} is the same email thread as this incident; ticketflow "
                    f"merged it into this one (ticket {ticket.key}).\n\n{marker}")
            self._update(ref, {"work_notes": note})
        if merged is not None:
            fields: dict[str, str] = {}
            if surviving is not None:
                fields["parent_incident"] = ref
            if not self._has_work_note(merged_ref, marker):
                fields["work_notes"] = (
                    f"This incident is the same email thread as {surviving_name}; ticketflow "
                    f"continues it there (ticket {ticket.key}).\n\n{marker}"
                )
            if fields:
                self._update(merged_ref, fields)
        log.info("servicenow linked incident %s into %s (ticket %s)",
                 merged_name, surviving_name, ticket.key)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    # -- what an incident contains ---------------------------------------------------------

    def incident_fields(self, ticket: SinkTicket) -> dict[str, str]:
        """Return the fields of a new incident for `ticket`."""
        impact = self.impact_of(ticket)
        fields = {
            "short_description": short_description(ticket.subject),
            "description": description(ticket),
            "correlation_id": ticket.external_id,
            "correlation_display": CORRELATION_DISPLAY,
            "impact": impact,
            "urgency": impact,
            "contact_type": "email",
        }
        category = ticket.mapped.category or self._settings.category
        if category:
            fields["category"] = category
        group = ticket.mapped.assignment_group or self._settings.assignment_group
        if group:
            fields["assignment_group"] = group
        return fields

    def impact_of(self, ticket: SinkTicket) -> str:
        """Return the impact and urgency of `ticket`: a rule's priority_name, else the setting's."""
        configured = self._settings.impacts.name_of(ticket.priority, DEFAULT_IMPACTS)
        impact = ticket.mapped.priority_name or configured
        # A priority outside P0 to P4 has no entry, and name_of returns it unchanged.
        return impact if impact in IMPACT_VALUES else DEFAULT_IMPACTS.P3

    # -- requests ----------------------------------------------------------------------------

    def _update(self, ref: str, fields: dict[str, str]) -> dict[str, Any]:
        path = f"{INCIDENT_PATH}/{ref}"
        # Setting fields again is harmless, but a second work note would be a duplicate.
        response = self._client.request("PATCH", path, params={"sysparm_fields": "sys_id,number"},
                                        json=fields, retry_unsafe="work_notes" not in fields)
        return self._record(response, "PATCH", path)

    def _incident_or_none(self, ref: str) -> dict[str, Any] | None:
        path = f"{INCIDENT_PATH}/{ref}"
        try:
            response = self._client.request("GET", path, params={"sysparm_fields": "sys_id,number"})
        except SinkRejected as exc:
            if exc.status == 404:
                return None
            raise
        return self._record(response, "GET", path)

    def _has_work_note(self, ref: str, marker: str) -> bool:
        conditions = (f"element_id={_query_value(ref)}", "element=work_notes",
                      f"valueLIKE{_query_value(marker)}")
        params = {"sysparm_query": "^".join(conditions), "sysparm_fields": "value"}
        response = self._client.request("GET", JOURNAL_PATH, params=params)
        rows = _rows(self._result(response, "GET", JOURNAL_PATH))
        # LIKE also finds evt_12 when looking for evt_1, so the marker must end there.
        pattern = re.compile(re.escape(marker) + r"(?![\w-])")
        return any(pattern.search(str(row.get("value", ""))) for row in rows)

    def _attached_files(self, ref: str) -> set[tuple[str, int]]:
        params = {"sysparm_query": f"table_name=incident^table_sys_id={_query_value(ref)}"}
        response = self._client.request("GET", ATTACHMENT_PATH, params=params)
        present = set()
        for row in _rows(self._result(response, "GET", ATTACHMENT_PATH)):
            if row.get("table_sys_id") != ref:
                continue
            try:
                present.add((str(row.get("file_name", "")), int(row.get("size_bytes", -1))))
            except (TypeError, ValueError):
                continue
        return present

    def _upload(self, ref: str, name: str, content_type: str, content: bytes) -> None:
        path = f"{ATTACHMENT_PATH}/file"
        params = {"table_name": "incident", "table_sys_id": ref, "file_name": name}
        headers = {"Content-Type": content_type or "application/octet-stream"}
        response = self._client.request("POST", path, params=params, data=content, headers=headers)
        self._record(response, "POST", path)

    def _record(self, response: requests.Response, method: str, path: str) -> dict[str, Any]:
        result = self._result(response, method, path)
        if not isinstance(result, dict) or not result.get("sys_id"):
            raise SinkUnavailable(self.name, f"{method} {path} returned HTTP {response.status_code}"
                                  f" without a record: {_start_of(response.text)}")
        return result

    def _result(self, response: requests.Response, method: str, path: str) -> Any:
        """Return the `result` of a 2xx response.

        A 2xx response that is not the API's JSON raises SinkUnavailable, so the
        delivery tries again later and then finds what the request did. A
        hibernating developer instance, for one, responds with an HTML page.
        """
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "result" not in body:
            raise SinkUnavailable(self.name, f"{method} {path} returned HTTP {response.status_code}"
                                  f" without a JSON result: {_start_of(response.text)}")
        return body["result"]


# -- text of incidents and work notes --------------------------------------------------------


def short_description(subject: str) -> str:
    """Return the subject on one line, cut to the 160 characters of a short description.

    >>> short_description("API timeout\\n on POST /charges")
    'API timeout on POST /charges'
    >>> len(short_description("x" * 300))
    160
    """
    text = " ".join(subject.split()) or "(no subject)"
    if len(text) <= SHORT_DESCRIPTION_CHARS:
        return text
    return text[: SHORT_DESCRIPTION_CHARS - 1] + "…"


def description(ticket: SinkTicket) -> str:
    """Return the first message's text followed by a block naming sender, tenant, key and trust."""
    message = ticket.first_message
    lines = [
        "-- ticketflow --",
        f"From: {_person(message.sender_name, message.sender)}",
    ]
    if ticket.requester and ticket.requester != message.sender:
        lines.append(f"Requester: {_person(ticket.requester_name, ticket.requester)}")
    lines += [
        f"Tenant: {ticket.tenant}",
        f"ticketflow key: {ticket.key} (ticket id {ticket.external_id})",
        f"Priority: {ticket.priority}{_ticket_facts(ticket)}",
        f"Authentication: {authentication_summary(message.authentication)}",
        f"Review: {review_summary(ticket)}",
    ]
    if ticket.reply_address:
        lines.append(f"Reply address: {ticket.reply_address}")
    lines += attachment_lines(message.attachments)
    return f"{message_text(message)}\n\n" + "\n".join(lines)


def work_note_text(message: SinkMessage, marker: str) -> str:
    """Return the work note of a later message: sender, time, text, files and the marker."""
    kind = "Automatic reply" if message.kind == "auto_reply" else "Email"
    sent = message.sent_at or message.received_at
    heading = f"{kind} from {_person(message.sender_name, message.sender)}, sent {sent}:"
    parts = [heading, message_text(message)]
    files = attachment_lines(message.attachments)
    if files:
        parts.append("\n".join(files))
    parts.append(marker)
    return "\n\n".join(parts)


def review_note(ticket: SinkTicket) -> str:
    """Return the work note stating that the ticket is held for review, and why."""
    return (f"ticketflow holds this incident for review: {review_summary(ticket)}. "
            "Check the sender before replying.")


def review_summary(ticket: SinkTicket) -> str:
    """Return "not held" for an open ticket, else "held (dmarc_fail, …)"."""
    if ticket.status != "review":
        return "not held"
    reasons = ", ".join(ticket.review_reasons) or "no reason recorded"
    return f"held ({reasons})"


def authentication_summary(results: dict[str, Any]) -> str:
    """Return the SPF, DKIM and DMARC results as one line, "none" where a result is missing.

    >>> authentication_summary({"spf": "pass", "dmarc": "fail"})
    'SPF pass, DKIM none, DMARC fail'
    """
    names = ("spf", "dkim", "dmarc")
    return ", ".join(f"{name.upper()} {results.get(name) or 'none'}" for name in names)


def attachment_lines(attachments: tuple[SinkAttachment, ...]) -> list[str]:
    """Return "Attachments:" and one line per file: its link, or why it was not uploaded."""
    if not attachments:
        return []
    lines = ["Attachments:"]
    for item in attachments:
        name = attachment_name(item)
        if item.quarantined:
            lines.append(f"- {name}: quarantined as {item.quarantined}, not uploaded")
        elif item.refused:
            lines.append(f"- {name}: refused ({item.refused}), not uploaded")
        else:
            link = f" {item.download_url}" if item.download_url else ""
            lines.append(f"- {name} ({item.content_type}, {item.size} bytes){link}")
    return lines


def attachment_name(attachment: SinkAttachment) -> str:
    """Return the file name, or a name made from the SHA-256 when the mail gave none."""
    return attachment.filename or f"attachment-{attachment.sha256[:12]}"


# -- helpers ---------------------------------------------------------------------------------


def _ticket_facts(ticket: SinkTicket) -> str:
    facts = (("component", ticket.component), ("environment", ticket.environment),
             ("tier", ticket.tier))
    return "".join(f", {label} {value}" for label, value in facts if value)


def _person(name: str, address: str) -> str:
    return f"{name} <{address}>" if name else address


def _rows(result: Any) -> list[dict[str, Any]]:
    return [row for row in result if isinstance(row, dict)] if isinstance(result, list) else []


def _query_value(value: str) -> str:
    # A ^ in a value would start a new condition of the encoded query.
    if "^" in value:
        raise ValueError(f"invalid ServiceNow encoded query value {value!r}: it contains ^")
    return value


def _start_of(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:199] + "…"


def _password(settings: ServiceNowSettings) -> str:
    return read_secret(settings.password_env, "sink.servicenow.password_env",
                       f"the password of the ServiceNow user {settings.user!r}")


def _check_settings(settings: ServiceNowSettings) -> None:
    if not settings.url.startswith(("http://", "https://")):
        raise ConfigError(
            f"invalid value for 'sink.servicenow.url': {settings.url!r}; give the instance URL, "
            "e.g. 'https://acme.service-now.com'"
        )
    if not settings.user:
        raise ConfigError(
            "'sink.servicenow.user' is empty; set it to the ServiceNow user that ticketflow "
            "signs in as"
        )
    for priority in ("P0", "P1", "P2", "P3", "P4"):
        value = getattr(settings.impacts, priority)
        if value and value not in IMPACT_VALUES:
            raise ConfigError(
                f"invalid value for 'sink.servicenow.impacts.{priority}': {value!r}; use "
                "\"1\" (high), \"2\" (medium) or \"3\" (low), or leave it empty for the default"
            )


def _check_rule_priorities(sink_settings: SinkSettings) -> None:
    for index, rule in enumerate(sink_settings.rules):
        if rule.priority_name and rule.priority_name not in IMPACT_VALUES:
            raise ConfigError(
                f"invalid value for 'sink.rules[{index}].priority_name': {rule.priority_name!r}; "
                "a ServiceNow rule sets impact and urgency, so use \"1\", \"2\" or \"3\""
            )
