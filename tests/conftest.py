"""Shared fixtures: real services the tests use."""

pytest_plugins = ["tests.conftest_kafka"]

import uuid

import pytest

from ticketflow.config import settings_from_mapping

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_available() -> bool:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:
        return False
    return True


@pytest.fixture
def redis_namespace():
    """A fresh key prefix in the machine's Redis, deleted after the test."""
    if not redis_available():
        pytest.fail(f"Redis does not answer at {REDIS_URL}; `make test` starts one, or run redis-server")
    import redis

    namespace = f"tftest-{uuid.uuid4().hex[:12]}"
    yield namespace
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_settings(redis_namespace):
    """Settings that keep the dedupe window and thread index in Redis."""
    return settings_from_mapping({"state": {"redis_url": REDIS_URL, "namespace": redis_namespace}})
