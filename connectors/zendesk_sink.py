"""Zendesk Support as a sink: tickets, private comments and uploads over the Support API v2.

Every request authenticates with HTTP basic auth as "EMAIL/token" and the API
token read from `[sink.zendesk] token_env`. The operations of the sink contract
(`ticketflow.connectors.sink`) become these requests:

- `find_ticket`: GET /api/v2/tickets.json?external_id=ID, which lists the
  tickets carrying ticketflow's id. The sink uses this list rather than the
  Search API because the search index lags behind newly created tickets.
- `create_ticket`: POST /api/v2/tickets.json with subject, requester, priority,
  tags, group and `external_id`; the first message becomes the description. The
  description is a private comment because it carries the trust results
  (SPF/DKIM/DMARC, review reasons), which are meant for agents only.
- `add_comment`: PUT /api/v2/tickets/{id}.json with a private comment; with
  `verify`, GET /api/v2/tickets/{id}/comments.json first, and skip a comment
  whose marker (`comment_marker`) is already there.
- `attach_files`: POST /api/v2/uploads.json?filename=NAME per file, then one
  private comment holding the upload tokens.
- `update_ticket`: PUT subject, priority and tags. Tags are changed with
  `additional_tags` and `remove_tags`, so tags that agents or triggers set stay.
- `link_tickets`: Zendesk has no generic ticket link, so each of the two tickets
  gets a private comment naming the other.

Idempotency: the ticket carries ticketflow's id in `external_id`, and every
comment ends with a marker line. Zendesk does not make comments idempotent, so
a comment PUT is never repeated blindly: after a failed try the sink reads the
ticket's comments and sends the PUT again only if the marker is still missing.
Attachments and links are checked the same way on every call, because the
contract gives those calls no `verify` flag. A create is a POST and is not
retried inside the call; the delivery calls `find_ticket` before creating again.

Errors follow the contract, with one addition. Zendesk returns 409 for an edit
conflict with a concurrent update of the same ticket. The request itself was
valid and changed nothing, so the sink raises `SinkUnavailable` and the
delivery tries again later, rather than dead-lettering a valid request.
Validation errors come back as 422 `{"error": "RecordInvalid", "description",
"details"}` and become `SinkRejected` with that response body.

Limitations: comments are posted as the API user; the sender is named in the
text, not set as the comment's author. A message longer than Zendesk's comment
limit is rejected (422) rather than shortened.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import nh3
import requests

from ticketflow.config import ConfigError, PriorityNames, SinkSettings
from ticketflow.connectors.http_client import SinkHttpClient
from ticketflow.connectors.sink import (
    SinkAttachment,
    SinkMessage,
    SinkRejected,
    SinkTicket,
    SinkUnavailable,
    comment_marker,
    read_secret,
)

log = logging.getLogger(__name__)

# Zendesk's own priority values, and the default name for P0..P4.
ZENDESK_PRIORITIES = ("urgent", "high", "normal", "low")
DEFAULT_PRIORITIES = PriorityNames(P0="urgent", P1="high", P2="normal", P3="low", P4="low")
# Every ticket ticketflow opens carries SOURCE_TAG; REVIEW_TAG marks tickets held for review.
SOURCE_TAG = "ticketflow"
REVIEW_TAG = "ticketflow-review"
COMMENTS_PER_PAGE = 100
# The line between a message's text and the facts ticketflow adds under it.
FOOTER_RULE = "\n\n--\n"
_SHA256 = re.compile(r"\b[0-9a-f]{64}\b")


class ZendeskSink:
    """Mirror ticketflow's tickets into Zendesk Support; see the module docstring."""

    name = "zendesk"
    keys_are_human = False

    def __init__(
        self,
        settings: SinkSettings,
        *,
        environ: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        zendesk = settings.zendesk
        check_zendesk_settings(settings)
        token = read_secret(
            zendesk.token_env, "sink.zendesk.token_env", "the Zendesk API token", environ
        )
        options: dict[str, Any] = {
            "timeout": settings.timeout,
            "backoff": settings.backoff,
            "headers": {"Accept": "application/json"},
            "auth": (f"{zendesk.email}/token", token),
            "sleep": sleep,
        }
        self._http = SinkHttpClient(self.name, zendesk.url, retries=settings.retries, **options)
        # Comment PUTs go through a client that tries once, because `_send_comment`
        # first checks that a failed try left no comment before it tries again.
        self._http_once = SinkHttpClient(self.name, zendesk.url, retries=1, **options)
        self._priorities = zendesk.priorities
        self._retries = max(settings.retries, 1)
        self._backoff = settings.backoff
        self._sleep = sleep

    def find_ticket(self, ticket: SinkTicket) -> str | None:
        """Return the id of the oldest Zendesk ticket whose external_id is ticketflow's id."""
        external_id = ticket.external_id
        response = self._request("GET", "/api/v2/tickets.json", params={"external_id": external_id})
        listed = _json_object(response, "the ticket list").get("tickets") or []
        ids = sorted(int(found["id"]) for found in listed
                     if found.get("external_id") == external_id)
        if len(ids) > 1:
            log.warning("zendesk has %d tickets with external_id %s (%s); using the oldest, #%d",
                        len(ids), external_id, ticket.key, ids[0])
        return str(ids[0]) if ids else None

    def create_ticket(self, ticket: SinkTicket) -> str:
        """Open the ticket with its first message as a private description; return its id."""
        payload = {"ticket": self._new_ticket_fields(ticket)}
        response = self._request("POST", "/api/v2/tickets.json", json=payload)
        created = _json_object(response, "the created ticket").get("ticket") or {}
        if "id" not in created:
            raise SinkUnavailable(
                self.name,
                f"the response to creating {ticket.key} has no ticket id, but the ticket may "
                "exist, so find it before creating it again",
            )
        return str(created["id"])

    def add_comment(
        self, ref: str, ticket: SinkTicket, message: SinkMessage, verify: bool
    ) -> None:
        """Add `message` as a private comment; with `verify`, skip it when its marker is there."""
        marker = comment_marker(message)
        if verify and self._has_marker(ref, marker):
            log.info("zendesk ticket #%s (%s) already has the comment of %s; not adding it again",
                     ref, ticket.key, message.event_id)
            return
        comment = _comment_fields(comment_text(message), message)
        self._send_comment(ref, comment, lambda: self._has_marker(ref, marker))

    def attach_files(
        self,
        ref: str,
        ticket: SinkTicket,
        message: SinkMessage,
        files: list[tuple[SinkAttachment, bytes]],
    ) -> None:
        """Upload the files not yet on ticket `ref` and add one private comment holding them.

        A quarantined or refused file is never uploaded. A file that an earlier
        attachment comment of this message already lists (by SHA-256) is skipped.
        """
        marker = f"ticketflow-attachments:{message.event_id}"
        uploadable = [(found, data) for found, data in files
                      if not found.quarantined and not found.refused]
        noted = self._sha256s_noted(ref, marker)
        pending = [(found, data) for found, data in uploadable if found.sha256 not in noted]
        if not pending:
            return

        tokens = [self._upload(found, data) for found, data in pending]
        body = attachments_comment_text(message, [found for found, _ in pending], marker)
        comment = {"body": body, "public": False, "uploads": tokens}
        expected = {found.sha256 for found, _ in pending}
        self._send_comment(ref, comment, lambda: expected <= self._sha256s_noted(ref, marker))

    def update_ticket(self, ref: str, ticket: SinkTicket) -> None:
        """Send the subject, priority and review tag; other tags on the ticket stay."""
        fields: dict[str, Any] = {
            "subject": ticket.subject,
            "priority": self._priority_of(ticket),
            "additional_tags": self._tags_of(ticket),
        }
        if ticket.status != "review":
            fields["remove_tags"] = [REVIEW_TAG]
        self._request("PUT", f"/api/v2/tickets/{_ticket_id(ref)}.json", json={"ticket": fields})

    def link_tickets(self, ref: str, merged_ref: str, ticket: SinkTicket) -> None:
        """Add a private comment to both tickets naming the other one, once each."""
        marker = f"ticketflow-link:{merged_ref}:{ref}"
        notes = {
            ref: f"Ticket #{merged_ref} is the same email thread as this ticket ({ticket.key}); "
                 "ticketflow merged it into this one.",
            merged_ref: f"This email thread continues on ticket #{ref} ({ticket.key}); "
                        "ticketflow merged this ticket into it.",
        }
        for target, note in notes.items():
            if not self._has_marker(target, marker):
                self._add_note(target, note, marker)

    def close(self) -> None:
        self._http.close()
        self._http_once.close()

    def _new_ticket_fields(self, ticket: SinkTicket) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "subject": ticket.subject,
            "comment": _comment_fields(description_text(ticket), ticket.first_message),
            "requester": {"email": ticket.requester, "name": requester_name(ticket)},
            "external_id": ticket.external_id,
            "priority": self._priority_of(ticket),
            "tags": self._tags_of(ticket),
        }
        if ticket.mapped.group_id:
            fields["group_id"] = int(ticket.mapped.group_id)
        return fields

    def _priority_of(self, ticket: SinkTicket) -> str:
        if ticket.mapped.priority_name:
            return ticket.mapped.priority_name
        return self._priorities.name_of(ticket.priority, DEFAULT_PRIORITIES)

    def _tags_of(self, ticket: SinkTicket) -> list[str]:
        tags = [zendesk_tag(label) for label in ticket.mapped.labels]
        tags.append(SOURCE_TAG)
        if ticket.status == "review":
            tags.append(REVIEW_TAG)
        return list(dict.fromkeys(tag for tag in tags if tag))

    def _upload(self, attachment: SinkAttachment, data: bytes) -> str:
        # A retried upload whose first response was lost leaves an unused upload
        # behind, which never shows on a ticket, so retrying this POST is safe.
        response = self._request(
            "POST", "/api/v2/uploads.json",
            params={"filename": attachment.filename},
            data=data,
            headers={"Content-Type": attachment.content_type or "application/binary"},
            retry_unsafe=True,
        )
        upload = _json_object(response, "the upload").get("upload") or {}
        if not upload.get("token"):
            raise SinkUnavailable(
                self.name, f"the response to uploading {attachment.filename} has no upload token"
            )
        return str(upload["token"])

    def _add_note(self, ref: str, note: str, marker: str) -> None:
        comment = {"body": f"{note}\n\n{marker}", "public": False}
        self._send_comment(ref, comment, lambda: self._has_marker(ref, marker))

    def _send_comment(
        self, ref: str, comment: dict[str, Any], is_done: Callable[[], bool]
    ) -> None:
        """PUT `comment` on ticket `ref`; before each further try, ask `is_done` if it arrived."""
        path = f"/api/v2/tickets/{_ticket_id(ref)}.json"
        delay = self._backoff
        for attempt in range(1, self._retries + 1):
            try:
                self._request("PUT", path, json={"ticket": {"comment": comment}},
                              client=self._http_once)
                return
            except SinkUnavailable:
                if attempt >= self._retries:
                    raise
            log.warning("zendesk comment on ticket #%s failed (try %d of %d); "
                        "checking for it in %.2fs", ref, attempt, self._retries, delay)
            self._sleep(delay)
            delay *= 2
            if is_done():
                log.info("zendesk ticket #%s has the comment although the request failed", ref)
                return

    def _has_marker(self, ref: str, marker: str) -> bool:
        return any(contains_marker(text, marker) for text in self._comment_texts(ref))

    def _sha256s_noted(self, ref: str, marker: str) -> set[str]:
        noted: set[str] = set()
        for text in self._comment_texts(ref):
            if contains_marker(text, marker):
                noted.update(_SHA256.findall(text))
        return noted

    def _comment_texts(self, ref: str) -> Iterator[str]:
        """Yield the text of every comment of ticket `ref`, following `next_page` links."""
        first_page = f"/api/v2/tickets/{_ticket_id(ref)}/comments.json"
        path: str | None = f"{first_page}?per_page={COMMENTS_PER_PAGE}"
        while path:
            response = self._request("GET", path)
            page = _json_object(response, "the comment list")
            for comment in page.get("comments") or []:
                texts = (comment.get(key) or "" for key in ("body", "html_body", "plain_body"))
                yield "\n".join(str(text) for text in texts)
            path = _path_of(page.get("next_page"))

    def _request(
        self, method: str, path: str, *, client: SinkHttpClient | None = None, **kwargs: Any
    ) -> requests.Response:
        try:
            return (client or self._http).request(method, path, **kwargs)
        except SinkRejected as exc:
            if exc.status == 409:
                raise SinkUnavailable(
                    self.name,
                    f"edit conflict with another update of the same ticket, try again later: "
                    f"{exc.answer}",
                ) from exc
            raise


