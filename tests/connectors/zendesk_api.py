"""A local Zendesk Support API v2 that follows the documented requests and responses.

It serves what `ZendeskSink` uses, on a real HTTP server on 127.0.0.1:

- POST /api/v2/tickets.json, GET /api/v2/tickets.json[?external_id=ID],
  GET and PUT /api/v2/tickets/{id}.json (comments, subject, priority, tags,
  `additional_tags`, `remove_tags`, status, group),
- GET /api/v2/tickets/{id}/comments.json (offset pages: `page`, `per_page`, `next_page`),
- POST /api/v2/uploads.json?filename=NAME (raw bytes in, a token out).

Responses follow the API: 201 with the created record, 401 `{"error": "Couldn't
authenticate you"}` for wrong credentials, 404 `{"error": "RecordNotFound"}`
for an unknown ticket, 422 `{"error": "RecordInvalid", "description",
"details"}` for a blank description, a requester without name or address, an
unknown group or priority, an unknown upload token, or any change to a closed
ticket, and 400 for a body that is not the expected JSON.

Surface for tests:

    with ZendeskApi(email="agent@example.com", token="zd-token") as api:
        settings = ZendeskSettings(url=api.url, email=api.email)   # token: api.token
        ...
        api.tickets[id]      # the ticket as GET /api/v2/tickets/{id}.json returns it
        api.comments[id]     # its comments, oldest first, description included
        api.users[email]     # users created as requesters
        api.files[att_id]    # the bytes of each attachment
        api.groups           # group ids that exist (add to it for group_id tests)
        api.add_agent_comment(id, "text")   # a comment written in Zendesk itself

`fail_next` (from `ApiServer`) answers a request with an error instead of
running it; `lose_next_answer` runs the request and then responds with an
error, as when a proxy times out after Zendesk has done the work.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from typing import Any

from tests.api_server import ApiAnswer, ApiRequest, ApiServer, Route

PRIORITIES = ("urgent", "high", "normal", "low")
_TICKET = r"/api/v2/tickets/(?P<id>[0-9]+)\.json"
_COMMENTS = r"/api/v2/tickets/(?P<id>[0-9]+)/comments\.json"
_MAX_PER_PAGE = 100


class ZendeskApi(ApiServer):
    """A Zendesk Support account with tickets, users, comments and uploads in memory."""

    def __init__(
        self,
        *,
        email: str = "agent@example.com",
        token: str = "zendesk-test-token",
        groups: tuple[int, ...] = (360001,),
    ) -> None:
        super().__init__()
        self.email = email
        self.token = token
        self.tickets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.files: dict[int, bytes] = {}
        self.groups: set[int] = set(groups)
        self.pending_uploads: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lost_answers: list[tuple[str, re.Pattern[str], int]] = []
        self.agent_id = next(self._ids)
        self._add_routes()

    def add_agent_comment(self, ticket_id: int, body: str, *, public: bool = True) -> None:
        """Append a comment as an agent writing in Zendesk would, without an HTTP request."""
        with self._lock:
            self.comments[ticket_id].append(self._new_comment({"body": body, "public": public},
                                                              default_public=True))

    def lose_next_answer(self, method: str, path_pattern: str, *, status: int = 504) -> None:
        """Run the next matching request, then respond with `status` as if the response got lost."""
        with self._lock:
            self._lost_answers.append((method.upper(), re.compile(path_pattern), status))

    def handle(self, request: ApiRequest) -> ApiAnswer:
        answer = super().handle(request)
        with self._lock:
            for lost in self._lost_answers:
                method, pattern, status = lost
                if method == request.method and pattern.fullmatch(request.path):
                    self._lost_answers.remove(lost)
                    return ApiAnswer(status, b"<html>gateway timeout</html>",
                                     {"Content-Type": "text/html"})
        return answer

    def _add_routes(self) -> None:
        routes: list[tuple[str, str, Route]] = [
            ("POST", r"/api/v2/tickets\.json", self._create_ticket),
            ("GET", r"/api/v2/tickets\.json", self._list_tickets),
            ("GET", _TICKET, self._show_ticket),
            ("PUT", _TICKET, self._update_ticket),
            ("GET", _COMMENTS, self._list_comments),
            ("POST", r"/api/v2/uploads\.json", self._upload),
        ]
        for method, pattern, handler in routes:
            self.route(method, pattern, self._authenticated(handler))

    def _authenticated(self, handler: Route) -> Route:
        credentials = f"{self.email}/token:{self.token}".encode()
        expected = "Basic " + base64.b64encode(credentials).decode()

        def checked(request: ApiRequest) -> ApiAnswer:
            if request.headers.get("authorization") != expected:
                return ApiAnswer(401, {"error": "Couldn't authenticate you"})
            return handler(request)

        return checked

    # Tickets

    def _create_ticket(self, request: ApiRequest) -> ApiAnswer:
        fields, problem = _ticket_fields(request)
        if problem:
            return problem
        invalid = self._validate_new_ticket(fields)
        if invalid:
            return invalid

        ticket_id = next(self._ids)
        requester = self._requester(fields["requester"])
        comment = self._new_comment(fields["comment"], default_public=True)
        ticket = {
            "id": ticket_id,
            "url": f"{self.url}/api/v2/tickets/{ticket_id}.json",
            "external_id": fields.get("external_id"),
            "subject": fields.get("subject") or "",
            "raw_subject": fields.get("subject") or "",
            "description": comment["plain_body"],
            "priority": fields.get("priority"),
            "status": "new",
            "requester_id": requester["id"],
            "submitter_id": self.agent_id,
            "group_id": fields.get("group_id"),
            "tags": _normalized_tags(fields.get("tags") or []),
            "is_public": comment["public"],
        }
        self.tickets[ticket_id] = ticket
        self.comments[ticket_id] = [comment]
        return ApiAnswer(201, {"ticket": ticket}, {"Location": ticket["url"]})

    def _validate_new_ticket(self, fields: dict[str, Any]) -> ApiAnswer | None:
        comment = fields.get("comment")
        if not isinstance(comment, dict) or not (comment.get("body") or comment.get("html_body")):
            return _record_invalid("description", "Description: cannot be blank", "BlankValue")
        requester = fields.get("requester")
        if not isinstance(requester, dict) or "@" not in str(requester.get("email") or ""):
            return _record_invalid("requester", "Requester: Email is invalid", "InvalidValue")
        if not str(requester.get("name") or "").strip():
            return _record_invalid(
                "requester", "Requester: Name: is too short (minimum one character)", "InvalidValue"
            )
        return self._validate_changes(fields) or self._validate_uploads(comment)

    def _validate_changes(self, fields: dict[str, Any]) -> ApiAnswer | None:
        priority = fields.get("priority")
        if priority is not None and priority not in PRIORITIES:
            return _record_invalid("priority", f"Priority: {priority} is not a valid value",
                                   "InvalidValue")
        group_id = fields.get("group_id")
        if group_id is not None and group_id not in self.groups:
            return _record_invalid("group_id", "Group: is invalid", "InvalidValue")
        for key in ("tags", "additional_tags", "remove_tags"):
            tags = fields.get(key)
            if tags is not None and not (isinstance(tags, list)
                                         and all(isinstance(tag, str) for tag in tags)):
                return ApiAnswer(400, {"error": "InvalidParameter",
                                       "description": f"{key} must be a list of strings"})
        return None

    def _validate_uploads(self, comment: dict[str, Any]) -> ApiAnswer | None:
        for token in comment.get("uploads") or []:
            if token not in self.pending_uploads:
                return _record_invalid("uploads", f"Uploads: token {token} is invalid",
                                       "InvalidValue")
        return None

    def _list_tickets(self, request: ApiRequest) -> ApiAnswer:
        tickets = list(self.tickets.values())
        external_ids = request.query.get("external_id")
        if external_ids:
            tickets = [ticket for ticket in tickets if ticket["external_id"] == external_ids[0]]
        return ApiAnswer(200, {"tickets": tickets, "next_page": None, "previous_page": None,
                               "count": len(tickets)})

    def _show_ticket(self, request: ApiRequest) -> ApiAnswer:
        ticket = self.tickets.get(int(request.match["id"]))
        if ticket is None:
            return _not_found()
        return ApiAnswer(200, {"ticket": ticket})

    def _update_ticket(self, request: ApiRequest) -> ApiAnswer:
        ticket = self.tickets.get(int(request.match["id"]))
        if ticket is None:
            return _not_found()
        fields, problem = _ticket_fields(request)
        if problem:
            return problem
        if ticket["status"] == "closed":
            return _record_invalid("status", "Status: closed prevents ticket update",
                                   "ClosedTicket")
        comment = fields.get("comment")
        if comment is not None and not (isinstance(comment, dict)
                                        and (comment.get("body") or comment.get("html_body"))):
            return _record_invalid("comment", "Comment: cannot be blank", "BlankValue")
        invalid = self._validate_changes(fields) or self._validate_uploads(comment or {})
        if invalid:
            return invalid

        self._apply_changes(ticket, fields)
        audit = {"ticket_id": ticket["id"], "events": []}
        if comment is not None:
            added = self._new_comment(comment, default_public=True)
            self.comments[ticket["id"]].append(added)
            audit["events"].append({"type": "Comment", "id": added["id"]})
        return ApiAnswer(200, {"ticket": ticket, "audit": audit})

    def _apply_changes(self, ticket: dict[str, Any], fields: dict[str, Any]) -> None:
        for key in ("subject", "priority", "status", "group_id", "external_id"):
            if key in fields:
                ticket[key] = fields[key]
        if "subject" in fields:
            ticket["raw_subject"] = fields["subject"]
        if "tags" in fields:
            ticket["tags"] = _normalized_tags(fields["tags"])
        added = _normalized_tags(fields.get("additional_tags") or [])
        removed = set(_normalized_tags(fields.get("remove_tags") or []))
        combined = _normalized_tags(ticket["tags"] + added)
        ticket["tags"] = [tag for tag in combined if tag not in removed]

    # Comments and uploads

    def _list_comments(self, request: ApiRequest) -> ApiAnswer:
        ticket_id = int(request.match["id"])
        if ticket_id not in self.tickets:
            return _not_found()
        per_page = min(int(request.query.get("per_page", ["100"])[0]), _MAX_PER_PAGE)
        page = int(request.query.get("page", ["1"])[0])
        comments = self.comments[ticket_id]
        page_comments = comments[(page - 1) * per_page: page * per_page]
        more = page * per_page < len(comments)
        base = f"{self.url}/api/v2/tickets/{ticket_id}/comments.json"
        return ApiAnswer(200, {
            "comments": page_comments,
            "next_page": f"{base}?page={page + 1}&per_page={per_page}" if more else None,
            "previous_page": f"{base}?page={page - 1}&per_page={per_page}" if page > 1 else None,
            "count": len(comments),
        })

    def _upload(self, request: ApiRequest) -> ApiAnswer:
        filename = (request.query.get("filename") or [""])[0]
        if not filename:
            return ApiAnswer(400, {"error": "InvalidParameter",
                                   "description": "filename is required"})
        if not request.body:
            return _record_invalid("file", "Uploaded file is empty", "BlankValue")
        attachment_id = next(self._ids)
        token = f"tok{attachment_id:06d}"
        attachment = {
            "id": attachment_id,
            "file_name": filename,
            "content_type": request.headers.get("content-type", "application/binary"),
            "size": len(request.body),
            "content_url": f"{self.url}/attachments/token/{token}/?name={filename}",
        }
        self.files[attachment_id] = request.body
        self.pending_uploads[token] = attachment
        return ApiAnswer(201, {"upload": {"token": token, "attachment": attachment,
                                          "attachments": [attachment]}})

    def _new_comment(self, fields: dict[str, Any], *, default_public: bool) -> dict[str, Any]:
        body = fields.get("body") or ""
        html_body = fields.get("html_body") or ""
        # Zendesk shows html_body when given and derives the plain text from it.
        plain = _strip_tags(html_body) if html_body else body
        attachments = [self.pending_uploads.pop(token) for token in fields.get("uploads") or []]
        return {
            "id": next(self._ids),
            "type": "Comment",
            "author_id": self.agent_id,
            "body": plain,
            "html_body": html_body or f"<p>{body}</p>",
            "plain_body": plain,
            "public": bool(fields.get("public", default_public)),
            "attachments": attachments,
        }

    def _requester(self, requester: dict[str, Any]) -> dict[str, Any]:
        email = str(requester["email"]).lower()
        if email not in self.users:
            self.users[email] = {"id": next(self._ids), "email": email,
                                 "name": requester["name"], "role": "end-user"}
        return self.users[email]


def _ticket_fields(request: ApiRequest) -> tuple[dict[str, Any], ApiAnswer | None]:
    if not request.headers.get("content-type", "").startswith("application/json"):
        return {}, ApiAnswer(400, {"error": "InvalidContentType",
                                   "description": "Content-Type must be application/json"})
    try:
        document = json.loads(request.body or b"null")
    except ValueError:
        return {}, ApiAnswer(400, {"error": "InvalidJSON", "description": "the body is not JSON"})
    if not isinstance(document, dict) or not isinstance(document.get("ticket"), dict):
        return {}, ApiAnswer(400, {"error": "ParameterMissing",
                                   "description": "Parameter ticket is required"})
    return document["ticket"], None


def _record_invalid(field: str, description: str, error: str) -> ApiAnswer:
    return ApiAnswer(422, {
        "error": "RecordInvalid",
        "description": "Record validation errors",
        "details": {field: [{"description": description, "error": error}]},
    })


def _not_found() -> ApiAnswer:
    return ApiAnswer(404, {"error": "RecordNotFound", "description": "Not found"})


def _normalized_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tag.strip().lower() for tag in tags if tag.strip()))


def _strip_tags(markup: str) -> str:
    return re.sub(r"<[^>]+>", "", markup)
