"""The synthetic corpus: same seed same bytes, the mix it promises, mail the flow reads right."""

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from ticketflow.cli import main
from ticketflow.config import Settings
from ticketflow.connectors.corpus import iter_corpus
from ticketflow.connectors.store import SqliteStore
from ticketflow.operators.parse import parse_message
from ticketflow.operators.subject import has_reply_prefix
from ticketflow.runner import run_corpus
from ticketflow.synth import Mix, MixError, iter_messages, load_mix, mix_from_mapping, synthesize

INGESTED = datetime(2026, 3, 2, tzinfo=UTC)


def digest(path: Path) -> str:
    """Hash a corpus: an mbox's bytes, or a folder's file names and bytes in name order."""
    sha = hashlib.sha256()
    if path.is_file():
        sha.update(path.read_bytes())
        return sha.hexdigest()
    for entry in sorted(path.iterdir()):
        sha.update(entry.name.encode())
        sha.update(entry.read_bytes())
    return sha.hexdigest()


def header(raw: bytes, name: str) -> str | None:
    """Return the unfolded value of a top-level header field, or None."""
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    match = re.search(rb"^" + name.encode() + rb":[ \t]*(.*(?:\r?\n[ \t].*)*)", head, re.I | re.M)
    return None if match is None else re.sub(rb"\r?\n[ \t]+", b" ", match.group(1)).decode().strip()


@pytest.fixture(scope="module")
def sample() -> list[bytes]:
    """Three thousand messages of the default mix."""
    return [message.raw for message in iter_messages(3000, seed=11)]


def first_deliveries(raws: list[bytes]) -> list[bytes]:
    """Drop the messages whose Message-ID came before: the redelivered copies."""
    seen: set[str] = set()
    kept = []
    for raw in raws:
        message_id = header(raw, "Message-ID")
        if message_id not in seen:
            kept.append(raw)
            seen.add(message_id)
    return kept


# -- determinism ---------------------------------------------------------------------


@pytest.mark.parametrize("format", ["mbox", "folder"])
def test_same_seed_same_bytes(tmp_path, format):
    first = synthesize(300, 5, tmp_path / "a", format=format)
    second = synthesize(300, 5, tmp_path / "b", format=format)

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert first.as_dict() == second.as_dict()


def test_different_seed_different_bytes(tmp_path):
    synthesize(300, 5, tmp_path / "a.mbox")
    synthesize(300, 6, tmp_path / "b.mbox")

    assert digest(tmp_path / "a.mbox") != digest(tmp_path / "b.mbox")


def test_bytes_independent_of_hash_seed(tmp_path):
    """Another interpreter with another string-hash seed writes the same corpus."""
    synthesize(200, 9, tmp_path / "here.mbox")
    script = "import sys; from ticketflow.synth import synthesize; synthesize(200, 9, sys.argv[1])"
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "there.mbox")], check=True, env=environment
    )

    assert digest(tmp_path / "here.mbox") == digest(tmp_path / "there.mbox")


def test_start_moves_every_date(tmp_path):
    early = next(iter_messages(1, 3))
    late = next(iter_messages(1, 3, start=datetime(2027, 6, 1, tzinfo=UTC)))

    assert "2026" in header(early.raw, "Date")
    assert "2027" in header(late.raw, "Date")


# -- streaming ---------------------------------------------------------------------


def test_messages_are_generated_lazily():
    messages = iter_messages(10**9, 1)

    first = next(messages)

    assert first.serial == 0


def test_writing_holds_a_bounded_amount_in_memory(tmp_path):
    tracemalloc.start()
    try:
        summary = synthesize(2000, 4, tmp_path / "big.mbox")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert summary.bytes > 12_000_000
    assert peak < summary.bytes / 3


# -- the mix -------------------------------------------------------------------------


def test_kind_shares_near_the_mix(sample):
    firsts = first_deliveries(sample)
    spam = [raw for raw in firsts if header(raw, "X-Spam-Flag") == "YES"]
    automatic = [raw for raw in firsts if header(raw, "Auto-Submitted")]
    people = [raw for raw in firsts if raw not in spam and raw not in automatic]
    replies = [raw for raw in people if is_reply(raw)]
    total = len(sample)

    assert (total - len(firsts)) / total == pytest.approx(0.05, abs=0.015)
    assert len(spam) / total == pytest.approx(0.08, abs=0.02)
    assert len(automatic) / total == pytest.approx(0.07, abs=0.02)
    assert len(replies) / total == pytest.approx(0.30, abs=0.04)
    assert (len(people) - len(replies)) / total == pytest.approx(0.50, abs=0.04)


def is_reply(raw: bytes) -> bool:
    """Tell whether a message is a reply: it has thread headers or a reply prefix on its subject."""
    if header(raw, "In-Reply-To") or header(raw, "References"):
        return True
    return has_reply_prefix(str(make_header(decode_header(header(raw, "Subject")))))