def check_zendesk_settings(settings: SinkSettings) -> None:
    """Raise `ConfigError` for a `[sink.zendesk]` value or rule that Zendesk would not accept."""
    zendesk = settings.zendesk
    if not zendesk.url.startswith(("https://", "http://")):
        raise ConfigError(
            "sink.zendesk.url must be the Zendesk site's URL, e.g. https://acme.zendesk.com; "
            f"found {zendesk.url!r}"
        )
    if "@" not in zendesk.email:
        raise ConfigError(
            "sink.zendesk.email must be the address of the agent who owns the API token; "
            f"found {zendesk.email!r}"
        )
    for priority in ("P0", "P1", "P2", "P3", "P4"):
        name = getattr(zendesk.priorities, priority)
        if name and name not in ZENDESK_PRIORITIES:
            raise ConfigError(
                f"invalid value for sink.zendesk.priorities.{priority}: {name!r}; "
                f"use one of {', '.join(ZENDESK_PRIORITIES)}"
            )
    for number, rule in enumerate(settings.rules):
        if rule.group_id and not rule.group_id.isdigit():
            raise ConfigError(
                f"invalid value for sink.rules[{number}].group_id: {rule.group_id!r}; "
                "write the Zendesk group's numeric id"
            )
        if rule.priority_name and rule.priority_name not in ZENDESK_PRIORITIES:
            raise ConfigError(
                f"invalid value for sink.rules[{number}].priority_name: {rule.priority_name!r}; "
                f"Zendesk accepts {', '.join(ZENDESK_PRIORITIES)}"
            )


