"""Run Debian's clamd on a loopback port with a local test-signature database.

With no internet there are no official ClamAV signatures, so `ClamdDaemon` writes
its own: an MD5 hash database (`ticketflow-test.hdb`, one `MD5:SIZE:NAME` line per
sample) with the EICAR test file and a multi-chunk sample. It writes a clamd.conf
into a temporary folder, starts `clamd` in the foreground, waits until it replies
PONG, and stops it on exit:

    with ClamdDaemon() as daemon:
        ClamdScanner(daemon.tcp_address).scan(EICAR)  # "Ticketflow-Test-EICAR.UNOFFICIAL"

clamd adds `.UNOFFICIAL` to the names of signatures that ClamAV did not sign. The
system service and freshclam are not involved; the daemon reads only this folder.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from ticketflow.connectors.clamd import CHUNK_BYTES

# The EICAR anti-virus test file (68 bytes), joined from pieces so that no whole copy
# sits in one literal of the repository, where a developer's virus scanner would flag it.
EICAR = b"".join(
    [b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$", b"EICAR-STANDARD-", b"ANTIVIRUS-TEST-FILE!$H+H*"]
)
EICAR_SIGNATURE = "Ticketflow-Test-EICAR"


def _sample_bytes(size: int) -> bytes:
    """Return `size` deterministic bytes in which no 32-byte block repeats another."""
    blocks = (hashlib.sha256(index.to_bytes(8, "big")).digest() for index in range(size // 32 + 1))
    return b"".join(blocks)[:size]


# Longer than three INSTREAM chunks and not a multiple of one, so a hash match proves
# that clamd received every chunk, in order, with the short last one.
LARGE_SAMPLE = _sample_bytes(3 * CHUNK_BYTES + 1000)
LARGE_SAMPLE_SIGNATURE = "Ticketflow-Test-Large-Sample"

TEST_SIGNATURES: dict[str, bytes] = {
    EICAR_SIGNATURE: EICAR,
    LARGE_SAMPLE_SIGNATURE: LARGE_SAMPLE,
}

# clamd's StreamMaxLength in these tests. It is small, so the limit is cheap to pass.
STREAM_MAX_BYTES = 1024 * 1024

# Where Debian installs clamd; /usr/sbin is not on every user's PATH.
_DEBIAN_CLAMD = "/usr/sbin/clamd"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
# Attempts with a new port when clamd exits during startup, because another process
# took the free port between the probe and clamd's bind.
_PORT_ATTEMPTS = 3


class ClamdStartError(RuntimeError):
    """clamd exited or did not reply PONG during startup. The message includes its output."""


def clamd_binary() -> str | None:
    """Return the path of the clamd executable, or None when it is not installed."""
    found = shutil.which("clamd")
    if found:
        return found
    return _DEBIAN_CLAMD if Path(_DEBIAN_CLAMD).is_file() else None


def hash_signature(name: str, sample: bytes) -> str:
    """Return the .hdb line that matches exactly `sample`: MD5, size and name."""
    return f"{hashlib.md5(sample).hexdigest()}:{len(sample)}:{name}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ClamdDaemon:
    """One clamd process on a free 127.0.0.1 port, reading only its own signatures.

    `local_socket=True` makes clamd also listen on a Unix socket in its folder
    (`unix_address`). The folder is a fresh temporary one with a short path,
    because a Unix socket path is limited to about 100 bytes. `stop()` terminates
    clamd, kills it after `_STOP_TIMEOUT` seconds, and deletes the folder.
    """

    def __init__(
        self,
        signatures: Mapping[str, bytes] = TEST_SIGNATURES,
        *,
        stream_max_bytes: int = STREAM_MAX_BYTES,
        local_socket: bool = False,
    ) -> None:
        self.signatures = dict(signatures)
        self.stream_max_bytes = stream_max_bytes
        self.local_socket = local_socket
        self.port = 0
        self.folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def tcp_address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def unix_address(self) -> str:
        if not self.local_socket or self.folder is None:
            raise RuntimeError("this clamd was started without local_socket=True")
        return f"unix://{self.folder / 'clamd.sock'}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> ClamdDaemon:
        """Start clamd and return once it replies PONG, or raise ClamdStartError."""
        binary = clamd_binary()
        if binary is None:
            raise ClamdStartError("clamd is not installed: apt-get install clamav-daemon")
        self.folder = Path(tempfile.mkdtemp(prefix="clamd-"))
        self._write_database()

        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = free_port()
            config = self._write_config()
            with (self.folder / "clamd.out").open("wb") as output:
                self._process = subprocess.Popen(
                    [binary, "-c", str(config)], stdout=output, stderr=subprocess.STDOUT
                )
            try:
                self._wait_for_pong()
            except ClamdStartError:
                exited = self._process.poll() is not None
                if exited and attempt < _PORT_ATTEMPTS:
                    continue
                self.stop()
                raise
            break
        return self

    def stop(self) -> None:
        """Stop clamd and delete its folder. Stopping twice does nothing."""
        self._terminate()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> ClamdDaemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_database(self) -> None:
        assert self.folder is not None
        lines = [hash_signature(name, sample) for name, sample in self.signatures.items()]
        (self.folder / "ticketflow-test.hdb").write_text("\n".join(lines) + "\n", encoding="ascii")

    def _write_config(self) -> Path:
        assert self.folder is not None
        scratch = self.folder / "tmp"
        scratch.mkdir(exist_ok=True)
        lines = [
            "Foreground yes",
            f"DatabaseDirectory {self.folder}",
            f"TCPSocket {self.port}",
            "TCPAddr 127.0.0.1",
            f"LogFile {self.folder / 'clamd.log'}",
            f"TemporaryDirectory {scratch}",
            f"StreamMaxLength {self.stream_max_bytes}",
            # No SelfCheck reloads: the database never changes while the tests run.
            "SelfCheck 0",
        ]
        if self.local_socket:
            lines.append(f"LocalSocket {self.folder / 'clamd.sock'}")
        config = self.folder / "clamd.conf"
        config.write_text("\n".join(lines) + "\n", encoding="ascii")
        return config

    def _wait_for_pong(self) -> None:
        """Send PING until clamd replies PONG, it exits, or the deadline passes."""
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ClamdStartError(
                    f"clamd exited with status {self._process.returncode} during startup. "
                    f"Its output:\n{self._output_tail()}"
                )
            if self._replies_pong():
                return
            time.sleep(0.05)
        raise ClamdStartError(
            f"clamd did not reply PONG on port {self.port} within {_START_TIMEOUT} s. "
            f"Its output:\n{self._output_tail()}"
        )

    def _replies_pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as connection:
                connection.sendall(b"zPING\0")
                return connection.recv(16).rstrip(b"\0") == b"PONG"
        except OSError:
            return False

    def _output_tail(self) -> str:
        assert self.folder is not None
        output = self.folder / "clamd.out"
        text = output.read_text(errors="replace") if output.exists() else "(no output)"
        return "\n".join(text.splitlines()[-20:])

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
