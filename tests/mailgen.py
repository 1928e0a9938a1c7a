"""Generate small threaded corpora for flow tests: deterministic for a seed."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

START = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
TENANTS = ("acme", "globex", "initech")


def message(message_id: str, sender: str, tenant: str, subject: str, sent: datetime,
            in_reply_to: str | None = None, references: tuple[str, ...] = (), relay: str = "mx1",
            body: str = "") -> bytes:
    """Build one plain-text RFC 5322 message."""
    lines = [
        f"Received: from {relay}.example.net by mx.support.example.com; {format_datetime(sent)}",
        f"From: {sender}",
        f"To: {tenant}-support@support.example.com",
        f"Subject: {subject}",
        f"Date: {format_datetime(sent)}",
        f"Message-ID: {message_id}",
    ]
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if references:
        lines.append("References: " + " ".join(references))
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "",
              body or f"Message {message_id} about {subject}.", ""]
    return "\r\n".join(lines).encode()


def thread_corpus(threads: int, replies: int = 2, duplicates: int = 5, seed: int = 7) -> list[bytes]:
    """Return `threads` threads of 1 + `replies` messages, plus redelivered copies, shuffled.

    Even threads carry full References; odd threads name only the direct parent,
    so joining them needs the shared index. A few messages are delivered twice
    through another relay.
    """
    rng = random.Random(seed)
    corpus: list[bytes] = []
    for number in range(threads):
        tenant = TENANTS[number % len(TENANTS)]
        customer = f"user{number}@customer{number % 17}.example"
        sent = START + timedelta(minutes=7 * number)
        root = f"<t{number}-0@customer.example>"
        corpus.append(message(root, customer, tenant, f"Problem {number}", sent))

        chain = [root]
        for position in range(1, replies + 1):
            own = f"<t{number}-{position}@customer.example>"
            sender = customer if position % 2 == 0 else f"agent@{tenant}.example"
            references = tuple(chain) if number % 2 == 0 else ()
            corpus.append(message(own, sender, tenant, f"Re: Problem {number}",
                                  sent + timedelta(minutes=position), in_reply_to=chain[-1],
                                  references=references))
            chain.append(own)

    for raw in rng.sample(corpus, min(duplicates, len(corpus))):
        corpus.append(raw.replace(b"from mx1.example.net", b"from mx2.example.net"))
    rng.shuffle(corpus)
    return corpus


def expected_counts(threads: int, replies: int = 2, duplicates: int = 5) -> dict[str, int]:
    """Return the summary an uninterrupted run of `thread_corpus` gives."""
    total = threads * (1 + replies)
    return {"read": total + duplicates, "fanned_out": 0, "tickets_created": threads,
            "replies_threaded": threads * replies, "duplicates": duplicates, "suppressed": 0,
            "dead_letters": 0, "review": 0}
