"""A real HTTP server on 127.0.0.1 for tests that stand in for a SaaS API.

Each API mock (Jira, Zendesk, ServiceNow, a webhook receiver) subclasses
`ApiServer`, registers its routes with `route`, and keeps the system's state in
plain attributes the tests read. Faults are queued with `fail_next`: the next
matching requests get that status (429 with Retry-After, 500, 503, 401, …)
before the route runs, so a test can show what a sink does with each response.
Every request is recorded in `requests` (method, path, query, headers, body).

    with JiraApi() as api:
        api.fail_next("POST", "/rest/api/2/issue", status=429, headers={"Retry-After": "2"})
        ...
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class ApiRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    match: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class ApiAnswer:
    """The response of a route: a status, a JSON-able body (or raw bytes), extra headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    method: str
    path_pattern: re.Pattern[str]
    answer: ApiAnswer
    remaining: int


Route = Callable[[ApiRequest], ApiAnswer]


class ApiServer:
    """A threaded HTTP server with routes, recorded requests and queued faults."""

    def __init__(self) -> None:
        self.requests: list[ApiRequest] = []
        self._routes: list[tuple[str, re.Pattern[str], Route]] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, method: str, path_pattern: str, handler: Route) -> None:
        """Answer `method` on paths matching `path_pattern` (a full-match regex with named groups)."""
        self._routes.append((method.upper(), re.compile(path_pattern), handler))

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` matching requests with `status` instead of running the route."""
        with self._lock:
            self._faults.append(
                _Fault(method.upper(), re.compile(path_pattern),
                       ApiAnswer(status, body, headers or {}), times)
            )

    def requests_to(self, method: str, path_pattern: str) -> list[ApiRequest]:
        """Return the recorded requests of `method` whose path matches `path_pattern`."""
        pattern = re.compile(path_pattern)
        with self._lock:
            return [r for r in self.requests if r.method == method.upper() and pattern.fullmatch(r.path)]

    def start(self) -> ApiServer:
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(self, request: ApiRequest) -> ApiAnswer:
        """Record the request, then answer with a queued fault, its route, or 404."""
        with self._lock:
            self.requests.append(request)
            fault = self._take_fault(request)
            if fault is not None:
                return fault
            for method, pattern, route in self._routes:
                found = pattern.fullmatch(request.path)
                if method == request.method and found:
                    request.match = found.groupdict()
                    return route(request)
        return ApiAnswer(404, {"error": f"no route for {request.method} {request.path}"})

    def _take_fault(self, request: ApiRequest) -> ApiAnswer | None:
        for fault in self._faults:
            if fault.method == request.method and fault.path_pattern.fullmatch(request.path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault.answer
        return None


def _handler_for(server: ApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Small answers go out at once instead of waiting for the client's delayed ACK.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = ApiRequest(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={key.lower(): value for key, value in self.headers.items()},
                body=body,
            )
            answer = server.handle(request)
            self._answer(answer)

        def _answer(self, answer: ApiAnswer) -> None:
            if isinstance(answer.body, bytes):
                payload, content_type = answer.body, "application/octet-stream"
            elif answer.body is None:
                payload, content_type = b"", "application/json"
            else:
                payload, content_type = json.dumps(answer.body).encode(), "application/json"
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.headers.get("Content-Type", content_type))
            for key, value in answer.headers.items():
                if key.lower() != "content-type":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
