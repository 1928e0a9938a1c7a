"""Thread join: attach each message to its ticket, or open a new one.

A message finds its ticket, in this order of evidence:

1. **Headers.** Its In-Reply-To and References ids, and its own Message-ID (a
   parent that arrives after its reply finds the ticket the reply opened). Every
   id of every message is indexed, so a reply that shares only an ancestor still
   threads.
2. **Ticket key** in the subject (`[SUP-42]`, `threading.key_pattern`): a key of
   the ledger, or an external reference an earlier message brought. Only a
   participant of that ticket, or a sender from the requester's organization
   (same domain, free-mail domains excluded), may join by key, so a stranger who
   guesses a key cannot write into someone else's ticket. A key the ledger does
   not know becomes an external reference on the ticket the message ends up on.
3. **Plus-address** of a ticket's reply address (`acme-support+t-<token>@…`).
4. **Subject heuristic**, only for a message with a reply prefix and no thread
   headers at all: same tenant, same requester, same normalized subject, inside
   `threading.subject_window`. It never merges different requesters or tenants.

Evidence that names several tickets proves they are one thread: they merge into
the one whose first message is earliest. A ticket's id is derived from its
tenant and its earliest message (by received time, then Message-ID), so the
tickets of a finite corpus come out the same in any file order; when an earlier
message joins, the ticket takes the new id and the old one is folded into it.

A message with thread headers that name nothing known yet is an *orphan*: the
caller holds it (see `ThreadIndex.decide`'s `allow_open`) until its parent
arrives, `threading.orphan_wait` passes, or the input ends.

Entries of the in-memory index expire by event time: an entry expires once the
newest event time seen is more than max(`threading.index_ttl`, `dedupe.window`)
past its last write. A lookup that misses falls back to the store's ledger, as
with the Redis state after its TTL.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Generic, Protocol, TypeVar

from ticketflow.config import Settings
from ticketflow.model import Event
from ticketflow.operators.subject import has_reply_prefix, normalize_subject
from ticketflow.outcome import Outcome, TenantCopy

log = logging.getLogger(__name__)

_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TOKEN_PATTERN = re.compile(r"\+t-([0-9a-f]{12})(?:$|[+.-])")

_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


def thread_parents(event: Event) -> list[str]:
    """Return the ids a message replies to: In-Reply-To first, then References, unique."""
    envelope = event["envelope"]
    parents: list[str] = []
    if envelope["in_reply_to"]:
        parents.append(envelope["in_reply_to"])
    for reference in envelope["references"]:
        if reference not in parents:
            parents.append(reference)
    return [parent for parent in parents if parent != envelope["message_id"]]


def sent_at(event: Event, headers: Mapping[str, str | None] | None = None) -> str:
    """Return when the author sent a message: its Date header, else its received time.

    Every delivery of a message carries the same Date, so this orders a thread
    the same way whichever delivery was kept. `headers` maps casefolded header
    names to values (`enrich.header_map`) when the caller already built it.
    """
    date = headers.get("date") if headers is not None else header_value(event, "Date")
    if date:
        try:
            moment = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)
    return event["received_at"]


def thread_root(event: Event) -> str:
    """Return the id that routes a message: first References id, else In-Reply-To, else its own.

    Replies and their parent usually share it, so they meet on one worker; when
    they do not, the shared index connects them.
    """
    envelope = event["envelope"]
    if envelope["references"]:
        return envelope["references"][0]
    if envelope["in_reply_to"]:
        return envelope["in_reply_to"]
    return envelope["message_id"]


def ticket_id_for(tenant: str, first_message_id: str) -> str:
    """Derive a ticket id from its tenant and its first message; stable across runs."""
    digest = hashlib.sha256(f"{tenant}\n{first_message_id}".encode()).hexdigest()
    return f"tkt_{digest[:20]}"


def reply_token(ticket_id: str) -> str:
    """Return the plus-address token of a ticket: 12 hex characters of its id."""
    return ticket_id.removeprefix("tkt_")[:12]


def reply_address(mailbox: str, ticket_id: str) -> str:
    """Build `local+t-<token>@domain` from the mailbox the ticket arrived on."""
    local, _, domain = mailbox.partition("@")
    local = local.split("+", 1)[0]
    return f"{local}+t-{reply_token(ticket_id)}@{domain}"


def plus_tokens(event: Event, inbound_domains: Iterable[str]) -> list[str]:
    """Return reply tokens found in recipients on our inbound domains."""
    domains = {domain.lower() for domain in inbound_domains}
    envelope = event["envelope"]
    recipients = [*envelope["to"], *envelope["cc"]]
    for name in ("Delivered-To", "X-Original-To"):
        value = header_value(event, name)
        if value:
            recipients.append(value.strip().strip("<>").lower())

    tokens: list[str] = []
    for address in recipients:
        local, _, domain = address.rpartition("@")
        if domain not in domains:
            continue
        match = _TOKEN_PATTERN.search(local)
        if match and match.group(1) not in tokens:
            tokens.append(match.group(1))
    return tokens


def header_value(event: Event, name: str) -> str | None:
    """Look a header up by name, ignoring case."""
    lowered = name.lower()
    for key, value in event["headers"].items():
        if key.lower() == lowered:
            return value
    return None


def subject_keys(subject: str, pattern: re.Pattern[str]) -> list[str]:
    """Return the ticket keys in a subject, in order, unique, upper-cased."""
    keys: list[str] = []
    for match in pattern.finditer(subject):
        key = match.group(1).upper()
        if key not in keys:
            keys.append(key)
    return keys


def mail_domain(address: str) -> str:
    """Return the lowercased domain of an address, or "" when it has none."""
    return address.rpartition("@")[2].lower()


@dataclass(slots=True)
class TicketInfo:
    """Thread facts of a ticket: its first message, requester and participants."""

    ticket_id: str
    tenant: str
    # Send time of the ticket's earliest message (see `TenantCopy.sent_at`).
    first_sent_at: str
    first_message_id: str
    requester: str
    participants: set[str] = field(default_factory=set)

    @property
    def first(self) -> tuple[str, str]:
        """Order of tickets by their earliest message."""
        return (self.first_sent_at, self.first_message_id)


class Ledger(Protocol):
    """Read access to tickets written by earlier runs (the store implements it).

    Every method reads what the store has committed. The in-process index is
    consulted first, for everything this run decided.
    """

    def tickets_for_ids(self, tenant: str, message_ids: list[str]) -> dict[str, str]:
        """Map each known message id to its ticket id."""
        ...

    def ticket_for_ref(self, tenant: str, ref: str) -> str | None:
        """Find a ticket by key, external reference or `token:<reply token>`."""
        ...

    def ticket_for_subject(self, tenant: str, requester: str, subject: str, since: str) -> str | None:
        """Find the newest ticket of a requester with this normalized subject since a time."""
        ...

    def ticket_info(self, ticket_id: str) -> TicketInfo | None:
        """Load a ticket's thread facts, following merges to the surviving ticket."""
        ...

    def stored_message(self, tenant: str, dedupe_key: str) -> tuple[str, str, str] | None:
        """Return (source, ticket_id, outcome kind) of a message already stored."""
        ...

    def message_holder(self, tenant: str, message_id: str, dedupe_key: str) -> str | None:
        """Return the dedupe key of a stored message with this Message-ID other than `dedupe_key`."""
        ...


