"""A receiver process: one Storage SCP sharing the node's port with its siblings.

Kept apart from :mod:`dicom_node.service` so that a spawned receiver imports
only what receiving needs (no torch, no highdicom): it starts fast and stays small.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

from dicom_node.children import die_with_parent
from dicom_node.config import LiveConfig
from dicom_node.db import make_engine
from dicom_node.logs import setup_logging
from dicom_node.receive.scp import StorageSCP
from dicom_node.spool import Spool

CONFIG_CHECK_SECONDS = 2.0


def receiver_main(
    config_path: str, number: int, parent: int, listener: socket.socket | None = None
) -> None:
    """Entry point of a receiver process (``listener``: the port, shared by every receiver)."""
    die_with_parent(parent)
    live = LiveConfig(config_path)
    setup_logging(live().logging.level, process=f"receiver-{number}")
    config = live()
    engine = make_engine(config.storage.database_url)
    spool = Spool(
        config.storage.spool,
        fsync=config.storage.fsync,
        fsync_folders=config.storage.fsync_folders,
    )
    # a released association or a COMPLETED MPPS may complete a study: the main process looks
    scp = StorageSCP(live, spool, engine, on_signal=lambda: _wake(parent), receiver=number)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: live.reload())
    scp.start(listener)
    while not stop.wait(CONFIG_CHECK_SECONDS):
        if os.getppid() != parent:
            break
        live.check()
    scp.stop()


def _wake(parent: int) -> None:
    """Tell the main process that a study may be complete (SIGUSR1: see ``Node.serve``)."""
    try:
        os.kill(parent, signal.SIGUSR1)
    except ProcessLookupError:
        pass
