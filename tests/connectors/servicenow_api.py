"""A local ServiceNow instance for sink tests: the Table API and the Attachment API.

    with ServiceNowApi(user="ticketflow", password="secret") as api:
        sink = ServiceNowSink(settings_with(url=api.url, user="ticketflow"))
        ...
        incident = api.incident_by_number("INC0010001")
        api.work_notes(incident["sys_id"])   # texts of its work notes, oldest first

Requests need basic auth with the `user` and `password` given to the constructor,
and other credentials get a 401 response. Responses take the documented shapes:
`{"result": ...}` on success and `{"error": {"message", "detail"}, "status":
"failure"}` with 400, 401, 403, 404 or 429. Incidents are numbered INC0010001,
INC0010002, … and get 32-character hex sys_ids. A `work_notes` or `comments`
value written to an incident becomes a row of `journal` (the sys_journal_field
table), which is how an instance stores journal fields.

State the tests read:

- `incidents`: sys_id -> the incident's fields, all strings as the Table API returns them;
- `journal`: the sys_journal_field rows (element_id, element, name, value, …), oldest first;
- `attachments`: sys_id -> `StoredAttachment` (metadata and bytes).

Faults and limits:

- `fail_next` (from `ApiServer`) answers the next matching requests with any status;
- `deny(method, table)` makes an ACL reject `method` on `table` with 403;
- `limit_rate(allowed, retry_after)` acts like a rate limit rule: after `allowed`
  more requests, every request gets 429 with Retry-After until `reset_rate_limit()`;
- `mandatory_fields` (constructor) are the incident fields an insert must set,
  as a data policy would require them; a missing one gets a 400 response.

This mock is stricter than an instance in one way: an unknown field in a request
body, or an impact or urgency outside 1 to 3, gets a 400 response, where an
instance stores or ignores it. A misspelled field thus fails a test instead of
vanishing. Like an instance with the default
`glide.invalid_query.returns_no_rows=false`, a `sysparm_query` condition on an
unknown field is ignored, not rejected.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.api_server import ApiAnswer, ApiRequest, ApiServer, Route

TABLE = "/api/now/table"
ATTACHMENT = "/api/now/attachment"
SYS_ID = r"(?P<sys_id>[0-9a-f]{32})"

# Fields a client may write on an incident; writing any other field gets a 400 response.
WRITABLE_INCIDENT_FIELDS = frozenset({
    "short_description", "description", "correlation_id", "correlation_display", "category",
    "subcategory", "impact", "urgency", "assignment_group", "assigned_to", "contact_type",
    "caller_id", "parent_incident", "state", "work_notes", "comments", "cmdb_ci",
})
JOURNAL_FIELDS = ("work_notes", "comments")
CHOICE_1_TO_3 = ("impact", "urgency")
# Fields returned as {"link", "value"} objects, as the Table API returns reference fields.
REFERENCE_FIELDS = {"assignment_group": "sys_user_group", "caller_id": "sys_user",
                    "parent_incident": "incident", "assigned_to": "sys_user"}


@dataclass
class StoredAttachment:
    """One sys_attachment record and the uploaded bytes."""

    sys_id: str
    table_name: str
    table_sys_id: str
    file_name: str
    content_type: str
    content: bytes
    created_on: str


@dataclass
class _RateLimitRule:
    remaining: int
    retry_after: int


class ServiceNowApi(ApiServer):
    """A ServiceNow instance limited to what the ticketflow sink uses; see the module docstring."""

    def __init__(
        self,
        user: str = "ticketflow",
        password: str = "secret",
        *,
        mandatory_fields: tuple[str, ...] = ("short_description",),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__()
        self.user = user
        self.password = password
        self.mandatory_fields = mandatory_fields
        self.incidents: dict[str, dict[str, Any]] = {}
        self.journal: list[dict[str, str]] = []
        self.attachments: dict[str, StoredAttachment] = {}
        self._clock = clock
        self._numbers = itertools.count(10001)
        self._denied: set[tuple[str, str]] = set()
        self._rate_limit: _RateLimitRule | None = None

        self.route("GET", f"{TABLE}/incident", self._checked(self._list_incidents, "incident"))
        self.route("POST", f"{TABLE}/incident", self._checked(self._insert_incident, "incident"))
        self.route("GET", f"{TABLE}/incident/{SYS_ID}",
                   self._checked(self._get_incident, "incident"))
        for method in ("PATCH", "PUT"):
            self.route(method, f"{TABLE}/incident/{SYS_ID}",
                       self._checked(self._update_incident, "incident"))
        self.route("GET", f"{TABLE}/sys_journal_field",
                   self._checked(self._list_journal, "sys_journal_field"))
        self.route("POST", f"{ATTACHMENT}/file", self._checked(self._upload, "sys_attachment"))
        self.route("GET", ATTACHMENT, self._checked(self._list_attachments, "sys_attachment"))
        self.route("GET", f"{ATTACHMENT}/{SYS_ID}/file",
                   self._checked(self._download, "sys_attachment"))

    # -- what tests set up and read -------------------------------------------------

    def deny(self, method: str, table: str) -> None:
        """Make an ACL reject `method` on `table` (incident, sys_journal_field, sys_attachment)."""
        self._denied.add((method.upper(), table))

    def limit_rate(self, allowed: int, retry_after: int = 30) -> None:
        """Respond with 429 and Retry-After `retry_after` after `allowed` more requests."""
        with self._lock:
            self._rate_limit = _RateLimitRule(allowed, retry_after)

    def reset_rate_limit(self) -> None:
        """Lift the rate limit, as resetting the rule's counts on an instance does."""
        with self._lock:
            self._rate_limit = None

    def incident_by_number(self, number: str) -> dict[str, Any]:
        """Return the incident with this number (INC0010001, …); KeyError if there is none."""
        for incident in self.incidents.values():
            if incident["number"] == number:
                return incident
        raise KeyError(number)

    def journal_entries(self, sys_id: str, element: str = "work_notes") -> list[dict[str, str]]:
        """Return the journal rows of one incident's `element`, oldest first."""
        return [row for row in self.journal
                if row["element_id"] == sys_id and row["element"] == element]

    def work_notes(self, sys_id: str) -> list[str]:
        """Return the texts of one incident's work notes, oldest first."""
        return [row["value"] for row in self.journal_entries(sys_id)]

    def attachments_of(self, sys_id: str) -> list[StoredAttachment]:
        """Return the files attached to one incident, in upload order."""
        return [item for item in self.attachments.values() if item.table_sys_id == sys_id]

    # -- checks every route shares ------------------------------------------------

    def _checked(self, route: Route, table: str) -> Route:
        def respond(request: ApiRequest) -> ApiAnswer:
            if not self._authenticated(request):
                return _error(401, "User Not Authenticated", "Required to provide Auth information")
            limited = self._rate_limited()
            if limited is not None:
                return limited
            if (request.method, table) in self._denied:
                operation = _ACL_OPERATIONS[request.method]
                return _error(403, "Operation Failed",
                              f"ACL Exception {operation} Failed due to security constraints")
            return route(request)

        return respond

    def _authenticated(self, request: ApiRequest) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == self.user and password == self.password

    def _rate_limited(self) -> ApiAnswer | None:
        rule = self._rate_limit
        if rule is None:
            return None
        if rule.remaining > 0:
            rule.remaining -= 1
            return None
        response = _error(429, "Rate limit exceeded",
                          "Too many requests for the rate limit rule 'ticketflow integration'")
        response.headers.update({"Retry-After": str(rule.retry_after), "X-RateLimit-Limit": "1000",
                                 "X-RateLimit-Rule": "b1f0c7e2a3d4e5f60718293a4b5c6d7e"})
        return response

    # -- Table API: incident --------------------------------------------------------

    def _list_incidents(self, request: ApiRequest) -> ApiAnswer:
        rows = _matching(list(self.incidents.values()), request)
        return ApiAnswer(200, {"result": [self._shown(row, request) for row in rows]})

    def _get_incident(self, request: ApiRequest) -> ApiAnswer:
        incident = self.incidents.get(request.match["sys_id"])
        if incident is None:
            return _no_record()
        return ApiAnswer(200, {"result": self._shown(incident, request)})

    def _insert_incident(self, request: ApiRequest) -> ApiAnswer:
        fields, problem = _json_fields(request)
        if problem is not None:
            return problem
        for name in self.mandatory_fields:
            if not str(fields.get(name) or "").strip():
                return _error(400, "Mandatory field missing",
                              f"Data Policy Exception: the following fields are mandatory: {name}")
        problem = _invalid_field(fields)
        if problem is not None:
            return problem

        now = self._now()
        sys_id = uuid.uuid4().hex
        stored_fields = WRITABLE_INCIDENT_FIELDS - set(JOURNAL_FIELDS)
        incident: dict[str, Any] = {name: "" for name in stored_fields}
        incident.update({
            "sys_id": sys_id, "number": f"INC{next(self._numbers):07d}", "state": "1",
            "impact": "3", "urgency": "3", "active": "true", "opened_at": now,
            "sys_created_on": now, "sys_updated_on": now, "sys_created_by": self.user,
        })
        self.incidents[sys_id] = incident
        self._write(incident, fields)
        headers = {"Location": f"{self.url}{TABLE}/incident/{sys_id}"}
        return ApiAnswer(201, {"result": self._shown(incident, request)}, headers)

    def _update_incident(self, request: ApiRequest) -> ApiAnswer:
        incident = self.incidents.get(request.match["sys_id"])
        if incident is None:
            return _no_record()
        fields, problem = _json_fields(request)
        if problem is not None:
            return problem
        problem = _invalid_field(fields)
        if problem is not None:
            return problem
        self._write(incident, fields)
        incident["sys_updated_on"] = self._now()
        return ApiAnswer(200, {"result": self._shown(incident, request)})

    def _write(self, incident: dict[str, Any], fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            if name in JOURNAL_FIELDS:
                if str(value).strip():
                    self._add_journal_entry(incident["sys_id"], name, str(value))
            else:
                incident[name] = str(value)
        # As the default priority lookup rules: impact 1 and urgency 1 give 1 - Critical,
        # 3 and 3 give 5 - Planning, and each step down in either lowers the priority by one.
        incident["priority"] = str(int(incident["impact"]) + int(incident["urgency"]) - 1)

    def _add_journal_entry(self, sys_id: str, element: str, value: str) -> None:
        self.journal.append({
            "sys_id": uuid.uuid4().hex, "element_id": sys_id, "element": element,
            "name": "incident", "value": value, "sys_created_on": self._now(),
            "sys_created_by": self.user,
        })

    def _shown(self, record: dict[str, Any], request: ApiRequest) -> dict[str, Any]:
        wanted = _fields_param(request)
        shown: dict[str, Any] = {}
        for name, value in record.items():
            if wanted and name not in wanted:
                continue
            if name in REFERENCE_FIELDS and value:
                link = f"{self.url}{TABLE}/{REFERENCE_FIELDS[name]}/{value}"
                value = {"link": link, "value": value}
            shown[name] = value
        return shown

    # -- Table API: sys_journal_field ------------------------------------------------

    def _list_journal(self, request: ApiRequest) -> ApiAnswer:
        rows = _matching(self.journal, request)
        return ApiAnswer(200, {"result": [self._shown(row, request) for row in rows]})

    # -- Attachment API ---------------------------------------------------------------

    def _upload(self, request: ApiRequest) -> ApiAnswer:
        params = {name: (request.query.get(name) or [""])[0]
                  for name in ("table_name", "table_sys_id", "file_name")}
        missing = [name for name, value in params.items() if not value]
        if missing:
            return _error(400, "Failed to create the attachment",
                          f"Missing required parameter(s): {', '.join(missing)}")
        content_type = request.headers.get("content-type", "")
        if not content_type:
            return _error(400, "Failed to create the attachment", "Content-Type header is required")
        if params["table_name"] != "incident" or params["table_sys_id"] not in self.incidents:
            return _error(404, "Record doesn't exist",
                          f"{params['table_name']} record {params['table_sys_id']} does not exist "
                          "or is not accessible")

        sys_id = uuid.uuid4().hex
        stored = StoredAttachment(sys_id, params["table_name"], params["table_sys_id"],
                                  params["file_name"], content_type, request.body, self._now())
        self.attachments[sys_id] = stored
        headers = {"Location": f"{self.url}{ATTACHMENT}/{sys_id}"}
        return ApiAnswer(201, {"result": self._attachment_metadata(stored)}, headers)

    def _list_attachments(self, request: ApiRequest) -> ApiAnswer:
        records = [self._attachment_metadata(item) for item in self.attachments.values()]
        rows = _matching(records, request)
        return ApiAnswer(200, {"result": rows})

    def _download(self, request: ApiRequest) -> ApiAnswer:
        stored = self.attachments.get(request.match["sys_id"])
        if stored is None:
            return _no_record()
        return ApiAnswer(200, stored.content, {"Content-Type": stored.content_type})

    def _attachment_metadata(self, stored: StoredAttachment) -> dict[str, str]:
        return {
            "sys_id": stored.sys_id, "table_name": stored.table_name,
            "table_sys_id": stored.table_sys_id, "file_name": stored.file_name,
            "content_type": stored.content_type, "size_bytes": str(len(stored.content)),
            "hash": hashlib.sha256(stored.content).hexdigest(),
            "download_link": f"{self.url}{ATTACHMENT}/{stored.sys_id}/file",
            "sys_created_on": stored.created_on, "sys_created_by": self.user,
        }

    def _now(self) -> str:
        return self._clock().astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


_ACL_OPERATIONS = {"GET": "Read", "POST": "Insert", "PATCH": "Update", "PUT": "Update",
                   "DELETE": "Delete"}
# One condition of an encoded query: a field name in lower case, an operator, a value.
_CONDITION = re.compile(r"(?P<field>[a-z0-9_.]+?)(?P<operator>!=|=|LIKE|STARTSWITH)(?P<value>.*)",
                        re.DOTALL)


def _matching(rows: list[dict[str, Any]], request: ApiRequest) -> list[dict[str, Any]]:
    """Filter rows by `sysparm_query` (conditions joined with ^) and cut them to `sysparm_limit`."""
    query = (request.query.get("sysparm_query") or [""])[0]
    conditions = [_CONDITION.fullmatch(term) for term in query.split("^") if term]
    found = [row for row in rows if all(_holds(row, c) for c in conditions if c is not None)]
    limit = (request.query.get("sysparm_limit") or [""])[0]
    return found[: int(limit)] if limit.isdigit() else found


def _holds(row: dict[str, Any], condition: re.Match[str]) -> bool:
    name, operator, expected = condition["field"], condition["operator"], condition["value"]
    if name not in row:
        return True
    actual = str(row[name])
    if operator == "=":
        return actual == expected
    if operator == "!=":
        return actual != expected
    if operator == "LIKE":
        return expected.lower() in actual.lower()
    return actual.startswith(expected)


def _fields_param(request: ApiRequest) -> set[str]:
    value = (request.query.get("sysparm_fields") or [""])[0]
    return {name.strip() for name in value.split(",") if name.strip()}


def _json_fields(request: ApiRequest) -> tuple[dict[str, Any], ApiAnswer | None]:
    try:
        fields = request.json()
    except ValueError:
        return {}, _error(400, "Exception while reading request", "The payload is invalid JSON.")
    if not isinstance(fields, dict):
        return {}, _error(400, "Exception while reading request",
                          "The payload must be a JSON object.")
    return fields, None


def _invalid_field(fields: dict[str, Any]) -> ApiAnswer | None:
    for name, value in fields.items():
        if name not in WRITABLE_INCIDENT_FIELDS:
            return _error(400, "Invalid field", f"Field '{name}' does not exist on table incident")
        if isinstance(value, (dict, list)):
            return _error(400, "Invalid field",
                          f"Field '{name}' takes a string, not {type(value).__name__}")
        if name in CHOICE_1_TO_3 and str(value) not in ("1", "2", "3"):
            return _error(400, "Invalid field", f"Field '{name}' takes 1, 2 or 3, not {value!r}")
    return None


def _no_record() -> ApiAnswer:
    return _error(404, "No Record found",
                  "Record doesn't exist or ACL restricts the record retrieval")


def _error(status: int, message: str, detail: str) -> ApiAnswer:
    return ApiAnswer(status, {"error": {"message": message, "detail": detail}, "status": "failure"})
