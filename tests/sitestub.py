"""A stand-in for the protected site: answers every request with its path.

It records each request's path and the client port it came from, so that a
test can tell whether a proxy kept its connections alive.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.serverproc import free_port

__all__ = ["SiteStub"]


class SiteStub:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[str, int]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1, so that connections stay open between requests.
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                stub.requests.append((self.path, self.client_address[1]))
                body = f"protected {self.path}".encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever)

    def __enter__(self) -> SiteStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
