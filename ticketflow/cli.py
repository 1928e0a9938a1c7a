"""The `ticketflow` command: parse, run, tickets, dead-letters, check-config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ticketflow.config import ConfigError, load_settings, settings_as_dict
from ticketflow.connectors.store import DEFAULT_STORE_URL, StoreError, open_store
from ticketflow.model import utc_now

log = logging.getLogger("ticketflow")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args))
    except (ConfigError, StoreError, ValueError, OSError) as exc:
        print(f"ticketflow: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ticketflow",
        description="Turn inbound support email into threaded, enriched helpdesk tickets.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    parse = commands.add_parser("parse", help="print the event JSON of one message file")
    parse.add_argument("file", type=Path, help="an RFC 5322 message, e.g. a .eml file")
    parse.set_defaults(handler=_cmd_parse)

    run = commands.add_parser("run", help="run the main job on a source until it is drained")
    run.add_argument(
        "--input", required=True,
        help="a message file, a folder of messages, an mbox or a Maildir",
    )
    run.add_argument("--config", type=Path, help="TOML config file (defaults work for the demo)")
    run.add_argument("--store", default=DEFAULT_STORE_URL, help=f"ticket store URL (default {DEFAULT_STORE_URL})")
    run.add_argument("--workers", type=int, default=1, help="worker threads in this process (default 1)")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON on the last line")
    run.set_defaults(handler=_cmd_run)

    tickets = commands.add_parser("tickets", help="list the tickets in a store")
    tickets.add_argument("--store", default=DEFAULT_STORE_URL, help="ticket store URL")
    tickets.add_argument("--tenant", help="only this tenant's tickets")
    tickets.add_argument("--json", action="store_true", help="print the tickets as a JSON list")
    tickets.set_defaults(handler=_cmd_tickets)

    dead = commands.add_parser("dead-letters", help="list the dead letters in a store")
    dead.add_argument("--store", default=DEFAULT_STORE_URL, help="ticket store URL")
    dead.add_argument("--json", action="store_true", help="print the dead letters as a JSON list")
    dead.set_defaults(handler=_cmd_dead_letters)

    check = commands.add_parser("check-config", help="validate a config file and print the effective values")
    check.add_argument("file", type=Path, help="TOML config file")
    check.set_defaults(handler=_cmd_check_config)
    return parser


def _cmd_parse(args: argparse.Namespace) -> int:
    from ticketflow.operators.parse import UnparseableMessage, parse_message

    raw = args.file.read_bytes()
    try:
        event = parse_message(raw, source=str(args.file.resolve()), ingested_at=utc_now())
    except UnparseableMessage as exc:
        print(f"ticketflow: {args.file} is not a parseable message: {exc.reason} ({exc.detail})", file=sys.stderr)
        return 1
    print(json.dumps(event, indent=2, ensure_ascii=False))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ticketflow.runner import run_corpus

    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: use 1 or more")
    settings = load_settings(args.config)
    summary = run_corpus(args.input, settings, args.store, workers=args.workers)
    counts = summary.as_dict()
    if args.json:
        print(json.dumps(counts))
    else:
        print(", ".join(f"{name} {value}" for name, value in counts.items()))
    if not summary.balanced():
        print("ticketflow: error: the run's counts do not add up; this is a bug", file=sys.stderr)
        return 1
    return 0


def _cmd_tickets(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        tickets = store.tickets(args.tenant)
    finally:
        store.close()
    if args.json:
        print(json.dumps(tickets, indent=2, ensure_ascii=False))
    else:
        print(_ticket_table(tickets))
    return 0


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        letters = store.dead_letters()
    finally:
        store.close()
    if args.json:
        print(json.dumps(letters, indent=2, ensure_ascii=False))
    else:
        for letter in letters:
            print(f"{letter['reason']:<16} {letter['source']}  ({letter['detail']})")
        print(f"{len(letters)} dead letters")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    print(json.dumps(settings_as_dict(settings), indent=2))
    return 0


def _ticket_table(tickets: list[dict[str, Any]]) -> str:
    """Format tickets as a fixed-width table for a terminal."""
    columns = ("key", "tenant", "pri", "status", "msgs", "component", "requester", "subject")
    rows = [
        (
            ticket["key"],
            ticket["tenant"],
            ticket["priority"],
            ticket["status"],
            str(len(ticket["messages"])),
            ticket["component"] or "-",
            ticket["requester"],
            _shorten(ticket["subject"], 48),
        )
        for ticket in tickets
    ]
    widths = [max(len(column), *(len(row[i]) for row in rows)) if rows else len(column) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"{len(tickets)} tickets")
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
