"""The `ticketflow` command: parse, run, tickets, dead-letters, check-config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ticketflow import replay, synth
from ticketflow.config import ConfigError, LoggingSettings, load_settings, settings_as_dict
from ticketflow.connectors.kafka_client import KafkaConnectorError
from ticketflow.connectors.redis_state import RedisUnavailable
from ticketflow.connectors.store import DEFAULT_STORE_URL, StoreError, open_store
from ticketflow.logs import configure_logging
from ticketflow.model import utc_now

log = logging.getLogger("ticketflow")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    # Masked text lines until a command that reads a config applies its [logging] table.
    configure_logging(LoggingSettings(), verbose=args.verbose)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # The reader went away (`ticketflow tickets | head`): not an error of ours.
        sys.stderr.close()
        return 0
    except (ConfigError, StoreError, ValueError, OSError, KafkaConnectorError, RedisUnavailable) as exc:
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
    parse.add_argument("file", help="an RFC 5322 message, e.g. a .eml file; - reads standard input")
    parse.add_argument("--config", type=Path,
                       help="TOML config file: its [trust] and [attachments] apply, as in a run")
    parse.set_defaults(handler=_cmd_parse)

    run = commands.add_parser("run", help="run the main job on a source")
    run.add_argument(
        "--input", required=True,
        help="a message file, a folder of messages, an mbox, a Maildir or kafka://HOST:PORT/TOPIC",
    )
    run.add_argument("--config", type=Path, help="TOML config file (defaults work for the demo)")
    run.add_argument("--store", default=DEFAULT_STORE_URL, help=f"ticket store URL (default {DEFAULT_STORE_URL})")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON on the last line")
    run.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="log each step to stderr")
    run.add_argument(
        "--drain", action="store_true",
        help="for Kafka: stop once every partition reaches the end offset it had at start "
        "(without it the run keeps reading until SIGTERM); a corpus always drains",
    )
    run.add_argument("--processes", type=int, default=1,
                     help="processes to run on this machine (default 1; more needs [state] redis_url)")
    run.add_argument("--workers-per-process", "--workers", dest="workers", type=int, default=1,
                     help="worker threads per process (default 1)")
    run.add_argument("--recovery-dir", type=Path,
                     help="folder of Bytewax recovery snapshots; a rerun of the same command resumes from it")
    run.add_argument("--snapshot-interval", type=float, default=10.0,
                     help="seconds between recovery snapshots (default 10)")
    run.add_argument("--batch-size", type=int, default=500,
                     help="records each source partition reads at a time (default 500)")
    run.add_argument("--dead-letter-topic",
                     help="for Kafka: the topic dead letters also go to (default <topic>.dlq)")
    run.add_argument("--metrics-port", type=int,
                     help="port of /metrics, /healthz and /readyz (default [metrics] port, 9464; "
                     "0 turns them off); process i of a cluster serves PORT+i")
    run.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    run.add_argument("--addresses", help=argparse.SUPPRESS)
    run.set_defaults(handler=_cmd_run)

    tickets = commands.add_parser("tickets", help="list the tickets in a store")
    tickets.add_argument("--store", default=DEFAULT_STORE_URL, help="ticket store URL")
    tickets.add_argument("--tenant", help="only this tenant's tickets")
    tickets.add_argument("--json", action="store_true", help="print the tickets as a JSON list")
    tickets.set_defaults(handler=_cmd_tickets)

    dead = commands.add_parser("dead-letters", help="list the dead letters in a store or a dead-letter topic")
    dead.add_argument("--store", default=DEFAULT_STORE_URL, help="ticket store URL")
    dead.add_argument("--input", help="kafka://HOST:PORT/TOPIC: read <topic>.dlq instead of the store")
    dead.add_argument("--dead-letter-topic", help="the dead-letter topic to read (default <topic>.dlq)")
    dead.add_argument("--config", type=Path, help="TOML config file, for [kafka] client settings")
    dead.add_argument("--json", action="store_true", help="print the dead letters as a JSON list")
    dead.set_defaults(handler=_cmd_dead_letters)

    redrive = commands.add_parser(
        "redrive", help="send dead letters through the flow again, after a fix",
        description="With --input kafka://…, produce every record of the dead-letter topic back to "
        "the input topic, for the running flow to take. Without it, run the store's dead letters "
        "through the flow now; each one that gets through leaves the dead letters.",
    )
    redrive.add_argument("--store", default=DEFAULT_STORE_URL, help="ticket store URL")
    redrive.add_argument("--input", help="kafka://HOST:PORT/TOPIC whose <topic>.dlq to redrive")
    redrive.add_argument("--dead-letter-topic", help="the dead-letter topic (default <topic>.dlq)")
    redrive.add_argument("--reason", help="only dead letters with this reason (e.g. parser_error)")
    redrive.add_argument("--config", type=Path, help="TOML config file")
    redrive.add_argument("--json", action="store_true", help="print the result as JSON")
    redrive.set_defaults(handler=_cmd_redrive)

    deliver = commands.add_parser(
        "deliver", help="send what the store still owes the configured sink",
        description="Send the store's pending deliveries to the sink [sink] names, waiting for "
        "rate limits, up to [sink] drain_timeout. Exits 1 when some are still pending.",
    )
    deliver.add_argument("--store", default=DEFAULT_STORE_URL, help="ticket store URL")
    deliver.add_argument("--config", type=Path, required=True, help="TOML config file with a [sink] table")
    deliver.add_argument("--retry-rejected", action="store_true",
                         help="queue deliveries the sink refused again first (after fixing the cause)")
    deliver.add_argument("--json", action="store_true", help="print the counts as JSON")
    deliver.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log each step to stderr")
    deliver.set_defaults(handler=_cmd_deliver)

    search = commands.add_parser("search", help="full-text search over ticket subjects and texts (PostgreSQL store)")
    search.add_argument("query", help='words to find, web-search style: "charged twice", -word, '
                        '"a phrase", a OR b')
    search.add_argument("--store", default=DEFAULT_STORE_URL, help="ticket store URL (postgresql://…)")
    search.add_argument("--tenant", help="only this tenant's tickets")
    search.add_argument("--limit", type=int, default=20, help="maximum number of tickets to list (default 20)")
    search.add_argument("--json", action="store_true", help="print the matches as a JSON list")
    search.set_defaults(handler=_cmd_search)

    synth.add_command(commands)
    replay.add_command(commands)

    top = commands.add_parser(
        "top", help="show live rates, latency and errors from running flows' /metrics",
        description="Read one or more /metrics URLs (one per process of a cluster) and print "
        "per-stage rates, email-to-ticket latency percentiles, outcomes and errors, "
        "refreshing in place until Ctrl-C.",
    )
    top.add_argument("urls", nargs="*", metavar="URL",
                     help="metrics URLs (default http://127.0.0.1:9464/metrics)")
    top.add_argument("--interval", type=float, default=2.0,
                     help="seconds between refreshes, and the window rates are computed over (default 2)")
    top.add_argument("--once", action="store_true",
                     help="print one frame, measured over one interval, and exit")
    top.set_defaults(handler=_cmd_top)

    check = commands.add_parser("check-config", help="validate a config file and print the effective values")
    check.add_argument("file", type=Path, help="TOML config file")
    check.set_defaults(handler=_cmd_check_config)
    return parser


def _cmd_parse(args: argparse.Namespace) -> int:
    from ticketflow.connectors.attachment_store import attachment_governor
    from ticketflow.operators.parse import UnparseableMessage, parse_message

    settings = load_settings(args.config)
    if args.file == "-":
        raw, source = sys.stdin.buffer.read(), "stdin"
    else:
        path = Path(args.file)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read {path}: {exc.strerror}; give one message file "
                "(a folder, mbox or Maildir goes to `ticketflow run --input`)"
            ) from exc
        source = str(path.resolve())
    try:
        event = parse_message(
            raw, source=source, ingested_at=utc_now(),
            authserv_ids=settings.trust.authserv_ids,
            max_references=settings.threading.max_references,
            governor=attachment_governor(settings.attachments),
        )
    except UnparseableMessage as exc:
        print(f"ticketflow: {args.file} is not a parseable message: {exc.reason} ({exc.detail})", file=sys.stderr)
        return 1
    print(json.dumps(event, indent=2, ensure_ascii=False))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ticketflow.metrics import start_metrics_server
    from ticketflow.runner import prepare_recovery, run_flow

    settings = load_settings(args.config)
    configure_logging(settings.logging, verbose=args.verbose)
    _check_run_arguments(args, settings)
    if args.processes > 1:
        return _run_cluster(args, settings)

    if args.recovery_dir is not None and args.process_id is None:
        prepare_recovery(args.recovery_dir, args.workers)
    addresses = args.addresses.split(";") if args.addresses else None
    server = start_metrics_server(settings, port=args.metrics_port, process_id=args.process_id)
    try:
        summary = run_flow(
            args.input, settings, args.store,
            workers=args.workers, process_id=args.process_id, addresses=addresses,
            recovery_dir=args.recovery_dir, snapshot_interval=args.snapshot_interval,
            drain=args.drain or not args.input.startswith("kafka://"),
            dead_letter_topic_name=args.dead_letter_topic,
            batch_size=args.batch_size,
            metrics=server.metrics if server is not None else None,
        )
    finally:
        if server is not None:
            server.close()
    _print_summary(_with_deliveries(summary.as_dict(), summary.deliveries), args.json)
    if not summary.balanced():
        print("ticketflow: error: the run's counts do not add up; this is a bug", file=sys.stderr)
        return 1
    return _pending_status(summary.deliveries)


def _pending_status(deliveries: dict[str, Any] | None) -> int:
    """Return exit status 3 when deliveries are still pending after a run, saying what to do."""
    if not deliveries or not deliveries.get("pending"):
        return 0
    print(
        f"ticketflow: {deliveries['pending']} deliveries to {deliveries['sink']} are still pending "
        "in the store; `ticketflow deliver --config FILE --store URL` sends them",
        file=sys.stderr,
    )
    return 3


def _check_run_arguments(args: argparse.Namespace, settings: Any) -> None:
    for flag, value in (
        ("--processes", args.processes),
        ("--workers-per-process", args.workers),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            raise ValueError(f"{flag} {value}: use 1 or more")
    if args.snapshot_interval <= 0:
        raise ValueError(f"--snapshot-interval {args.snapshot_interval}: use a positive number of seconds")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port {args.metrics_port}: use a port from 1 to 65535, or 0 for none")
    several = args.processes > 1 or args.addresses is not None
    if several and not (settings.state.redis_url or settings.state.redis_url_env):
        raise ValueError(
            "more than one process needs shared state: set [state] redis_url in the config "
            "(e.g. redis_url = \"redis://127.0.0.1:6379/0\")"
        )


def _run_cluster(args: argparse.Namespace, settings: Any) -> int:
    from ticketflow.cluster import ClusterError, run_cluster
    from ticketflow.config import state_redis_url
    from ticketflow.connectors.redis_state import connect
    from ticketflow.runner import prepare_recovery

    # Fail once, here, rather than once per process; and create and migrate the
    # store before several processes open it at once.
    connect(state_redis_url(settings.state)).close()
    open_store(args.store).close()

    if args.recovery_dir is not None:
        prepare_recovery(args.recovery_dir, args.processes * args.workers)
    child_arguments = ["--input", args.input, "--store", args.store,
                       "--workers-per-process", str(args.workers),
                       "--snapshot-interval", str(args.snapshot_interval),
                       "--batch-size", str(args.batch_size)]
    if args.config is not None:
        child_arguments += ["--config", str(args.config)]
    if args.recovery_dir is not None:
        child_arguments += ["--recovery-dir", str(args.recovery_dir)]
    if args.drain:
        child_arguments.append("--drain")
    if args.dead_letter_topic:
        child_arguments += ["--dead-letter-topic", args.dead_letter_topic]
    if args.metrics_port is not None:
        child_arguments += ["--metrics-port", str(args.metrics_port)]
    global_arguments = ["-v"] if args.verbose else []

    try:
        counts = run_cluster(
            child_arguments, args.processes, global_arguments, resumable=args.recovery_dir is not None
        )
    except ClusterError as exc:
        print(f"ticketflow: error: {exc}", file=sys.stderr)
        return 1
    # Process 0 sent during the run; what the others stored last is sent here.
    deliveries = _merged_deliveries(counts.pop("deliveries", None), _drain_sink(settings, args.store))
    _print_summary(_with_deliveries(counts, deliveries), args.json)
    return _pending_status(deliveries)


def _merged_deliveries(
    during: dict[str, Any] | None, at_end: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Add what process 0 sent during a cluster run to what the parent sent at its end."""
    if during is None or at_end is None:
        return at_end or during
    merged = dict(at_end)
    for name, value in during.items():
        if name not in ("sink", "pending"):
            merged[name] = merged.get(name, 0) + int(value)
    return merged


