"""An outgoing webhook as a sink: every ticket operation is one signed JSON POST.

For teams with their own ticket API. Each call of the sink contract
(`ticketflow.connectors.sink`) sends one POST to `[sink.webhook] url` with a
JSON body:

    {"action": "create" | "comment" | "attach" | "update" | "link",
     "ref": "...",            # the receiver's reference; absent on create
     "ticket": {...},         # external_id, key, tenant, subject, requester, priority,
                              # status, review_reasons, labels, …
     "message": {...},        # create and comment: the message; attach: whose files
     "files": [...],          # attach: name, type, size, sha256, download_url (no bytes)
     "merged_ref": "..."}     # link: the ticket that turned out to be the same thread

and these headers:

- `X-Ticketflow-Timestamp`: unix time in seconds when the request was signed;
- `X-Ticketflow-Signature`: `v1=` and the hex HMAC-SHA256, keyed with the secret
  from `[sink.webhook] secret_env`, of the timestamp, a dot and the raw body.
  Receivers check it with `verify_signature`, which also refuses a timestamp
  older than five minutes so a captured request cannot be replayed later;
- `Idempotency-Key`: the same for every send of the same operation. A receiver
  must apply an operation once per key and return the first response again for
  a repeated key. It must dedupe on the key alone, because the ticket in a
  repeated body may be newer, for example when the priority changed meanwhile;
- `Content-Type: application/json`.

Keys: create is `EXTERNAL_ID:EVENT_ID:create` (the first message), comment
`EXTERNAL_ID:EVENT_ID:comment`, attach `EXTERNAL_ID:EVENT_ID:attach:DIGEST`
(of the files' SHA-256), link `EXTERNAL_ID:link:MERGED_REF`. An update carries
absolute values, so repeating it does no harm, and its key is new for every
call. A key derived from the values would make a receiver drop a change back
to an earlier value (P1, then P2, then P1 again).

Because every POST carries its key, the shared client may retry it after a
timeout or a 5xx. `create_ticket` returns the receiver's `{"ref": "..."}` when
the response has one, else the ticket's external id. `find_ticket` always
returns None: a webhook offers no lookup, and a repeated create is harmless
because the receiver returns the first response for its key. A receiver's 409
means a request with the same key is still being processed, so the sink raises
`SinkUnavailable` to try again later. Every other 4xx is `SinkRejected`.

Limitations: the receiver must keep keys for as long as ticketflow may repeat
an operation (a replay of old mail repeats them much later). The shared client
logs the path of each request, so the URL should hold no secret.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from ticketflow.config import ConfigError, SinkSettings
from ticketflow.connectors.http_client import SinkHttpClient
from ticketflow.connectors.sink import (
    SinkAttachment,
    SinkMessage,
    SinkRejected,
    SinkTicket,
    SinkUnavailable,
    read_secret,
)

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Ticketflow-Timestamp"
SIGNATURE_HEADER = "X-Ticketflow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_VERSION = "v1"
# Seconds a signed request stays acceptable to `verify_signature`, either way of the clock.
DEFAULT_TOLERANCE = 300.0


class WebhookSink:
    """Send every ticket operation as a signed, idempotent POST; see the module docstring."""

    name = "webhook"
    keys_are_human = False

    def __init__(
        self,
        settings: SinkSettings,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        webhook = settings.webhook
        parts = urlsplit(webhook.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                "sink.webhook.url must be the receiver's http(s) URL, e.g. "
                f"https://tickets.example.com/hooks/ticketflow; found {webhook.url!r}"
            )
        self._secret = _read_secret(webhook.secret_env, environ).encode()
        self._clock = clock
        self._path = parts.path or "/"
        if parts.query:
            self._path += f"?{parts.query}"
        self._http = SinkHttpClient(
            self.name, f"{parts.scheme}://{parts.netloc}",
            timeout=settings.timeout, retries=settings.retries, backoff=settings.backoff,
            headers={"Accept": "application/json", "User-Agent": "ticketflow-webhook"},
            sleep=sleep,
        )

    def find_ticket(self, ticket: SinkTicket) -> str | None:
        """Return None: a webhook has no lookup, and the receiver dedupes creates by key."""
        return None

    def create_ticket(self, ticket: SinkTicket) -> str:
        """POST the ticket with its first message; return the receiver's ref or the external id."""
        first = ticket.first_message
        key = f"{ticket.external_id}:{first.event_id}:create"
        response = self._post("create", key, ticket, message=first)
        return _ref_in(response) or ticket.external_id

    def add_comment(
        self, ref: str, ticket: SinkTicket, message: SinkMessage, verify: bool
    ) -> None:
        """POST `message` as a comment; its key makes a repeat harmless, so `verify` is unused."""
        key = f"{ticket.external_id}:{message.event_id}:comment"
        self._post("comment", key, ticket, ref=ref, message=message)

    def attach_files(
        self,
        ref: str,
        ticket: SinkTicket,
        message: SinkMessage,
        files: list[tuple[SinkAttachment, bytes]],
    ) -> None:
        """POST the files' descriptions and links; the bytes stay in the attachment store."""
        if not files:
            return
        described = [attachment_fields(found) for found, _ in files]
        digest = hashlib.sha256(
            "\n".join(sorted(found.sha256 for found, _ in files)).encode()
        ).hexdigest()[:16]
        key = f"{ticket.external_id}:{message.event_id}:attach:{digest}"
        self._post("attach", key, ticket, ref=ref, message=message, files=described)

    def update_ticket(self, ref: str, ticket: SinkTicket) -> None:
        """POST the ticket's current status, review reasons, priority and subject."""
        key = f"{ticket.external_id}:update:{uuid.uuid4().hex}"
        self._post("update", key, ticket, ref=ref)

    def link_tickets(self, ref: str, merged_ref: str, ticket: SinkTicket) -> None:
        """POST that `merged_ref` is the same thread as `ref`, which stays."""
        key = f"{ticket.external_id}:link:{merged_ref}"
        self._post("link", key, ticket, ref=ref, extra={"merged_ref": merged_ref})

    def close(self) -> None:
        self._http.close()

    def _post(
        self,
        action: str,
        key: str,
        ticket: SinkTicket,
        *,
        ref: str | None = None,
        message: SinkMessage | None = None,
        files: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> requests.Response:
        payload: dict[str, Any] = {"action": action, "ticket": ticket_fields(ticket)}
        if ref is not None:
            payload["ref"] = ref
        if message is not None:
            payload["message"] = message_fields(message)
        payload["files"] = files or []
        payload.update(extra or {})
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return self._send(body.encode("utf-8"), key)

    def _send(self, body: bytes, key: str) -> requests.Response:
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: f"{SIGNATURE_VERSION}={sign(self._secret, timestamp, body)}",
            IDEMPOTENCY_HEADER: key,
        }
        try:
            return self._http.request("POST", self._path, data=body, headers=headers,
                                      retry_unsafe=True)
        except SinkRejected as exc:
            if exc.status == 409:
                raise SinkUnavailable(
                    self.name,
                    f"the receiver is still processing the request with key {key}, "
                    f"try again later: {exc.answer}",
                ) from exc
            raise


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of `timestamp`, a dot and `body`, keyed with `secret`.

    >>> sign(b"key", "1700000000", b"{}")[:16]
    '9d713ed406bb7076'
    """
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """Tell whether a webhook request is authentic and fresh; for receivers.

    `timestamp` and `signature` are the values of the X-Ticketflow-Timestamp
    and X-Ticketflow-Signature headers, `body` the raw request body. The
    signature header may list several `v1=` values separated by commas (while
    a secret is being rotated): one match is enough. A timestamp more than
    `tolerance` seconds from `now` (default: the current time) is refused, so a
    captured request cannot be replayed later.

    >>> body = b'{"action":"create"}'
    >>> header = "v1=" + sign(b"key", "1700000000", body)
    >>> verify_signature(b"key", "1700000000", body, header, now=1700000060)
    True
    >>> verify_signature(b"key", "1700000000", body + b" ", header, now=1700000060)
    False
    >>> verify_signature(b"key", "1700000000", body, header, now=1700000301)
    False
    """
    try:
        signed_at = int(timestamp.strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - signed_at) > tolerance:
        return False

    expected = sign(secret, str(signed_at), body)
    matched = False
    for part in signature.split(","):
        version, _, value = part.strip().partition("=")
        if version == SIGNATURE_VERSION and hmac.compare_digest(value.strip(), expected):
            matched = True
    return matched


def ticket_fields(ticket: SinkTicket) -> dict[str, Any]:
    """Return the ticket as the webhook body's `ticket` object."""
    return {
        "external_id": ticket.external_id,
        "key": ticket.key,
        "tenant": ticket.tenant,
        "subject": ticket.subject,
        "requester": ticket.requester,
        "requester_name": ticket.requester_name,
        "participants": list(ticket.participants),
        "priority": ticket.priority,
        "priority_name": ticket.mapped.priority_name or None,
        "component": ticket.component,
        "environment": ticket.environment,
        "tier": ticket.tier,
        "status": ticket.status,
        "review_reasons": list(ticket.review_reasons),
        "reply_address": ticket.reply_address,
        "labels": list(ticket.mapped.labels),
    }


