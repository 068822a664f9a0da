"""A client cannot hold the server's connections: half-sent requests are closed after the
read timeout, and a normal request is still answered meanwhile. A real `policyctl serve` on
127.0.0.1 and real sockets.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from test_service import serving, wait_for

HALF_SENT = 200
READ_TIMEOUT_S = 1.0
DEADLINE_S = 15.0  # every half-sent connection must be closed well before this


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (reads EOF or a reset), without blocking."""
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_half_sent_requests_are_closed_and_others_still_answered(tmp_path: Path) -> None:
    flags = ("--state", "memory://", "--read-timeout", str(READ_TIMEOUT_S))
    with serving(tmp_path, *flags) as server:
        port = int(server.url.rsplit(":", 1)[1])
        sockets = []
        try:
            for i in range(HALF_SENT):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if i % 2:  # headers cut short
                    sock.sendall(b"POST /v1/eval HTTP/1.1\r\nHost: x\r\nContent-Le")
                else:  # headers whole, body cut short
                    sock.sendall(
                        b"POST /v1/eval HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                        b'\r\nContent-Length: 100\r\n\r\n{"id": "half'
                    )
                sock.setblocking(False)
                sockets.append(sock)
            with server.client() as client:  # the server still answers
                response = client.post("/v1/eval", json={"id": "whole", "prompt": "hi"})
                assert response.status_code == 200
                assert response.json()["request_id"] == "whole"
            start = time.monotonic()
            open_ones = list(sockets)

            def all_closed() -> bool:
                open_ones[:] = [s for s in open_ones if not closed(s)]
                return not open_ones

            wait_for(all_closed, f"{HALF_SENT} half-sent connections to close", DEADLINE_S)
            print(
                f"\n{HALF_SENT} half-sent connections closed {time.monotonic() - start:.2f} s"
                f" after a normal request was answered (read timeout {READ_TIMEOUT_S:g} s)"
            )
            with server.client() as client:
                assert client.get("/healthz").status_code == 200
        finally:
            for sock in sockets:
                sock.close()