def zendesk_tag(label: str) -> str:
    """Return `label` as Zendesk stores a tag: lower case, with no spaces.

    >>> zendesk_tag("Checkout Flow")
    'checkout_flow'
    """
    return "_".join(label.lower().split())


def requester_name(ticket: SinkTicket) -> str:
    """Return the requester's display name, or the address's local part when mail gave none."""
    return ticket.requester_name.strip() or ticket.requester.partition("@")[0] or ticket.requester


def description_text(ticket: SinkTicket) -> str:
    """Render the first message with the facts an agent needs: sender, tenant, key, trust."""
    first = ticket.first_message
    facts = [
        f"From: {_sender(first)}",
        f"Tenant: {ticket.tenant}",
        f"ticketflow key: {ticket.key}",
        f"Authentication: {authentication_summary(first.authentication)}",
    ]
    if ticket.status == "review":
        reasons = ", ".join(ticket.review_reasons) or "no reason recorded"
        facts.append(f"Held for review: {reasons}")
    return _with_footer(_body_text(first), facts, first)


def comment_text(message: SinkMessage) -> str:
    """Render a later message as a comment: who sent it and when, its text, its trust facts."""
    kind = {"reply": "Reply", "auto_reply": "Automatic reply"}.get(message.kind, "Message")
    heading = f"{kind} from {_sender(message)}, sent {_sent_time(message)}:"
    facts = [f"Authentication: {authentication_summary(message.authentication)}"]
    return f"{heading}\n\n" + _with_footer(_body_text(message), facts, message)


