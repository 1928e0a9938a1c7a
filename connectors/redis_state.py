"""Shared state in Redis, for runs of several processes: the thread index and dedupe records.

The thread index maps message ids, ticket keys and reply tokens to tickets. Its
outcome records, one per (tenant, message), name the source position each
message was first read from: a second delivery from elsewhere is a duplicate in
every process, while a re-read of the same position replays the same outcome.
Each process also keeps its own in-memory `DedupeWindow` for messages in flight.

Every entry carries a TTL of `threading.index_ttl` seconds (at least the dedupe
window), measured by Redis's clock from the write; lookups of older entries
fall back to the store's ledger.

Losing Redis parks the flow instead of losing mail: every call retries a
connection or timeout error with exponential backoff (capped at
`MAX_BACKOFF_SECONDS`) and logs each failure, and the worker does not read its
source while it waits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from ticketflow.config import mask_url_password
from ticketflow.connectors.retry import retry_transient
from ticketflow.operators.thread import TicketInfo

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
T = TypeVar("T")

# Set each key only where it is unset; return (position, holder) pairs for keys
# another value already holds.
_CLAIM_SCRIPT = """
local taken = {}
for i, key in ipairs(KEYS) do
  local ok = redis.call('SET', key, ARGV[1], 'NX', 'EX', ARGV[2])
  if not ok then
    local holder = redis.call('GET', key)
    if holder and holder ~= ARGV[1] then
      table.insert(taken, i)
      table.insert(taken, holder)
    end
  end
end
return taken
"""

# For each id key, return the ticket holding it after following merges (alias
# keys, ARGV[1] is their prefix) and that ticket's document (prefix ARGV[2]);
# false for an unknown id.
_LOOKUP_SCRIPT = """
local answer = {}
for i, key in ipairs(KEYS) do
  local ticket = redis.call('GET', key)
  if ticket then
    for _ = 1, 16 do
      local newer = redis.call('GET', ARGV[1] .. ticket)
      if not newer then break end
      ticket = newer
    end
    table.insert(answer, ticket)
    table.insert(answer, redis.call('GET', ARGV[2] .. ticket) or false)
  else
    table.insert(answer, false)
    table.insert(answer, false)
  end
end
return answer
"""

# Keep the newest sighting of a subject: ARGV = ticket id, seen time, ttl.
_NOTE_SUBJECT_SCRIPT = """
local previous = redis.call('GET', KEYS[1])
if previous then
  local seen = cjson.decode(previous)[2]
  if seen > ARGV[2] then return 0 end
end
redis.call('SET', KEYS[1], cjson.encode({ARGV[1], ARGV[2]}), 'EX', ARGV[3])
return 1
"""


class RedisUnavailable(RuntimeError):
    """Redis was unreachable at start; the message names the URL."""


def connect(url: str) -> redis.Redis:
    """Connect to Redis and ping it; raise `RedisUnavailable` naming the URL when that fails."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = str(exc).rstrip(".")
        raise RedisUnavailable(
            f"cannot use Redis at {mask_url_password(url)!r} ([state] redis_url): {reason}. "
            "Start Redis or fix the URL"
        ) from exc
    return client


