"""The HTTP client every external sink shares: timeouts, retries, and errors the delivery understands.

`SinkHttpClient.request` sends one request and returns the response of a 2xx
status. It turns every other response into the errors of `ticketflow.connectors.sink`:

- 429 raises `RateLimited` at once with the Retry-After delay (seconds or an
  HTTP date; 1 second when the header is missing or unreadable). It never
  sleeps: the delivery decides when to ask again, so the flow keeps running.
- timeouts, connection errors and 5xx responses are tried again up to
  `[sink] retries` times, the delay doubling from `[sink] backoff`; then
  `SinkUnavailable`. A request that is not idempotent (POST) is tried again only
  when `retry_unsafe` is true, i.e. when the caller has made it safe, for
  example by finding the ticket first.
- any other 4xx raises `SinkRejected` with the status and the response's text
  (shortened to 500 characters).

One INFO line is logged per request: method, path, status and milliseconds;
never a header, so tokens stay out of the logs.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import requests

from ticketflow.connectors.sink import RateLimited, SinkRejected, SinkUnavailable

log = logging.getLogger(__name__)

ANSWER_CHARS = 500
DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 3600.0
_SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class SinkHttpClient:
    """A connection pool to one API, with the retry and error rules of the module docstring."""

    def __init__(
        self,
        sink: str,
        base_url: str,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sink = sink
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._retries = max(retries, 1)
        self._backoff = backoff
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers.update(headers or {})
        if auth is not None:
            self._session.auth = auth

    def request(
        self,
        method: str,
        path: str,
        *,
        retry_unsafe: bool = False,
        **kwargs: Any,
    ) -> requests.Response:
        """Send `method path` (path relative to the base URL) and return a 2xx response."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"
        may_retry = method.upper() in _SAFE_METHODS or retry_unsafe
        delay = self._backoff
        tries = 0
        while True:
            tries += 1
            try:
                return self._send(method, url, path, **kwargs)
            except SinkUnavailable:
                if not may_retry or tries >= self._retries:
                    raise
            log.warning("%s %s %s failed (try %d of %d); trying again in %.2fs",
                        self.sink, method, path, tries, self._retries, delay)
            self._sleep(delay * random.uniform(0.5, 1.0))
            delay *= 2

    def close(self) -> None:
        self._session.close()

    def _send(self, method: str, url: str, path: str, **kwargs: Any) -> requests.Response:
        started = time.perf_counter()
        try:
            answer = self._session.request(method, url, timeout=self._timeout, **kwargs)
        except requests.Timeout as exc:
            raise SinkUnavailable(self.sink, f"{method} {path} timed out after {self._timeout:g}s") from exc
        except requests.ConnectionError as exc:
            raise SinkUnavailable(self.sink, f"{method} {path} could not connect: {exc}") from exc

        millis = (time.perf_counter() - started) * 1000
        log.info("%s %s %s -> %d in %.0f ms", self.sink, method, path, answer.status_code, millis)
        return self._checked(answer, method, path)

    def _checked(self, answer: requests.Response, method: str, path: str) -> requests.Response:
        status = answer.status_code
        if status < 400:
            return answer
        if status == 429:
            raise RateLimited(self.sink, retry_after_seconds(answer.headers.get("Retry-After")),
                              f"{method} {path} rate limited")
        if status >= 500:
            raise SinkUnavailable(self.sink, f"{method} {path} returned HTTP {status}: {_short(answer.text)}")
        raise SinkRejected(self.sink, status, f"{method} {path}: {_short(answer.text)}")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float:
    """Read a Retry-After header: delay-seconds or an HTTP date, bounded to an hour.

    >>> retry_after_seconds("7")
    7.0
    >>> retry_after_seconds(None)
    1.0
    >>> retry_after_seconds("Fri, 04 Dec 2026 10:00:30 GMT", datetime(2026, 12, 4, 10, 0, tzinfo=UTC))
    30.0
    """
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 1] + "…"
