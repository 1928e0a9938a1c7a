"""Write the sample corpus's .eml files into one mboxrd file.

Usage: python corpus/build_mbox.py [FOLDER] [MBOX] [--check]

FOLDER defaults to corpus/sample and MBOX to corpus/sample.mbox, both next to this
script. Messages go in byte order of their file names. Each one gets a separator line
``From <envelope sender> <arrival time>``, taken from Return-Path and the topmost
Received header (the Date header when no Received date parses). Lines matching
``>*From `` get one more ``>`` (mboxrd quoting), and an empty line follows every
message. A message's bytes are otherwise kept as they are, CRLF line endings too, so
reading the mbox back gives each file's bytes exactly. A file that does not end with
a line break gets one, because the reader could not tell it from the separator.

With --check nothing is written: the exit status is 1 when MBOX differs from what
FOLDER would give, so a test or CI job can catch a corpus edit without a rebuild.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent

_QUOTABLE_FROM = re.compile(rb"^(>*From )", re.MULTILINE)
_HEADER_FIELD = re.compile(rb"^([!-9;-~]+):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)


def message_files(folder: Path) -> list[Path]:
    """List the .eml files directly in `folder`, in byte order of their names."""
    return sorted(folder.glob("*.eml"), key=lambda path: path.name.encode())


def build_mbox(paths: list[Path]) -> bytes:
    """Return the mboxrd bytes for the message files `paths`, in that order."""
    return b"".join(mbox_entry(path.read_bytes()) for path in paths)


def mbox_entry(raw: bytes) -> bytes:
    """Return one message as an mbox entry: separator line, quoted message, empty line."""
    if not raw.endswith(b"\n"):
        raw += b"\r\n" if b"\r\n" in raw else b"\n"
    arrived = arrival_time(raw)
    # asctime layout, day padded with a space: "Mon Mar  2 09:14:07 2026".
    stamp = f"{arrived:%a %b} {arrived.day:2d} {arrived:%H:%M:%S %Y}"
    separator = f"From {envelope_sender(raw)} {stamp}\n"
    return separator.encode() + _QUOTABLE_FROM.sub(rb">\1", raw) + b"\n"


def envelope_sender(raw: bytes) -> str:
    """Return the Return-Path address, or MAILER-DAEMON for the null sender of a bounce."""
    value = header_value(raw, b"Return-Path").strip("<> \t")
    return value or "MAILER-DAEMON"


def arrival_time(raw: bytes) -> datetime:
    """Return the topmost Received header's date in UTC, else Date, else the Unix epoch."""
    for name in (b"Received", b"Date"):
        text = header_value(raw, name)
        stamp = text.rsplit(";", 1)[-1] if name == b"Received" else text
        try:
            return parsedate_to_datetime(_without_comment(stamp)).astimezone(UTC)
        except (TypeError, ValueError):
            continue
    return datetime.fromtimestamp(0, UTC)


def header_value(raw: bytes, name: bytes) -> str:
    """Return the first header field called `name`, unfolded, or "" when it is missing."""
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    for match in _HEADER_FIELD.finditer(head):
        if match.group(1).lower() == name.lower():
            unfolded = re.sub(rb"\r?\n[ \t]+", b" ", match.group(2))
            return unfolded.decode("ascii", errors="replace").strip()
    return ""


def _without_comment(stamp: str) -> str:
    return re.sub(r"\([^)]*\)", "", stamp).strip()


def main(argv: list[str] | None = None) -> int:
    """Build the mbox, or with --check compare it; return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=HERE / "sample")
    parser.add_argument("mbox", nargs="?", type=Path, default=HERE / "sample.mbox")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)

    paths = message_files(args.folder)
    content = build_mbox(paths)
    if args.check:
        current = args.mbox.read_bytes() if args.mbox.exists() else b""
        if current != content:
            print(f"{args.mbox} is out of date; run: python {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0

    args.mbox.write_bytes(content)
    print(f"wrote {args.mbox} ({len(paths)} messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
