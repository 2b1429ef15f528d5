"""HttpServer: serves an ASGI app (the manager's API, `taskherd.api`) with uvicorn, in a daemon
thread the actor owns, so the supervisor restarts the server like any other child.

The port is bound in `on_start`, before the server thread starts, so a port that is taken fails the
start at once with a message naming it (uvicorn alone would `sys.exit` inside its thread). The actor
receives no messages of its own: the app's handlers ask the Manager from FastAPI's threads. The app
is given by the pod (an entry point), so actors never import the API built on top of them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
import uvicorn

from taskherd.errors import TaskherdError
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.api")

START_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0


class ApiStartError(TaskherdError):
    """The API server could not start: its port is taken, or it did not come up in time."""


class HttpServer(Supervised, pykka.ThreadingActor):
    def __init__(self, app: Callable[[], Any], host: str, port: int, what: str = "API", **supervised: Any) -> None:
        """`app` makes the ASGI app each time the server (re)starts; `what` names it in logs and errors."""
        super().__init__(**supervised)
        self.app, self.host, self.port, self.what = app, host, port, what
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def on_start(self) -> None:
        sock = _bind(self.host, self.port, self.what)
        config = uvicorn.Config(self.app(), host=self.host, port=self.port,
                                http="httptools", log_level="warning", log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, args=(sock,), name="api-http", daemon=True)
        self.thread.start()
        try:
            self._wait_started()
        except ApiStartError:
            self._shutdown()
            sock.close()
            raise
        log.info("%s listening on http://%s:%d", self.what, self.host, self.port)

    def on_stop(self) -> None:
        self._shutdown()
        super().on_stop()

    def on_receive(self, message: Any) -> Any:
        log.warning("http server: unknown message %r", message)

    def _serve(self, sock: socket.socket) -> None:
        assert self.server is not None
        try:
            self.server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits by SystemExit; the actor must not die of it
            log.error("API server stopped: %s: %s", type(exc).__name__, exc)
        finally:
            sock.close()

    def _wait_started(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        assert self.server is not None and self.thread is not None
        while not self.server.started:
            if not self.thread.is_alive():
                raise ApiStartError("the API server thread exited before it started serving")
            if time.monotonic() > deadline:
                raise ApiStartError(f"the API server did not start within {START_DEADLINE_S:g} s")
            time.sleep(0.02)

    def _shutdown(self) -> None:
        if self.server is None or self.thread is None:
            return
        self.server.should_exit = True
        self.thread.join(STOP_DEADLINE_S)
        if self.thread.is_alive():
            log.warning("API server thread still running %g s after stop was asked", STOP_DEADLINE_S)
        else:
            log.info("API stopped")


def _bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it, h11 writes a response's head and body apart and
    # Nagle holds the body until the client's delayed ACK: 40 ms added to every keep-alive request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ApiStartError(f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
