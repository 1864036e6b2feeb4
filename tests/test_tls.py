"""DICOM TLS both ways, against DCMTK: only peers with a certificate from the hospital CA get in.

Certificates come from the ``openssl`` command line (a throw-away CA, a
server certificate for 127.0.0.1, a client certificate, and a self-signed
"rogue" one).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.config import ClientTLS, ConfigError, Destination, parse_config
from dicom_node.dispatch.scu import SendError, send_dicom
from dicom_node.tls import client_context

from node import TEST_AET, NodeProcess, node_config
from peers import StoreSCP, dcmtk_env, pydicom_sample, storescu

pytestmark = pytest.mark.e2e

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def _issue(folder: Path, name: str, cn: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={cn}", cwd=folder)  # fmt: skip
    (folder / f"{name}.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=Test Hospital CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    _issue(folder, "node", "dicom-node")
    _issue(folder, "client", "STORESCU")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
             "rogue.pem", "-days", "2", "-subj", "/CN=rogue", cwd=folder)  # fmt: skip
    return folder


def _tls_storescu(node: NodeProcess, pki: Path, key: str, cert: str, file: Path):  # type: ignore[no-untyped-def]
    return subprocess.run(
        ["storescu", "+tls", str(pki / key), str(pki / cert), "+cf", str(pki / "ca.pem"),
         "-aet", "STORESCU", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), str(file)],
        capture_output=True, text=True, timeout=60, env=dcmtk_env(),
    )  # fmt: skip


def test_node_accepts_tls_only_from_certified_peers(
    pki: Path, tmp_path: Path, database_url: str
) -> None:
    sample = pydicom_sample("CT_small.dcm")
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        peers=[
            {"ae_title": TEST_AET, "host": "127.0.0.1"},
            {"ae_title": "STORESCU", "host": "127.0.0.1"},
        ],
    )
    config["node"]["tls"] = {
        "certificate": str(pki / "node.pem"),
        "private_key": str(pki / "node.key"),
        "ca_certificates": str(pki / "ca.pem"),
    }
    node = NodeProcess(workdir, config)
    own = ClientTLS(
        ca_certificates=pki / "ca.pem",
        certificate=pki / "client.pem",
        private_key=pki / "client.key",
    )
    node.tls_args = (client_context(own), "127.0.0.1")
    with node:
        done = _tls_storescu(node, pki, "client.key", "client.pem", sample)
        assert done.returncode == 0, done.stderr
        assert node.scalar("SELECT count(*) FROM instances") == 1
        # plain TCP to a TLS port: no association, nothing stored
        plain = storescu("127.0.0.1", node.port, [sample], called_ae="DICOM_NODE", timeout=60)
        assert plain.returncode != 0
        # a certificate the hospital CA did not issue: the handshake fails
        rogue = _tls_storescu(node, pki, "rogue.key", "rogue.pem", sample)
        assert rogue.returncode != 0
        assert node.scalar("SELECT count(*) FROM instances") == 1
        assert node.echo()  # the node still serves
    assert "with DICOM TLS" in node.log_path.read_text()


def test_results_go_to_a_tls_destination_with_the_node_certificate(
    pki: Path, tmp_path: Path
) -> None:
    sample = pydicom_sample("CT_small.dcm")
    scp_args = ["+tls", str(pki / "node.key"), str(pki / "node.pem"), "+cf", str(pki / "ca.pem")]
    with StoreSCP(tmp_path / "pacs", aet="TLSPACS", extra_args=scp_args) as pacs:
        destination = Destination(
            ae_title="TLSPACS",
            host="127.0.0.1",
            port=pacs.port,
            tls=ClientTLS(
                ca_certificates=pki / "ca.pem",
                certificate=pki / "client.pem",
                private_key=pki / "client.key",
            ),
        )
        send_dicom(destination, [sample], calling_ae="DICOM_NODE", timeout=30)
        assert len(pacs.received()) == 1
        # without a client certificate the destination refuses the handshake
        anonymous = destination.model_copy(
            update={"tls": ClientTLS(ca_certificates=pki / "ca.pem")}
        )
        with pytest.raises(SendError):
            send_dicom(anonymous, [sample], calling_ae="DICOM_NODE", timeout=30)
        # a destination whose certificate does not chain to our CA is not trusted
        untrusted = destination.model_copy(
            update={
                "tls": ClientTLS(
                    ca_certificates=pki / "rogue.pem",
                    certificate=pki / "client.pem",
                    private_key=pki / "client.key",
                )
            }  # fmt: skip
        )
        with pytest.raises(SendError):
            send_dicom(untrusted, [sample], calling_ae="DICOM_NODE", timeout=30)
    assert len(pacs.received()) == 1


def test_tls_config_errors_name_the_key(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node.tls.certificate: .*does not exist"):
        parse_config("node: {tls: {certificate: nope.pem, private_key: nope.key}}", tmp_path)
    with pytest.raises(ConfigError, match="ca_certificates"):
        parse_config(
            f"node: {{tls: {{certificate: {pki}/node.pem, private_key: {pki}/node.key}}}}", tmp_path
        )
    # relative paths resolve against the config's folder
    (tmp_path / "certs").mkdir()
    for name in ("node.pem", "node.key", "ca.pem"):
        shutil.copy(pki / name, tmp_path / "certs" / name)
    config = parse_config(
        "node: {tls: {certificate: certs/node.pem, private_key: certs/node.key, "
        "ca_certificates: certs/ca.pem}}",
        tmp_path,
    )
    assert (
        config.node.tls is not None and config.node.tls.certificate == tmp_path / "certs/node.pem"
    )


def test_unloadable_certificates_are_named(pki: Path, tmp_path: Path) -> None:
    from dicom_node.config import ServerTLS
    from dicom_node.tls import TLSError, server_context

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSError, match="garbage.pem"):
        server_context(ServerTLS(certificate=garbage, private_key=pki / "node.key",
                                 ca_certificates=pki / "ca.pem"))  # fmt: skip
    with pytest.raises(TLSError, match="node.key"):  # key of another certificate
        server_context(ServerTLS(certificate=pki / "client.pem", private_key=pki / "node.key",
                                 ca_certificates=pki / "ca.pem"))  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(
        f"node: {{tls: {{certificate: {garbage}, private_key: {pki}/node.key, "
        f"ca_certificates: {pki}/ca.pem}}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "garbage.pem" in done.stderr
