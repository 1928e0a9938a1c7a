"""Replay a mail corpus from disk: one message file, a folder of them, an mbox or a Maildir.

`iter_corpus` yields each message of a corpus as a `RawMessage`, in a fixed order, so
a position (the count of messages already read) is enough to resume. `CorpusSource`
wraps it as a Bytewax input with one partition per corpus path and that count as the
partition's state.

Kinds, as `corpus_kind` detects them:

- ``"file"``: a regular file whose first line does not start with ``From ``; the whole
  file is one RFC 5322 message. Source: the file's absolute path.
- ``"mbox"``: a regular file whose first line starts with ``From ``. A message starts
  at each line beginning with ``From `` that is the first line of the file or follows
  an empty line. That separator line is not part of the message, and neither is the
  empty line before the next separator (or at the end of the file). mboxrd quoting is
  undone (``>From `` becomes ``From ``, ``>>From `` becomes ``>From ``); every other
  byte, line endings included, is kept. Source: ``/abs/box.mbox#17`` for the message
  at 0-based index 17.
- ``"maildir"``: a folder with ``cur/`` and ``new/`` subfolders. The messages of
  ``new/`` come first, then those of ``cur/``; ``tmp/`` is ignored. Source: the
  entry's absolute path.
- ``"folder"``: any other folder. Every top-level entry is one message; hidden entries
  (name starting with ``.``), subfolders, special files (pipes, sockets, devices) and
  the corpus's own README and config (names ending in ``.md`` or ``.toml``) are
  skipped. Source: the entry's absolute path.

Entries of a folder or Maildir are read in the byte order of their file names.

Empty and unreadable input:

- An empty corpus (an empty file, an empty folder, a Maildir with no messages)
  yields nothing.
- Each entry of a folder or a Maildir yields exactly one `RawMessage`, so the count
  of messages read always equals the count of entries. An entry that cannot be read
  (a broken symlink, a permission error, a file removed while the corpus is read)
  yields ``raw=b""`` and logs a warning with the OS error. The parse stage then
  dead-letters it like an empty entry instead of stopping a long replay.
- A corpus path that is missing, unsupported or unreadable as a whole raises
  `CorpusError`, because no message can be read from it at all.

Limitations: the resume state is a count of messages, so a corpus must not change
between a run and its resume. A file added to a folder, or an mbox rewritten, shifts
the positions, and the resumed run then skips or repeats messages.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Literal

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from ticketflow.model import RawMessage, utc_now

logger = logging.getLogger(__name__)

CorpusKind = Literal["file", "folder", "mbox", "maildir"]

DEFAULT_BATCH_SIZE = 256

# Bytes read from an mbox at a time. A larger message is assembled from several
# reads, so this bounds the read size, not the message size.
MBOX_CHUNK_SIZE = 1 << 20

# A folder corpus may carry its README and a demo config beside the messages.
NOT_MESSAGE_SUFFIXES = frozenset({".md", ".toml"})

_EXPECTED = "a message file, a folder of message files, an mbox or a Maildir"

# An empty line (LF or CRLF) followed by an mbox separator line. The match starts at
# the newline that ends the previous message's last line.
_MBOX_SEPARATOR = re.compile(rb"\n\r?\nFrom ")
_LONGEST_SEPARATOR = len(b"\n\r\nFrom ")

# A mboxrd-quoted "From " line: one or more ">" before "From " at the start of a line.
_MBOXRD_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)

# A trailing empty line (LF or CRLF) after a message's last line.
_TRAILING_EMPTY_LINE = re.compile(rb"\n\r?\n\Z")


class CorpusError(ValueError):
    """A corpus path that cannot be read as a corpus. The message names the path."""


def corpus_kind(path: str | Path) -> CorpusKind:
    """Detect what kind of corpus `path` is, reading at most the first line of a file.

    Raises `CorpusError` naming the path and what was expected when the path is
    missing, is neither a regular file nor a folder, or cannot be read.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CorpusError(f"corpus path {path} does not exist; expected {_EXPECTED}") from None
    except OSError as exc:
        raise CorpusError(f"cannot read corpus path {path}: {exc.strerror}") from exc

    if stat.S_ISDIR(mode):
        if (path / "cur").is_dir() and (path / "new").is_dir():
            return "maildir"
        return "folder"

    if not stat.S_ISREG(mode):
        raise CorpusError(
            f"corpus path {path} is neither a regular file nor a folder; expected {_EXPECTED}"
        )

    if _first_line_starts_with_from(path):
        return "mbox"
    return "file"