def attachments_comment_text(
    message: SinkMessage, uploaded: list[SinkAttachment], marker: str
) -> str:
    """Render the comment that carries the uploads of `message`, one line per file."""
    lines = [f"Attachments of the message from {_sender(message)}, sent {_sent_time(message)}:"]
    for found in uploaded:
        lines.append(f"- {found.filename} ({found.content_type}, {found.size} bytes, "
                     f"sha256 {found.sha256})")
    return "\n".join(lines) + f"\n\n{marker}"


def authentication_summary(results: Mapping[str, Any]) -> str:
    """Return "SPF pass, DKIM pass, DMARC fail" from a message's authentication results.

    >>> authentication_summary({"spf": "pass", "dmarc": "fail"})
    'SPF pass, DKIM none, DMARC fail'
    """
    methods = ("spf", "dkim", "dmarc")
    return ", ".join(f"{method.upper()} {results.get(method) or 'none'}" for method in methods)


def attachment_line(attachment: SinkAttachment) -> str:
    """Describe one attachment: name, type, size, and its link or why it was not uploaded."""
    line = f"- {attachment.filename} ({attachment.content_type}, {attachment.size} bytes)"
    if attachment.quarantined:
        return f"{line}: quarantined as {attachment.quarantined}; not uploaded"
    if attachment.refused:
        return f"{line}: refused ({attachment.refused}); not uploaded"
    if attachment.download_url:
        return f"{line}: {attachment.download_url}"
    return line