class NullLedger:
    """An empty ledger, for tests of a single run."""

    def tickets_for_ids(self, tenant: str, message_ids: list[str]) -> dict[str, str]:
        return {}

    def ticket_for_ref(self, tenant: str, ref: str) -> str | None:
        return None

    def ticket_for_subject(self, tenant: str, requester: str, subject: str, since: str) -> str | None:
        return None

    def ticket_info(self, ticket_id: str) -> TicketInfo | None:
        return None

    def stored_message(self, tenant: str, dedupe_key: str) -> tuple[str, str, str] | None:
        return None

    def message_holder(self, tenant: str, message_id: str, dedupe_key: str) -> str | None:
        return None


class ThreadState(Protocol):
    """Where the thread join keeps what it decided: one per process, or shared (Redis).

    `claim_*` methods set a value only where none is set yet (like `dict.setdefault`)
    and return the entries another ticket already holds, so two processes that
    open tickets for one thread at the same moment find out and merge.
    """

    def tickets_for_ids(self, tenant: str, message_ids: list[str]) -> dict[str, str]: ...
    def claim_ids(self, tenant: str, message_ids: list[str], ticket_id: str) -> dict[str, str]: ...
    def ref(self, tenant: str, ref: str) -> str | None: ...
    def claim_ref(self, tenant: str, ref: str, ticket_id: str) -> None: ...
    def subject(self, tenant: str, requester: str, subject: str) -> tuple[str, str] | None: ...
    def note_subject(self, tenant: str, requester: str, subject: str, ticket_id: str, seen: str) -> None: ...
    def ticket(self, ticket_id: str) -> TicketInfo | None: ...
    def put_ticket(self, info: TicketInfo) -> None: ...
    def drop_ticket(self, ticket_id: str) -> None: ...
    def alias(self, ticket_id: str) -> str | None: ...
    def set_alias(self, old_id: str, new_id: str) -> None: ...
    def claim_message(self, tenant: str, message_id: str, dedupe_key: str) -> str:
        """Record which message (dedupe key) owns a Message-ID; return the owner's dedupe key."""
        ...
    def outcome(self, tenant: str, dedupe_key: str) -> tuple[str, str, str] | None: ...
    def set_outcome(self, tenant: str, dedupe_key: str, ticket_id: str, kind: str, source: str) -> None: ...
    def flush(self) -> None:
        """Make this decision's writes visible to other processes."""
        ...


