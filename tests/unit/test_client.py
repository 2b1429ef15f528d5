"""The client's HTTP connections, against a bare socket server that closes as real servers do."""

from __future__ import annotations

import socket
import threading

import pytest

from taskherd.client import ApiUnreachable, Client

BODY = b'{"ok": true}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class ClosingServer:
    """Answers one request per connection with a keep-alive response, then closes the connection, as
    uvicorn does to a connection idle past its keep-alive timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(ANSWER)
            self.closed.set()


def test_a_connection_the_server_closed_while_idle_is_replaced_not_reused() -> None:
    server = ClosingServer()
    client = Client(f"http://127.0.0.1:{server.port}", timeout=5)
    try:
        assert client.ready() == {"ok": True}
        assert server.closed.wait(5)
        server.closed.clear()
        assert client.ready() == {"ok": True}  # sent once, on a new connection, without an error
        assert server.connections == 2
    finally:
        client.close()
        server.sock.close()


def test_nothing_listening_is_api_unreachable_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ApiUnreachable) as raised:
        Client(f"http://127.0.0.1:{port}", timeout=5).ready()
    assert f"http://127.0.0.1:{port}" in str(raised.value) and "refused" in str(raised.value)


def test_a_url_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="API URL"):
        Client("ftp://example")