def contains_marker(text: str, marker: str) -> bool:
    """Tell whether `marker` is in `text` as a whole token, not as the prefix of a longer id.

    >>> contains_marker("done\\nticketflow-message:evt_12", "ticketflow-message:evt_1")
    False
    """
    return re.search(rf"(?<![\w:-]){re.escape(marker)}(?![\w-])", text) is not None


def _with_footer(text: str, facts: list[str], message: SinkMessage) -> str:
    lines = list(facts)
    if message.attachments:
        lines.append("Attachments:")
        lines += [attachment_line(found) for found in message.attachments]
    lines.append(comment_marker(message))
    return text + FOOTER_RULE + "\n".join(lines)


def _comment_fields(text: str, message: SinkMessage) -> dict[str, Any]:
    """Return a private comment of `text`, with the sanitized HTML when mail had no text part.

    Zendesk shows `html_body` instead of `body` when both are set, so the footer
    (with the marker) is repeated under the HTML.
    """
    comment: dict[str, Any] = {"body": text, "public": False}
    if not message.text.strip() and message.html.strip():
        footer = text.rpartition(FOOTER_RULE)[2]
        comment["html_body"] = f"{nh3.clean(message.html)}<hr><pre>{html.escape(footer)}</pre>"
    return comment


def _body_text(message: SinkMessage) -> str:
    text = message.text.strip()
    if text:
        return text
    if message.html.strip():
        return "(The message has no text part; Zendesk shows its HTML.)"
    return "(The message has no text.)"


def _sender(message: SinkMessage) -> str:
    return f"{message.sender_name} <{message.sender}>" if message.sender_name else message.sender


def _sent_time(message: SinkMessage) -> str:
    return message.sent_at or message.received_at


def _ticket_id(ref: str) -> int:
    """Return the numeric ticket id of `ref`; raise ValueError for anything else.

    A reference comes from the ledger, which records only what `create_ticket`
    or `find_ticket` returned, so a malformed one is a bug, not a Zendesk error.
    """
    if not ref.isdigit():
        raise ValueError(f"invalid Zendesk ticket reference {ref!r}; expected a numeric id")
    return int(ref)


def _path_of(next_page: Any) -> str | None:
    """Return the path and query of a `next_page` URL, dropping the host so the token stays here."""
    if not next_page:
        return None
    parts = urlsplit(str(next_page))
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _json_object(response: requests.Response, subject: str) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError as exc:
        raise SinkUnavailable(
            "zendesk", f"{subject} came back as HTTP {response.status_code} without JSON: "
                       f"{response.text[:200]!r}"
        ) from exc
    if not isinstance(value, dict):
        raise SinkUnavailable("zendesk", f"invalid JSON for {subject}, expected an object: "
                                         f"{value!r:.200}")
    return value
