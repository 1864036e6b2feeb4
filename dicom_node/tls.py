"""DICOM TLS (PS3.15 Annex B secure transport connection profiles) for both directions.

The node accepts TLS on its port (``node.tls``) and speaks TLS to a
destination that asks for it (``destinations.<name>.tls``). Certificates are
PEM files the hospital's PKI issues. Defaults follow the BCP 195 profile
DICOM recommends: TLS 1.2 or newer, the ``ssl`` module's secure cipher set,
and on the listening side a client certificate that must chain to the
configured CA, so that only provisioned peers complete the handshake (the
AE title / IP allow-list then applies on top).
"""

from __future__ import annotations

import ssl

from dicom_node.config import ClientTLS, ServerTLS

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file."""


def _load_chain(context: ssl.SSLContext, certificate: str, private_key: str, where: str) -> None:
    try:
        context.load_cert_chain(certfile=certificate, keyfile=private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(
            f"{where}: cannot load certificate {certificate} with key {private_key}: {exc}; "
            "both must be PEM, the key unencrypted and matching the certificate"
        ) from exc


def _load_ca(context: ssl.SSLContext, ca: str, where: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"{where}: cannot load CA certificates {ca}: {exc}") from exc


def server_context(settings: ServerTLS) -> ssl.SSLContext:
    """The SSL context of the listening port (``node.tls``).

    Raises
    ------
    TLSError
        If a file cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[settings.minimum_version]
    _load_chain(context, str(settings.certificate), str(settings.private_key), "node.tls")
    if settings.ca_certificates is not None:
        _load_ca(context, str(settings.ca_certificates), "node.tls.ca_certificates")
    context.verify_mode = (
        ssl.CERT_REQUIRED if settings.require_client_certificate else ssl.CERT_OPTIONAL
    )
    if settings.ca_certificates is None:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(settings: ClientTLS, where: str = "destination tls") -> ssl.SSLContext:
    """The SSL context for associations to a TLS destination.

    The destination's certificate must chain to ``ca_certificates``; its
    host name is checked when ``verify_hostname`` is set. The node presents
    ``certificate`` when the destination asks for a client certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _VERSIONS[settings.minimum_version]
    context.check_hostname = settings.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    _load_ca(context, str(settings.ca_certificates), f"{where}.ca_certificates")
    if settings.certificate is not None and settings.private_key is not None:
        _load_chain(context, str(settings.certificate), str(settings.private_key), where)
    return context
