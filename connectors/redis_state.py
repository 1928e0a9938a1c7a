"""Shared state in Redis, for runs of several processes: the dedupe window and the thread index.

Every entry carries a TTL: dedupe marks live `dedupe.window` seconds and thread
entries `threading.index_ttl` seconds, measured by Redis's clock from the write
(the in-process window measures event time instead). The store's ledger
answers for anything older.

Losing Redis parks the flow instead of losing mail: every call retries a
connection or timeout error with exponential backoff (capped at
`MAX_BACKOFF_SECONDS`) and logs each failure, and the worker does not read its
source while it waits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import redis

from ticketflow.connectors.retry import retry_transient
from ticketflow.operators.dedupe import Verdict
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
    """Redis did not answer at start; the message names the URL."""


def connect(url: str) -> redis.Redis:
    """Connect to Redis and check it answers; raise `RedisUnavailable` naming the URL if not."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at state.redis_url = {url!r}: {exc}; start Redis or fix the URL"
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


class RedisThreadState:
    """The thread join's state shared by every process of a run (see `ThreadState`)."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_seconds: float) -> None:
        self._redis = client
        self._ns = namespace
        self._ttl = max(1, int(ttl_seconds))
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._note_subject = client.register_script(_NOTE_SUBJECT_SCRIPT)

    def _id_key(self, tenant: str, message_id: str) -> str:
        return f"{self._ns}:id:{tenant}:{_digest(message_id)}"

    def tickets_for_ids(self, tenant: str, message_ids: list[str]) -> dict[str, str]:
        if not message_ids:
            return {}
        keys = [self._id_key(tenant, message_id) for message_id in message_ids]
        values = retrying(lambda: self._redis.mget(keys), "id lookup")
        return {
            message_id: value.decode()
            for message_id, value in zip(message_ids, values, strict=True)
            if value is not None
        }

    def claim_ids(self, tenant: str, message_ids: list[str], ticket_id: str) -> dict[str, str]:
        if not message_ids:
            return {}
        keys = [self._id_key(tenant, message_id) for message_id in message_ids]
        answer = retrying(lambda: self._claim(keys=keys, args=[ticket_id, self._ttl]), "id claim")
        taken = {}
        for position, holder in zip(answer[::2], answer[1::2], strict=True):
            taken[message_ids[int(position) - 1]] = holder.decode()
        return taken

    def ref(self, tenant: str, ref: str) -> str | None:
        value = retrying(lambda: self._redis.get(f"{self._ns}:ref:{tenant}:{ref}"), "ref lookup")
        return value.decode() if value is not None else None

    def claim_ref(self, tenant: str, ref: str, ticket_id: str) -> None:
        key = f"{self._ns}:ref:{tenant}:{ref}"
        retrying(lambda: self._redis.set(key, ticket_id, nx=True, ex=self._ttl), "ref claim")

    def _subject_key(self, tenant: str, requester: str, subject: str) -> str:
        return f"{self._ns}:subject:{tenant}:{_digest(requester + chr(0) + subject)}"

    def subject(self, tenant: str, requester: str, subject: str) -> tuple[str, str] | None:
        key = self._subject_key(tenant, requester, subject)
        value = retrying(lambda: self._redis.get(key), "subject lookup")
        if value is None:
            return None
        ticket_id, seen = json.loads(value)
        return ticket_id, seen

    def note_subject(self, tenant: str, requester: str, subject: str, ticket_id: str, seen: str) -> None:
        key = self._subject_key(tenant, requester, subject)
        retrying(lambda: self._note_subject(keys=[key], args=[ticket_id, seen, self._ttl]), "subject note")

    def ticket(self, ticket_id: str) -> TicketInfo | None:
        value = retrying(lambda: self._redis.get(f"{self._ns}:ticket:{ticket_id}"), "ticket lookup")
        if value is None:
            return None
        data = json.loads(value)
        return TicketInfo(
            ticket_id=data["ticket_id"],
            tenant=data["tenant"],
            first_sent_at=data["first_sent_at"],
            first_message_id=data["first_message_id"],
            requester=data["requester"],
            participants=set(data["participants"]),
        )

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
        key = f"{self._ns}:ticket:{info.ticket_id}"
        retrying(lambda: self._redis.set(key, document, ex=self._ttl), "ticket write")

    def drop_ticket(self, ticket_id: str) -> None:
        retrying(lambda: self._redis.delete(f"{self._ns}:ticket:{ticket_id}"), "ticket drop")

    def alias(self, ticket_id: str) -> str | None:
        value = retrying(lambda: self._redis.get(f"{self._ns}:alias:{ticket_id}"), "alias lookup")
        return value.decode() if value is not None else None

    def set_alias(self, old_id: str, new_id: str) -> None:
        key = f"{self._ns}:alias:{old_id}"
        retrying(lambda: self._redis.set(key, new_id, ex=self._ttl), "alias write")

    def outcome(self, tenant: str, dedupe_key: str) -> tuple[str, str, str] | None:
        key = f"{self._ns}:outcome:{tenant}:{_digest(dedupe_key)}"
        value = retrying(lambda: self._redis.get(key), "outcome lookup")
        if value is None:
            return None
        ticket_id, kind, source = json.loads(value)
        return ticket_id, kind, source

    def set_outcome(self, tenant: str, dedupe_key: str, ticket_id: str, kind: str, source: str) -> None:
        key = f"{self._ns}:outcome:{tenant}:{_digest(dedupe_key)}"
        value = json.dumps([ticket_id, kind, source])
        retrying(lambda: self._redis.set(key, value, ex=self._ttl), "outcome write")


class RedisDedupeWindow:
    """The dedupe window in Redis: same contract as `DedupeWindow`, shared by processes.

    `check` reads the committed mark and keeps a pending one in this process (a
    message's deliveries share its thread key, so they meet on one worker);
    `commit_many` writes the marks of a stored batch in one pipeline, with a TTL
    of the window.
    """

    def __init__(self, client: redis.Redis, namespace: str, window_seconds: float) -> None:
        self._redis = client
        self._ns = namespace
        self._ttl_ms = max(1, int(window_seconds * 1000))
        self._pending: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def _key(self, tenant: str, key: str) -> str:
        return f"{self._ns}:dedupe:{tenant}:{_digest(key)}"

    def check(self, tenant: str, key: str, source: str, event_time: datetime) -> Verdict:
        with self._lock:
            seen = self._pending.get((tenant, key))
        if seen is None:
            value = retrying(lambda: self._redis.get(self._key(tenant, key)), "dedupe check")
            seen = value.decode() if value is not None else None
        if seen is None:
            with self._lock:
                self._pending[(tenant, key)] = source
            return "new"
        return "reread" if seen == source else "duplicate"

    def commit(self, tenant: str, key: str) -> None:
        self.commit_many([(tenant, key)])

    def commit_many(self, marks: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            writes = [(mark, self._pending.pop(mark)) for mark in marks if mark in self._pending]
        if not writes:
            return

        def write() -> Any:
            pipe = self._redis.pipeline(transaction=False)
            for (tenant, key), source in writes:
                pipe.set(self._key(tenant, key), source, px=self._ttl_ms)
            return pipe.execute()

        retrying(write, "dedupe commit")

    def forget(self, tenant: str, key: str) -> None:
        with self._lock:
            self._pending.pop((tenant, key), None)

    def snapshot(self) -> list[tuple[str, str, str, float]]:
        return []  # committed marks live in Redis, not in the snapshot

    def restore(self, marks: list[tuple[str, str, str, float]]) -> None:
        return None
