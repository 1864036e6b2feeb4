"""pynetdicom with nothing to do: the floor under any Storage SCP built on it.

A baseline for :mod:`bench.ingest`: the same pynetdicom settings as the node's
receivers (chunked receiving into temporary files, 1 MiB maximum PDU, all
storage SOP classes and transfer syntaxes) and a C-STORE handler that answers
Success at once. pynetdicom then deletes each temporary file, usually before
the kernel wrote any of it to disk, so this is a receiver with no disk work,
no parsing and no index: what the node adds to a C-STORE shows as the gap
between it and this one.

Run: ``python -m bench.bare_scp PORT [AE_TITLE [TMP_FOLDER]]``; it serves until killed.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts

AE_TITLE = "BARE_SCP"


def serve(port: int, ae_title: str = AE_TITLE, tmp: str | None = None) -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    if tmp is not None:
        tempfile.tempdir = tmp
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 1 << 20
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.start_server(
        ("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    serve(int(args[0]), *args[1:3])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