class _ExpiringMap(Generic[_Key, _Value]):
    """A dict of live entries plus the event time of each entry's last write.

    `live` is read directly, so a lookup costs one dict access. Writes stamp with
    an event time that never goes back, so `_stamps` is ordered by stamp and the
    expired entries are always at its front.
    """

    def __init__(self) -> None:
        self.live: dict[_Key, _Value] = {}
        self._stamps: OrderedDict[_Key, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self.live)

    def put(self, key: _Key, value: _Value, now: float) -> None:
        self.live[key] = value
        self._stamps[key] = now
        self._stamps.move_to_end(key)

    def put_new(self, key: _Key, value: _Value, now: float) -> _Value:
        """Set `key` unless it is set, and return the value `key` has afterwards.

        An entry already set keeps its stamp, as a Redis `SET NX` keeps its TTL.
        """
        current = self.live.get(key)
        if current is not None:
            return current
        self.put(key, value, now)
        return value

    def pop(self, key: _Key) -> None:
        self.live.pop(key, None)
        self._stamps.pop(key, None)

    def drop_before(self, cutoff: float) -> float | None:
        """Drop the entries stamped before `cutoff` and return the oldest stamp left, or None."""
        stamps = self._stamps
        while stamps:
            key, stamp = next(iter(stamps.items()))
            if stamp >= cutoff:
                return stamp
            del stamps[key]
            del self.live[key]
        return None