def _drain_sink(settings: Any, store_url: str, retry_rejected: bool = False) -> dict[str, Any] | None:
    """Send the store's pending deliveries to the configured sink; None when there is no sink."""
    from ticketflow.connectors.attachment_store import open_attachment_store
    from ticketflow.runner import drain_deliveries
    from ticketflow.connectors.delivery import open_delivery

    if settings.sink.kind == "none":
        return None
    store = open_store(store_url, existing=True)
    try:
        delivery = open_delivery(settings, store, open_attachment_store(settings.attachments))
        assert delivery is not None
        try:
            queued = store.retry_rejected(delivery.sink.name) if retry_rejected else 0
            if queued:
                log.warning("%d rejected deliveries queued again", queued)
            return drain_deliveries(delivery)
        finally:
            delivery.close()
    finally:
        store.close()


def _cmd_deliver(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.logging, verbose=args.verbose)
    if settings.sink.kind == "none":
        raise ConfigError(
            f"{args.config or 'the default config'} names no sink; set [sink] kind to "
            "\"jira\", \"zendesk\", \"servicenow\" or \"webhook\""
        )
    counts = _drain_sink(settings, args.store, retry_rejected=args.retry_rejected)
    assert counts is not None
    if args.json:
        print(json.dumps(counts), flush=True)
    else:
        print(", ".join(f"{name} {value}" for name, value in counts.items()), flush=True)
    return 3 if counts["pending"] else 0


