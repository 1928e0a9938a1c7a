"""Check that a change to the parse step leaves every event byte for byte the same.

Usage:
    python benchmarks/parse_equivalence.py record OUT.jsonl [--work-dir DIR] [--parse-module M]
    python benchmarks/parse_equivalence.py compare OUT.jsonl [--work-dir DIR]

`record` parses a fixed set of messages and writes one line per message and
walk: its name, the SHA-256 of the whole event as JSON (key order kept, since
key order is part of the output), and the header-derived parts in full, so a
difference can be read. `compare` parses the same set again and lists every
message whose event changed; it exits with status 1 when any did.

The set contains every file under tests/fixtures/mail and corpus/sample, and
the CPython test_email data files when the interpreter ships them. It adds a
3,000-message synthetic corpus (`ticketflow synth`, seed 7), written once into
the work directory. Last come 1,500 generated messages whose header sections
mix 8-bit bytes, encoded words, NULs, duplicates, odd name case and oversized
values.
Every message except the synthetic corpus is also parsed with the tolerant
walk. `ingested_at` and `source` are fixed. The attachment keys `refused` and
`quarantined` are removed before hashing, so attachment policy work that adds
them does not count as a change.

`--parse-module` records with another copy of the parse step (a package
whose `parse` module has `_parse_message`), such as the unchanged modules
copied aside, so that a reference can be recorded after the change.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INGESTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SYNTH_COUNT = 3000
SYNTH_SEED = 7
GENERATED_COUNT = 1500
GENERATED_SEED = 11
# Attachment keys added by attachment policy, not by parsing; left out of the digest.
IGNORED_ATTACHMENT_KEYS = ("refused", "quarantined")
# Event parts produced by the header code; stored in full so a change can be read.
HEADER_PARTS = ("received_at", "envelope", "headers", "authentication", "spam", "defects")


def fixture_messages() -> Iterator[tuple[str, bytes]]:
    """Yield the test fixtures, the sample corpus and CPython's test_email data files."""
    folders = [ROOT / "tests" / "fixtures" / "mail", ROOT / "corpus" / "sample"]
    stdlib_data = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
    if stdlib_data.is_dir():
        folders.append(stdlib_data)
    else:
        print(f"note: {stdlib_data} not found; CPython test_email data left out", file=sys.stderr)
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                yield str(path.relative_to(folder.parent)), path.read_bytes()


