"""Serve the console (and the monitoring endpoints) from a thread of the main process.

uvicorn runs the application on a socket bound here first, so that a port in
use is an :class:`OSError` at start, named to the operator, and not an exit
inside a thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from dicom_node.console.app import make_app
from dicom_node.monitor import NodeView

log = logging.getLogger(__name__)


class ConsoleServer:
    """The web console on ``host:port``: :meth:`start`, :meth:`stop`."""

    def __init__(self, view: NodeView, **options: Any) -> None:
        """``options``: those of :func:`dicom_node.console.app.make_app`."""
        self.app = make_app(view, **options)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int | None:
        return self._port

    def start(self, host: str, port: int, timeout: float = 15.0) -> None:
        """Listen and serve in a thread; return once serving.

        Raises
        ------
        OSError
            The address cannot be bound (a port in use).
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="console", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise OSError(f"the console did not start on {host}:{port}")
        log.info(
            "console and monitoring on http://%s:%d/ (/health and /metrics open, the rest signed in)",
            host,
            self._port,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None