def _with_deliveries(counts: dict[str, Any], deliveries: dict[str, Any] | None) -> dict[str, Any]:
    return counts if deliveries is None else {**counts, "deliveries": deliveries}


def _print_summary(counts: dict[str, Any], as_json: bool) -> None:
    """Print the run's counts: one line of text, or JSON as the last line of stdout."""
    if as_json:
        print(json.dumps(counts), flush=True)
        return
    deliveries = counts.get("deliveries")
    plain = {name: value for name, value in counts.items() if name != "deliveries"}
    if deliveries is not None:
        sent = ", ".join(f"{name} {value}" for name, value in deliveries.items() if name != "sink")
        print(f"{deliveries['sink']}: {sent}", flush=True)
    print(", ".join(f"{name} {value}" for name, value in plain.items()), flush=True)


def _cmd_tickets(args: argparse.Namespace) -> int:
    store = open_store(args.store, existing=True)
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
    if args.input:
        letters = _topic_dead_letters(args, with_values=False)
    else:
        store = open_store(args.store, existing=True)
        try:
            letters = store.dead_letters()
        finally:
            store.close()
    if args.json:
        print(json.dumps(letters, indent=2, ensure_ascii=False))
    else:
        for letter in letters:
            print(f"{letter['reason']:<16} {letter['source']}  ({letter['detail']})")
        print(_count(len(letters), "dead letter"))
    return 0