def synth_messages(work_dir: Path) -> Iterator[tuple[str, bytes]]:
    """Yield the synthetic corpus, writing it into `work_dir` the first time."""
    folder = work_dir / f"synth-{SYNTH_COUNT}-seed{SYNTH_SEED}"
    if not folder.is_dir():
        command = [
            sys.executable, "-m", "ticketflow.cli", "synth", "--count", str(SYNTH_COUNT),
            "--seed", str(SYNTH_SEED), "--format", "folder", str(folder),
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    for path in sorted(folder.iterdir()):
        yield f"synth/{path.name}", path.read_bytes()


_NAMES = (
    "From", "from", "FROM", "To", "to", "Cc", "CC", "Reply-To", "reply-to", "Subject",
    "subject", "SUBJECT", "Message-ID", "Message-Id", "message-id", "In-Reply-To",
    "References", "references", "Date", "date", "Received", "received", "X-Received",
    "Authentication-Results", "authentication-results", "Received-SPF", "X-Spam-Status",
    "X-Spam-Score", "X-Spam-Flag", "X-Spam-Level", "X-Custom", "x-custom", "Thread-Topic",
    "Keywords", "ARC-Seal", "arc-message-signature", "X-Google-DKIM-Signature",
    "X-MS-Exchange-Organization-SCL", "DKIM-Signature", "Auto-Submitted", "List-Id",
    "Precedence", "Importance", "X-Priority", "Organization", "Comments",
)  # fmt: skip

_VALUES: tuple[bytes, ...] = (
    b"plain ascii value",
    b"Alice Example <alice@example.com>",
    b'alice@example.com, Bob <BOB@Example.COM>, "Doe, Jane" <jane@example.org>',
    b"=?utf-8?B?w4RyZ2VyIG1pdCBkZXIgWmFobHVuZw==?= <kunde@example.de>",
    b"=?iso-8859-1?Q?Caf=E9_cr=E8me?= =?iso-8859-1?Q?_br=FBl=E9e?=",
    b"[EXT]=?utf-8?Q?gl=C3=BCed?=word",
    b"=?koi8-r?B?8NLJ18XU?= and =?x-unknown?Q?abc?=",
    b"=?utf-8?B?broken base64 !!?=",
    b"=?bogus-charset?Q?x=41y?=",
    "Grüße aus Köln <gruss@example.de>".encode(),
    "Grüße aus Köln".encode("latin-1"),
    "Привет мир".encode("koi8-r"),
    "日本語の件名".encode("cp932"),
    b"value with a \x00 NUL",
    b"<id1@example.com> <id2@example.com>\r\n <id1@example.com> (comment) <id 3@example.com>",
    b"bare-id@example.com",
    b"<no-at-sign>",
    b"Tue, 28 Apr 2026 10:00:00 +0200",
    b"28 Apr 26 10:00 EST",
    b"2026-04-28T10:00:00+02:00",
    b"not a date",
    b"from mx.example.com by mail.example.net; Tue, 28 Apr 2026 09:59:58 +0000",
    b"from relay without a date",
    b"mx.example.net; spf=pass smtp.mailfrom=a@example.com; dkim=fail; dkim=pass; dmarc=fail",
    b"other.example; spf=hardfail (comment; with semicolon); dmarc=permerr",
    b"softfail (example.com: domain transitions)",
    b"Yes, score=7.1 required=5.0 tests=BAYES_99",
    b"No, hits=-1.2",
    b"12.5",
    b"not-a-number",
    b"1e400",
    b"YES",
    b"*******",
    b"auto-replied",
    b"\tfolded\r\n  continuation\r\n\tthird line",
    b"",
    b"x" * 5000,
    b"=?utf-8?Q?" + b"=C3=A9" * 900 + b"?=",
    b"Group: a@example.com, b@example.com;, c@example.com",
    b"(only a comment) <commented@example.com>",
    b'"unclosed quote <q@example.com>',
    b"=?utf-8?B?" + "名前".encode() + b"?= <raw@example.com>",
    b"=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=",
    b"\x1b$BF|K\\8l\x1b(B",
)


def _header_torture(rng: random.Random, number: int) -> bytes:
    lines = []
    if rng.random() < 0.1:
        lines.append(b"From bounce@example.com Tue Apr 28 10:00:00 2026")
    count = rng.choice((3, 8, 15, 30)) if rng.random() < 0.97 else 230
    for index in range(count):
        if count > 200:
            name = f"X-Many-{index}".encode()
        else:
            name = rng.choice(_NAMES).encode()
        separator = rng.choice((b": ", b":", b" : ", b":\t"))
        lines.append(name + separator + rng.choice(_VALUES))
    lines.append(b"Content-Type: text/plain; charset=utf-8")
    newline = b"\r\n" if number % 3 else b"\n"
    body = f"body of generated message {number}\n".encode()
    return newline.join(lines) + newline + newline + body


def generated_messages() -> Iterator[tuple[str, bytes]]:
    """Yield seeded messages whose header sections stress the header decoding."""
    rng = random.Random(GENERATED_SEED)
    for number in range(GENERATED_COUNT):
        yield f"generated/{number:04d}", _header_torture(rng, number)


def _without_policy_keys(event: dict[str, Any]) -> dict[str, Any]:
    attachments = [
        {key: value for key, value in attachment.items() if key not in IGNORED_ATTACHMENT_KEYS}
        for attachment in event.get("attachments", [])
    ]
    return {**event, "attachments": attachments}


def describe(parse: Any, raw: bytes, path: str) -> dict[str, Any]:
    """Parse one message with the given walk; return its digest and header-derived parts."""
    try:
        event = parse._parse_message(
            raw, "equivalence", INGESTED, authserv_ids=(), max_references=200, path=path
        )
    except parse.UnparseableMessage as error:
        return {"digest": "unparseable", "parts": {"error": [error.reason, error.detail]}}
    event = _without_policy_keys(dict(event))
    text = json.dumps(event, ensure_ascii=False, default=repr)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    parts = {key: event[key] for key in HEADER_PARTS if key in event}
    return {"digest": digest, "parts": parts}


def records(work_dir: Path, parse: Any) -> Iterator[dict[str, Any]]:
    """Yield one record per message and walk, in a fixed order."""
    for name, raw in [*fixture_messages(), *generated_messages()]:
        for path in ("auto", "tolerant"):
            yield {"name": name, "path": path, **describe(parse, raw, path)}
    for name, raw in synth_messages(work_dir):
        yield {"name": name, "path": "auto", **describe(parse, raw, "auto")}


def record(out: Path, work_dir: Path, parse: Any) -> int:
    """Write the records of `parse` to `out`."""
    count = 0
    with out.open("w", encoding="utf-8") as stream:
        for entry in records(work_dir, parse):
            stream.write(json.dumps(entry, ensure_ascii=False, default=repr) + "\n")
            count += 1
    print(f"recorded {count} events to {out}")
    return 0


def compare(reference: Path, work_dir: Path, parse: Any) -> int:
    """Compare the current code's records with `reference`; return 1 when any differ."""
    expected = {}
    with reference.open(encoding="utf-8") as stream:
        for line in stream:
            entry = json.loads(line)
            expected[(entry["name"], entry["path"])] = entry
    differences = 0
    unknown = 0
    seen = 0
    for entry in records(work_dir, parse):
        seen += 1
        key = (entry["name"], entry["path"])
        old = expected.get(key)
        if old is None:
            print(f"NEW {key}: not in the reference; record a new one to compare it")
            unknown += 1
            continue
        if old["digest"] == entry["digest"]:
            continue
        differences += 1
        print(f"DIFFERENT {key}")
        for part in sorted(set(old["parts"]) | set(entry["parts"])):
            before, after = old["parts"].get(part), entry["parts"].get(part)
            if json.dumps(before, ensure_ascii=False) != json.dumps(after, ensure_ascii=False):
                print(f"  {part}:\n    before {before!r:.600}\n    after  {after!r:.600}")
        if old["parts"] == entry["parts"]:
            print("  (header parts equal: the bodies or attachments differ)")
    missing = len(expected) - (seen - unknown)
    print(
        f"compared {seen - unknown} events: {differences} different, {missing} missing,"
        f" {unknown} not in the reference"
    )
    return 1 if differences or missing or unknown else 0


def main() -> int:
    """Run `record` or `compare` from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("record", "compare"))
    parser.add_argument("file", type=Path, help="the JSON lines file of digests")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/ticketflow-parse-equivalence"),
        help="folder for the synthetic corpus, written once and reused",
    )
    parser.add_argument(
        "--parse-module",
        default="ticketflow.operators.parse",
        help="the module whose _parse_message is run (default: %(default)s)",
    )
    arguments = parser.parse_args()
    arguments.work_dir.mkdir(parents=True, exist_ok=True)
    parse = importlib.import_module(arguments.parse_module)
    if arguments.action == "record":
        return record(arguments.file, arguments.work_dir, parse)
    return compare(arguments.file, arguments.work_dir, parse)


if __name__ == "__main__":
    sys.exit(main())
