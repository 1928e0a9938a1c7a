"""Malware scanning through clamd, the ClamAV daemon, over its INSTREAM protocol.

`ClamdScanner.scan(data)` opens one connection per call, sends `zINSTREAM`, then
the bytes in chunks, each preceded by its length as a 4-byte big-endian integer,
and a zero-length chunk to end the stream. clamd replies with one NUL-terminated
line:

- `stream: OK` means no signature matched, and `scan` returns None;
- `stream: NAME FOUND` means a signature matched, and `scan` returns NAME. Signatures
  from a database that ClamAV did not sign carry the suffix `.UNOFFICIAL`
  (`Eicar-Test.UNOFFICIAL`), and NAME keeps it;
- `INSTREAM size limit exceeded. ERROR` and every other `… ERROR` reply raise
  `ClamdUnavailable` with clamd's words. clamd rejects a stream longer than its
  `StreamMaxLength` setting (100M by default in ClamAV 1.4, 25M in the clamd.conf
  that Debian's clamav-daemon installs), so that setting must be at least
  `[attachments] max_file_bytes`.

A refused connection, a missing socket file and a timeout raise `ClamdUnavailable`
too, naming the address. No connection outlives a call, so one scanner may be
shared by threads.

The address is `tcp://HOST:PORT` (IPv6 hosts in brackets) or `unix:///PATH`,
which is the form of `[attachments] clamd`. Debian's clamav-daemon listens on
`unix:///run/clamav/clamd.ctl` by default.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Bytes sent per INSTREAM chunk. clamd accepts any chunk size up to StreamMaxLength.
CHUNK_BYTES = 64 * 1024

# Longest reply read, in bytes. clamd's replies are one short line.
MAX_REPLY_BYTES = 64 * 1024

ADDRESS_FORMS = "tcp://HOST:PORT or unix:///PATH"
_STREAM_PREFIX = "stream: "
_CLEAN = "OK"
_FOUND_SUFFIX = " FOUND"
_ERROR_SUFFIX = " ERROR"
_SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded"
_END_OF_STREAM = struct.pack(">I", 0)


class ClamdUnavailable(Exception):
    """clamd could not scan: it is unreachable, timed out, or replied with an error.

    The message names the address and, where one is known, the fix. A file whose
    scan raised this has not been scanned. It is neither clean nor infected.
    """


class ClamdStreamTooLarge(ClamdUnavailable):
    """clamd refused one file as larger than its StreamMaxLength; clamd itself is up.

    Only that file is unscanned: the caller refuses it without pausing other scans.
    """


@dataclass(frozen=True)
class ClamdAddress:
    """A clamd endpoint: a TCP host and port, or the path of a Unix socket."""

    text: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)


def parse_address(text: str) -> ClamdAddress:
    """Parse `tcp://HOST:PORT` or `unix:///PATH`. Any other string raises ValueError."""
    parts = urlsplit(text.strip())
    if parts.scheme == "unix" and not parts.netloc and parts.path.startswith("/"):
        return ClamdAddress(text=text, path=parts.path)

    if parts.scheme == "tcp" and not parts.path.strip("/") and not parts.query:
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.hostname and port:
            return ClamdAddress(text=text, host=parts.hostname, port=port)

    raise ValueError(f"invalid clamd address {text!r}: expected {ADDRESS_FORMS}")


class ClamdScanner:
    """A client of one clamd for `ping` and `scan`. The module docstring describes the protocol.

    `timeout` (seconds) applies to connecting and to each socket read or write, so
    a large file may take longer in total. A bad address raises ValueError here,
    before any connection is made.
    """

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        self.address = parse_address(address)
        self.timeout = timeout

    def ping(self) -> bool:
        """Send PING. Return True on PONG, False on any other reply or an unreachable clamd."""
        try:
            with self._connect() as connection:
                connection.sendall(b"zPING\0")
                reply = self._read_reply(connection)
        except (ClamdUnavailable, OSError) as error:
            log.debug("clamd ping failed: %s", error)
            return False
        return reply == "PONG"

    def scan(self, data: bytes) -> str | None:
        """Scan `data` with INSTREAM and return the signature name, or None when it is clean.

        Raises ClamdUnavailable when clamd is unreachable, times out, or replies
        with an error, including the size limit (StreamMaxLength).
        """
        started = time.perf_counter()
        with self._connect() as connection:
            send_error = self._send_stream(connection, data)
            reply = self._read_reply(connection, send_error)
        signature = self._verdict(reply)

        log.info(
            "clamd %s scanned %d bytes in %.0f ms: %s",
            self.address.text,
            len(data),
            (time.perf_counter() - started) * 1000,
            signature or "clean",
        )
        return signature

    def _connect(self) -> socket.socket:
        address = self.address
        try:
            if address.is_unix:
                connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                connection.settimeout(self.timeout)
                try:
                    connection.connect(address.path)
                except OSError:
                    connection.close()
                    raise
                return connection
            connection = socket.create_connection((address.host, address.port), self.timeout)
            connection.settimeout(self.timeout)
            return connection
        except TimeoutError as error:
            raise ClamdUnavailable(
                f"connecting to clamd at {address.text} timed out after {self.timeout} s. "
                "Check that clamd is running there and that no firewall drops the connection"
            ) from error
        except OSError as error:
            raise ClamdUnavailable(
                f"cannot connect to clamd at {address.text}: {error.strerror or error}. "
                "Start clamd (Debian package clamav-daemon) or correct [attachments] clamd"
            ) from error

    def _send_stream(self, connection: socket.socket, data: bytes) -> OSError | None:
        """Send the INSTREAM command, `data` in chunks and the end marker. Return the send error.

        clamd closes the connection as soon as a stream passes StreamMaxLength, after
        writing its reply. A failed send is therefore returned rather than raised, so
        that the caller can still read the reply that explains it.
        """
        view = memoryview(data)
        try:
            connection.sendall(b"zINSTREAM\0")
            for start in range(0, len(view), CHUNK_BYTES):
                chunk = view[start : start + CHUNK_BYTES]
                connection.sendall(struct.pack(">I", len(chunk)))
                connection.sendall(chunk)
            connection.sendall(_END_OF_STREAM)
        except TimeoutError as error:
            raise self._timed_out("sending the stream") from error
        except OSError as error:
            return error
        return None

    def _read_reply(self, connection: socket.socket, send_error: OSError | None = None) -> str:
        """Read one NUL-terminated reply. clamd may also end it by closing the connection."""
        received = bytearray()
        try:
            while b"\0" not in received and len(received) < MAX_REPLY_BYTES:
                block = connection.recv(4096)
                if not block:
                    break
                received += block
        except TimeoutError as error:
            raise self._timed_out("waiting for its reply") from error
        except OSError as error:
            if not received:
                cause = send_error or error
                raise ClamdUnavailable(
                    f"clamd at {self.address.text} closed the connection: {cause.strerror or cause}"
                ) from error

        reply = bytes(received).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        if not reply:
            detail = f": {send_error.strerror or send_error}" if send_error else ""
            raise ClamdUnavailable(
                f"clamd at {self.address.text} closed the connection without a reply{detail}"
            )
        return reply

    def _verdict(self, reply: str) -> str | None:
        """Turn an INSTREAM reply into a signature name or None, or raise for an error."""
        if reply.endswith(_ERROR_SUFFIX):
            raise self._rejected(reply)

        result = reply.removeprefix(_STREAM_PREFIX) if reply.startswith(_STREAM_PREFIX) else None
        if result == _CLEAN:
            return None
        if result is not None and result.endswith(_FOUND_SUFFIX):
            return result.removesuffix(_FOUND_SUFFIX)

        raise ClamdUnavailable(
            f"clamd at {self.address.text} sent an unexpected reply to INSTREAM: {reply!r}. "
            "Check that the address points at clamd and not at another service"
        )

    def _rejected(self, reply: str) -> ClamdUnavailable:
        if reply.startswith(_SIZE_LIMIT_REPLY):
            return ClamdStreamTooLarge(
                f"clamd at {self.address.text} rejected the scan: {reply}. Raise StreamMaxLength "
                "in clamd.conf to at least [attachments] max_file_bytes, or lower max_file_bytes"
            )
        return ClamdUnavailable(
            f"clamd at {self.address.text} rejected the scan: {reply}. Read clamd's log for the cause"
        )

    def _timed_out(self, step: str) -> ClamdUnavailable:
        return ClamdUnavailable(
            f"clamd at {self.address.text} timed out after {self.timeout} s {step}. "
            "Check clamd's load and log, or raise [attachments] clamd_timeout"
        )
