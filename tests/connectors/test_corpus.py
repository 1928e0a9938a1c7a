"""Tests for the corpus source: kinds, order, mbox splitting, resume, and a Bytewax run."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import AbortExecution
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, cluster_main, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from ticketflow.connectors import corpus
from ticketflow.connectors.corpus import (
    CorpusError,
    CorpusPartition,
    CorpusSource,
    corpus_kind,
    count_messages,
    iter_corpus,
)
from ticketflow.model import RawMessage

REPO = Path(__file__).resolve().parents[2]
SAMPLE_FOLDER = REPO / "corpus" / "sample"
SAMPLE_MBOX = REPO / "corpus" / "sample.mbox"

FIXED_TIME = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def fixed_clock() -> datetime:
    return FIXED_TIME


def message(subject: str, body: str = "Hello.\n", newline: str = "\n") -> bytes:
    lines = [
        "From: Alice <alice@example.com>",
        "To: acme-support@support.example.com",
        f"Subject: {subject}",
        f"Message-ID: <{subject.replace(' ', '.')}@example.com>",
        "",
        *body.splitlines(),
    ]
    return (newline.join(lines) + newline).encode()


def quote_mboxrd(raw: bytes) -> bytes:
    """Quote a message for an mboxrd file: one more ">" before every ">*From " line."""
    return re.sub(rb"(?m)^(>*From )", rb">\1", raw)


def write_mbox(path: Path, messages: list[bytes], blank_line: bytes = b"\n") -> Path:
    """Write messages as an mboxrd file, each followed by an empty line."""
    with path.open("wb") as file:
        for raw in messages:
            file.write(b"From sender@example.com Mon Mar  2 09:00:00 2026\n")
            file.write(quote_mboxrd(raw))
            file.write(blank_line)
    return path


def write_folder(folder: Path, names_to_bytes: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in names_to_bytes.items():
        (folder / name).write_bytes(raw)
    return folder


def make_maildir(root: Path, new: dict[str, bytes], cur: dict[str, bytes]) -> Path:
    write_folder(root / "new", new)
    write_folder(root / "cur", cur)
    (root / "tmp").mkdir()
    return root


def raws(path: Path, start: int = 0) -> list[bytes]:
    return [item.raw for item in iter_corpus(path, start=start)]


def sources(path: Path, start: int = 0) -> list[str]:
    return [item.source for item in iter_corpus(path, start=start)]


# --- corpus_kind ---------------------------------------------------------------


def test_kind_of_message_file(tmp_path: Path) -> None:
    path = tmp_path / "single.eml"
    path.write_bytes(message("one"))

    assert corpus_kind(path) == "file"


def test_kind_of_mbox(tmp_path: Path) -> None:
    path = write_mbox(tmp_path / "box.mbox", [message("one")])

    assert corpus_kind(path) == "mbox"


def test_kind_of_folder(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mail", {"1.eml": message("one")})

    assert corpus_kind(folder) == "folder"


def test_kind_of_maildir(tmp_path: Path) -> None:
    maildir = make_maildir(tmp_path / "Maildir", {}, {})

    assert corpus_kind(maildir) == "maildir"


def test_kind_of_folder_with_cur_only(tmp_path: Path) -> None:
    (tmp_path / "half" / "cur").mkdir(parents=True)

    assert corpus_kind(tmp_path / "half") == "folder"


def test_kind_of_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.mbox"

    with pytest.raises(CorpusError, match=r"nowhere\.mbox does not exist; expected a message"):
        corpus_kind(missing)


def test_kind_of_pipe_is_rejected(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)

    with pytest.raises(CorpusError, match=r"pipe is neither a regular file nor a folder"):
        corpus_kind(pipe)


def test_kind_of_socket_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(CorpusError, match=r"s\.sock is neither a regular file"):
            corpus_kind(path)
    finally:
        server.close()


def test_kind_of_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, which reads any file, so the failing open is simulated.
    path = tmp_path / "locked.eml"
    path.write_bytes(message("locked"))

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", deny)

    with pytest.raises(CorpusError, match=r"cannot read corpus file .*locked\.eml: Permission"):
        corpus_kind(path)


# --- single file -------------------------------------------------------------------


def test_file_yields_whole_file_once(tmp_path: Path) -> None:
    raw = message("api timeout", "From what we see\nit fails.\n", newline="\r\n")
    path = tmp_path / "api-timeout.eml"
    path.write_bytes(raw)

    items = list(iter_corpus(path, clock=fixed_clock))

    assert items == [RawMessage(source=str(path.resolve()), raw=raw, ingested_at=FIXED_TIME)]


def test_empty_file_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.eml"
    path.write_bytes(b"")

    assert raws(path) == []
    assert count_messages(path) == 0


def test_relative_path_gives_absolute_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "one.eml").write_bytes(message("one"))
    monkeypatch.chdir(tmp_path)

    assert sources(Path("one.eml")) == [str(tmp_path.resolve() / "one.eml")]


# --- folder ------------------------------------------------------------------------


def test_folder_reads_names_in_byte_order(tmp_path: Path) -> None:
    names = ["b.eml", "a.eml", "B.eml", "10.eml", "9.eml", "_x.eml", "é.eml"]
    folder = write_folder(tmp_path / "mail", {name: message(name) for name in names})

    read = [Path(source).name for source in sources(folder)]

    assert read == sorted(names, key=lambda name: name.encode())
    assert read[:2] == ["10.eml", "9.eml"]


def test_folder_skips_hidden_subfolders_and_docs(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "mail",
        {
            "0001-kept.eml": message("kept"),
            ".hidden.eml": message("hidden"),
            "README.md": b"# notes\n",
            "ticketflow.toml": b"[routing]\n",
            "0002-no-suffix": message("kept too"),
        },
    )
    write_folder(folder / "sub", {"0000-nested.eml": message("nested")})
    os.mkfifo(folder / "0003-pipe")

    read = [Path(source).name for source in sources(folder)]

    assert read == ["0001-kept.eml", "0002-no-suffix"]


def test_folder_entry_bytes_are_exact(tmp_path: Path) -> None:
    raw = message("crlf", "line one\nline two\n", newline="\r\n") + b"\r\n"
    folder = write_folder(tmp_path / "mail", {"1.eml": raw})

    assert raws(folder) == [raw]


def test_empty_folder_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    assert raws(tmp_path / "empty") == []
    assert count_messages(tmp_path / "empty") == 0


def test_folder_empty_entry_is_passed_on(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mail", {"1.eml": b"", "2.eml": message("two")})

    assert raws(folder) == [b"", message("two")]


def test_unreadable_entry_yields_empty_raw(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_folder(tmp_path / "mail", {"1.eml": message("one"), "3.eml": message("three")})
    (folder / "2-broken.eml").symlink_to(tmp_path / "gone.eml")

    with caplog.at_level(logging.WARNING, logger=corpus.__name__):
        items = list(iter_corpus(folder))

    assert [item.raw for item in items] == [message("one"), b"", message("three")]
    assert items[1].source == str(folder / "2-broken.eml")
    assert "2-broken.eml" in caplog.text
    assert "No such file" in caplog.text
    assert count_messages(folder) == 3


# --- Maildir -----------------------------------------------------------------------


def test_maildir_reads_new_then_cur(tmp_path: Path) -> None:
    maildir = make_maildir(
        tmp_path / "Maildir",
        new={"1700000300.M3P1.host": message("new b"), "1700000200.M2P1.host": message("new a")},
        cur={"1700000100.M1P1.host:2,S": message("cur a"), ".hidden": message("hidden")},
    )
    (maildir / "tmp" / "1700000400.M4P1.host").write_bytes(message("in flight"))

    items = list(iter_corpus(maildir))

    assert [item.raw for item in items] == [
        message("new a"),
        message("new b"),
        message("cur a"),
    ]
    assert items[2].source == str(maildir.resolve() / "cur" / "1700000100.M1P1.host:2,S")


def test_maildir_ignores_maildirplus_subfolders(tmp_path: Path) -> None:
    maildir = make_maildir(tmp_path / "Maildir", {"1.host": message("inbox")}, {})
    make_maildir(maildir / ".Sent", {"2.host": message("sent")}, {})

    assert raws(maildir) == [message("inbox")]


def test_empty_maildir_yields_nothing(tmp_path: Path) -> None:
    maildir = make_maildir(tmp_path / "Maildir", {}, {})

    assert raws(maildir) == []


# --- mbox --------------------------------------------------------------------------


def test_mbox_splits_messages(tmp_path: Path) -> None:
    messages = [message("one"), message("two"), message("three")]
    path = write_mbox(tmp_path / "box.mbox", messages)

    items = list(iter_corpus(path))

    assert [item.raw for item in items] == messages
    assert [item.source for item in items] == [f"{path.resolve()}#{index}" for index in range(3)]


def test_mbox_separator_line_is_not_in_message(tmp_path: Path) -> None:
    path = write_mbox(tmp_path / "box.mbox", [message("one")])

    (raw,) = raws(path)

    assert raw.startswith(b"From: Alice")
    assert b"From sender@example.com" not in raw


def test_mbox_unquotes_mboxrd(tmp_path: Path) -> None:
    header = message("quoted", body="")
    quoted_body = b">From the logs:\n>>From quoted once\n>>>From quoted twice\n"
    untouched = b"> From a reply\n>Fromage\nFrom: not a separator\n"
    path = tmp_path / "box.mbox"
    path.write_bytes(
        b"From a@example.com Mon Mar  2 09:00:00 2026\n" + header + quoted_body + untouched + b"\n"
    )

    (raw,) = raws(path)

    assert raw == header + b"From the logs:\n>From quoted once\n>>From quoted twice\n" + untouched


def test_mbox_from_inside_paragraph_kept(tmp_path: Path) -> None:
    # An unquoted "From " line that does not follow an empty line stays in the message.
    path = tmp_path / "box.mbox"
    first = message("one", "See below.\nFrom here on it fails.\n")
    path.write_bytes(
        b"From a@example.com Mon Mar  2 09:00:00 2026\n"
        + first
        + b"\nFrom b@example.com Mon Mar  2 09:01:00 2026\n"
        + message("two")
    )

    assert raws(path) == [first, message("two")]


def test_mbox_keeps_crlf_line_endings(tmp_path: Path) -> None:
    messages = [message("one", newline="\r\n"), message("two", newline="\r\n")]
    path = write_mbox(tmp_path / "box.mbox", messages, blank_line=b"\r\n")

    assert raws(path) == messages


def test_mbox_last_message_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    path.write_bytes(b"From a@example.com Mon Mar  2 09:00:00 2026\nSubject: cut\n\nno newline")

    assert raws(path) == [b"Subject: cut\n\nno newline"]


def test_mbox_message_ending_in_empty_lines(tmp_path: Path) -> None:
    messages = [message("one") + b"\n\n", message("two") + b"\n"]
    path = write_mbox(tmp_path / "box.mbox", messages)

    assert raws(path) == messages


def test_mbox_separator_without_message(tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    path.write_bytes(
        b"From a@example.com Mon Mar  2 09:00:00 2026\n"
        + b"\nFrom b@example.com Mon Mar  2 09:01:00 2026\n"
        + message("two")
        + b"\nFrom c@example.com Mon Mar  2 09:02:00 2026"
    )

    assert raws(path) == [b"", message("two"), b""]


def test_mbox_same_position_read_twice(tmp_path: Path) -> None:
    path = write_mbox(tmp_path / "box.mbox", [message(f"m{index}") for index in range(5)])

    first = [(item.source, item.raw) for item in iter_corpus(path)]
    second = [(item.source, item.raw) for item in iter_corpus(path)]

    assert first == second
    assert len({source for source, _ in first}) == 5


line_text = st.one_of(
    st.sampled_from(["From x", "From ", ">From y", ">>From z", "", " From", "Fro", "\r"]),
    st.text(alphabet="Fro m>\rx", max_size=12),
)
lines = st.lists(st.tuples(line_text, st.sampled_from(["\n", "\r\n"])), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(lines, min_size=1, max_size=5),
    chunk_size=st.integers(min_value=1, max_value=40),
)
def test_mbox_round_trips_any_chunking(
    bodies: list[list[tuple[str, str]]], chunk_size: int
) -> None:
    messages = [
        ("Subject: s\n\n" + "".join(text + end for text, end in body)).encode() for body in bodies
    ]

    original = corpus.MBOX_CHUNK_SIZE
    corpus.MBOX_CHUNK_SIZE = chunk_size
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = write_mbox(Path(folder) / "box.mbox", messages)
            assert raws(path) == messages
            assert count_messages(path) == len(messages)
    finally:
        corpus.MBOX_CHUNK_SIZE = original


# --- start (resume) and counting ---------------------------------------------------


@pytest.fixture(params=["file", "folder", "mbox", "maildir"])
def five_message_corpus(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    messages = [message(f"m{index}") for index in range(5)]
    if request.param == "file":
        path = tmp_path / "one.eml"
        path.write_bytes(messages[0])
        return path
    if request.param == "folder":
        return write_folder(tmp_path / "mail", {f"{i:04}.eml": m for i, m in enumerate(messages)})
    if request.param == "mbox":
        return write_mbox(tmp_path / "box.mbox", messages)
    return make_maildir(
        tmp_path / "Maildir",
        new={f"{i}.host": m for i, m in enumerate(messages[:2])},
        cur={f"{i}.host:2,S": m for i, m in enumerate(messages[2:], start=2)},
    )


def test_start_skips_read_messages(five_message_corpus: Path) -> None:
    everything = list(zip(sources(five_message_corpus), raws(five_message_corpus), strict=True))

    for start in range(len(everything) + 2):
        rest = list(
            zip(
                sources(five_message_corpus, start=start),
                raws(five_message_corpus, start=start),
                strict=True,
            )
        )
        assert rest == everything[start:]


def test_count_matches_iteration(five_message_corpus: Path) -> None:
    assert count_messages(five_message_corpus) == len(raws(five_message_corpus))


def test_negative_start_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="start must be 0 or more, got -1"):
        iter_corpus(tmp_path, start=-1)


def test_iter_corpus_fails_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        iter_corpus(tmp_path / "missing")


def test_clock_stamps_each_message(tmp_path: Path) -> None:
    path = write_mbox(tmp_path / "box.mbox", [message("one"), message("two")])
    ticks = iter([FIXED_TIME, FIXED_TIME + timedelta(seconds=1)])

    items = list(iter_corpus(path, clock=lambda: next(ticks)))

    assert [item.ingested_at for item in items] == [FIXED_TIME, FIXED_TIME + timedelta(seconds=1)]


# --- CorpusSource ------------------------------------------------------------------


def test_partition_snapshot_counts_emitted(tmp_path: Path) -> None:
    path = write_mbox(tmp_path / "box.mbox", [message(f"m{index}") for index in range(5)])
    partition = CorpusSource(path, batch_size=2).build_part("in", str(path.resolve()), None)

    first = partition.next_batch()
    assert len(first) == 2
    assert partition.snapshot() == 2

    resumed = CorpusSource(path, batch_size=2).build_part("in", str(path.resolve()), 2)
    assert [item.raw for item in resumed.next_batch()] == [message("m2"), message("m3")]
    assert resumed.snapshot() == 4
    assert [item.raw for item in resumed.next_batch()] == [message("m4")]
    with pytest.raises(StopIteration):
        resumed.next_batch()
    assert resumed.snapshot() == 5
    resumed.close()
    partition.close()


def test_source_lists_one_partition_per_path(tmp_path: Path) -> None:
    mbox = write_mbox(tmp_path / "box.mbox", [message("one")])
    folder = write_folder(tmp_path / "mail", {"1.eml": message("two")})

    source = CorpusSource([mbox, folder, tmp_path / "." / "box.mbox"])

    assert source.list_parts() == [str(mbox.resolve()), str(folder.resolve())]


def test_source_rejects_bad_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"missing\.mbox does not exist"):
        CorpusSource([tmp_path / "missing.mbox"])


def test_source_rejects_no_paths() -> None:
    with pytest.raises(CorpusError, match="no corpus path given"):
        CorpusSource([])


def test_source_rejects_zero_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        CorpusSource(tmp_path, batch_size=0)


def build_flow(source: CorpusSource, out: list[RawMessage]) -> Dataflow:
    flow = Dataflow("corpus_test")
    stream = op.input("read", flow, source)
    op.output("out", stream, TestingSink(out))
    return flow


@pytest.fixture
def two_corpora(tmp_path: Path) -> list[Path]:
    mbox = write_mbox(tmp_path / "box.mbox", [message(f"mbox {index}") for index in range(7)])
    folder = write_folder(
        tmp_path / "mail", {f"{index:04}.eml": message(f"file {index}") for index in range(4)}
    )
    return [mbox, folder]


def expected_sources(paths: list[Path]) -> list[str]:
    return sorted(item.source for path in paths for item in iter_corpus(path))


def test_bytewax_run_emits_each_message_once(two_corpora: list[Path]) -> None:
    out: list[RawMessage] = []

    run_main(build_flow(CorpusSource(two_corpora, batch_size=3), out))

    assert sorted(item.source for item in out) == expected_sources(two_corpora)
    assert len(out) == 11


def test_bytewax_two_workers_emit_each_message_once(two_corpora: list[Path]) -> None:
    out: list[RawMessage] = []

    cluster_main(
        build_flow(CorpusSource(two_corpora, batch_size=2), out),
        [],
        0,
        worker_count_per_proc=2,
    )

    assert sorted(item.source for item in out) == expected_sources(two_corpora)


class AbortOnceSource(CorpusSource):
    """A corpus source whose first partition built aborts the run after its first batch."""

    aborted = False

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> CorpusPartition:
        partition = super().build_part(step_id, for_part, resume_state)
        if AbortOnceSource.aborted:
            return partition
        AbortOnceSource.aborted = True
        batches = 0
        real_next_batch = partition.next_batch

        def next_batch() -> list[RawMessage]:
            nonlocal batches
            batches += 1
            if batches > 1:
                raise AbortExecution()
            return real_next_batch()

        partition.next_batch = next_batch
        return partition


def test_bytewax_resume_after_abort(tmp_path: Path) -> None:
    path = write_mbox(tmp_path / "box.mbox", [message(f"m{index}") for index in range(9)])
    recovery_dir = tmp_path / "recovery"
    recovery_dir.mkdir()
    init_db_dir(recovery_dir, 1)
    recovery = RecoveryConfig(str(recovery_dir))
    AbortOnceSource.aborted = False

    first_run: list[RawMessage] = []
    run_main(
        build_flow(AbortOnceSource(path, batch_size=2), first_run),
        epoch_interval=timedelta(0),
        recovery_config=recovery,
    )
    second_run: list[RawMessage] = []
    run_main(
        build_flow(AbortOnceSource(path, batch_size=2), second_run),
        epoch_interval=timedelta(0),
        recovery_config=recovery,
    )

    everything = [item.source for item in iter_corpus(path)]
    assert [item.source for item in first_run] == everything[:2]
    assert [item.source for item in second_run] == everything[2:]


# --- the sample corpus -------------------------------------------------------------


def test_sample_mbox_is_up_to_date() -> None:
    check = subprocess.run(
        [sys.executable, str(REPO / "corpus" / "build_mbox.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert check.returncode == 0, check.stderr


def test_sample_mbox_matches_sample_folder() -> None:
    from_folder = raws(SAMPLE_FOLDER)
    from_mbox = raws(SAMPLE_MBOX)

    assert len(from_folder) == len(list(SAMPLE_FOLDER.glob("*.eml")))
    assert from_mbox == from_folder


# The one defect the sample carries on purpose.
INTENDED_SAMPLE_DEFECTS = {
    "0025-initech-message-id-without-brackets.eml": [("Message-ID", "InvalidHeaderDefect")],
}


def sample_defects(raw: bytes) -> list[tuple[str, str]]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    found = [
        (part.get_content_type(), type(defect).__name__)
        for part in parsed.walk()
        for defect in part.defects
    ]
    for name, value in parsed.items():
        found.extend((name, type(defect).__name__) for defect in value.defects)
    return found


def test_sample_corpus_has_only_intended_defects() -> None:
    for item in iter_corpus(SAMPLE_FOLDER):
        name = Path(item.source).name
        assert sample_defects(item.raw) == INTENDED_SAMPLE_DEFECTS.get(name, []), name


def test_non_utf8_file_name_gives_printable_source(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    with open(os.fsencode(folder) + b"/caf\xe9.eml", "wb") as handle:
        handle.write(b"From: a@x\r\nSubject: s\r\n\r\nbody\r\n")
    [message] = list(iter_corpus(folder))
    assert message.source.endswith("caf\\xe9.eml")
    message.source.encode("utf-8")
