"""A local Jira that serves REST API v2 the way the `jira` package calls it.

Start it, point `[sink.jira] url` at `api.url`, and read what the sink did
from its state:

    with JiraApi(user="bot@example.com", token="secret") as api:
        ...
        api.issues["SUP-1"].fields["summary"]
        api.issues["SUP-1"].comments[0]["body"]
        api.issues["SUP-1"].attachments[0].content
        api.links  # [{"type": "Duplicate", "inward": "SUP-2", "outward": "SUP-1"}]

Requests must carry basic authentication with `api.user` and `api.token`
(both may be changed while it runs), else the answer is 401. Errors use Jira's
body `{"errorMessages": [...], "errors": {field: text}}`:

- 400 for a create or edit without a project or summary, with an unknown
  project, issue type, priority, component or custom field, a label with a
  space, a summary over 255 characters or a text over 32,767, and for JQL
  outside the small subset below;
- 404 for an unknown issue (by key or id) and an unknown link type;
- 403 for an upload without the header `X-Atlassian-Token: no-check`.

Faults (429 with Retry-After, 5xx, …) are queued with `fail_next`. `stall_next`
makes the next matching requests take effect and then answer only after a delay,
like a Jira whose answer arrives after the client gave up.

Endpoints: serverInfo, field, issue (create, read, edit), bulk create
(`POST /issue/bulk`), issue comments (list in pages of at most
`comment_page_limit`, add), issue attachments (multipart upload),
issueLinkType, issueLink, and search: `GET /search` for `deployment="Server"`,
`GET /search/jql` for `deployment="Cloud"`. There `/search` returns 410 Gone,
so a client that uses the endpoint Jira Cloud deprecated fails.

Bulk create takes `{"issueUpdates": [{"fields": {...}}, ...]}` with at most
`MAX_BULK_ISSUES` elements (else 400) and checks each element as a single
create does. It answers `{"issues": [{"id", "key", "self"}, ...], "errors":
[{"status", "elementErrors", "failedElementNumber"}, ...]}`: 201 when at least
one issue was made, 400 when none was.

Searches return at most `search_page_limit` issues per page, whatever
`maxResults` asks for. `/search` pages by `startAt` and reports `total`;
`/search/jql` pages by `nextPageToken` and reports `isLast`.

The JQL subset: conditions joined by OR, optionally followed by
`ORDER BY created ASC|DESC`. A condition is `labels = "X"`,
`labels in ("X", "Y", ...)`, or `cf[N] ~ "X"` (or `customfield_N ~ "X"`).
Without ORDER BY this mock lists the newest issue first. Labels match exactly.
Custom fields are text fields, so `=` and `in` on them are a 400, as in Jira;
`~` matches when the field contains the text, ignoring case, a simplification
of Jira's word search.
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.api_server import ApiAnswer, ApiRequest, ApiServer

API = "/rest/api/2"
KEY_OR_ID = r"(?P<issue>[A-Za-z0-9_-]+)"
MAX_SUMMARY = 255
MAX_TEXT = 32_767
MAX_BULK_ISSUES = 50
DEFAULT_LINK_TYPES = (
    ("Duplicate", "is duplicated by", "duplicates"),
    ("Relates", "relates to", "relates to"),
    ("Blocks", "is blocked by", "blocks"),
)
_JQL_STRING = r'"(?:[^"\\]|\\.)*"'
_JQL_CONDITION = re.compile(
    r"\s*(?P<field>labels|cf\[\d+\]|customfield_\d+)\s*"
    rf"(?:(?P<op>=|~)\s*(?P<value>{_JQL_STRING})"
    rf"|(?P<in>in)\s*\((?P<values>\s*{_JQL_STRING}(?:\s*,\s*{_JQL_STRING})*)\s*\))\s*",
    re.IGNORECASE,
)
_JQL_OR = re.compile(r"OR\b", re.IGNORECASE)
_JQL_ORDER = re.compile(r"\s+ORDER\s+BY\s+created\s+(?P<order>ASC|DESC)\s*$", re.IGNORECASE)


@dataclass
class JiraAttachment:
    """One uploaded file."""

    id: str
    filename: str
    content: bytes
    mime_type: str


@dataclass
class JiraIssue:
    """One issue: its fields as Jira returns them, its comments and attachments."""

    id: str
    key: str
    fields: dict[str, Any]
    comments: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[JiraAttachment] = field(default_factory=list)


class JiraApi(ApiServer):
    """A Jira REST API v2 on 127.0.0.1 with issues, comments, attachments and links in memory."""

    def __init__(
        self,
        *,
        user: str = "ticketflow@example.com",
        token: str = "jira-api-token",
        projects: tuple[str, ...] = ("SUP", "OPS"),
        issue_types: tuple[str, ...] = ("Task", "Bug", "Incident"),
        priorities: tuple[str, ...] = ("Highest", "High", "Medium", "Low", "Lowest"),
        components: tuple[str, ...] = ("payments", "api", "billing"),
        custom_fields: dict[str, str] | None = None,
        link_types: tuple[tuple[str, str, str], ...] = DEFAULT_LINK_TYPES,
        deployment: str = "Server",
    ) -> None:
        """Set up an empty Jira; `custom_fields` maps ids (customfield_N) to names."""
        super().__init__()
        self.user = user
        self.token = token
        self.projects = projects
        self.issue_types = issue_types
        self.priorities = priorities
        self.components = components
        self.custom_fields = custom_fields or {
            "customfield_10050": "ticketflow ticket id",
            "customfield_10051": "Sender address",
        }
        self.link_types = link_types
        self.deployment = deployment
        self.comment_page_limit = 50
        self.search_page_limit = 100
        self.issues: dict[str, JiraIssue] = {}
        self.links: list[dict[str, str]] = []
        self._ids = itertools.count(10001)
        self._numbers: dict[str, itertools.count[int]] = defaultdict(lambda: itertools.count(1))
        self._stalls: list[tuple[str, re.Pattern[str], float, list[int]]] = []
        self._register_routes()

    def start(self) -> JiraApi:
        """Start serving on a free port of 127.0.0.1."""
        super().start()
        return self

    def __enter__(self) -> JiraApi:
        return self.start()

    def stall_next(self, method: str, path_pattern: str, seconds: float, *, times: int = 1) -> None:
        """Let the next `times` matching requests take effect; respond only after `seconds`."""
        with self._lock:
            self._stalls.append((method.upper(), re.compile(path_pattern), seconds, [times]))

    def handle(self, request: ApiRequest) -> ApiAnswer:
        """Handle the request as `ApiServer` does, then wait if a stall matches (unlocked)."""
        answer = super().handle(request)
        delay = self._take_stall(request)
        if delay:
            time.sleep(delay)
        return answer

    def issue_by_ref(self, ref: str) -> JiraIssue | None:
        """Return the issue with this key or id, or None."""
        if ref in self.issues:
            return self.issues[ref]
        return next((issue for issue in self.issues.values() if issue.id == ref), None)

    def comment_bodies(self, key: str) -> list[str]:
        """Return the bodies of an issue's comments, oldest first."""
        return [comment["body"] for comment in self.issues[key].comments]

    # Routes.

    def _register_routes(self) -> None:
        self.route("GET", f"{API}/serverInfo", self._server_info)
        for method, pattern, handler in (
            ("GET", f"{API}/field", self._fields),
            ("POST", f"{API}/issue", self._create_issue),
            ("POST", f"{API}/issue/bulk", self._create_issues),
            ("GET", f"{API}/issue/{KEY_OR_ID}", self._read_issue),
            ("PUT", f"{API}/issue/{KEY_OR_ID}", self._edit_issue),
            ("GET", f"{API}/issue/{KEY_OR_ID}/comment", self._list_comments),
            ("POST", f"{API}/issue/{KEY_OR_ID}/comment", self._add_comment),
            ("POST", f"{API}/issue/{KEY_OR_ID}/attachments", self._add_attachments),
            ("GET", f"{API}/issueLinkType", self._link_types),
            ("POST", f"{API}/issueLink", self._add_link),
            ("GET", f"{API}/search", self._search_v2),
            ("GET", f"{API}/search/jql", self._search_jql),
        ):
            self.route(method, pattern, self._authenticated(handler))

    def _authenticated(self, handler: Any) -> Any:
        def check(request: ApiRequest) -> ApiAnswer:
            expected = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
            if request.headers.get("authorization") != f"Basic {expected}":
                return ApiAnswer(
                    401,
                    _errors("Authentication failed: wrong user name or API token."),
                    {"WWW-Authenticate": 'Basic realm="protected-area"'},
                )
            return handler(request)

        return check

    def _server_info(self, request: ApiRequest) -> ApiAnswer:
        return ApiAnswer(
            200,
            {
                "baseUrl": self.url,
                "version": "1001.0.0" if self.deployment == "Cloud" else "9.12.0",
                "versionNumbers": [1001, 0, 0] if self.deployment == "Cloud" else [9, 12, 0],
                "deploymentType": self.deployment,
                "buildNumber": 100001,
                "serverTitle": "ticketflow test Jira",
            },
        )

    def _fields(self, request: ApiRequest) -> ApiAnswer:
        system = [
            "summary",
            "description",
            "labels",
            "priority",
            "issuetype",
            "project",
            "components",
            "attachment",
            "issuelinks",
            "comment",
        ]
        answer = [
            {"id": name, "name": name.title(), "custom": False, "clauseNames": [name]}
            for name in system
        ]
        for field_id, name in self.custom_fields.items():
            number = field_id.removeprefix("customfield_")
            answer.append(
                {
                    "id": field_id,
                    "name": name,
                    "custom": True,
                    "clauseNames": [f"cf[{number}]", name],
                }
            )
        return ApiAnswer(200, answer)

    def _create_issue(self, request: ApiRequest) -> ApiAnswer:
        return self._new_issue(_json_object(request).get("fields"))

    def _create_issues(self, request: ApiRequest) -> ApiAnswer:
        updates = _json_object(request).get("issueUpdates")
        if not isinstance(updates, list) or not updates:
            return ApiAnswer(400, _errors("The request has no 'issueUpdates' list."))
        if len(updates) > MAX_BULK_ISSUES:
            return ApiAnswer(
                400,
                _errors(
                    f"A bulk create takes at most {MAX_BULK_ISSUES} issues; "
                    f"the request has {len(updates)}."
                ),
            )

        issues = []
        errors = []
        for number, update in enumerate(updates):
            fields = update.get("fields") if isinstance(update, dict) else None
            answer = self._new_issue(fields)
            if answer.status == 201:
                issues.append(answer.body)
            else:
                errors.append(
                    {
                        "status": answer.status,
                        "elementErrors": answer.body,
                        "failedElementNumber": number,
                    }
                )
        return ApiAnswer(201 if issues else 400, {"issues": issues, "errors": errors})

    def _new_issue(self, fields: Any) -> ApiAnswer:
        """Create one issue: 201 with its id, key and self, or 400 with Jira's errors."""
        if not isinstance(fields, dict):
            return ApiAnswer(400, _errors("The request has no 'fields' object."))
        problems = self._field_problems(fields, creating=True)
        if problems:
            return ApiAnswer(400, _errors(errors=problems))

        project = self._project_key(fields["project"])
        issue_id = str(next(self._ids))
        key = f"{project}-{next(self._numbers[project])}"
        stored = dict(fields)
        stored["project"] = {"key": project, "name": project}
        stored["labels"] = list(fields.get("labels") or [])
        stored.setdefault("description", None)
        self.issues[key] = JiraIssue(issue_id, key, stored)
        return ApiAnswer(
            201, {"id": issue_id, "key": key, "self": f"{self.url}{API}/issue/{issue_id}"}
        )

    def _read_issue(self, request: ApiRequest) -> ApiAnswer:
        issue = self.issue_by_ref(request.match["issue"])
        if issue is None:
            return _missing_issue()
        return ApiAnswer(200, self._issue_json(issue, _requested_fields(request)))

    def _edit_issue(self, request: ApiRequest) -> ApiAnswer:
        issue = self.issue_by_ref(request.match["issue"])
        if issue is None:
            return _missing_issue()
        body = _json_object(request)
        fields = body.get("fields") or {}
        operations = body.get("update") or {}
        problems = self._field_problems(fields, creating=False)
        labels = list(issue.fields.get("labels") or [])
        for name, steps in operations.items():
            if name != "labels":
                problems[name] = f"This mock edits only labels through 'update', not {name!r}."
                continue
            labels = _apply_label_steps(labels, steps, problems)
        if problems:
            return ApiAnswer(400, _errors(errors=problems))
        issue.fields.update(fields)
        issue.fields["labels"] = labels
        return ApiAnswer(204)

    def _list_comments(self, request: ApiRequest) -> ApiAnswer:
        issue = self.issue_by_ref(request.match["issue"])
        if issue is None:
            return _missing_issue()
        start = int(_first(request, "startAt") or 0)
        requested = int(_first(request, "maxResults") or self.comment_page_limit)
        size = min(requested, self.comment_page_limit)
        page = issue.comments[start : start + size]
        return ApiAnswer(
            200,
            {"startAt": start, "maxResults": size, "total": len(issue.comments), "comments": page},
        )

    def _add_comment(self, request: ApiRequest) -> ApiAnswer:
        issue = self.issue_by_ref(request.match["issue"])
        if issue is None:
            return _missing_issue()
        body = _json_object(request).get("body")
        if not isinstance(body, str) or not body.strip():
            return ApiAnswer(400, _errors(errors={"comment": "A comment needs a body."}))
        if _utf16_length(body) > MAX_TEXT:
            return ApiAnswer(
                400,
                _errors(errors={"comment": f"The comment is longer than {MAX_TEXT} characters."}),
            )
        comment_id = str(next(self._ids))
        comment = {
            "self": f"{self.url}{API}/issue/{issue.id}/comment/{comment_id}",
            "id": comment_id,
            "author": {"name": self.user, "displayName": "ticketflow"},
            "body": body,
            "created": "2026-04-30T12:00:00.000+0000",
            "updated": "2026-04-30T12:00:00.000+0000",
        }
        issue.comments.append(comment)
        return ApiAnswer(201, comment)

    def _add_attachments(self, request: ApiRequest) -> ApiAnswer:
        issue = self.issue_by_ref(request.match["issue"])
        if issue is None:
            return _missing_issue()
        if request.headers.get("x-atlassian-token", "").lower() != "no-check":
            return ApiAnswer(
                403, _errors("XSRF check failed: send the header X-Atlassian-Token: no-check.")
            )
        parts = _multipart_files(request.headers.get("content-type", ""), request.body)
        if not parts:
            return ApiAnswer(400, _errors("The request has no multipart part named 'file'."))
        answer = []
        for filename, mime_type, content in parts:
            attachment = JiraAttachment(str(next(self._ids)), filename, content, mime_type)
            issue.attachments.append(attachment)
            answer.append(self._attachment_json(attachment))
        return ApiAnswer(200, answer)

    def _link_types(self, request: ApiRequest) -> ApiAnswer:
        return ApiAnswer(
            200,
            {
                "issueLinkTypes": [
                    {
                        "id": str(10000 + number),
                        "name": name,
                        "inward": inward,
                        "outward": outward,
                        "self": f"{self.url}{API}/issueLinkType/{10000 + number}",
                    }
                    for number, (name, inward, outward) in enumerate(self.link_types)
                ]
            },
        )

    def _add_link(self, request: ApiRequest) -> ApiAnswer:
        body = _json_object(request)
        type_name = (body.get("type") or {}).get("name")
        if type_name not in {name for name, _, _ in self.link_types}:
            return ApiAnswer(404, _errors(f"There is no issue link type named '{type_name}'."))
        inward = self.issue_by_ref((body.get("inwardIssue") or {}).get("key", ""))
        outward = self.issue_by_ref((body.get("outwardIssue") or {}).get("key", ""))
        if inward is None or outward is None:
            return _missing_issue()
        link = {"type": type_name, "inward": inward.key, "outward": outward.key}
        # This mock keeps one link per type and pair of issues.
        if link not in self.links:
            self.links.append(link)
        return ApiAnswer(201)

    def _search_v2(self, request: ApiRequest) -> ApiAnswer:
        if self.deployment == "Cloud":
            return ApiAnswer(410, _errors("This endpoint was removed; use /rest/api/2/search/jql."))
        found = self._run_jql(request)
        if isinstance(found, ApiAnswer):
            return found
        start = int(_first(request, "startAt") or 0)
        size = min(int(_first(request, "maxResults") or 50), self.search_page_limit)
        fields = _requested_fields(request)
        return ApiAnswer(
            200,
            {
                "expand": "schema,names",
                "startAt": start,
                "maxResults": size,
                "total": len(found),
                "issues": [
                    self._issue_json(issue, fields) for issue in found[start : start + size]
                ],
            },
        )

    def _search_jql(self, request: ApiRequest) -> ApiAnswer:
        if self.deployment != "Cloud":
            return ApiAnswer(
                404,
                _errors("This server has no /rest/api/2/search/jql; it serves /rest/api/2/search."),
            )
        found = self._run_jql(request)
        if isinstance(found, ApiAnswer):
            return found
        token = _first(request, "nextPageToken")
        start = _page_start(token) if token else 0
        if start is None:
            return ApiAnswer(400, _errors(f"The nextPageToken {token!r} is not valid."))
        size = min(int(_first(request, "maxResults") or 50), self.search_page_limit)
        fields = _requested_fields(request)
        end = start + size
        answer: dict[str, Any] = {
            "issues": [self._issue_json(issue, fields) for issue in found[start:end]],
            "isLast": len(found) <= end,
        }
        if end < len(found):
            answer["nextPageToken"] = _page_token(end)
        return ApiAnswer(200, answer)

    # Helpers.

    def _run_jql(self, request: ApiRequest) -> list[JiraIssue] | ApiAnswer:
        jql = _first(request, "jql") or ""
        parsed = _parse_jql(jql)
        if parsed is None:
            return ApiAnswer(
                400, _errors(f"Error in the JQL query: this mock does not understand {jql!r}.")
            )
        conditions, order = parsed
        matchers = []
        for condition in conditions:
            matcher = self._condition_matcher(condition)
            if isinstance(matcher, ApiAnswer):
                return matcher
            matchers.append(matcher)

        found = [
            issue for issue in self.issues.values() if any(match(issue) for match in matchers)
        ]
        found.sort(key=lambda issue: int(issue.id), reverse=order.upper() == "DESC")
        return found

    def _condition_matcher(
        self, condition: re.Match[str]
    ) -> Callable[[JiraIssue], bool] | ApiAnswer:
        """Return a test of one JQL condition on an issue, or the 400 Jira gives for it."""
        name = condition["field"]
        field_name = name.lower()
        if field_name != "labels":
            number = re.sub(r"\D", "", field_name)
            field_name = f"customfield_{number}"
            if field_name not in self.custom_fields:
                return ApiAnswer(400, _errors(f"Field '{name}' does not exist."))
        operator = "in" if condition["in"] else condition["op"]

        if field_name == "labels":
            if operator == "~":
                return ApiAnswer(
                    400, _errors("The operator '~' is not supported by the 'labels' field.")
                )
            literals = re.findall(_JQL_STRING, condition["values"] or condition["value"])
            expected_labels = {_jql_value(literal) for literal in literals}
            return lambda issue: not expected_labels.isdisjoint(issue.fields.get("labels") or [])

        if operator != "~":
            return ApiAnswer(
                400, _errors(f"The operator '{operator}' is not supported by the '{name}' field.")
            )
        phrase = _jql_value(condition["value"]).strip('"').lower()

        def contains(issue: JiraIssue) -> bool:
            stored = issue.fields.get(field_name)
            return isinstance(stored, str) and phrase in stored.lower()

        return contains

    def _field_problems(self, fields: dict[str, Any], *, creating: bool) -> dict[str, str]:
        problems: dict[str, str] = {}
        if creating:
            if "project" not in fields:
                problems["project"] = "A project is required."
            elif self._project_key(fields["project"]) not in self.projects:
                problems["project"] = f"There is no project {fields['project']!r}."
            issue_type = (fields.get("issuetype") or {}).get("name")
            if issue_type not in self.issue_types:
                problems["issuetype"] = f"The issue type {issue_type!r} is not valid."
        if creating or "summary" in fields:
            summary = fields.get("summary")
            if not isinstance(summary, str) or not summary.strip():
                problems["summary"] = "A summary is required."
            elif len(summary) > MAX_SUMMARY or "\n" in summary:
                problems["summary"] = (
                    f"The summary must be one line of at most {MAX_SUMMARY} characters."
                )
        description = fields.get("description")
        if isinstance(description, str) and _utf16_length(description) > MAX_TEXT:
            problems["description"] = f"The description is longer than {MAX_TEXT} characters."
        if "priority" in fields and (fields["priority"] or {}).get("name") not in self.priorities:
            problems["priority"] = f"The priority {fields['priority']!r} is not valid."
        for component in fields.get("components") or []:
            if component.get("name") not in self.components:
                problems["components"] = f"There is no component {component.get('name')!r}."
        for label in fields.get("labels") or []:
            if not isinstance(label, str) or not label or " " in label:
                problems["labels"] = f"The label {label!r} is empty or has a space."
        for name in fields:
            if name.startswith("customfield_") and name not in self.custom_fields:
                problems[name] = f"The field {name!r} is unknown or not on the screen."
        return problems

    def _project_key(self, project: Any) -> str:
        return str((project or {}).get("key") or "") if isinstance(project, dict) else ""

    def _issue_json(self, issue: JiraIssue, wanted: set[str] | None) -> dict[str, Any]:
        fields = dict(issue.fields)
        fields["attachment"] = [self._attachment_json(item) for item in issue.attachments]
        fields["issuelinks"] = self._links_of(issue)
        fields["comment"] = {
            "comments": issue.comments,
            "total": len(issue.comments),
            "startAt": 0,
            "maxResults": len(issue.comments),
        }
        if wanted is not None:
            fields = {name: value for name, value in fields.items() if name in wanted}
        return {
            "id": issue.id,
            "key": issue.key,
            "self": f"{self.url}{API}/issue/{issue.id}",
            "fields": fields,
        }

    def _attachment_json(self, attachment: JiraAttachment) -> dict[str, Any]:
        return {
            "self": f"{self.url}{API}/attachment/{attachment.id}",
            "id": attachment.id,
            "filename": attachment.filename,
            "size": len(attachment.content),
            "mimeType": attachment.mime_type,
            "content": f"{self.url}/secure/attachment/{attachment.id}/{attachment.filename}",
            "created": "2026-04-30T12:00:00.000+0000",
        }

    def _links_of(self, issue: JiraIssue) -> list[dict[str, Any]]:
        names = {name: (inward, outward) for name, inward, outward in self.link_types}
        answer = []
        for number, link in enumerate(self.links):
            inward, outward = names.get(link["type"], ("", ""))
            kind = {"name": link["type"], "inward": inward, "outward": outward}
            if link["outward"] == issue.key:
                answer.append(
                    {"id": str(number), "type": kind, "inwardIssue": {"key": link["inward"]}}
                )
            elif link["inward"] == issue.key:
                answer.append(
                    {"id": str(number), "type": kind, "outwardIssue": {"key": link["outward"]}}
                )
        return answer

    def _take_stall(self, request: ApiRequest) -> float:
        with self._lock:
            for stall in self._stalls:
                method, pattern, seconds, remaining = stall
                if method == request.method and pattern.fullmatch(request.path):
                    remaining[0] -= 1
                    if remaining[0] <= 0:
                        self._stalls.remove(stall)
                    return seconds
        return 0.0