def message_fields(message: SinkMessage) -> dict[str, Any]:
    """Return a message as the webhook body's `message` object."""
    return {
        "event_id": message.event_id,
        "message_id": message.message_id,
        "kind": message.kind,
        "sender": message.sender,
        "sender_name": message.sender_name,
        "sent_at": message.sent_at,
        "received_at": message.received_at,
        "text": message.text,
        "html": message.html,
        "authentication": dict(message.authentication),
        "attachments": [attachment_fields(found) for found in message.attachments],
    }


def attachment_fields(attachment: SinkAttachment) -> dict[str, Any]:
    """Return an attachment's description: name, type, size, SHA-256, link, and any refusal."""
    return dataclasses.asdict(attachment)


def _read_secret(variable: str, environ: Mapping[str, str] | None) -> str:
    contents = "the webhook's HMAC key, the secret the receiver verifies signatures with"
    return read_secret(variable, "sink.webhook.secret_env", contents, environ)


def _ref_in(response: requests.Response) -> str | None:
    """Return the `ref` of a JSON response, or None when the receiver sent none."""
    if not response.content:
        return None
    try:
        document = response.json()
    except ValueError:
        return None
    ref = document.get("ref") if isinstance(document, dict) else None
    if isinstance(ref, (str, int)) and not isinstance(ref, bool) and str(ref):
        return str(ref)
    return None