def test_reply_styles_near_the_mix(sample):
    people = [
        raw
        for raw in first_deliveries(sample)
        if not header(raw, "Auto-Submitted") and not header(raw, "X-Spam-Flag")
    ]
    styles = Counter()
    for raw in people:
        in_reply_to, references = header(raw, "In-Reply-To"), header(raw, "References")
        if in_reply_to and references:
            styles["full"] += 1
        elif in_reply_to:
            styles["in_reply_to"] += 1
        elif references:
            styles["references"] += 1
        elif is_reply(raw):
            styles["subject_key"] += 1
    replies = sum(styles.values())

    assert styles["full"] / replies == pytest.approx(0.51, abs=0.06)
    assert styles["in_reply_to"] / replies == pytest.approx(0.20, abs=0.05)
    assert styles["references"] / replies == pytest.approx(0.15, abs=0.05)
    assert styles["subject_key"] > 0


def test_charset_shares_near_the_mix(sample):
    firsts = first_deliveries(sample)
    people = [raw for raw in firsts if not header(raw, "X-Spam-Flag")]
    labels = Counter()
    for raw in people:
        match = re.search(rb'charset="?([A-Za-z0-9_-]+)', raw)
        labels[match.group(1).decode().lower()] += 1
    weights = Mix().weight_table("charsets")

    for charset, weight in weights:
        assert labels[charset] / len(people) == pytest.approx(weight, abs=0.05), charset


def test_encoded_words_in_every_charset(sample):
    text = b"\n".join(raw.split(b"\n\n", 1)[0] for raw in sample).lower()

    assert b"=?iso-2022-jp?b?" in text
    assert b"=?koi8-r?b?" in text
    assert b"=?iso-8859-1?q?" in text
    assert b"=?utf-8?" in text


def test_parts_and_sizes(sample):
    html = sum(b"text/html" in raw for raw in sample)
    related = [raw for raw in sample if b"multipart/related" in raw]
    attached = sum(b"Content-Disposition: attachment" in raw for raw in sample)
    average = statistics.mean(len(raw) for raw in sample)

    assert html / len(sample) == pytest.approx(0.55, abs=0.1)
    assert related
    for raw in related:
        event = parse_message(raw, "synth", INGESTED)
        [image] = [part for part in event["attachments"] if part["disposition"] == "inline"]
        assert f"cid:{image['content_id'].strip('<>')}" in event["html"]
    assert attached / len(sample) == pytest.approx(0.17, abs=0.05)
    assert 7_000 <= average <= 14_000


def test_several_tenants_and_two_tenant_mail(sample):
    tenants = Counter()
    two_tenant = 0
    for raw in first_deliveries(sample):
        boxes = re.findall(rb"([a-z0-9]+)[-+a-z]*@support\.example\.com", raw.split(b"\n\n", 1)[0])
        tenants.update({box.decode() for box in boxes})
        two_tenant += header(raw, "Delivered-To") is None and len({box for box in boxes}) == 2

    assert len(tenants) == len(Mix().tenants)
    assert two_tenant > 0


def test_early_replies_precede_their_parent():
    messages = list(iter_messages(3000, 5))
    position = {
        message.message_id: message.serial for message in messages if message.kind != "duplicate"
    }
    early = [message for message in messages if message.early]

    assert early
    for message in early:
        parent = header(message.raw, "In-Reply-To")
        assert position[parent] > message.serial


def test_changed_mix_changes_the_shares():
    mix = mix_from_mapping(
        {"kinds": {"duplicate": 0.4, "spam": 0}, "html": 0, "charsets": {"koi8-r": 5}}
    )
    raws = [message.raw for message in iter_messages(1000, 2, mix)]
    firsts = first_deliveries(raws)
    weights = dict(mix.weight_table("kinds"))

    assert (len(raws) - len(firsts)) / len(raws) == pytest.approx(weights["duplicate"], abs=0.05)
    assert not any(header(raw, "X-Spam-Flag") for raw in raws)
    assert not any(b"text/html" in raw for raw in raws)
    assert sum(b'charset="koi8-r"' in raw for raw in firsts) / len(firsts) > 0.6


# -- the flow reads it right -----------------------------------------------------------


def test_every_message_parses_without_defects(sample):
    defective = {}
    for number, raw in enumerate(sample[:1500]):
        event = parse_message(raw, f"synth#{number}", INGESTED)
        if event["defects"]:
            defective[number] = event["defects"]

    assert defective == {}


def test_encoded_subjects_decode(sample):
    decoded = []
    for raw in sample[:400]:
        if "=?" in header(raw, "Subject"):
            decoded.append(parse_message(raw, "synth", INGESTED)["envelope"]["subject"])

    assert decoded
    assert not any("=?" in subject for subject in decoded)
    assert any(re.search("[\u3040-\u30ff\u4e00-\u9fff]", subject) for subject in decoded)
    assert any(re.search("[\u0400-\u04ff]", subject) for subject in decoded)