def _parse_jql(jql: str) -> tuple[list[re.Match[str]], str] | None:
    """Split JQL of the subset into its OR'ed conditions and the order; None when outside it."""
    ordering = _JQL_ORDER.search(jql)
    body = jql[: ordering.start()] if ordering else jql
    conditions = []
    position = 0
    while True:
        condition = _JQL_CONDITION.match(body, position)
        if condition is None:
            return None
        conditions.append(condition)
        position = condition.end()
        if position == len(body):
            return conditions, ordering["order"] if ordering else "DESC"
        separator = _JQL_OR.match(body, position)
        if separator is None:
            return None
        position = separator.end()


def _page_token(start: int) -> str:
    return base64.urlsafe_b64encode(f"start={start}".encode()).decode()


def _page_start(token: str) -> int | None:
    """Return the offset a nextPageToken stands for, or None when the token is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        return None
    found = re.fullmatch(r"start=(\d+)", text)
    return int(found.group(1)) if found else None


def _jql_value(literal: str) -> str:
    """Return the text of a quoted JQL string, its backslash escapes undone."""
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def _errors(*messages: str, errors: dict[str, str] | None = None) -> dict[str, Any]:
    return {"errorMessages": list(messages), "errors": errors or {}}


def _missing_issue() -> ApiAnswer:
    return ApiAnswer(404, _errors("The issue does not exist, or you may not see it."))


def _json_object(request: ApiRequest) -> dict[str, Any]:
    try:
        body = request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _first(request: ApiRequest, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _requested_fields(request: ApiRequest) -> set[str] | None:
    """Return the names in `fields` (repeated or comma-separated), or None for all fields."""
    names = {name.strip() for value in request.query.get("fields", []) for name in value.split(",")}
    names.discard("")
    if not names or "*all" in names:
        return None
    return names


def _apply_label_steps(labels: list[str], steps: Any, problems: dict[str, str]) -> list[str]:
    for step in steps if isinstance(steps, list) else []:
        if "add" in step and step["add"] not in labels:
            if " " in str(step["add"]):
                problems["labels"] = f"The label {step['add']!r} has a space."
            labels.append(step["add"])
        elif "remove" in step:
            labels = [label for label in labels if label != step["remove"]]
        elif "set" in step:
            labels = list(step["set"])
    return labels


def _multipart_files(content_type: str, body: bytes) -> list[tuple[str, str, bytes]]:
    """Return (filename, content type, bytes) of each part named "file" in a multipart body."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or found is None:
        return []
    delimiter = b"--" + found.group(1).encode()
    files = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = head.decode("utf-8", errors="replace")
        name = re.search(r'\bname="([^"]*)"', headers)
        filename = re.search(r'filename="([^"]*)"', headers)
        mime_type = re.search(r"(?im)^content-type:\s*(\S+)", headers)
        if name is None or name.group(1) != "file" or filename is None:
            continue
        files.append(
            (
                filename.group(1),
                mime_type.group(1) if mime_type else "application/octet-stream",
                content.removesuffix(b"\r\n"),
            )
        )
    return files


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2
