"""pynetdicom with nothing to do: the floor under any Storage SCP built on it.

A baseline for :mod:`bench.ingest`: the same pynetdicom settings as the node's
receivers (chunked receiving into temporary files, 1 MiB maximum PDU, all
storage SOP classes and transfer syntaxes) and a C-STORE handler that answers
Success at once. pynetdicom then deletes each temporary file, usually before
the kernel wrote any of it to disk, so this is a receiver with no disk work,
no parsing and no index: what the node adds to a C-STORE shows as the gap
between it and this one.

With ``PROCESSES`` above 1 it runs that many such processes on one shared
listening socket, as the node's receivers do: the floor under the node's
receivers for parallel associations, each process with its own GIL.

Run: ``python -m bench.bare_scp PORT [AE_TITLE [TMP_FOLDER [PROCESSES]]]``; it serves until killed.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import tempfile
from collections.abc import Sequence

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from dicom_node.receive.scp import ReusePortServer, SharedSocketServer, listening_socket

AE_TITLE = "BARE_SCP"


def serve(
    port: int,
    ae_title: str = AE_TITLE,
    tmp: str | None = None,
    listener: socket.socket | None = None,
) -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    if tmp is not None:
        tempfile.tempdir = tmp
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 1 << 20
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.make_server(
        ("127.0.0.1", port),
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
        server_class=(
            functools.partial(SharedSocketServer, listener=listener)
            if listener is not None
            else ReusePortServer
        ),
    )
    server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    port = int(args[0])
    ae_title = args[1] if len(args) > 1 else AE_TITLE
    tmp = args[2] if len(args) > 2 else None
    processes = int(args[3]) if len(args) > 3 else 1
    # several processes share one listening socket, as the node's receivers do
    listener = listening_socket("127.0.0.1", port) if processes > 1 else None
    for _ in range(processes - 1):
        if os.fork() == 0:  # children serve the same socket; killing the group ends them all
            serve(port, ae_title, tmp, listener)
            os._exit(0)
    serve(port, ae_title, tmp, listener)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