def _topic_dead_letters(args: argparse.Namespace, with_values: bool) -> list[dict[str, Any]]:
    from ticketflow.connectors.kafka import parse_kafka_url, read_dead_letters

    settings = load_settings(args.config)
    address = parse_kafka_url(args.input)
    topic = args.dead_letter_topic or f"{address.topic}.dlq"
    return read_dead_letters(
        address.bootstrap, topic, settings.kafka.client_settings(), with_values=with_values
    )


def _cmd_redrive(args: argparse.Namespace) -> int:
    if args.input:
        result = _redrive_topic(args)
    else:
        result = _redrive_store(args)
        if result["skipped_without_bytes"]:
            print(f"ticketflow: {result['skipped_without_bytes']} dead letters kept no original bytes "
                  "(too_large, for example); run their source again with `ticketflow run --input SOURCE`",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(", ".join(f"{name} {value}" for name, value in result.items()))
    return 0


def _redrive_topic(args: argparse.Namespace) -> dict[str, Any]:
    from ticketflow.connectors.kafka import parse_kafka_url, produce_records

    settings = load_settings(args.config)
    address = parse_kafka_url(args.input)
    chosen = _with_reason(_topic_dead_letters(args, with_values=True), args.reason)
    letters = [letter for letter in chosen if letter["value"]]
    records = [
        (letter["value"], {"ticketflow-redriven-from": letter["source"]}) for letter in letters
    ]
    sent = produce_records(
        address.bootstrap, address.topic, records,
        settings=settings.kafka.client_settings(),
        max_message_bytes=settings.limits.max_message_bytes,
    )
    return {"redriven": sent, "skipped_without_bytes": len(chosen) - len(letters), "topic": address.topic}


def _with_reason(letters: list[dict[str, Any]], reason: str | None) -> list[dict[str, Any]]:
    """Keep the dead letters with this reason; an unknown reason is an error listing the known ones."""
    if reason is None:
        return letters
    chosen = [letter for letter in letters if letter["reason"] == reason]
    if not chosen:
        present = sorted({letter["reason"] for letter in letters}) or ["none"]
        raise ValueError(f"--reason {reason}: no dead letter has it; reasons present: {', '.join(present)}")
    return chosen


def _redrive_store(args: argparse.Namespace) -> dict[str, Any]:
    from ticketflow.connectors.records import RecordsSource
    from ticketflow.model import RawMessage
    from ticketflow.runner import run_flow

    if args.reason == "sink_rejected":
        raise ValueError(
            "--reason sink_rejected: these messages are stored; the ticket system rejected them. "
            "Fix the cause, then run `ticketflow deliver --retry-rejected --config FILE`"
        )
    settings = load_settings(args.config)
    store = open_store(args.store, existing=True)
    try:
        letters = [letter for letter in store.dead_letters() if letter["reason"] != "sink_rejected"]
        chosen = {letter["source"] for letter in _with_reason(letters, args.reason)}
        records = [
            RawMessage(source=source, raw=raw)
            for source, raw in store.dead_letter_records()
            if source in chosen
        ]
        summary = run_flow("redrive", settings, store, source=RecordsSource(records))
        remaining = len(store.dead_letters())
    finally:
        store.close()
    # Letters without their bytes (too_large, empty) cannot be sent again: rerun their source.
    return {
        "redriven": len(records),
        "skipped_without_bytes": len(chosen) - len(records),
        **summary.as_dict(),
        "dead_letters_left": remaining,
    }


def _cmd_search(args: argparse.Namespace) -> int:
    store = open_store(args.store, existing=True)
    try:
        if not hasattr(store, "search"):
            raise ValueError(
                f"search needs the PostgreSQL store; {args.store} is SQLite. "
                "Run with --store postgresql://… to use it"
            )
        matches = store.search(args.query, tenant=args.tenant, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps(matches, indent=2, ensure_ascii=False))
        return 0
    for match in matches:
        print(f"{match['key']:<12} {match['tenant']:<10} {_shorten(match['subject'], 60)}")
        print(f"             {match['headline']}")
    print(_count(len(matches), "ticket"))
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from ticketflow.top import DEFAULT_URL, run_top

    if args.interval <= 0:
        raise ValueError(f"--interval {args.interval}: use a positive number of seconds")
    return run_top(args.urls or [DEFAULT_URL], interval=args.interval, once=args.once)


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    print(json.dumps(settings_as_dict(settings), indent=2))
    missing = _missing_secrets(settings)
    for message in missing:
        print(f"ticketflow: {message}", file=sys.stderr)
    return 1 if missing else 0


def _missing_secrets(settings: Any) -> list[str]:
    """Say which TICKETFLOW_* variables the config names for secrets but this shell lacks."""
    named: list[tuple[str, str]] = [
        (f"kafka.{key}", value) for key, value in settings.kafka.settings if key.endswith("_env")
    ]
    if settings.state.redis_url_env:
        named.append(("state.redis_url_env", settings.state.redis_url_env))
    secret_of_sink = {"jira": "token_env", "zendesk": "token_env",
                      "servicenow": "password_env", "webhook": "secret_env"}
    kind = settings.sink.kind
    if kind in secret_of_sink:
        key = secret_of_sink[kind]
        named.append((f"sink.{kind}.{key}", getattr(getattr(settings.sink, kind), key)))
    return [
        f"'{setting}' names the environment variable {variable}, which is not set here; "
        f"export it with the secret before `ticketflow run`"
        for setting, variable in named
        if not os.environ.get(variable)
    ]


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
            _shorten(ticket["requester"], 32),
            _shorten(ticket["subject"], 48),
        )
        for ticket in tickets
    ]
    widths = [max(len(column), *(len(row[i]) for row in rows)) if rows else len(column) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(_count(len(tickets), "ticket"))
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
