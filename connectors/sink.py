"""The contract every external ticket system implements, and how one is chosen.

The store (`--store`) stays the ledger of tickets, keys and external ids; a sink
(`[sink] kind`) mirrors its tickets into Jira, Zendesk, ServiceNow or a webhook.
`ticketflow.connectors.delivery` decides what to send and when; a sink only
translates one ticket operation into that system's API:

- `create_ticket` opens the ticket and returns the system's reference for it
  (a Jira key, a Zendesk or ServiceNow id, the webhook's response);
- `find_ticket` looks a ticket up by its external id (`SinkTicket.external_id`),
  so a create that may already have happened is never repeated;
- `add_comment` adds a later message of the thread as a comment;
- `attach_files` uploads a message's stored attachments to the ticket;
- `update_ticket` sends changed fields: review status, priority, subject;
- `link_tickets` records in the system that two tickets turned out to be one thread.

Idempotency: every call carries the external id of its ticket, and every
comment a marker naming its message (`comment_marker`). When `verify` is true
(after a crash or a response that never arrived) a sink first checks whether the
operation already happened, by that id or marker, and does nothing if it did.

Errors: a sink raises `RateLimited` for HTTP 429 (with the Retry-After delay in
seconds), `SinkUnavailable` for timeouts, connection errors and 5xx responses once
its retries are used up, and `SinkRejected` for every other 4xx response, with the
status and the API's response as the reason. Nothing else may escape a sink call
for a response the system gave.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ticketflow.config import ConfigError, MappingRule, Settings
from ticketflow.operators.html_text import html_text


class SinkError(Exception):
    """An external ticket system did not do what was asked."""

    def __init__(self, sink: str, message: str) -> None:
        super().__init__(f"{sink}: {message}")
        self.sink = sink


class RateLimited(SinkError):
    """The system returned 429; ask again after `retry_after` seconds."""

    def __init__(self, sink: str, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(sink, f"{message}; retry after {retry_after:g}s")
        self.retry_after = retry_after


class SinkUnavailable(SinkError):
    """Timeouts, connection errors or 5xx responses outlasted the retries; try again later."""


class SinkRejected(SinkError):
    """A permanent refusal (4xx other than 429): retrying the same request cannot help.

    `status` is the HTTP status and `answer` the API's response, shortened; both go
    into the dead letter's reason.
    """

    def __init__(self, sink: str, status: int, answer: str) -> None:
        super().__init__(sink, f"HTTP {status}: {answer}")
        self.status = status
        self.answer = answer


@dataclass(frozen=True)
class SinkAttachment:
    """One attachment of a message, as the attachment store kept it.

    `download_url` is the stored file's link, or None when no attachment store
    is configured (then there are no bytes to upload). `quarantined` names the
    malware signature when clamd refused the file; such a file is never uploaded,
    only noted.
    """

    filename: str
    content_type: str
    size: int
    sha256: str
    download_url: str | None = None
    quarantined: str | None = None
    refused: str | None = None


@dataclass(frozen=True)
class SinkMessage:
    """One message of a ticket's thread, ready to become a description or a comment."""

    # Unique per tenant: what the ledger marks as delivered.
    dedupe_key: str
    event_id: str
    message_id: str
    sender: str
    sender_name: str
    sent_at: str
    received_at: str
    # "original", "reply" or "auto_reply"
    kind: str
    text: str
    html: str
    authentication: dict[str, Any] = field(default_factory=dict)
    attachments: tuple[SinkAttachment, ...] = ()


@dataclass(frozen=True)
class SinkTicket:
    """A ticket as stored in the ledger, with the fields mapping rules chose for this sink.

    `external_id` is ticketflow's stable ticket id: the idempotency key every
    sink stores on the external ticket. `subject` is the clean subject, without
    `[P1]`/`[Payments]` tags or reply prefixes. `first_message` is the thread's
    earliest message, the ticket's description.
    """

    external_id: str
    key: str
    tenant: str
    subject: str
    requester: str
    requester_name: str
    participants: tuple[str, ...]
    priority: str
    component: str | None
    environment: str | None
    tier: str | None
    status: str
    review_reasons: tuple[str, ...]
    reply_address: str | None
    first_message: SinkMessage
    mapped: MappingRule = field(default_factory=MappingRule)


def message_text(message: SinkMessage) -> str:
    """Return the plain text of a message, else the text of its HTML part, else "(no text)"."""
    if message.text.strip():
        return message.text.strip()
    return html_text(message.html) or "(no text)"


def comment_marker(message: SinkMessage) -> str:
    """Return the marker a comment carries so a retry can tell it was already added."""
    return f"ticketflow-message:{message.event_id}"


class TicketSink(Protocol):
    """An external ticket system; see the module docstring for the contract."""

    # The name under which the ledger keeps this system's references ("jira", …).
    name: str
    # True when the system's references are human keys that mail may quote in a
    # subject ("[SUP-42]"): the ledger then records them as the tickets' keys.
    keys_are_human: bool

    def find_ticket(self, ticket: SinkTicket) -> str | None:
        """Return the reference of the ticket with this external id, or None."""
        ...

    def create_ticket(self, ticket: SinkTicket) -> str:
        """Open the ticket with its first message as description; return its reference."""
        ...

    def add_comment(self, ref: str, ticket: SinkTicket, message: SinkMessage, verify: bool) -> None:
        """Add `message` as a comment of ticket `ref`; with `verify`, skip one already there."""
        ...

    def attach_files(
        self,
        ref: str,
        ticket: SinkTicket,
        message: SinkMessage,
        files: list[tuple[SinkAttachment, bytes]],
    ) -> None:
        """Upload stored attachments of `message` to ticket `ref`."""
        ...

    def update_ticket(self, ref: str, ticket: SinkTicket) -> None:
        """Send the ticket's current status, review reasons, priority and subject."""
        ...

    def link_tickets(self, ref: str, merged_ref: str, ticket: SinkTicket) -> None:
        """Note on both tickets that `merged_ref` is the same thread as `ref` (which stays)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def read_secret(
    variable: str, setting: str, contents: str, environ: Mapping[str, str] | None = None
) -> str:
    """Return the secret held by the environment variable `variable`.

    Raises `ConfigError` naming the variable, the setting that names it
    (`setting`, e.g. "sink.jira.token_env") and what to export (`contents`)
    when the variable is unset or empty.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(variable, "")
    if not value:
        raise ConfigError(
            f"missing secret: the environment variable {variable} (named by '{setting}') is not "
            f"set or empty; export {variable} with {contents}"
        )
    return value


def open_sink(settings: Settings) -> TicketSink | None:
    """Build the sink `[sink] kind` names, or None for "none".

    Secrets are read from their TICKETFLOW_* variables here, so a missing one
    stops the run at start with a `ConfigError` naming the variable.
    """
    kind = settings.sink.kind
    if kind == "none":
        return None
    if kind == "jira":
        from ticketflow.connectors.jira_sink import JiraSink

        return JiraSink(settings.sink)
    if kind == "zendesk":
        from ticketflow.connectors.zendesk_sink import ZendeskSink

        return ZendeskSink(settings.sink)
    if kind == "servicenow":
        from ticketflow.connectors.servicenow_sink import ServiceNowSink

        return ServiceNowSink(settings.sink)
    from ticketflow.connectors.webhook_sink import WebhookSink

    return WebhookSink(settings.sink)
