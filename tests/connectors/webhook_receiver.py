"""A receiver of ticketflow's outgoing webhook, as a team with its own ticket API would write it.

It checks each POST as the docstring of `connectors/webhook_sink.py` requires of receivers:

- 401 `{"error": "missing signature"}` without the timestamp and signature headers,
  401 `{"error": "stale timestamp"}` for a timestamp more than `tolerance`
  seconds away from the receiver's clock, and 401 `{"error": "invalid
  signature"}` when the HMAC does not match the body;
- 400 for a missing Idempotency-Key, a body that is not JSON, or an unknown action;
  422 for a ticket without external_id; 404 for a `ref` it does not know;
- a repeated Idempotency-Key gets the first response again (with the header
  `Idempotent-Replayed: true`) and changes nothing.

Surface for tests:

    with WebhookReceiver(secret=b"...") as receiver:
        settings = WebhookSettings(url=receiver.hook_url)   # secret: receiver.secret
        receiver.tickets[ref]     # latest ticket fields, plus "description" (the first message)
        receiver.comments[ref]    # messages added as comments, in order
        receiver.files[ref]       # file descriptions received by "attach"
        receiver.links            # (ref, merged_ref) pairs
        receiver.updates          # (ref, ticket) per update applied

With `answer_ref=False` a create is answered 204 without a body, and the
ticket is kept under its external id, which the sink then uses as `ref`.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any

from tests.api_server import ApiAnswer, ApiRequest, ApiServer
from ticketflow.connectors.webhook_sink import verify_signature

ACTIONS = ("create", "comment", "attach", "update", "link")


class WebhookReceiver(ApiServer):
    """A webhook endpoint that verifies, dedupes and keeps tickets in memory."""

    def __init__(
        self,
        *,
        secret: bytes = b"webhook-test-secret",
        path: str = "/hooks/ticketflow",
        tolerance: float = 300.0,
        answer_ref: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.secret = secret
        self.path = path
        self.tolerance = tolerance
        self.answer_ref = answer_ref
        self.clock = clock
        self.tickets: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, list[dict[str, Any]]] = {}
        self.files: dict[str, list[dict[str, Any]]] = {}
        self.links: list[tuple[str, str]] = []
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.answers_by_key: dict[str, ApiAnswer] = {}
        self._numbers = itertools.count(1)
        self._lost_answers: list[int] = []
        self.route("POST", re.escape(path), self._receive)

    @property
    def hook_url(self) -> str:
        return f"{self.url}{self.path}"

    def lose_next_answer(self, *, status: int = 504) -> None:
        """Process the next POST, then respond with `status` as if the response got lost."""
        with self._lock:
            self._lost_answers.append(status)

    def handle(self, request: ApiRequest) -> ApiAnswer:
        answer = super().handle(request)
        with self._lock:
            if self._lost_answers and request.path == self.path:
                return ApiAnswer(self._lost_answers.pop(0), {"error": "gateway timeout"})
        return answer

    def _receive(self, request: ApiRequest) -> ApiAnswer:
        rejection = self._check_signature(request)
        if rejection:
            return rejection
        key = request.headers.get("idempotency-key", "")
        if not key:
            return ApiAnswer(400, {"error": "missing Idempotency-Key header"})
        if key in self.answers_by_key:
            first = self.answers_by_key[key]
            headers = {**first.headers, "Idempotent-Replayed": "true"}
            return ApiAnswer(first.status, first.body, headers)

        answer = self._apply(request)
        if answer.status < 300:
            self.answers_by_key[key] = answer
        return answer

    def _check_signature(self, request: ApiRequest) -> ApiAnswer | None:
        timestamp = request.headers.get("x-ticketflow-timestamp", "")
        signature = request.headers.get("x-ticketflow-signature", "")
        if not timestamp or not signature:
            return ApiAnswer(401, {"error": "missing signature"})
        now = self.clock()
        if not timestamp.isdigit() or abs(now - int(timestamp)) > self.tolerance:
            return ApiAnswer(401, {"error": "stale timestamp"})
        if not verify_signature(self.secret, timestamp, request.body, signature,
                                now=now, tolerance=self.tolerance):
            return ApiAnswer(401, {"error": "invalid signature"})
        return None

    def _apply(self, request: ApiRequest) -> ApiAnswer:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return ApiAnswer(400, {"error": "Content-Type must be application/json"})
        try:
            document = json.loads(request.body)
        except ValueError:
            return ApiAnswer(400, {"error": "the body is not JSON"})
        action = document.get("action") if isinstance(document, dict) else None
        if action not in ACTIONS:
            return ApiAnswer(400, {"error": f"unknown action {action!r}"})
        ticket = document.get("ticket")
        if not isinstance(ticket, dict) or not ticket.get("external_id"):
            return ApiAnswer(422, {"error": "ticket.external_id is required"})
        if action == "create":
            return self._create(ticket, document.get("message"))

        ref = str(document.get("ref") or "")
        if ref not in self.tickets:
            return ApiAnswer(404, {"error": f"unknown ticket {ref!r}"})
        if action == "comment":
            self.comments[ref].append(document["message"])
        elif action == "attach":
            self.files[ref].extend(document.get("files") or [])
        elif action == "update":
            self.tickets[ref].update(ticket)
            self.updates.append((ref, ticket))
        else:
            merged_ref = str(document.get("merged_ref") or "")
            if merged_ref not in self.tickets:
                return ApiAnswer(404, {"error": f"unknown ticket {merged_ref!r}"})
            self.links.append((ref, merged_ref))
        return ApiAnswer(200, {"ok": True})

    def _create(self, ticket: dict[str, Any], message: Any) -> ApiAnswer:
        ref = f"WH-{next(self._numbers)}" if self.answer_ref else str(ticket["external_id"])
        self.tickets[ref] = {**ticket, "description": message}
        self.comments[ref] = []
        self.files[ref] = []
        if self.answer_ref:
            return ApiAnswer(201, {"ref": ref})
        return ApiAnswer(204, None)