@pytest.mark.parametrize("format", ["mbox", "folder"])
def test_flow_counts_match_the_corpus(tmp_path, format):
    corpus = tmp_path / ("corpus.mbox" if format == "mbox" else "corpus")
    summary = synthesize(500, 21, corpus, format=format)
    raws = [message.raw for message in iter_messages(500, 21)]
    injected = len(raws) - len(first_deliveries(raws))

    result = run_corpus(corpus, Settings(), SqliteStore(tmp_path / "tickets.db"))
    counts = result.as_dict()

    assert result.balanced()
    assert counts["read"] == 500
    assert counts["dead_letters"] == 0
    assert counts["duplicates"] == summary.expected["duplicates"]
    assert counts["duplicates"] >= injected > 0
    assert counts == summary.expected


def test_mbox_reads_back_as_written(tmp_path):
    synthesize(400, 8, tmp_path / "box.mbox")

    read = [record.raw for record in iter_corpus(tmp_path / "box.mbox")]

    assert read == [message.raw for message in iter_messages(400, 8)]


# -- the mix spec --------------------------------------------------------------------


def test_mix_file_toml_and_json(tmp_path):
    (tmp_path / "mix.toml").write_text('html = 0.9\ntenants = ["acme"]\n[kinds]\nspam = 0.2\n')
    (tmp_path / "mix.json").write_text(
        json.dumps({"html": 0.9, "tenants": ["acme"], "kinds": {"spam": 0.2}})
    )

    from_toml = load_mix(tmp_path / "mix.toml")
    from_json = load_mix(tmp_path / "mix.json")

    assert from_toml == from_json
    assert from_toml.html == 0.9
    assert from_toml.kinds["spam"] == 0.2
    assert from_toml.kinds["new"] == Mix().kinds["new"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": 1}, "unknown key 'colour'"),
        ({"kinds": {"bounce": 0.1}}, "unknown key 'kinds.bounce'"),
        ({"kinds": {"spam": -1}}, "use 0 or more"),
        ({"kinds": {"spam": "many"}}, "use a number"),
        (
            {"kinds": dict.fromkeys(("new", "reply", "duplicate", "auto_reply", "spam"), 0)},
            "only zero weights",
        ),
        ({"kinds": 0.5}, "must be a table of weights"),
        ({"html": 1.5}, "share between 0 and 1"),
        ({"html": True}, "use a number"),
        ({"attachment_median_bytes": 0}, "positive integer"),
        ({"mean_gap_seconds": 0}, "positive number"),
        ({"tenants": []}, "non-empty list"),
        ({"tenants": ["acme-eu"]}, "invalid tenant 'acme-eu'"),
    ],
)
def test_invalid_mix_rejected(data, message):
    with pytest.raises(MixError, match=re.escape(message)):
        mix_from_mapping(data)


def test_unreadable_mix_files_rejected(tmp_path):
    (tmp_path / "broken.toml").write_text("html = \n")
    (tmp_path / "list.json").write_text("[1, 2]")

    with pytest.raises(MixError, match="cannot read mix spec"):
        load_mix(tmp_path / "missing.toml")
    with pytest.raises(MixError, match="invalid TOML"):
        load_mix(tmp_path / "broken.toml")
    with pytest.raises(MixError, match="must hold a table"):
        load_mix(tmp_path / "list.json")


# -- the command ----------------------------------------------------------------------


def test_command_writes_and_prints_summary(tmp_path, capsys):
    code = main(
        [
            "synth",
            "--count",
            "60",
            "--seed",
            "3",
            "--set",
            "kinds.spam=0",
            "--format",
            "folder",
            str(tmp_path / "out"),
        ]
    )
    printed = json.loads(capsys.readouterr().out)

    assert code == 0
    assert printed["count"] == 60
    assert printed["kinds"].get("spam", 0) == 0
    assert len(list((tmp_path / "out").iterdir())) == 60
    assert printed["expected"]["read"] == 60


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "kinds.spam"], "use KEY=VALUE"),
        (["--set", "html=lots"], "is not a number"),
        (["--count", "-1"], "--count -1"),
        (["--start", "yesterday"], "RFC 3339"),
        (["--start", "2026-03-02T08:00:00"], "UTC offset"),
    ],
)
def test_command_rejects_bad_arguments(tmp_path, capsys, arguments, message):
    base = ["synth", "--count", "5", "--seed", "1", str(tmp_path / "x.mbox")]

    code = main([*base, *arguments])

    assert code == 2
    assert message in capsys.readouterr().err


def test_command_refuses_to_mix_corpora(tmp_path, capsys):
    (tmp_path / "taken.mbox").write_bytes(b"From x\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.eml").write_bytes(b"x")

    assert main(["synth", "--count", "5", "--seed", "1", str(tmp_path / "taken.mbox")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(["synth", "--count", "5", "--seed", "1", "--format", "folder", str(tmp_path / "full")])
        == 2
    )
    assert "not empty" in capsys.readouterr().err
    assert main(["synth", "--count", "5", "--seed", "1", str(tmp_path / "full")]) == 2
    assert "is a folder" in capsys.readouterr().err
