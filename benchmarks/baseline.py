"""The straightforward pipeline the flow is measured against.

Written the way a how-to guide for email-to-ticket intake suggests: parse each
message with the standard library's `email` package (`policy.default`), build a
JSON event (addresses, subject, ids, text and HTML bodies, attachments with
their SHA-256), keep an idempotency key of event id and Message-ID, thread a
reply by In-Reply-To and References through a map of message ids to tickets,
read the priority from the subject, and write the ticket and the message to
SQLite with one commit per message.

It does less than the flow (no tenants, no gate, no subject keys, no orphans
held for their parent, no merges), so the ratio flatters the baseline; that is
the point of a baseline.

    python benchmarks/baseline.py CORPUS STORE.db
"""

from __future__ import annotations

import email
import hashlib
import json
import re
import sqlite3
import sys
import time
from collections.abc import Iterable
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    requester TEXT NOT NULL,
    priority TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    idempotency_key TEXT PRIMARY KEY,
    ticket_id INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS thread_ids (
    message_id TEXT PRIMARY KEY,
    ticket_id INTEGER NOT NULL
);
"""

_PRIORITY = re.compile(r"\[(P[0-4])\]")


def parse_to_event(raw: bytes) -> dict[str, Any]:
    """Parse one message with `policy.default` into a JSON-ready event."""
    message: EmailMessage = email.message_from_bytes(raw, policy=policy.default)  # type: ignore[assignment]
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    attachments = []
    for part in message.iter_attachments():
        content = part.get_content()
        data = content.encode() if isinstance(content, str) else bytes(content)
        attachments.append(
            {
                "filename": part.get_filename(),
                "content_type": part.get_content_type(),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    sender = message["From"]
    return {
        "event_id": "evt_" + hashlib.sha256(raw).hexdigest()[:24],
        "from": sender.addresses[0].addr_spec if sender and sender.addresses else "",
        "to": [address.addr_spec for address in message["To"].addresses] if message["To"] else [],
        "subject": str(message["Subject"] or ""),
        "message_id": str(message["Message-ID"] or "").strip(),
        "in_reply_to": str(message["In-Reply-To"] or "").strip() or None,
        "references": str(message["References"] or "").split(),
        "date": str(message["Date"] or ""),
        "text": text_part.get_content() if text_part is not None else "",
        "html": html_part.get_content() if html_part is not None else "",
        "attachments": attachments,
    }


class BaselineStore:
    """Tickets in SQLite, one transaction per message."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path)
        self._db.executescript(SCHEMA)
        self._db.commit()
        self.counts = {"tickets_created": 0, "replies_threaded": 0, "duplicates": 0}

    def ingest(self, event: dict[str, Any]) -> None:
        """Store one event: skip a duplicate, add a reply to its ticket, else open a ticket."""
        key = hashlib.sha256(f"{event['event_id']}|{event['message_id']}".encode()).hexdigest()
        database = self._db
        if database.execute("SELECT 1 FROM messages WHERE idempotency_key = ?", (key,)).fetchone():
            self.counts["duplicates"] += 1
            return

        ticket_id = self._parent_ticket(event)
        if ticket_id is None:
            match = _PRIORITY.search(event["subject"])
            cursor = database.execute(
                "INSERT INTO tickets (subject, requester, priority, created_at) "
                "VALUES (?, ?, ?, ?)",
                (event["subject"], event["from"], match.group(1) if match else "P3", time.time()),
            )
            ticket_id = cursor.lastrowid
            self.counts["tickets_created"] += 1
        else:
            self.counts["replies_threaded"] += 1
        database.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?)",
            (key, ticket_id, event["message_id"], json.dumps(event)),
        )
        database.execute(
            "INSERT OR IGNORE INTO thread_ids VALUES (?, ?)", (event["message_id"], ticket_id)
        )
        database.commit()

    def _parent_ticket(self, event: dict[str, Any]) -> int | None:
        for parent in [event["in_reply_to"], *event["references"]]:
            if not parent:
                continue
            row = self._db.execute(
                "SELECT ticket_id FROM thread_ids WHERE message_id = ?", (parent,)
            ).fetchone()
            if row:
                return int(row[0])
        return None

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def run_baseline(messages: Iterable[bytes], store_path: Path) -> dict[str, Any]:
    """Run the baseline over `messages` into a SQLite file; return counts, seconds and rate."""
    store = BaselineStore(store_path)
    started = time.perf_counter()
    count = 0
    failures = 0
    try:
        for raw in messages:
            count += 1
            try:
                event = parse_to_event(raw)
            except Exception:  # noqa: BLE001 - the baseline drops what it cannot parse
                failures += 1
                continue
            store.ingest(event)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    return {
        "messages": count,
        "parse_failures": failures,
        "seconds": seconds,
        "rate": count / seconds if seconds else 0.0,
        **store.counts,
    }


if __name__ == "__main__":
    from ticketflow.connectors.corpus import iter_corpus

    if len(sys.argv) != 3:
        sys.exit(__doc__)
    result = run_baseline((record.raw for record in iter_corpus(sys.argv[1])), Path(sys.argv[2]))
    print(json.dumps(result))
