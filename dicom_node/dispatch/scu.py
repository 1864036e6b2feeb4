"""C-STORE SCU: send a job's result files to a DICOM destination over one association.

One association per delivery, not one per object (pynetdicom #701).
Presentation contexts are proposed from the files' own SOP classes and
transfer syntaxes. Any non-success status, refused association, or timeout
raises :class:`~dicom_node.dispatch.destinations.SendError` so the outbox
retries the whole delivery (the PACS replaces what it already got: result
UIDs are deterministic).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from dicom_node.config import Destination
from dicom_node.dispatch.destinations import SendError, register
from dicom_node.faults import crash_point
from dicom_node.tls import client_context

log = logging.getLogger(__name__)


@register("dicom")
def send_dicom(
    destination: Destination, files: Sequence[Path], *, calling_ae: str, timeout: float
) -> None:
    """Send ``files`` to ``destination`` over one association, or raise SendError."""
    contexts: dict[str, set[str]] = {}
    for path in files:
        try:
            header = dcmread(path, stop_before_pixels=True)
            sop_class, syntax = header.SOPClassUID, header.file_meta.TransferSyntaxUID
        except (OSError, ValueError, AttributeError) as exc:
            raise SendError(f"cannot read {path.name}: {exc}") from exc
        contexts.setdefault(sop_class, set()).add(syntax)
    pairs = [(sop_class, syntax) for sop_class, syntaxes in contexts.items() for syntax in syntaxes]
    if len(pairs) > 128:
        raise SendError("more than 128 (SOP class, transfer syntax) pairs for one association")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    # one context per pair, so each file goes in the transfer syntax it is stored in
    for abstract_syntax, transfer_syntax in sorted(pairs):
        ae.add_requested_context(abstract_syntax, transfer_syntax)
    tls_args = None
    if destination.tls is not None:
        context = client_context(destination.tls)
        tls_args = (context, destination.host if destination.tls.verify_hostname else None)
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        # pynetdicom hands the host name to SSLContext.wrap_socket(server_hostname=...),
        # which takes None (no host name check, no SNI), but annotates it as str only
        tls_args=tls_args,  # type: ignore[arg-type]
    )
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        raise SendError(
            f"association to {destination.ae_title}@{destination.host}:{destination.port} failed ({reason})"
        )
    try:
        for path in files:
            ds = dcmread(path)
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"no C-STORE response for {ds.SOPInstanceUID} (timeout or abort)")
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):
                raise SendError(
                    f"{destination.ae_title} answered 0x{code:04X} for {ds.SOPInstanceUID}"
                )
            if code != 0x0000:
                log.warning(
                    "%s stored %s with warning 0x%04X",
                    destination.ae_title,
                    ds.SOPInstanceUID,
                    code,
                )
            if len(files) > 1:
                crash_point("mid-dispatch")
    finally:
        if assoc.is_established:
            assoc.release()
    log.info(
        "sent %d objects to %s@%s:%d",
        len(files),
        destination.ae_title,
        destination.host,
        destination.port,
    )