def iter_corpus(
    path: str | Path,
    *,
    start: int = 0,
    clock: Callable[[], datetime] = utc_now,
) -> Iterator[RawMessage]:
    """Yield every message of the corpus at `path`, in corpus order, skipping the first `start`.

    Each message becomes `RawMessage(source, raw, ingested_at=clock())`, and reading
    the same position twice gives the same `source` and `raw`. The kind is detected
    before the first message is read, so a path that is not a corpus raises
    `CorpusError` from this call. An mbox is streamed in chunks and never read whole.
    """
    if start < 0:
        raise ValueError(f"start must be 0 or more, got {start}")
    path = Path(path)
    kind = corpus_kind(path)
    return _stamp(_iter_entries(path, kind), start, clock)


def _stamp(
    entries: Generator[tuple[str, bytes], None, None],
    start: int,
    clock: Callable[[], datetime],
) -> Generator[RawMessage, None, None]:
    """Skip `start` entries and wrap the rest. Closing this generator closes the open file."""
    try:
        for source, raw in islice(entries, start, None):
            yield RawMessage(source=source, raw=raw, ingested_at=clock())
    finally:
        entries.close()


def count_messages(path: str | Path) -> int:
    """Count the messages `iter_corpus(path)` would yield, without undoing mboxrd quoting."""
    path = Path(path)
    kind = corpus_kind(path)
    if kind == "mbox":
        return sum(1 for _ in _split_mbox(path))
    if kind == "file":
        return 0 if _is_empty_file(path) else 1
    return len(_entry_paths(path, kind))


