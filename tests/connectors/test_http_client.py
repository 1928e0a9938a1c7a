"""The shared HTTP client of the sinks: which responses retry, pause or reject."""

import doctest

import pytest

from tests.api_server import ApiAnswer, ApiServer
from ticketflow.connectors import http_client
from ticketflow.connectors.http_client import SinkHttpClient
from ticketflow.connectors.sink import RateLimited, SinkRejected, SinkUnavailable
from ticketflow.operators import html_text


@pytest.fixture
def server():
    with ApiServer() as api:
        api.route("GET", "/item", lambda request: ApiAnswer(200, {"ok": True}))
        api.route("POST", "/item", lambda request: ApiAnswer(201, {"created": True}))
        yield api


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(server, sleeps):
    client = SinkHttpClient("test", server.url, timeout=2, retries=3, backoff=0.5, sleep=sleeps.append)
    yield client
    client.close()


def test_docstring_examples_hold():
    assert doctest.testmod(http_client).failed == 0
    assert doctest.testmod(html_text).failed == 0


def test_5xx_is_retried_with_growing_backoff(server, client, sleeps):
    server.fail_next("GET", "/item", status=503, times=2)
    assert client.request("GET", "/item").json() == {"ok": True}
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] < 0.5 and 0.5 <= sleeps[1] < 1.0


def test_5xx_past_the_retries_is_unavailable(server, client):
    server.fail_next("GET", "/item", status=502, body={"error": "bad gateway"}, times=3)
    with pytest.raises(SinkUnavailable, match="GET /item returned HTTP 502"):
        client.request("GET", "/item")
    assert len(server.requests_to("GET", "/item")) == 3


def test_post_is_not_retried_unless_made_safe(server, client):
    server.fail_next("POST", "/item", status=500, times=1)
    with pytest.raises(SinkUnavailable):
        client.request("POST", "/item", json={})
    assert len(server.requests_to("POST", "/item")) == 1

    server.fail_next("POST", "/item", status=500, times=1)
    assert client.request("POST", "/item", json={}, retry_unsafe=True).status_code == 201


def test_429_raises_at_once_with_retry_after(server, client, sleeps):
    server.fail_next("GET", "/item", status=429, headers={"Retry-After": "12"})
    with pytest.raises(RateLimited) as raised:
        client.request("GET", "/item")
    assert raised.value.retry_after == 12.0
    assert sleeps == []


def test_other_4xx_is_rejected_with_the_shortened_response(server, client):
    server.fail_next("POST", "/item", status=422, body={"error": "x" * 2000})
    with pytest.raises(SinkRejected) as raised:
        client.request("POST", "/item", json={})
    assert raised.value.status == 422
    assert len(raised.value.answer) < 600
    assert raised.value.answer.endswith("…")


def test_connection_refused_is_unavailable(sleeps):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = SinkHttpClient("test", url, timeout=1, retries=2, backoff=0.01, sleep=sleeps.append)
    with pytest.raises(SinkUnavailable, match="could not connect"):
        client.request("GET", "/item")
    assert len(sleeps) == 1
