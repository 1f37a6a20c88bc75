"""A local HTTP proxy that refuses every request, for testing download code paths offline.

Tests point HTTPS_PROXY at it: the code under test really calls its downloader (insightface's
own, via requests), the request reaches this proxy, which records the request line (for HTTPS,
`CONNECT host:443`) and answers 403. Nothing leaves the machine and nothing is planted.
"""
from __future__ import annotations

import socketserver
import threading


class RefusingProxy:
    """A local HTTP proxy that records every request line and refuses it (403): the downloader
    is called for real and reaches the network layer, but nothing leaves this machine."""

    def __init__(self):
        self.requests: list[str] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode("latin-1").strip()
                outer.requests.append(line)
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def env(self) -> dict:
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return {"HTTPS_PROXY": url, "https_proxy": url, "HTTP_PROXY": url, "http_proxy": url,
                "NO_PROXY": "", "no_proxy": ""}
