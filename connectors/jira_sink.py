"""The Jira sink: tickets become Jira issues, later messages comments, over REST API v2.

Calls go through the `jira` package (pycontribs/jira). Its `ResilientSession`
would sleep and retry 429 and 503 responses itself. This sink builds the client
with `max_retries=0`, so every response comes back at once and is turned into
the errors of `ticketflow.connectors.sink`:

- 429 raises `RateLimited` with the Retry-After delay, without sleeping;
- timeouts, connection errors and 5xx answers are tried again `[sink] retries`
  times, the delay doubling from `[sink] backoff`, then raise `SinkUnavailable`;
- any other 4xx raises `SinkRejected` with the status and Jira's
  `errorMessages` and `errors` texts.

A POST is tried again only after checking that the first try did not already
happen: a create searches for the external id, a comment looks for its marker,
an upload for a file of the same name and size, a link for the link. So a
timeout whose request did reach Jira never makes a second issue or comment.

What an issue holds:

- project, issue type, components and labels from the mapping rules, else
  `[sink.jira] project` and `issue_type`;
- the priority named by the rules (`priority_name`), else `[sink.jira.priorities]`,
  else Highest, High, Medium, Low, Lowest for P0 to P4;
- the summary: the ticket's subject on one line, cut to 255 characters;
- the description: the first message's text in a `{noformat}` block, so mail
  cannot inject wiki markup (links, images, macros), then the sender, tenant,
  ticketflow key, priority, SPF/DKIM/DMARC results, review status and reasons,
  and the attachments with their download links (a quarantined file is named
  with its signature and never uploaded);
- ticketflow's ticket id in the custom field `[sink.jira] external_id_field`,
  or, when that is "", in the label `ticketflow-<id>`; `find_ticket` searches
  for it with JQL;
- the label `ticketflow-review` while the ticket is held for review;
- the sender's address in the custom field `[sink.jira] reporter_field`, when set.

Batches: `find_tickets` searches for up to 50 external ids with one JQL query
(`labels in (...)`, or one `~` condition per id joined by OR for the custom
field) and reads every page. `create_tickets` sends up to 50 issues per
`POST /rest/api/2/issue/bulk` and pairs Jira's created issues and element
errors with the tickets. A bulk request is never sent twice: when it fails as
a whole with 429, a timeout or a 5xx, the call raises and the caller searches
before it tries again.

Limitations:

- Jira's search index can lag behind writes, so a create that timed out and
  is checked at once may not be found yet, and the retry then makes a second
  issue. The delivery's own retries come later, after its backoff, which
  narrows this window but does not close it.
- An upload is taken as done when the issue has an attachment of the same
  file name and size; two different files that share both are uploaded once.
- `update_ticket` rewrites the description when the review status, the
  reasons or the sender block changed, so edits made to it in Jira are lost.
- A bulk create of 50 issues must answer within `[sink] timeout`, like a single
  create, so a slow Jira may time out on it and the caller falls back on a
  search and a second bulk request.
- `create_tickets` trusts Jira to list the created issues in request order, as
  Jira does and the jira package assumes; only the counts are checked.
- Only basic authentication (user and API token or password) is supported,
  not bearer personal access tokens of Jira Data Center.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from jira import JIRA, JIRAError

from ticketflow.config import ConfigError, PriorityNames, SinkSettings
from ticketflow.connectors.http_client import ANSWER_CHARS, retry_after_seconds
from ticketflow.connectors.sink import (
    RateLimited,
    SinkAttachment,
    SinkError,
    SinkMessage,
    SinkRejected,
    SinkTicket,
    SinkUnavailable,
    comment_marker,
    message_text,
    read_secret,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

REVIEW_LABEL = "ticketflow-review"
EXTERNAL_ID_LABEL_PREFIX = "ticketflow-"
DEFAULT_PRIORITY_NAMES = PriorityNames(P0="Highest", P1="High", P2="Medium", P3="Low", P4="Lowest")
# Jira's limits: a summary of 255 characters, and text fields (description,
# comment body) of 32,767. Text is measured here in UTF-16 code units, the
# length of a Java string, which is the stricter reading for emoji.
MAX_SUMMARY_CHARS = 255
MAX_TEXT_UNITS = 32_767
# Comments read per request while looking for a marker.
COMMENT_PAGE_SIZE = 100
# Issues read per search; more than one only when an earlier bug made duplicates.
SEARCH_PAGE_SIZE = 10
# Jira's bulk create takes at most 50 issues per request.
BULK_CREATE_SIZE = 50
# External ids per `find_tickets` query: 50 labels of about 40 characters keep
# the JQL near 2,000 characters, well inside a URL.
FIND_CHUNK_SIZE = 50
# Issues asked for per page of a `find_tickets` query; Jira may return fewer.
FIND_PAGE_SIZE = 100
# Characters that start wiki links, images, macros and tables.
_WIKI_SPECIAL = re.compile(r"([\[\]{}|!])")
_NOFORMAT_TAG = re.compile(r"\{noformat", re.IGNORECASE)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_KIND_NAMES = {"original": "first message", "reply": "reply", "auto_reply": "automatic reply"}


class JiraSink:
    """Mirror ticketflow tickets into Jira issues; see the module docstring for the mapping."""

    name = "jira"
    keys_are_human = True

    def __init__(
        self,
        sink_settings: SinkSettings,
        *,
        environ: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Build the client; no request is sent until the first call.

        Raises `ConfigError` when the token variable is unset or empty, or when
        `[sink.jira]` lacks the URL, the user or the project, or a mapping rule
        has a label Jira would reject.
        """
        self._settings = sink_settings
        self._jira_settings = sink_settings.jira
        _check_settings(sink_settings)
        token = _read_token(
            self._jira_settings.token_env, os.environ if environ is None else environ
        )

        self._timeout = sink_settings.timeout
        self._tries = max(sink_settings.retries, 1)
        self._backoff = sink_settings.backoff
        self._sleep = sleep
        self._deployment_known = False
        self._client = JIRA(
            server=self._jira_settings.url,
            basic_auth=(self._jira_settings.user, token),
            get_server_info=False,
            max_retries=0,
            timeout=sink_settings.timeout,
        )

    # The TicketSink operations.

    def find_ticket(self, ticket: SinkTicket) -> str | None:
        """Return the key of the issue holding this ticket's external id, or None.

        When several issues hold it, the oldest one wins.
        """
        key = self._call(
            f"search for {ticket.external_id}", lambda: self._search_key(ticket.external_id)
        )
        log.info("jira search for %s found %s", ticket.external_id, key or "no issue")
        return key

    def create_ticket(self, ticket: SinkTicket) -> str:
        """Create the issue and return its key; a retry first searches for the issue."""
        fields = self._issue_fields(ticket)

        def create() -> str:
            issue = self._client.create_issue(fields=fields, prefetch=False)
            return str(issue.key)

        key = self._call(
            f"create issue for {ticket.external_id}",
            create,
            done=lambda: self._search_key(ticket.external_id),
        )
        log.info("jira created %s for %s", key, ticket.external_id)
        return key

    def find_tickets(self, tickets: list[SinkTicket]) -> dict[str, str]:
        """Return {external id: issue key} for the tickets that already have an issue.

        One JQL query covers up to `FIND_CHUNK_SIZE` ids and is read page by
        page. Only an exact label or field value counts, so `tkt_1` never finds
        the issue of `tkt_10`. When several issues hold one id, the oldest wins.
        """
        external_ids = list(dict.fromkeys(ticket.external_id for ticket in tickets))
        keys: dict[str, str] = {}
        for chunk in _chunks(external_ids, FIND_CHUNK_SIZE):
            keys.update(self._search_keys(chunk))
        log.info("jira search for %d tickets found %d issues", len(external_ids), len(keys))
        return keys

    def create_tickets(self, tickets: list[SinkTicket]) -> list[str | SinkRejected]:
        """Create the issues with Jira's bulk create, `BULK_CREATE_SIZE` per request.

        Returns one result per ticket, in order: the issue key, or the
        `SinkRejected` that carries Jira's error for that ticket alone. A
        request Jira rejects as a whole (a 4xx other than 429) rejects each of
        its tickets with the same error text. A 429 raises `RateLimited`, and a
        timeout, connection error or 5xx raises `SinkUnavailable` at once,
        without a retry. The results of earlier requests of the same call are
        then lost, and some issues may exist, so the caller runs
        `find_tickets` before it tries again.
        """
        results: list[str | SinkRejected] = []
        for chunk in _chunks(tickets, BULK_CREATE_SIZE):
            results.extend(self._create_chunk(chunk))
        created = sum(isinstance(result, str) for result in results)
        log.info(
            "jira bulk create of %d tickets: %d created, %d rejected",
            len(tickets),
            created,
            len(tickets) - created,
        )
        return results

    def add_comment(self, ref: str, ticket: SinkTicket, message: SinkMessage, verify: bool) -> None:
        """Add `message` as a comment of `ref`; with `verify`, skip it when its marker is there."""
        marker = comment_marker(message)
        added = self._comment_once(ref, comment_body(message), marker, verify)
        log.info(
            "jira comment %s on %s: %s",
            message.event_id,
            ref,
            "added" if added else "already there",
        )

    def attach_files(
        self,
        ref: str,
        ticket: SinkTicket,
        message: SinkMessage,
        files: list[tuple[SinkAttachment, bytes]],
    ) -> None:
        """Upload the files to `ref`, skipping quarantined, empty and already attached ones."""
        uploads = [
            (attachment, data)
            for attachment, data in files
            if _is_uploadable(attachment, data, ref)
        ]
        if not uploads:
            return

        attached = self._call(f"read attachments of {ref}", lambda: self._attachments_of(ref))
        for attachment, data in uploads:
            if (attachment.filename, len(data)) in attached:
                log.info("jira %s already has %s; not uploading it again", ref, attachment.filename)
                continue
            self._upload(ref, attachment, data)
            attached.add((attachment.filename, len(data)))

    def update_ticket(self, ref: str, ticket: SinkTicket) -> None:
        """Send the summary, priority, description and labels that differ from the issue's."""
        target_fields = {
            "summary": issue_summary(ticket.subject),
            "description": issue_description(ticket),
        }
        priority = self._priority_name(ticket)
        target_labels = self._labels(ticket)

        def update() -> list[str]:
            issue = self._client.issue(ref, fields="summary,priority,labels,description")
            current = issue.raw.get("fields") or {}
            # NOTE: Jira Cloud converts v2 descriptions to and from its document format,
            # so the description it returns may never equal the one sent; it is then
            # sent again on every update, which costs a field but changes nothing.
            changes: dict[str, Any] = {
                name: value for name, value in target_fields.items() if current.get(name) != value
            }
            if priority and (current.get("priority") or {}).get("name") != priority:
                changes["priority"] = {"name": priority}
            label_operations = _label_operations(current.get("labels") or [], target_labels, ticket)
            if changes or label_operations:
                issue.update(
                    fields=changes,
                    update={"labels": label_operations} if label_operations else None,
                )
            return sorted(changes) + (["labels"] if label_operations else [])

        changed = self._call(f"update {ref}", update)
        log.info(
            "jira update of %s for %s: %s",
            ref,
            ticket.external_id,
            ", ".join(changed) or "no change",
        )

    def link_tickets(self, ref: str, merged_ref: str, ticket: SinkTicket) -> None:
        """Link `merged_ref` to `ref` with `[sink.jira] link_type` and comment on both.

        The link goes from `merged_ref` (inward issue) to `ref` (outward issue).
        When Jira has no such link type, or linking is turned off (it returns
        404 or 400), only the comments are added. Both steps check first, so a
        repeated call adds nothing.
        """
        linked = self._link_once(ref, merged_ref)
        marker = f"ticketflow-link:{merged_ref}:{ref}"
        self._comment_once(
            ref,
            f"ticketflow found that {merged_ref} is the same email thread as this issue; "
            f"its later messages are added here.\n\n{marker}",
            marker,
            verify=True,
        )
        self._comment_once(
            merged_ref,
            f"ticketflow found that this issue is the same email thread as {ref}; "
            f"later messages are added to {ref}.\n\n{marker}",
            marker,
            verify=True,
        )
        log.info(
            "jira linked %s to %s for %s (%s)",
            merged_ref,
            ref,
            ticket.external_id,
            "issue link and comments" if linked else "comments only",
        )

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    # Issue fields.

    def _issue_fields(self, ticket: SinkTicket) -> dict[str, Any]:
        settings = self._jira_settings
        fields: dict[str, Any] = {
            "project": {"key": ticket.mapped.project or settings.project},
            "issuetype": {"name": ticket.mapped.issue_type or settings.issue_type},
            "summary": issue_summary(ticket.subject),
            "description": issue_description(ticket),
            "labels": self._labels(ticket),
        }
        priority = self._priority_name(ticket)
        if priority:
            fields["priority"] = {"name": priority}
        if ticket.mapped.components:
            fields["components"] = [{"name": name} for name in ticket.mapped.components]
        if settings.external_id_field:
            fields[settings.external_id_field] = ticket.external_id
        if settings.reporter_field and ticket.requester:
            fields[settings.reporter_field] = ticket.requester
        return fields

    def _labels(self, ticket: SinkTicket) -> list[str]:
        labels = list(ticket.mapped.labels)
        if not self._jira_settings.external_id_field:
            labels.append(external_id_label(ticket.external_id))
        if ticket.status == "review":
            labels.append(REVIEW_LABEL)
        return list(dict.fromkeys(labels))

    def _priority_name(self, ticket: SinkTicket) -> str:
        if ticket.mapped.priority_name:
            return ticket.mapped.priority_name
        if not ticket.priority:
            return ""
        return self._jira_settings.priorities.name_of(ticket.priority, DEFAULT_PRIORITY_NAMES)

    # Lookups; each is one or a few requests, run inside `_call`.

    def _search_key(self, external_id: str) -> str | None:
        field = self._jira_settings.external_id_field
        if field:
            # Text fields support only the contains operator `~`; a phrase query
            # narrows the search and the exact value is compared below.
            jql = f"{_jql_field(field)} ~ {_jql_string(_jql_string(external_id))}"
        else:
            jql = f"labels = {_jql_string(external_id_label(external_id))}"
        answer = self._search(f"{jql} ORDER BY created ASC", [field or "labels"])

        for issue in answer.get("issues") or []:
            values = (issue.get("fields") or {}).get(field or "labels")
            if _holds(values, external_id if field else external_id_label(external_id)):
                return str(issue["key"])
        return None

    def _search_keys(self, external_ids: list[str]) -> dict[str, str]:
        """Search once for all `external_ids` and return the key of each one's oldest issue."""
        field = self._jira_settings.external_id_field
        if field:
            # Text fields take no `in`, so each id gets its own phrase condition.
            jql = " OR ".join(
                f"{_jql_field(field)} ~ {_jql_string(_jql_string(external_id))}"
                for external_id in external_ids
            )
            ids_by_value = {external_id: external_id for external_id in external_ids}
        else:
            labels = ", ".join(
                _jql_string(external_id_label(external_id)) for external_id in external_ids
            )
            jql = f"labels in ({labels})"
            ids_by_value = {
                external_id_label(external_id): external_id for external_id in external_ids
            }

        keys: dict[str, str] = {}
        for issue in self._search_all(f"{jql} ORDER BY created ASC", [field or "labels"]):
            stored = (issue.get("fields") or {}).get(field or "labels")
            for value in stored if isinstance(stored, list) else [stored]:
                external_id = ids_by_value.get(value.strip() if isinstance(value, str) else "")
                if external_id is not None:
                    keys.setdefault(external_id, str(issue["key"]))
        return keys

    def _search_all(self, jql: str, fields: list[str]) -> list[dict[str, Any]]:
        """Read every page of a search; each page is retried on its own."""
        operation = f"search for {jql[:80]}…" if len(jql) > 80 else f"search for {jql}"
        issues: list[dict[str, Any]] = []
        start = 0
        token: str | None = None
        while True:
            page = self._call(
                operation,
                functools.partial(
                    self._search, jql, fields, size=FIND_PAGE_SIZE, start=start, token=token
                ),
            )
            found = page.get("issues") or []
            issues.extend(found)
            start += len(found)
            if self._client._is_cloud:
                # Jira Cloud's /search/jql pages by token and reports no total.
                token = page.get("nextPageToken")
                if not found or not token or page.get("isLast") is True:
                    return issues
            elif not found or start >= int(page.get("total") or 0):
                return issues

    def _search(
        self,
        jql: str,
        fields: list[str],
        *,
        size: int = SEARCH_PAGE_SIZE,
        start: int = 0,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Run one page of a search: from `start` on Jira Server, after `token` on Jira Cloud."""
        if not self._deployment_known:
            # The jira package (3.10.5) sends Jira Cloud searches to /search/jql, which replaces
            # the deprecated /search there, and tells Cloud by serverInfo's deploymentType.
            info = self._client.server_info()
            self._client.deploymentType = info.get("deploymentType")
            self._deployment_known = True
        if token:
            answer = self._client.enhanced_search_issues(
                jql, nextPageToken=token, maxResults=size, fields=list(fields), json_result=True
            )
        else:
            answer = self._client.search_issues(
                jql, startAt=start, maxResults=size, fields=list(fields), json_result=True
            )
        return answer if isinstance(answer, dict) else {}

    def _has_comment(self, ref: str, marker: str) -> bool:
        start = 0
        while True:
            page = self._client.comments(ref, start_at=start, max_results=COMMENT_PAGE_SIZE)
            if not page:
                return False
            if any(_has_marker(comment.raw.get("body"), marker) for comment in page):
                return True
            # Jira may return fewer comments than asked for, so only an empty page ends the list.
            start += len(page)

    def _attachments_of(self, ref: str) -> set[tuple[str, int]]:
        issue = self._client.issue(ref, fields="attachment")
        attachments = (issue.raw.get("fields") or {}).get("attachment") or []
        return {(str(item.get("filename")), int(item.get("size") or 0)) for item in attachments}

    def _has_link(self, ref: str, other: str) -> bool:
        issue = self._client.issue(ref, fields="issuelinks")
        link_type = self._jira_settings.link_type
        for link in (issue.raw.get("fields") or {}).get("issuelinks") or []:
            kind = link.get("type") or {}
            if link_type not in (kind.get("name"), kind.get("inward"), kind.get("outward")):
                continue
            linked = link.get("inwardIssue") or link.get("outwardIssue") or {}
            if linked.get("key") == other:
                return True
        return False

    # Writes that check before trying again.

    def _comment_once(self, ref: str, body: str, marker: str, verify: bool) -> bool:
        """Add `body` to `ref` unless `verify` finds a comment with `marker`; True if added."""
        operation = f"comment {marker} on {ref}"
        if verify and self._call(f"read comments of {ref}", lambda: self._has_comment(ref, marker)):
            return False

        def add() -> bool:
            self._client.add_comment(ref, body)
            return True

        return self._call(
            operation, add, done=lambda: True if self._has_comment(ref, marker) else None
        )

    def _upload(self, ref: str, attachment: SinkAttachment, data: bytes) -> None:
        def upload() -> None:
            self._client.add_attachment(ref, io.BytesIO(data), filename=attachment.filename)
            log.info("jira uploaded %s (%d bytes) to %s", attachment.filename, len(data), ref)

        def uploaded() -> bool | None:
            return True if (attachment.filename, len(data)) in self._attachments_of(ref) else None

        self._call(f"upload {attachment.filename} to {ref}", upload, done=uploaded)

    def _link_once(self, ref: str, merged_ref: str) -> bool:
        """Create the issue link unless there is one; False when Jira cannot link with this type."""
        link_type = self._jira_settings.link_type
        if self._call(f"read links of {ref}", lambda: self._has_link(ref, merged_ref)):
            return True

        def link() -> bool:
            self._client.create_issue_link(link_type, inwardIssue=merged_ref, outwardIssue=ref)
            return True

        try:
            return self._call(
                f"link {merged_ref} to {ref} as {link_type!r}",
                link,
                done=lambda: True if self._has_link(ref, merged_ref) else None,
            )
        except SinkRejected as exc:
            if exc.status not in (400, 404):
                raise
            log.warning(
                "jira cannot link %s to %s as %r, so only comments note the merge: %s",
                merged_ref,
                ref,
                link_type,
                exc.answer,
            )
            return False

    # Bulk create.

    def _create_chunk(self, tickets: list[SinkTicket]) -> list[str | SinkRejected]:
        """Create up to `BULK_CREATE_SIZE` issues in one request, which is never sent twice."""
        operation = (
            f"bulk create of {len(tickets)} issues "
            f"for {tickets[0].external_id} to {tickets[-1].external_id}"
        )
        body = {"issueUpdates": [{"fields": self._issue_fields(ticket)} for ticket in tickets]}

        answer: Any = None
        error: SinkError | None = None
        try:
            # The jira package's create_issues keeps only part of Jira's element
            # errors and misreads a request rejected as a whole, so the sink posts
            # through the package's session, which has the same auth and timeout.
            response = self._client._session.post(
                self._client._get_url("issue/bulk"), data=json.dumps(body)
            )
            answer = response.json()
        except JIRAError as exc:
            # Jira returns 400 with the usual bulk body when every issue failed.
            answer = _json_answer(exc.response) if exc.status_code == 400 else None
            if not _is_bulk_answer(answer):
                error = self._sink_error(operation, exc)
        except requests.RequestException as exc:
            # This includes a 2xx response that is not JSON, so which issues exist is unknown.
            error = self._sink_error(operation, exc)
        # Raised here, outside the except blocks, so the JIRAError is not chained.
        if isinstance(error, SinkRejected):
            log.warning("%s; rejecting all %d tickets of the request", error, len(tickets))
            return [error for _ in tickets]
        if error is not None:
            raise error
        return self._bulk_results(operation, tickets, answer)

    def _bulk_results(
        self, operation: str, tickets: list[SinkTicket], answer: Any
    ) -> list[str | SinkRejected]:
        """Pair Jira's created issues and element errors with the tickets, in request order."""
        if not _is_bulk_answer(answer):
            raise SinkUnavailable(
                self.name, f"{operation} returned an answer without 'issues' and 'errors' lists"
            )
        failures: dict[int, dict[str, Any]] = {
            error["failedElementNumber"]: error
            for error in answer["errors"]
            if isinstance(error, dict) and isinstance(error.get("failedElementNumber"), int)
        }
        created = [
            issue for issue in answer["issues"] if isinstance(issue, dict) and "key" in issue
        ]
        failed_numbers = failures.keys() & set(range(len(tickets)))
        if len(created) + len(failed_numbers) != len(tickets):
            # Without a count that adds up, no key can be given to a ticket safely.
            raise SinkUnavailable(
                self.name,
                f"{operation} returned {len(created)} issues and {len(failed_numbers)} errors "
                f"for {len(tickets)} tickets; search for them before trying again",
            )

        transient = sorted(
            number
            for number in failed_numbers
            if not _is_client_error(failures[number].get("status"))
        )
        if transient:
            # A rejection would dead-letter a ticket that a later try may create.
            raise SinkUnavailable(
                self.name,
                f"{operation} failed for elements {transient} with a status that is not a "
                "client error; search for the tickets before trying again",
            )

        results: list[str | SinkRejected] = []
        issues = iter(created)
        for number, ticket in enumerate(tickets):
            failure = failures.get(number)
            if failure is None:
                results.append(str(next(issues)["key"]))
                continue
            results.append(self._element_rejection(ticket, number, failure))
        return results

    def _element_rejection(
        self, ticket: SinkTicket, number: int, failure: dict[str, Any]
    ) -> SinkRejected:
        """Build the rejection of one bulk element from its `status` and `elementErrors`."""
        status = failure.get("status")
        texts = error_texts(failure.get("elementErrors")) or ["no details given"]
        rejection = SinkRejected(
            self.name,
            status if isinstance(status, int) else 400,
            f"create issue for {ticket.external_id} (bulk element {number}): "
            f"{_shorten('; '.join(texts))}",
        )
        log.warning("jira rejected a bulk element: %s", rejection)
        return rejection

    # Retries and errors.

    def _call(
        self, operation: str, action: Callable[[], T], *, done: Callable[[], T | None] | None = None
    ) -> T:
        """Run `action`, turning Jira's failures into sink errors and trying transient ones again.

        Before each retry, `done` (when given) checks whether the failed try took
        effect anyway. A result other than None is returned instead of trying again.
        """
        delay = self._backoff
        tries = 0
        while True:
            tries += 1
            try:
                if tries > 1 and done is not None:
                    earlier = done()
                    if earlier is not None:
                        log.info(
                            "jira %s took effect before its failure; not sending it again",
                            operation,
                        )
                        return earlier
                return action()
            except (JIRAError, requests.RequestException) as exc:
                # Raised below, outside this block, so the JIRAError (whose text
                # includes response headers such as cookies) is not chained.
                error = self._sink_error(operation, exc)
            if not isinstance(error, SinkUnavailable) or tries >= self._tries:
                raise error
            log.warning(
                "%s (try %d of %d); trying again in %.2fs", error, tries, self._tries, delay
            )
            self._sleep(delay * random.uniform(0.5, 1.0))
            delay *= 2

    def _sink_error(self, operation: str, exc: JIRAError | requests.RequestException) -> SinkError:
        if isinstance(exc, requests.Timeout):
            return SinkUnavailable(self.name, f"{operation} timed out after {self._timeout:g}s")
        if isinstance(exc, requests.ConnectionError):
            return SinkUnavailable(
                self.name,
                f"{operation} could not connect to {self._jira_settings.url}: {_shorten(str(exc))}",
            )
        if isinstance(exc, requests.RequestException):
            return SinkUnavailable(self.name, f"{operation} failed: {_shorten(str(exc))}")

        status = exc.status_code
        response = exc.response
        if status == 429:
            header = response.headers.get("Retry-After") if response is not None else None
            return RateLimited(self.name, retry_after_seconds(header), f"{operation} rate limited")
        answer = jira_answer(exc)
        if status is None or status >= 500:
            return SinkUnavailable(
                self.name, f"{operation} failed with HTTP {status or 'status unknown'}: {answer}"
            )
        return SinkRejected(self.name, status, f"{operation}: {answer}")


# Text of issues and comments, in Jira wiki markup.


def issue_summary(subject: str) -> str:
    """Return the subject on one line, cut to Jira's 255 characters; "(no subject)" when empty."""
    line = " ".join(_CONTROL_CHARACTERS.sub(" ", subject).split())
    return line[:MAX_SUMMARY_CHARS] if line else "(no subject)"


def issue_description(ticket: SinkTicket) -> str:
    """Build the description: the first message's text, its sender and what ticketflow found."""
    message = ticket.first_message
    lines = [
        "----",
        f"*From:* {_sender(message)}",
        f"*Tenant:* {_wiki_escape(ticket.tenant)}",
        f"*ticketflow key:* {_wiki_escape(ticket.key)} (ticket id {ticket.external_id})",
    ]
    details = _ticket_details(ticket)
    if details:
        lines.append(f"*Priority:* {details}")
    lines.append(f"*Trust:* {trust_summary(message.authentication)}")
    lines.append(f"*Review:* {review_summary(ticket)}")
    lines.extend(_attachment_lines(message.attachments))
    return _with_text(message_text(message), "\n".join(lines))


def comment_body(message: SinkMessage) -> str:
    """Build a comment: the message's text, sender and times, and the marker as last line."""
    kind = _KIND_NAMES.get(message.kind, message.kind)
    lines = [
        "----",
        f"*From:* {_sender(message)}, {kind} sent {message.sent_at or 'at an unknown time'}, "
        f"received {message.received_at}",
        f"*Trust:* {trust_summary(message.authentication)}",
    ]
    lines.extend(_attachment_lines(message.attachments))
    # The marker is a paragraph of its own, so that it survives a change of line breaks.
    lines.extend(["", comment_marker(message)])
    return _with_text(message_text(message), "\n".join(lines))


def trust_summary(authentication: Mapping[str, Any]) -> str:
    """Name the SPF, DKIM and DMARC results, e.g. "SPF pass, DKIM none, DMARC fail".

    >>> trust_summary({"spf": "pass", "dmarc": "fail (p=reject)"})
    'SPF pass, DKIM none, DMARC fail (p=reject)'
    """
    parts = []
    for method in ("spf", "dkim", "dmarc"):
        value = authentication.get(method)
        text = " ".join(value.split())[:60] if isinstance(value, str) and value.strip() else "none"
        parts.append(f"{method.upper()} {_wiki_escape(text)}")
    return ", ".join(parts)


def review_summary(ticket: SinkTicket) -> str:
    """Say whether the ticket is held for review, and why."""
    if ticket.status != "review":
        return "not held"
    reasons = ", ".join(ticket.review_reasons) or "no reason recorded"
    return f"held for review ({_wiki_escape(reasons)})"


def external_id_label(external_id: str) -> str:
    """Return the label that stores the external id when no custom field is set."""
    return f"{EXTERNAL_ID_LABEL_PREFIX}{external_id}"


def jira_answer(exc: JIRAError) -> str:
    """Return Jira's error texts: `errorMessages`, then `errors` as "field: text", shortened."""
    response = exc.response
    texts = error_texts(_json_answer(response))
    if not texts:
        texts.append(
            exc.text or (response.text if response is not None else "") or "no details given"
        )
    return _shorten("; ".join(texts))


def error_texts(body: Any) -> list[str]:
    """Return the texts of a Jira error body: `errorMessages`, then `errors` as "field: text".

    >>> error_texts({"errorMessages": ["No access."], "errors": {"project": "Unknown."}})
    ['No access.', 'project: Unknown.']
    """
    if not isinstance(body, dict):
        return []
    texts: list[str] = []
    messages = body.get("errorMessages")
    if isinstance(messages, list):
        texts.extend(str(text) for text in messages)
    errors = body.get("errors")
    if isinstance(errors, dict):
        texts.extend(f"{field}: {text}" for field, text in errors.items())
    return texts


def _json_answer(response: requests.Response | None) -> Any:
    """Return the response's JSON body, or None when there is none."""
    if response is None:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _is_bulk_answer(answer: Any) -> bool:
    """Tell whether `answer` has the shape of a bulk create answer: `issues` and `errors` lists."""
    return (
        isinstance(answer, dict)
        and isinstance(answer.get("issues"), list)
        and isinstance(answer.get("errors"), list)
    )


def _is_client_error(status: Any) -> bool:
    """Tell whether a bulk element's status is a permanent 4xx; a missing status counts as 400."""
    if status is None:
        return True
    return isinstance(status, int) and 400 <= status < 500 and status != 429


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _with_text(text: str, footer: str) -> str:
    """Put the mail text in a `{noformat}` block above `footer`, cutting it to fit Jira's limit."""
    text = (
        _CONTROL_CHARACTERS.sub("", text or "").strip("\n")
        or "(the message has no plain-text part)"
    )
    # A "{noformat}" inside the mail would close the block early.
    text = _NOFORMAT_TAG.sub("{ noformat", text)
    total = _utf16_units(text)
    note = f"\n(text cut to fit Jira: the first characters of {total} are shown)\n"
    room = (
        MAX_TEXT_UNITS
        - _utf16_units(footer)
        - _utf16_units("{noformat}\n\n{noformat}\n")
        - _utf16_units(note)
    )
    if total <= room:
        return f"{{noformat}}\n{text}\n{{noformat}}\n{footer}"
    return f"{{noformat}}\n{_cut_utf16(text, room)}\n{{noformat}}{note}{footer}"


def _sender(message: SinkMessage) -> str:
    if message.sender_name:
        return f"{_wiki_escape(message.sender_name)} <{_wiki_escape(message.sender)}>"
    return _wiki_escape(message.sender) or "(unknown sender)"


def _ticket_details(ticket: SinkTicket) -> str:
    parts = [ticket.priority] if ticket.priority else []
    for label, value in (
        ("component", ticket.component),
        ("environment", ticket.environment),
        ("tier", ticket.tier),
    ):
        if value:
            parts.append(f"{label} {_wiki_escape(value)}")
    return ", ".join(parts)


def _attachment_lines(attachments: Iterable[SinkAttachment]) -> list[str]:
    lines = [f"* {_attachment_line(attachment)}" for attachment in attachments]
    return ["*Attachments:*", *lines] if lines else []


def _attachment_line(attachment: SinkAttachment) -> str:
    name = _wiki_escape(attachment.filename) or "(no file name)"
    facts = f"{name} ({_wiki_escape(attachment.content_type)}, {attachment.size} bytes)"
    if attachment.quarantined:
        return f"{facts}: quarantined as {_wiki_escape(attachment.quarantined)}, not uploaded"
    if attachment.refused:
        return f"{facts}: not stored ({_wiki_escape(attachment.refused)})"
    if attachment.download_url:
        return f"{facts}: {attachment.download_url}"
    return facts


def _wiki_escape(text: str) -> str:
    """Escape the characters that would make wiki links, images, macros or tables."""
    return _WIKI_SPECIAL.sub(r"\\\1", " ".join(_CONTROL_CHARACTERS.sub(" ", text).split()))


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _cut_utf16(text: str, units: int) -> str:
    # Decoding with "ignore" drops a surrogate pair that the cut splits.
    return text.encode("utf-16-le")[: max(units, 0) * 2].decode("utf-16-le", errors="ignore")


def _has_marker(body: Any, marker: str) -> bool:
    # A whole word, so that "...:evt_1" does not match "...:evt_10".
    pattern = rf"(?<![\w-]){re.escape(marker)}(?![\w-])"
    return isinstance(body, str) and re.search(pattern, body) is not None


def _holds(values: Any, expected: str) -> bool:
    if isinstance(values, list):
        return expected in values
    return isinstance(values, str) and values.strip() == expected


def _label_operations(
    current: list[str], target: list[str], ticket: SinkTicket
) -> list[dict[str, str]]:
    """Add the target labels the issue lacks; remove the review label once review is over.

    Other labels stay, since people in Jira may have added them.
    """
    operations = [{"add": label} for label in target if label not in current]
    if ticket.status != "review" and REVIEW_LABEL in current:
        operations.append({"remove": REVIEW_LABEL})
    return operations


def _is_uploadable(attachment: SinkAttachment, data: bytes, ref: str) -> bool:
    if attachment.quarantined:
        log.info(
            "jira not uploading %s to %s: quarantined as %s",
            attachment.filename,
            ref,
            attachment.quarantined,
        )
        return False
    if not data:
        # The jira package raises "Added empty attachment" on the response for an
        # empty file, although the upload went through.
        log.info("jira not uploading %s to %s: the file is empty", attachment.filename, ref)
        return False
    return True


def _jql_string(value: str) -> str:
    """Quote `value` as a JQL string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _jql_field(field: str) -> str:
    """Return the JQL name of a field: `cf[10050]` for `customfield_10050`."""
    number = field.removeprefix("customfield_")
    return f"cf[{number}]" if number != field and number.isdigit() else field


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 1] + "…"


# Settings.


def _check_settings(settings: SinkSettings) -> None:
    jira = settings.jira
    url = urlsplit(jira.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(
            f"invalid value for 'sink.jira.url': {jira.url!r}; set it to the Jira site's "
            "base URL, e.g. https://example.atlassian.net"
        )
    if not jira.user:
        raise ConfigError(
            "missing value for 'sink.jira.user'; set it to the account that owns the API "
            "token (Jira Cloud) or the user name (Jira Server)"
        )
    if not jira.project.strip():
        raise ConfigError(
            "missing value for 'sink.jira.project'; set the key of the project new issues go to"
        )


def _read_token(variable: str, environ: Mapping[str, str]) -> str:
    return read_secret(variable, "sink.jira.token_env",
                       "the API token (Jira Cloud) or the password (Jira Server)", environ)