class CorpusSource(FixedPartitionedSource[RawMessage, int]):
    """A Bytewax input replaying one or more corpora, one partition per corpus path.

    The partition key is the corpus's absolute path, and the partition
    state is the number of messages it has already emitted. A resumed partition
    starts after them, so a run restored from a recovery snapshot emits each message
    once, as long as the corpus did not change in between (see the module's
    Limitations). Every path is checked when the source is built, so a bad path
    raises `CorpusError` before the dataflow starts. A path named twice (also
    as ``dir/../box.mbox``) is read once; a symlink and its target are two paths.
    """

    def __init__(
        self,
        paths: str | Path | Iterable[str | Path],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")

        if isinstance(paths, (str, Path)):
            paths = [paths]
        keys: dict[str, str] = {}
        for path in paths:
            corpus_kind(path)
            absolute = _absolute(Path(path))
            keys[_printable(absolute)] = absolute
        if not keys:
            raise CorpusError(f"no corpus path given; expected {_EXPECTED}")

        # Partition keys must be valid text for the recovery store; a path that is
        # not valid UTF-8 is keyed by its escaped form and opened by its real one.
        self._paths = keys
        self._keys = list(keys)
        self._batch_size = batch_size
        self._clock = clock

    def list_parts(self) -> list[str]:
        """List one partition key per corpus path: its absolute path."""
        return list(self._keys)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> CorpusPartition:
        """Open the corpus `for_part`, resuming after `resume_state` messages."""
        return CorpusPartition(
            self._paths.get(for_part, for_part),
            start=resume_state or 0,
            batch_size=self._batch_size,
            clock=self._clock,
        )


class CorpusPartition(StatefulSourcePartition[RawMessage, int]):
    """The messages of one corpus path, in batches, with the count emitted as its state."""

    def __init__(
        self,
        path: str,
        *,
        start: int,
        batch_size: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._emitted = start
        self._batch_size = batch_size
        self._messages = _stamp(_iter_entries(Path(path), corpus_kind(path)), start, clock)

    def next_batch(self) -> list[RawMessage]:
        """Return up to `batch_size` messages; raise `StopIteration` once the corpus is drained."""
        batch = list(islice(self._messages, self._batch_size))
        if not batch:
            raise StopIteration
        self._emitted += len(batch)
        return batch

    def snapshot(self) -> int:
        """Return the number of messages emitted, which is where a resumed run starts."""
        return self._emitted

    def close(self) -> None:
        """Close the open mbox file, if any."""
        self._messages.close()


def _iter_entries(path: Path, kind: CorpusKind) -> Generator[tuple[str, bytes], None, None]:
    if kind == "mbox":
        prefix = _printable(_absolute(path))
        for index, quoted in enumerate(_split_mbox(path)):
            yield f"{prefix}#{index}", _unquote_mboxrd(quoted)
        return

    if kind == "file":
        raw = _read_corpus_file(path)
        if raw:
            yield _printable(_absolute(path)), raw
        return

    for entry in _entry_paths(path, kind):
        yield _printable(_absolute(entry)), _read_entry(entry)


def _entry_paths(path: Path, kind: CorpusKind) -> list[Path]:
    if kind == "maildir":
        return _message_files(path / "new") + _message_files(path / "cur")
    return _message_files(path)


def _message_files(folder: Path) -> list[Path]:
    """List the message files directly inside `folder`, in byte order of their names."""
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise CorpusError(f"cannot list corpus folder {folder}: {exc.strerror}") from exc

    entries = [folder / name for name in sorted(names, key=os.fsencode)]
    return [entry for entry in entries if _is_message_entry(entry)]


def _is_message_entry(entry: Path) -> bool:
    if entry.name.startswith(".") or entry.suffix.lower() in NOT_MESSAGE_SUFFIXES:
        return False
    try:
        mode = entry.stat().st_mode
    except OSError:
        # A broken symlink or an entry that vanished is kept, so that reading it fails
        # in its place instead of the entry disappearing from the count.
        return True
    return stat.S_ISREG(mode)


def _read_entry(entry: Path) -> bytes:
    try:
        return entry.read_bytes()
    except OSError as exc:
        logger.warning("cannot read corpus entry %s: %s; passing it on empty", entry, exc)
        return b""


def _read_corpus_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}") from exc


def _first_line_starts_with_from(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(5) == b"From "
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}") from exc


def _is_empty_file(path: Path) -> bool:
    return path.stat().st_size == 0


def _absolute(path: Path) -> str:
    """Return the absolute, normalized path without resolving symlinks.

    A symlinked folder entry keeps its own name as its source, not its target's.
    """
    return os.path.abspath(path)


def _printable(path: str) -> str:
    """Return a path as valid text: bytes that are not UTF-8 become `\\xNN` escapes.

    Sources travel in JSON and into the store, which reject the surrogates that
    Python uses for such bytes in file names.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def _split_mbox(path: Path) -> Iterator[bytes]:
    """Yield each message of an mbox still mboxrd-quoted, reading the file in chunks."""
    try:
        with path.open("rb") as file:
            yield from _split_mbox_stream(file)
    except OSError as exc:
        raise CorpusError(f"cannot read mbox {path}: {exc.strerror}") from exc


def _split_mbox_stream(file: BinaryIO) -> Iterator[bytes]:
    """Split an mbox stream into messages. The stream must start with a separator line.

    The buffer contains the unread tail of the file read so far: the current message and
    at most one chunk more. Memory stays bounded by the largest message plus
    `MBOX_CHUNK_SIZE`, and each byte is scanned about once.
    """
    buffer = bytearray()
    at_end = False
    while True:
        # The buffer starts at the current message's separator line.
        line_end = buffer.find(b"\n")
        while line_end < 0 and not at_end:
            at_end = _refill(file, buffer)
            line_end = buffer.find(b"\n")
        if line_end < 0:
            if buffer:
                # A separator line cut off by the end of the file: a message with no bytes.
                yield b""
            return
        body_start = line_end + 1

        separator = _MBOX_SEPARATOR.search(buffer, line_end)
        while separator is None and not at_end:
            # Search again only over the new bytes and the few old ones that a
            # separator could straddle.
            scan_from = max(line_end, len(buffer) - _LONGEST_SEPARATOR + 1)
            at_end = _refill(file, buffer)
            separator = _MBOX_SEPARATOR.search(buffer, scan_from)

        if separator is None:
            yield _without_trailing_empty_line(_copy(buffer, body_start, len(buffer)))
            return

        yield _copy(buffer, body_start, separator.start() + 1)
        # Drop what was emitted so the buffer does not grow with the file.
        del buffer[: separator.end() - len(b"From ")]


def _copy(buffer: bytearray, start: int, end: int) -> bytes:
    """Copy `buffer[start:end]` once; slicing the bytearray first would copy twice."""
    with memoryview(buffer) as view:
        return bytes(view[start:end])


def _refill(file: BinaryIO, buffer: bytearray) -> bool:
    """Append the next chunk of `file` to `buffer`, and return True at the end of the file."""
    chunk = file.read(MBOX_CHUNK_SIZE)
    buffer += chunk
    return not chunk


def _without_trailing_empty_line(message: bytes) -> bytes:
    match = _TRAILING_EMPTY_LINE.search(message)
    if match is None:
        return message
    return message[: match.start() + 1]


def _unquote_mboxrd(message: bytes) -> bytes:
    """Remove one ">" from each line that is ">"s followed by "From "."""
    if b">From " not in message:
        return message
    return _MBOXRD_QUOTED_FROM.sub(rb"\1", message)
