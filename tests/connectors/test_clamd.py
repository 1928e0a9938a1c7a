"""ClamdScanner against a real clamd that reads only the test signatures.

The `clamd` fixture runs Debian's clamd with StreamMaxLength = STREAM_MAX_BYTES and a
hash database holding EICAR and LARGE_SAMPLE (see tests/connectors/clamd_daemon.py).
Tests that stop clamd or need a Unix socket start their own. The timeout and
unexpected-reply cases use a plain TCP listener that is not clamd, because no
healthy clamd replies that way.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.connectors.clamd_daemon import (
    EICAR,
    EICAR_SIGNATURE,
    LARGE_SAMPLE,
    LARGE_SAMPLE_SIGNATURE,
    STREAM_MAX_BYTES,
    ClamdDaemon,
    clamd_binary,
)
from ticketflow.connectors.clamd import CHUNK_BYTES, ClamdScanner, ClamdUnavailable, parse_address

# clamd appends this to the names of signatures from databases ClamAV did not sign.
UNOFFICIAL = ".UNOFFICIAL"

needs_clamd = pytest.mark.skipif(
    clamd_binary() is None, reason="clamd not installed: apt-get install clamav-daemon"
)


@pytest.fixture
def scanner(clamd: ClamdDaemon) -> ClamdScanner:
    return ClamdScanner(clamd.tcp_address, timeout=30.0)


# --- scanning -------------------------------------------------------------------------


def test_ping_running_clamd(scanner):
    assert scanner.ping() is True


def test_scan_eicar_names_signature(scanner):
    assert scanner.scan(EICAR) == EICAR_SIGNATURE + UNOFFICIAL


def test_scan_eicar_from_bytearray(scanner):
    assert scanner.scan(bytearray(EICAR)) == EICAR_SIGNATURE + UNOFFICIAL


@pytest.mark.parametrize(
    "data",
    [
        b"Hello, the invoice is attached.\r\n",
        b"",
        EICAR[:-1],
        EICAR.replace(b"EICAR", b"EICAX"),
    ],
    ids=["text", "empty", "eicar-truncated", "eicar-altered"],
)
def test_scan_clean_bytes(scanner, data):
    assert scanner.scan(data) is None


def test_large_sample_spans_several_chunks():
    assert len(LARGE_SAMPLE) > 3 * CHUNK_BYTES
    assert len(LARGE_SAMPLE) % CHUNK_BYTES != 0


def test_scan_multi_chunk_file_found(scanner):
    # The hash signature matches only when clamd received every chunk, in order.
    assert scanner.scan(LARGE_SAMPLE) == LARGE_SAMPLE_SIGNATURE + UNOFFICIAL


@pytest.mark.parametrize(
    "altered",
    [
        LARGE_SAMPLE[:-1],
        LARGE_SAMPLE[:CHUNK_BYTES] + LARGE_SAMPLE[2 * CHUNK_BYTES :],
        LARGE_SAMPLE[CHUNK_BYTES : 2 * CHUNK_BYTES]
        + LARGE_SAMPLE[:CHUNK_BYTES]
        + LARGE_SAMPLE[2 * CHUNK_BYTES :],
    ],
    ids=["last-byte-missing", "chunk-missing", "chunks-swapped"],
)
def test_scan_multi_chunk_file_altered(scanner, altered):
    assert scanner.scan(altered) is None


def test_scan_at_stream_limit_is_clean(scanner):
    assert scanner.scan(b"\0" * STREAM_MAX_BYTES) is None


@pytest.mark.parametrize(
    "size", [STREAM_MAX_BYTES + 1, 8 * STREAM_MAX_BYTES], ids=["one-byte-over", "far-over"]
)
def test_scan_over_stream_limit_raises(scanner, clamd, size):
    with pytest.raises(ClamdUnavailable) as raised:
        scanner.scan(b"\0" * size)
    message = str(raised.value)
    assert "INSTREAM size limit exceeded" in message
    assert clamd.tcp_address in message
    assert "StreamMaxLength" in message


def test_scan_after_size_error_still_works(scanner):
    with pytest.raises(ClamdUnavailable):
        scanner.scan(b"\0" * (STREAM_MAX_BYTES + 1))
    assert scanner.scan(EICAR) == EICAR_SIGNATURE + UNOFFICIAL


def test_scanner_shared_by_threads(scanner):
    samples = [EICAR, b"clean attachment", LARGE_SAMPLE, b"another clean one"] * 4
    expected = [
        EICAR_SIGNATURE + UNOFFICIAL,
        None,
        LARGE_SAMPLE_SIGNATURE + UNOFFICIAL,
        None,
    ] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(scanner.scan, samples))
    assert results == expected


# --- clamd gone or wrong ----------------------------------------------------------------


@needs_clamd
def test_stopped_clamd_raises_unavailable():
    with ClamdDaemon() as daemon:
        scanner = ClamdScanner(daemon.tcp_address, timeout=5.0)
        assert scanner.scan(EICAR) == EICAR_SIGNATURE + UNOFFICIAL
    assert not daemon.running

    with pytest.raises(ClamdUnavailable) as raised:
        scanner.scan(EICAR)
    message = str(raised.value)
    assert daemon.tcp_address in message
    assert "Start clamd" in message
    assert "[attachments] clamd" in message


@needs_clamd
def test_ping_stopped_clamd_false():
    with ClamdDaemon() as daemon:
        scanner = ClamdScanner(daemon.tcp_address, timeout=5.0)
        assert scanner.ping() is True
    assert scanner.ping() is False


def test_missing_unix_socket_raises(tmp_path):
    address = f"unix://{tmp_path / 'clamd.ctl'}"
    with pytest.raises(ClamdUnavailable, match="No such file or directory") as raised:
        ClamdScanner(address, timeout=5.0).scan(b"data")
    assert address in str(raised.value)


@pytest.fixture
def silent_listener() -> Iterator[Callable[[bytes | None], str]]:
    """Start a loopback TCP listener that is not clamd, and return its tcp:// address.

    The listener accepts one connection. With a reply it sends that reply after
    the client's first bytes and ends its side, and without one it stays silent.
    """
    servers: list[socket.socket] = []
    accepted: list[socket.socket] = []

    def serve(reply: bytes | None) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def accept() -> None:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(connection)
            if reply is None:
                return
            # Reply, then read until the client closes, because closing with unread input
            # sends a reset that can discard the reply before the client reads it.
            connection.settimeout(10.0)
            try:
                connection.recv(65536)
                connection.sendall(reply)
                connection.shutdown(socket.SHUT_WR)
                while connection.recv(65536):
                    pass
            except OSError:
                pass

        threading.Thread(target=accept, daemon=True).start()
        return f"tcp://127.0.0.1:{server.getsockname()[1]}"

    yield serve
    for item in accepted + servers:
        item.close()


def test_silent_server_times_out(silent_listener):
    address = silent_listener(None)
    with pytest.raises(ClamdUnavailable, match="timed out after 0.5 s") as raised:
        ClamdScanner(address, timeout=0.5).scan(b"data")
    assert address in str(raised.value)


def test_unexpected_reply_raises(silent_listener):
    address = silent_listener(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(ClamdUnavailable, match="unexpected reply to INSTREAM") as raised:
        ClamdScanner(address, timeout=5.0).scan(b"data")
    assert "HTTP/1.1 400 Bad Request" in str(raised.value)


def test_other_error_reply_raises(silent_listener):
    address = silent_listener(b"stream: Can't allocate memory ERROR\0")
    with pytest.raises(ClamdUnavailable, match="Can't allocate memory ERROR") as raised:
        ClamdScanner(address, timeout=5.0).scan(b"data")
    assert "clamd's log" in str(raised.value)


def test_closed_without_reply_raises(silent_listener):
    address = silent_listener(b"")
    with pytest.raises(ClamdUnavailable, match="without a reply"):
        ClamdScanner(address, timeout=5.0).scan(b"data")


def test_ping_non_clamd_false(silent_listener):
    assert ClamdScanner(silent_listener(b"HELLO\0"), timeout=5.0).ping() is False


# --- Unix socket ------------------------------------------------------------------------


@needs_clamd
def test_unix_socket_scan_and_ping():
    with ClamdDaemon(local_socket=True) as daemon:
        scanner = ClamdScanner(daemon.unix_address, timeout=30.0)
        assert scanner.ping() is True
        assert scanner.scan(EICAR) == EICAR_SIGNATURE + UNOFFICIAL
        assert scanner.scan(LARGE_SAMPLE) == LARGE_SAMPLE_SIGNATURE + UNOFFICIAL
        assert scanner.scan(b"clean") is None


# --- addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, host, port, path",
    [
        ("tcp://127.0.0.1:3310", "127.0.0.1", 3310, ""),
        ("tcp://clamd:3310", "clamd", 3310, ""),
        ("tcp://[::1]:3310", "::1", 3310, ""),
        ("unix:///run/clamav/clamd.ctl", "", 0, "/run/clamav/clamd.ctl"),
    ],
)
def test_parse_address_forms(address, host, port, path):
    parsed = parse_address(address)
    assert parsed.host == host
    assert parsed.port == port
    assert parsed.path == path
    assert parsed.is_unix is bool(path)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "127.0.0.1:3310",
        "tcp://127.0.0.1",
        "tcp://:3310",
        "tcp://127.0.0.1:99999",
        "tcp://127.0.0.1:3310/scan",
        "http://127.0.0.1:3310",
        "unix://run/clamav/clamd.ctl",
        "/run/clamav/clamd.ctl",
    ],
)
def test_bad_address_raises_value_error(address):
    with pytest.raises(ValueError, match=r"tcp://HOST:PORT or unix:///PATH") as raised:
        ClamdScanner(address)
    assert repr(address) in str(raised.value)
