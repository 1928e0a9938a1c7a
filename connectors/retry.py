"""Retries with exponential backoff and jitter, for calls to services that come back."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def retry_transient(
    action: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    what: str,
    attempts: int | None = 8,
    base_delay: float = 0.05,
    max_delay: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `action`, retrying errors that `is_transient` accepts.

    The delay doubles from `base_delay` up to `max_delay`, each scaled by a
    random factor in [0.5, 1) so that workers do not retry in step. With
    `attempts=None` it retries for as long as the error lasts (the caller
    parks); otherwise the last transient error is raised after `attempts`
    tries. Errors that are not transient are raised at once.
    """
    delay = base_delay
    failures = 0
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if attempts is not None and failures >= attempts:
                log.error("%s failed %d times, giving up: %s", what, failures, exc)
                raise
            log.warning("%s failed (attempt %d): %s; retrying in %.2fs", what, failures, exc, delay)
            sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, max_delay)
