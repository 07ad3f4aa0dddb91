"""A small threaded HTTP server with path routing, streaming, and fault injection per target."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    base_url: str

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    body: bytes | Iterator[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, **headers: str) -> "Response":
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **headers})

    @classmethod
    def text(cls, text: str, status: int = 200, **headers: str) -> "Response":
        return cls(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8", **headers})


# Handled in full, then the connection is closed without an answer: what a client sees when a
# proxy or the network loses the response to a request the server did accept.
LOST = Response(599, b"")

Handler = Callable[..., Response]


class Router:
    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        regex = regex.replace("{path*}", "(?P<path>.*)")
        self.routes.append((method, re.compile(f"^{regex}$"), handler))

    def dispatch(self, req: Request) -> Response | None:
        allowed = False
        for method, regex, handler in self.routes:
            match = regex.match(req.path)
            if match:
                if method == req.method or method == "*":
                    return handler(req, **match.groupdict())
                allowed = True
        if allowed:
            return Response.json({"message": "Method not allowed"}, 405)
        return None


@dataclass
class Fault:
    """Make a target misbehave for its next `count` requests (None: until cleared)."""

    status: int | None = None
    delay: float = 0.0
    retry_after: int | None = None
    count: int | None = None
    lose_response: bool = False  # handle the request, then drop the answer
    path: str | None = None      # only requests whose path contains this
    # set when the fault is cleared or replaced: a request held for `delay` goes on at once
    lifted: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def take(self) -> bool:
        if self.count is None:
            return True
        if self.count <= 0:
            return False
        self.count -= 1
        return True


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self.hits: dict[str, int] = {}

    def set(self, target: str, fault: Fault) -> None:
        with self._lock:
            replaced = self._faults.get(target)
            self._faults[target] = fault
        if replaced is not None:
            replaced.lifted.set()

    def clear(self, target: str | None = None) -> None:
        """End the target's fault (all faults without one); requests it holds go on at once."""
        with self._lock:
            if target:
                ended = [f for f in [self._faults.pop(target, None)] if f is not None]
            else:
                ended = list(self._faults.values())
                self._faults.clear()
                self.hits.clear()
        for fault in ended:
            fault.lifted.set()

    def check(self, target: str, path: str = "") -> Response | None:
        """The injected answer for this request (LOST: handle it, then drop the answer), or None."""
        with self._lock:
            self.hits[target] = self.hits.get(target, 0) + 1
            fault = self._faults.get(target)
            if fault is None or (fault.path and fault.path not in path) or not fault.take():
                return None
        if fault.delay and fault.lifted.wait(fault.delay):
            return None  # cleared while the request was held: it is answered as without the fault
        if fault.lose_response:
            return LOST
        if fault.status is None:
            return None
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return Response.json({"message": f"sandbox fault injected for {target}"}, fault.status, **headers)


def _write_response(handler: BaseHTTPRequestHandler, resp: Response) -> None:
    """Send `resp` on the handler's connection: whole, chunked (a stream), or not at all (LOST)."""
    if resp is LOST:
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
        return
    handler.send_response(resp.status)
    for key, value in resp.headers.items():
        handler.send_header(key, value)
    if isinstance(resp.body, bytes):
        handler.send_header("Content-Length", str(len(resp.body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(resp.body)
        return
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    try:
        for chunk in resp.body:
            if chunk:
                handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


def serve(app: Callable[[Request], Response], host: str, port: int,
          tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    """Start `app` on a daemon thread; port 0 picks a free one."""

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the sandbox is chatty otherwise
            pass

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            origin = self.headers.get("Host") or f"{host}:{server.server_address[1]}"
            req = Request(method=self.command, path=parts.path,
                          query={k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                          headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                          base_url=f"{'https' if tls else 'http'}://{origin}")
            try:
                resp = app(req)
            except Exception as exc:  # noqa: BLE001 - a bug in the sandbox must not look like a hung server
                resp = Response.json({"message": f"sandbox error: {type(exc).__name__}: {exc}"}, 500)
            _write_response(self, resp)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    class _Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):  # the TLS handshake happens on the request's own thread
            sock, addr = super().get_request()
            return (tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False) if tls else sock), addr

    server = _Server((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="sandbox-http", daemon=True).start()
    return server