class MemoryThreadState:
    """Thread state in dicts, for one process; callers hold the index's lock.

    With `ttl_seconds`, an entry expires once the event time passed to
    `advance_to` is more than `ttl_seconds` past its last write, and is dropped
    then. So the state keeps about `ttl_seconds` of messages, and a lookup of an
    older entry falls back to the ledger, as with the Redis state. As there, a
    `claim_*` on an entry already set does not extend it, while `put_ticket`,
    `set_alias`, `set_outcome` and a newer `note_subject` do. `ThreadIndex`
    advances the state it uses to the newest event time it has seen. Without
    `ttl_seconds` nothing expires.
    """

    def __init__(self, ttl_seconds: float | None = None) -> None:
        """Raise ValueError for a negative `ttl_seconds`."""
        if ttl_seconds is not None and not ttl_seconds >= 0:
            raise ValueError(
                f"invalid thread index TTL {ttl_seconds}: use 0 or more seconds "
                "([threading] index_ttl)"
            )

        self._ttl = ttl_seconds if ttl_seconds is not None else float("inf")
        # Event time of writes, in seconds since the epoch.
        self._now = float("-inf")
        # No entry is stamped before this, so no drop is due while the cutoff stays below it.
        self._oldest = float("-inf")
        self._ids: _ExpiringMap[tuple[str, str], str] = _ExpiringMap()
        self._refs: _ExpiringMap[tuple[str, str], str] = _ExpiringMap()
        self._subjects: _ExpiringMap[tuple[str, str, str], tuple[str, str]] = _ExpiringMap()
        self._tickets: _ExpiringMap[str, TicketInfo] = _ExpiringMap()
        self._aliases: _ExpiringMap[str, str] = _ExpiringMap()
        self._outcomes: _ExpiringMap[tuple[str, str], tuple[str, str, str]] = _ExpiringMap()
        self._messages: _ExpiringMap[tuple[str, str], str] = _ExpiringMap()
        self._maps: tuple[_ExpiringMap[Any, Any], ...] = (
            self._ids, self._refs, self._subjects, self._tickets,
            self._aliases, self._outcomes, self._messages,
        )

    def __len__(self) -> int:
        """Return the number of entries held."""
        return sum(len(entries) for entries in self._maps)

    def advance_to(self, event_time: float) -> None:
        """Move the state's event time (seconds since the epoch) forward and drop what expired.

        An earlier time than the current one changes nothing: the time never goes back.
        """
        if event_time <= self._now:
            return
        self._now = event_time
        cutoff = event_time - self._ttl
        if cutoff <= self._oldest:
            return

        # Every later write is stamped at `event_time` or after, so the oldest
        # stamp left (or `event_time` when nothing is left) bounds all of them.
        oldest = event_time
        for entries in self._maps:
            stamp = entries.drop_before(cutoff)
            if stamp is not None and stamp < oldest:
                oldest = stamp
        self._oldest = oldest

    def claim_message(self, tenant: str, message_id: str, dedupe_key: str) -> str:
        return self._messages.put_new((tenant, message_id), dedupe_key, self._now)

    def tickets_for_ids(self, tenant: str, message_ids: list[str]) -> dict[str, str]:
        live = self._ids.live
        found = {}
        for message_id in message_ids:
            ticket_id = live.get((tenant, message_id))
            if ticket_id is not None:
                found[message_id] = ticket_id
        return found

    def claim_ids(self, tenant: str, message_ids: list[str], ticket_id: str) -> dict[str, str]:
        taken = {}
        for message_id in message_ids:
            holder = self._ids.put_new((tenant, message_id), ticket_id, self._now)
            if holder != ticket_id:
                taken[message_id] = holder
        return taken

    def ref(self, tenant: str, ref: str) -> str | None:
        return self._refs.live.get((tenant, ref))

    def claim_ref(self, tenant: str, ref: str, ticket_id: str) -> None:
        self._refs.put_new((tenant, ref), ticket_id, self._now)

    def subject(self, tenant: str, requester: str, subject: str) -> tuple[str, str] | None:
        return self._subjects.live.get((tenant, requester, subject))

    def note_subject(self, tenant: str, requester: str, subject: str, ticket_id: str, seen: str) -> None:
        previous = self._subjects.live.get((tenant, requester, subject))
        if previous is None or previous[1] <= seen:
            self._subjects.put((tenant, requester, subject), (ticket_id, seen), self._now)

    def ticket(self, ticket_id: str) -> TicketInfo | None:
        return self._tickets.live.get(ticket_id)

    def put_ticket(self, info: TicketInfo) -> None:
        self._tickets.put(info.ticket_id, info, self._now)

    def drop_ticket(self, ticket_id: str) -> None:
        self._tickets.pop(ticket_id)

    def alias(self, ticket_id: str) -> str | None:
        return self._aliases.live.get(ticket_id)

    def set_alias(self, old_id: str, new_id: str) -> None:
        self._aliases.put(old_id, new_id, self._now)

    def outcome(self, tenant: str, dedupe_key: str) -> tuple[str, str, str] | None:
        return self._outcomes.live.get((tenant, dedupe_key))

    def set_outcome(self, tenant: str, dedupe_key: str, ticket_id: str, kind: str, source: str) -> None:
        self._outcomes.put((tenant, dedupe_key), (ticket_id, kind, source), self._now)

    def flush(self) -> None:
        return None


@dataclass(frozen=True)
class _Evidence:
    tickets: dict[str, str]  # ticket id → method that found it
    unknown_keys: tuple[str, ...]
    # Tickets the evidence named but the sender may not merge; their ids stay theirs.
    declined: frozenset[str] = frozenset()


