"""A TCP proxy in front of a real dependency that can be told, at any moment, to fail the way
dependencies fail: refuse (down), hold the connection past the client's timeout (slow),
answer an HTTP error itself (5xx, or 429 with Retry-After), speak garbage (a protocol
error, for PostgreSQL and Redis), or lose the answer: forward a plain HTTP request, let the
dependency act on it, and drop the connection before its response (lost). TLS passes through
untouched in `pass` mode."""

from __future__ import annotations

import select
import socket
import threading
import time

MODES = ("pass", "down", "slow", "5xx", "429", "garbage", "lost")


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, slow_seconds: float = 3.0):
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.slow_seconds = slow_seconds
        self.connections = 0
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(client, self.mode), daemon=True).start()

    def _handle(self, client: socket.socket, mode: str) -> None:
        try:
            if mode == "down":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return  # closed with a reset: nothing is listening behind it
            if mode == "slow":
                time.sleep(self.slow_seconds)
                return
            if mode in ("5xx", "429"):
                client.settimeout(2)
                try:
                    client.recv(65536)
                except OSError:
                    pass
                status = "503 Service Unavailable" if mode == "5xx" else "429 Too Many Requests"
                extra = "Retry-After: 1\r\n" if mode == "429" else ""
                body = b'{"message": "fault proxy"}'
                client.sendall(f"HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\n"
                               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                return
            if mode == "garbage":
                client.sendall(b"\x00\xffnot the protocol you expected\r\n" * 4)
                return
            if mode == "lost":
                self._lose(client)
                return
            self._pipe(client)
        except OSError:
            pass
        finally:
            client.close()

    def _lose(self, client: socket.socket) -> None:
        """One plain HTTP request forwarded whole; the dependency's answer is read and dropped."""
        client.settimeout(5)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = client.recv(65536)
            if not chunk:
                return
            request += chunk
        head, _, body = request.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                return
            body += chunk
        with socket.create_connection(self.upstream, timeout=10) as upstream:
            upstream.sendall(head + b"\r\n\r\n" + body)
            upstream.recv(65536)  # the dependency has answered: it acted on the request

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream, timeout=5)
        try:
            sockets = [client, upstream]
            while not self._stop.is_set():
                if self.mode != "pass":  # a kept-alive connection meets the fault too: it is cut
                    if self.mode == "slow":
                        time.sleep(self.slow_seconds)
                    return
                readable, _, _ = select.select(sockets, [], [], 0.25)
                if readable and self.mode != "pass":
                    continue  # the fault came on while waiting: what arrived meets it
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        finally:
            upstream.close()
