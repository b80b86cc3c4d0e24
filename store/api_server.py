"""Runs the read API (`store.http_api`) on uvicorn, on a socket bound before it starts.

`make_server` refuses a non-loopback host without an API token (`InsecureBindError`).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import uvicorn

from store.http_api import ProxyApi, create_app


class InsecureBindError(ValueError):
    """Binding a non-loopback address without an API token."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiServer:
    """A uvicorn server on an already bound socket (port 0 picks a free one)."""

    def __init__(self, api: ProxyApi, sock: socket.socket) -> None:
        self.api, self.socket = api, sock
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        config = uvicorn.Config(
            create_app(api), log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def serve_forever(self) -> None:
        """Serves in this thread until SIGINT/SIGTERM (main thread) or `shutdown()`."""
        self.server.run(sockets=[self.socket])

    def start(self, timeout_s: float = 10.0) -> ApiServer:
        """Serves in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="api")
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def server_close(self) -> None:
        self.socket.close()


def make_server(api: ProxyApi, host: str = "127.0.0.1", port: int = 0) -> ApiServer:
    """A server bound to ``host:port``, not started. InsecureBindError for a non-loopback
    host without a token: anyone who reaches the port could read every proxy."""
    if api.token is None and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve on {host} without an API token: any host that reaches it "
            "could read the store. Set IDPROXY_STORE_API_TOKEN (clients then send "
            "'Authorization: Bearer <token>') or bind 127.0.0.1."
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return ApiServer(api, sock)