class ThreadIndex:
    """The shared index of one process: message ids, keys and tokens to tickets.

    All worker threads of a process share one index (every method holds a lock).
    What this run decided lives in its `ThreadState` (in memory by default, Redis
    for several processes); what earlier runs wrote, or what the state has let
    expire, is read from the ledger on a miss.

    The default in-memory state keeps an entry for max(`threading.index_ttl`,
    `dedupe.window`) seconds of event time after its last write. Event time is
    the newest `received_at` seen, capped at each message's `ingested_at`, so a
    forged future Date cannot expire the whole index at once.
    """

    def __init__(
        self, settings: Settings, ledger: Ledger | None = None, state: ThreadState | None = None
    ) -> None:
        self._settings = settings
        self._ledger: Ledger = ledger or NullLedger()
        if state is None:
            state = MemoryThreadState(max(settings.threading.index_ttl, settings.dedupe.window))
        self._state: ThreadState = state
        # The in-memory state expires by event time, so each decision moves it forward.
        self._expiring = state if isinstance(state, MemoryThreadState) else None
        self._last_event_times: tuple[object, object] = (None, None)
        self._key_pattern = re.compile(settings.threading.key_pattern)
        self._lock = threading.RLock()

    def _advance_event_time(self, event: Event) -> None:
        """Move the in-memory state's event time to this message's time when that is newer.

        The time is `received_at`, but not later than `ingested_at`: mail cannot
        arrive after it was read. An unreadable time leaves the state's time as it is.
        """
        times = (event.get("received_at"), event.get("ingested_at"))
        if self._expiring is None or times == self._last_event_times:
            return
        self._last_event_times = times

        moment = _epoch_seconds(times[0])
        ingested = _epoch_seconds(times[1])
        if moment is None or (ingested is not None and ingested < moment):
            moment = ingested
        if moment is not None:
            self._expiring.advance_to(moment)

    def decide(self, copy: TenantCopy, dedupe_key: str, allow_open: bool) -> Outcome | None:
        """Thread one tenant copy; return its outcome, or None to hold it as an orphan.

        With `allow_open` false, a message whose thread headers (or reply-prefixed
        subject) point at nothing known yet is held. With it true (the wait is
        over, or the input ended) it opens a ticket, or is suppressed when it may
        not open one.
        """
        with self._lock:
            self._advance_event_time(copy.event)
            try:
                return self._decide(copy, dedupe_key, allow_open)
            finally:
                self._state.flush()

    def _decide(self, copy: TenantCopy, dedupe_key: str, allow_open: bool) -> Outcome | None:
        copy = self._unique_message_id(copy, dedupe_key)
        evidence = self._evidence(copy)
        if evidence.tickets:
            return self._join(copy, dedupe_key, evidence)

        if not allow_open and self._may_be_orphan(copy.event):
            return None

        if copy.automatic is not None:
            return self._suppress(copy, dedupe_key, copy.automatic)
        if copy.bulk_suppressed:
            return self._suppress(copy, dedupe_key, copy.bulk or "bulk")

        return self._open(copy, dedupe_key, evidence.unknown_keys)

    def replay_stored(self, copy: TenantCopy, dedupe_key: str) -> Outcome | str | None:
        """Check whether this exact message was decided before (this run) or stored (earlier runs).

        Returns the stored outcome again when it is a re-read of the same source
        position, "duplicate" when the same message came from elsewhere, and None
        when it is not stored.
        """
        with self._lock:
            self._advance_event_time(copy.event)
            stored = self._state.outcome(copy.tenant, dedupe_key)
            if stored is None:
                from_ledger = self._ledger.stored_message(copy.tenant, dedupe_key)
                if from_ledger is None:
                    return None
                source, ticket_id, kind = from_ledger
                stored = (ticket_id, kind, source)

            ticket_id, kind, source = stored
            if source != copy.event["source"]:
                return "duplicate"
            return self._repeat(copy, dedupe_key, self._resolve(ticket_id), kind)

    def _repeat(self, copy: TenantCopy, dedupe_key: str, ticket_id: str, kind: str) -> Outcome:
        if kind not in ("created", "threaded"):
            return Outcome(
                kind="suppressed", source=copy.event["source"], first_copy=copy.first_copy,
                tenant=copy.tenant, copy=copy, dedupe_key=dedupe_key, reason="reread",
            )
        info = self._ticket(ticket_id)
        return Outcome(
            kind="created" if kind == "created" else "threaded",
            source=copy.event["source"],
            first_copy=copy.first_copy,
            tenant=copy.tenant,
            copy=copy,
            ticket_id=ticket_id,
            method="reread",
            reply_address=reply_address(copy.mailbox, ticket_id) if info else None,
            dedupe_key=dedupe_key,
        )

    def _may_be_orphan(self, event: Event) -> bool:
        if thread_parents(event):
            return True
        return has_reply_prefix(event["envelope"]["subject"])

    def _evidence(self, copy: TenantCopy) -> _Evidence:
        event = copy.event
        tenant = copy.tenant
        found: dict[str, str] = {}

        self._find_by_headers(tenant, event, found)
        unknown_keys = self._find_by_keys(tenant, event, found)
        for token in plus_tokens(event, self._settings.routing.inbound_domains):
            ticket_id = self._lookup_ref(tenant, f"token:{token}")
            if ticket_id is not None:
                found.setdefault(ticket_id, "plus_address")

        if not found and not thread_parents(event):
            ticket_id = self._find_by_subject(tenant, event)
            if ticket_id is not None:
                found[ticket_id] = "subject"

        # An id the ledger maps to a ticket it cannot load is no evidence.
        loadable = {ticket_id: method for ticket_id, method in found.items() if self._ticket(ticket_id)}
        declined: frozenset[str] = frozenset()
        if len(loadable) > 1:
            mergeable = self._mergeable(event, loadable)
            declined = frozenset(loadable) - frozenset(mergeable)
            loadable = mergeable
        return _Evidence(loadable, tuple(unknown_keys), declined)

    def _unique_message_id(self, copy: TenantCopy, dedupe_key: str) -> TenantCopy:
        """Give a message whose Message-ID another message already holds an id of its own.

        Two different messages with one Message-ID (a broken mailer, or someone
        reusing an id to slip into a ticket) must not thread through it: the
        first holder keeps the id, and the later one gets
        `<original.HASH@reused.ticketflow.invalid>` and a `message_id_reused` defect.
        """
        tenant = copy.tenant
        message_id = copy.event["envelope"]["message_id"]
        holder = self._state.claim_message(tenant, message_id, dedupe_key)
        if holder == dedupe_key:
            holder = self._ledger.message_holder(tenant, message_id, dedupe_key)
        if holder is None or holder == dedupe_key:
            return copy

        log.warning("message id %s reused by different content from %s; giving it its own id",
                    message_id, copy.event["source"])
        unique = f"<{message_id.strip('<>')}.{dedupe_key.rpartition('|')[2][:12]}@reused.ticketflow.invalid>"
        event = dict(copy.event)
        event["envelope"] = {**copy.event["envelope"], "message_id": unique}
        event["defects"] = [
            *copy.event["defects"],
            {"code": "message_id_reused", "detail": f"{message_id} belongs to an earlier, different message"},
        ]
        return replace(copy, event=event)  # type: ignore[arg-type]

    def _mergeable(self, event: Event, found: dict[str, str]) -> dict[str, str]:
        """Keep the tickets this sender may merge: answering a message is not enough.

        Message ids leak (quoted mail, forwarded headers), so a stranger whose
        References name several customers' tickets must not fold them into one.
        The ticket of the message it answers (In-Reply-To) is always kept; others
        only when the sender takes part in them or shares their requester's
        organization.
        """
        sender = event["envelope"]["from"]
        kept = {
            ticket_id: method
            for ticket_id, method in found.items()
            if method == "in_reply_to" or self._may_join_by_key(sender, self._ticket(ticket_id))
        }
        if kept:
            return kept
        first = min(found, key=lambda ticket_id: self._ticket(ticket_id).first)  # type: ignore[union-attr]
        return {first: found[first]}

    def _find_by_headers(self, tenant: str, event: Event, found: dict[str, str]) -> None:
        envelope = event["envelope"]
        parents = thread_parents(event)
        ids = [envelope["message_id"], *parents]
        known = self._lookup_ids(tenant, ids)
        for message_id in ids:
            ticket_id = known.get(message_id)
            if ticket_id is None:
                continue
            method = "in_reply_to" if message_id == envelope["in_reply_to"] else "references"
            found.setdefault(ticket_id, method)

    def _find_by_keys(self, tenant: str, event: Event, found: dict[str, str]) -> list[str]:
        """Look up the subject's ticket keys; return the external references to keep.

        A key of the ledger is one ticket for everyone. A key the ledger does not
        know belongs to some other system, so it is kept per organization
        (`SUP-42@customer.example`): two companies quoting the same foreign key
        get two tickets, whichever writes first.
        """
        unknown: list[str] = []
        sender = event["envelope"]["from"]
        for key in subject_keys(event["envelope"]["subject"], self._key_pattern):
            ticket_id = self._lookup_ref(tenant, key)
            if ticket_id is not None:
                if self._may_join_by_key(sender, self._ticket(ticket_id)):
                    found.setdefault(ticket_id, "subject_key")
                continue

            external = f"{key}@{self._organization(sender)}"
            ticket_id = self._lookup_ref(tenant, external)
            if ticket_id is not None and self._may_join_by_key(sender, self._ticket(ticket_id)):
                found.setdefault(ticket_id, "subject_key")
            else:
                unknown.append(external)
        return unknown

    def _organization(self, sender: str) -> str:
        """Return the sender's domain, or the whole address for a free-mail domain."""
        domain = mail_domain(sender)
        if not domain or domain in self._settings.threading.free_mail_domains:
            return sender
        return domain

    def _may_join_by_key(self, sender: str, info: TicketInfo | None) -> bool:
        if info is None:
            return False
        if sender in info.participants or sender == info.requester:
            return True
        domain = mail_domain(sender)
        if not domain or domain in self._settings.threading.free_mail_domains:
            return False
        return domain == mail_domain(info.requester)

    def _find_by_subject(self, tenant: str, event: Event) -> str | None:
        subject = event["envelope"]["subject"]
        if not has_reply_prefix(subject):
            return None
        requester = event["envelope"]["from"]
        normalized = normalize_subject(subject)
        if not normalized or not requester:
            return None

        since = _seconds_before(event["received_at"], self._settings.threading.subject_window)
        remembered = self._state.subject(tenant, requester, normalized)
        if remembered is not None:
            ticket_id, last_seen = remembered
            return self._resolve(ticket_id) if last_seen >= since else None
        return self._ledger.ticket_for_subject(tenant, requester, normalized, since)

    def _join(self, copy: TenantCopy, dedupe_key: str, evidence: _Evidence) -> Outcome:
        infos = [self._ticket(ticket_id) for ticket_id in evidence.tickets]
        tickets = sorted((info for info in infos if info is not None), key=lambda info: info.first)
        target = tickets[0]
        method = evidence.tickets[target.ticket_id]
        folded = [info.ticket_id for info in tickets[1:]]

        event = copy.event
        if copy.thread_order < target.first:
            folded.append(target.ticket_id)
            target = self._renamed(target, copy)
        for info in tickets[1:]:
            target.participants |= info.participants

        self._fold(folded, target.ticket_id)
        self._state.set_outcome(copy.tenant, dedupe_key, target.ticket_id, "threaded", event["source"])
        taken = self._index_message(copy, target, evidence.unknown_keys, evidence.declined)
        if taken:
            # Another process opened a ticket for this thread meanwhile: fold it in too.
            return self._join(copy, dedupe_key, _with_tickets(evidence, taken, target.ticket_id, method))

        return Outcome(
            kind="threaded",
            source=event["source"],
            first_copy=copy.first_copy,
            tenant=copy.tenant,
            copy=copy,
            ticket_id=target.ticket_id,
            merged_from=tuple(folded),
            method=method,
            external_refs=evidence.unknown_keys,
            reply_address=reply_address(copy.mailbox, target.ticket_id),
            dedupe_key=dedupe_key,
        )

    def _open(self, copy: TenantCopy, dedupe_key: str, unknown_keys: tuple[str, ...]) -> Outcome:
        event = copy.event
        envelope = event["envelope"]
        info = TicketInfo(
            ticket_id=ticket_id_for(copy.tenant, envelope["message_id"]),
            tenant=copy.tenant,
            first_sent_at=copy.thread_order[0],
            first_message_id=envelope["message_id"],
            requester=envelope["from"],
        )
        self._state.put_ticket(info)
        self._state.claim_ref(copy.tenant, f"token:{reply_token(info.ticket_id)}", info.ticket_id)
        self._state.set_outcome(copy.tenant, dedupe_key, info.ticket_id, "created", event["source"])
        taken = self._index_message(copy, info, unknown_keys)
        if taken:
            # Another process opened a ticket for this thread meanwhile: join it instead.
            evidence = _Evidence({}, unknown_keys)
            return self._join(copy, dedupe_key, _with_tickets(evidence, taken, info.ticket_id, "references"))

        return Outcome(
            kind="created",
            source=event["source"],
            first_copy=copy.first_copy,
            tenant=copy.tenant,
            copy=copy,
            ticket_id=info.ticket_id,
            external_refs=unknown_keys,
            reply_address=reply_address(copy.mailbox, info.ticket_id),
            dedupe_key=dedupe_key,
        )

    def _suppress(self, copy: TenantCopy, dedupe_key: str, reason: str) -> Outcome:
        self._state.set_outcome(copy.tenant, dedupe_key, "", "suppressed", copy.event["source"])
        return Outcome(
            kind="suppressed",
            source=copy.event["source"],
            first_copy=copy.first_copy,
            tenant=copy.tenant,
            copy=copy,
            dedupe_key=dedupe_key,
            reason=reason,
        )

    def _renamed(self, info: TicketInfo, copy: TenantCopy) -> TicketInfo:
        envelope = copy.event["envelope"]
        renamed = replace(
            info,
            ticket_id=ticket_id_for(copy.tenant, envelope["message_id"]),
            first_sent_at=copy.thread_order[0],
            first_message_id=envelope["message_id"],
            requester=envelope["from"],
            participants=set(info.participants),
        )
        self._state.put_ticket(renamed)
        self._state.claim_ref(copy.tenant, f"token:{reply_token(renamed.ticket_id)}", renamed.ticket_id)
        return renamed

    def _fold(self, folded: list[str], into: str) -> None:
        for old in folded:
            if old != into:
                self._state.set_alias(old, into)
                self._state.drop_ticket(old)

    def _index_message(
        self,
        copy: TenantCopy,
        info: TicketInfo,
        unknown_keys: Iterable[str],
        declined: frozenset[str] = frozenset(),
    ) -> dict[str, str]:
        """Index a message's ids, keys and subject under a ticket.

        Returns the ids that another ticket already holds (after following
        merges), which proves that ticket is the same thread; tickets in
        `declined` were seen and deliberately not merged, so they do not count.
        """
        event = copy.event
        envelope = event["envelope"]
        tenant = copy.tenant

        # Every write comes before the claim, so a shared state can send them all
        # in the claim's round trip.
        for key in unknown_keys:
            self._state.claim_ref(tenant, key, info.ticket_id)
        info.participants.add(envelope["from"])
        self._state.put_ticket(info)
        normalized = normalize_subject(envelope["subject"])
        if normalized and envelope["from"]:
            self._state.note_subject(tenant, envelope["from"], normalized, info.ticket_id, event["received_at"])

        ids = [envelope["message_id"], *thread_parents(event)]
        taken = self._state.claim_ids(tenant, ids, info.ticket_id)

        others = {}
        for message_id, holder in taken.items():
            holder = self._resolve(holder)
            if holder != info.ticket_id and holder not in declined and self._ticket(holder) is not None:
                others[message_id] = holder
        return others

    def _lookup_ids(self, tenant: str, ids: list[str]) -> dict[str, str]:
        known = {
            message_id: self._resolve(ticket_id)
            for message_id, ticket_id in self._state.tickets_for_ids(tenant, ids).items()
        }
        missing = [message_id for message_id in ids if message_id not in known]
        if missing:
            for message_id, ticket_id in self._ledger.tickets_for_ids(tenant, missing).items():
                known[message_id] = self._resolve(ticket_id)
        return known

    def _lookup_ref(self, tenant: str, ref: str) -> str | None:
        ticket_id = self._state.ref(tenant, ref)
        if ticket_id is None:
            ticket_id = self._ledger.ticket_for_ref(tenant, ref)
        return self._resolve(ticket_id) if ticket_id else None

    def _ticket(self, ticket_id: str) -> TicketInfo | None:
        ticket_id = self._resolve(ticket_id)
        info = self._state.ticket(ticket_id)
        if info is None:
            info = self._ledger.ticket_info(ticket_id)
            if info is not None:
                self._state.put_ticket(info)
                if info.ticket_id != ticket_id:
                    self._state.set_alias(ticket_id, info.ticket_id)
        return info

    def _resolve(self, ticket_id: str) -> str:
        for _ in range(64):
            newer = self._state.alias(ticket_id)
            if newer is None or newer == ticket_id:
                return ticket_id
            ticket_id = newer
        return ticket_id


def _with_tickets(evidence: _Evidence, taken: dict[str, str], ticket_id: str, method: str) -> _Evidence:
    tickets = dict(evidence.tickets)
    tickets.setdefault(ticket_id, method)
    for holder in taken.values():
        tickets.setdefault(holder, "references")
    return _Evidence(tickets, evidence.unknown_keys, evidence.declined)


def _epoch_seconds(timestamp: object) -> float | None:
    """Return an RFC 3339 timestamp in seconds since the epoch, or None when unreadable.

    A timestamp without a zone is read as UTC.
    """
    if not isinstance(timestamp, str):
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _seconds_before(timestamp: str, seconds: float) -> str:
    """Return the RFC 3339 time `seconds` before `timestamp`; "" (no bound) if unreadable."""
    try:
        moment = datetime.strptime(timestamp, _TIMESTAMP_FORMAT)
    except ValueError:
        return ""
    return (moment - timedelta(seconds=seconds)).strftime(_TIMESTAMP_FORMAT)