def retrying(action: Callable[[], T], what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run a Redis call, retrying connection and timeout errors until Redis is back."""
    return retry_transient(
        action,
        is_transient=lambda exc: isinstance(exc, (redis.ConnectionError, redis.TimeoutError)),
        what=f"redis {what}",
        attempts=None,
        max_delay=MAX_BACKOFF_SECONDS,
        sleep=sleep,
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class _Expiring:
    """A small cache of values, each trusted for `seconds` (forever with None); bounded."""

    def __init__(self, seconds: float | None, max_entries: int, clock: Callable[[], float]) -> None:
        self._seconds = seconds
        self._max_entries = max_entries
        self._clock = clock
        self._values: dict[Any, tuple[Any, float]] = {}

    def get(self, key: Any) -> tuple[bool, Any]:
        entry = self._values.get(key)
        if entry is None:
            return False, None
        value, stored_at = entry
        if self._seconds is not None and self._clock() - stored_at > self._seconds:
            del self._values[key]
            return False, None
        return True, value

    def put(self, key: Any, value: Any) -> None:
        if len(self._values) >= self._max_entries:
            # Drop the oldest tenth: cheap, and a miss only costs a Redis read.
            for old in list(self._values)[: self._max_entries // 10 or 1]:
                del self._values[old]
        self._values[key] = (value, self._clock())


class RedisThreadState:
    """The thread join's state shared by every process of a run (see `ThreadState`).

    To keep Redis off the critical path, each process caches what cannot change
    once written (which ticket holds a message id, a reference or an outcome), and
    briefly (`VOLATILE_SECONDS`) what can (ticket facts, the absence of a merge).
    Writes are queued and sent in one pipeline, either together with the next id
    claim or by `flush`, which the thread index calls after every decision.
    """

    VOLATILE_SECONDS = 1.0
    CACHE_ENTRIES = 200_000

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._ns = namespace
        self._ttl = max(1, int(ttl_seconds))
        self._lookup = client.register_script(_LOOKUP_SCRIPT)
        # Writes waiting for the next round trip: (command, args, keyword args).
        self._queued: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._ids = _Expiring(None, self.CACHE_ENTRIES, clock)
        self._refs = _Expiring(None, self.CACHE_ENTRIES, clock)
        self._outcomes = _Expiring(None, self.CACHE_ENTRIES, clock)
        self._messages = _Expiring(None, self.CACHE_ENTRIES, clock)
        self._tickets = _Expiring(self.VOLATILE_SECONDS, self.CACHE_ENTRIES, clock)
        self._aliases = _Expiring(self.VOLATILE_SECONDS, self.CACHE_ENTRIES, clock)

    # -- queued writes -------------------------------------------------------

    def _queue(self, command: str, *args: Any, **kwargs: Any) -> None:
        self._queued.append((command, args, kwargs))

    def _send(self, extra: list[tuple[str, tuple[Any, ...], dict[str, Any]]], what: str) -> list[Any]:
        """Send the queued writes plus `extra` in one pipeline; return the replies.

        The pipeline is rebuilt on every attempt: redis-py empties a pipeline
        when it executes, even when the connection fails halfway.
        """
        commands = [*self._queued, *extra]
        self._queued = []

        def execute() -> list[Any]:
            pipeline = self._redis.pipeline(transaction=False)
            for command, args, kwargs in commands:
                getattr(pipeline, command)(*args, **kwargs)
            return list(pipeline.execute())

        return retrying(execute, what)

    def flush(self) -> None:
        """Send the queued writes in one pipeline."""
        if self._queued:
            self._send([], "state write")

    # -- message ids -------------------------------------------------------------

    def _id_key(self, tenant: str, message_id: str) -> str:
        return f"{self._ns}:id:{tenant}:{_digest(message_id)}"

    def tickets_for_ids(self, tenant: str, message_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        missing: list[str] = []
        for message_id in message_ids:
            hit, ticket_id = self._ids.get((tenant, message_id))
            if hit:
                found[message_id] = ticket_id
            else:
                missing.append(message_id)
        if not missing:
            return found

        keys = [self._id_key(tenant, message_id) for message_id in missing]
        prefixes = [f"{self._ns}:alias:", f"{self._ns}:ticket:"]
        answer = retrying(lambda: self._lookup(keys=keys, args=prefixes), "id lookup")
        for message_id, holder, document in zip(missing, answer[::2], answer[1::2], strict=True):
            if not holder:
                continue
            ticket_id = holder.decode()
            found[message_id] = ticket_id
            self._ids.put((tenant, message_id), ticket_id)
            # The script followed every merge: this ticket is final as of now.
            self._aliases.put(ticket_id, None)
            if document:
                self._tickets.put(ticket_id, _ticket_from_json(document))
        return found

    def claim_ids(self, tenant: str, message_ids: list[str], ticket_id: str) -> dict[str, str]:
        if not message_ids:
            return {}
        keys = [self._id_key(tenant, message_id) for message_id in message_ids]
        # EVAL, not EVALSHA: a Redis that restarted has forgotten loaded scripts,
        # and a pipeline cannot reload one halfway.
        claim = ("eval", (_CLAIM_SCRIPT, len(keys), *keys, ticket_id, self._ttl), {})
        answer = self._send([claim], "id claim")[-1]

        taken = {}
        for position, holder in zip(answer[::2], answer[1::2], strict=True):
            taken[message_ids[int(position) - 1]] = holder.decode()
        for message_id in message_ids:
            self._ids.put((tenant, message_id), taken.get(message_id, ticket_id))
        return taken

    def claim_message(self, tenant: str, message_id: str, dedupe_key: str) -> str:
        hit, holder = self._messages.get((tenant, message_id))
        if hit:
            return holder
        key = f"{self._ns}:message:{tenant}:{_digest(message_id)}"
        claim = [("set", (key, dedupe_key), {"nx": True, "ex": self._ttl}), ("get", (key,), {})]
        current = self._send(claim, "message claim")[-1]
        holder = current.decode() if current is not None else dedupe_key
        self._messages.put((tenant, message_id), holder)
        return holder

    # -- references, subjects, tickets, aliases, outcomes -----------------------------

    def ref(self, tenant: str, ref: str) -> str | None:
        hit, ticket_id = self._refs.get((tenant, ref))
        if hit:
            return ticket_id
        value = retrying(lambda: self._redis.get(f"{self._ns}:ref:{tenant}:{ref}"), "ref lookup")
        if value is None:
            return None
        self._refs.put((tenant, ref), value.decode())
        return value.decode()

    def claim_ref(self, tenant: str, ref: str, ticket_id: str) -> None:
        self._queue("set", f"{self._ns}:ref:{tenant}:{ref}", ticket_id, nx=True, ex=self._ttl)

    def _subject_key(self, tenant: str, requester: str, subject: str) -> str:
        return f"{self._ns}:subject:{tenant}:{_digest(requester + chr(0) + subject)}"

    def subject(self, tenant: str, requester: str, subject: str) -> tuple[str, str] | None:
        self.flush()  # a subject this decision just noted must be visible
        key = self._subject_key(tenant, requester, subject)
        value = retrying(lambda: self._redis.get(key), "subject lookup")
        if value is None:
            return None
        ticket_id, seen = json.loads(value)
        return ticket_id, seen

    def note_subject(self, tenant: str, requester: str, subject: str, ticket_id: str, seen: str) -> None:
        key = self._subject_key(tenant, requester, subject)
        self._queue("eval", _NOTE_SUBJECT_SCRIPT, 1, key, ticket_id, seen, self._ttl)

    def ticket(self, ticket_id: str) -> TicketInfo | None:
        hit, info = self._tickets.get(ticket_id)
        if hit:
            return info
        value = retrying(lambda: self._redis.get(f"{self._ns}:ticket:{ticket_id}"), "ticket lookup")
        if value is None:
            return None
        info = _ticket_from_json(value)
        self._tickets.put(ticket_id, info)
        return info

    def put_ticket(self, info: TicketInfo) -> None:
        document = json.dumps(
            {
                "ticket_id": info.ticket_id,
                "tenant": info.tenant,
                "first_sent_at": info.first_sent_at,
                "first_message_id": info.first_message_id,
                "requester": info.requester,
                "participants": sorted(info.participants),
            }
        )
        self._tickets.put(info.ticket_id, info)
        self._queue("set", f"{self._ns}:ticket:{info.ticket_id}", document, ex=self._ttl)

    def drop_ticket(self, ticket_id: str) -> None:
        self._tickets.put(ticket_id, None)
        self._queue("delete", f"{self._ns}:ticket:{ticket_id}")

    def alias(self, ticket_id: str) -> str | None:
        hit, newer = self._aliases.get(ticket_id)
        if hit:
            return newer
        value = retrying(lambda: self._redis.get(f"{self._ns}:alias:{ticket_id}"), "alias lookup")
        newer = value.decode() if value is not None else None
        self._aliases.put(ticket_id, newer)
        return newer

    def set_alias(self, old_id: str, new_id: str) -> None:
        self._aliases.put(old_id, new_id)
        self._queue("set", f"{self._ns}:alias:{old_id}", new_id, ex=self._ttl)

    def _outcome_key(self, tenant: str, dedupe_key: str) -> str:
        return f"{self._ns}:outcome:{tenant}:{_digest(dedupe_key)}"

    def outcome(self, tenant: str, dedupe_key: str) -> tuple[str, str, str] | None:
        hit, stored = self._outcomes.get((tenant, dedupe_key))
        if hit:
            return stored
        key = self._outcome_key(tenant, dedupe_key)
        value = retrying(lambda: self._redis.get(key), "outcome lookup")
        if value is None:
            return None
        ticket_id, kind, source = json.loads(value)
        self._outcomes.put((tenant, dedupe_key), (ticket_id, kind, source))
        return ticket_id, kind, source

    def set_outcome(self, tenant: str, dedupe_key: str, ticket_id: str, kind: str, source: str) -> None:
        self._outcomes.put((tenant, dedupe_key), (ticket_id, kind, source))
        value = json.dumps([ticket_id, kind, source])
        self._queue("set", self._outcome_key(tenant, dedupe_key), value, ex=self._ttl)


def _ticket_from_json(document: bytes | str) -> TicketInfo:
    data = json.loads(document)
    return TicketInfo(
        ticket_id=data["ticket_id"],
        tenant=data["tenant"],
        first_sent_at=data["first_sent_at"],
        first_message_id=data["first_message_id"],
        requester=data["requester"],
        participants=set(data["participants"]),
    )
