"""The test rig itself: real Orthanc, DCMTK and PostgreSQL peers work as the suite expects."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from conftest import OrthancFactory, PostgresClusterFactory, StoreSCPFactory
from pydicom.uid import generate_uid

from peers import (
    DICOMWEB_PLUGIN,
    LOOPBACK,
    NODE_MODALITY,
    PACS_AET,
    Orthanc,
    OrthancError,
    PeerMissingError,
    echoscu,
    pydicom_sample,
    require_binary,
    storescu,
)

# pydicom's bundled test files (never downloaded), by the transfer syntax they are in.
COMPRESSED_FILES = {
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "JPEG-lossy.dcm": "1.2.840.10008.1.2.4.51",  # JPEG Extended 12 bit
    "SC_rgb_jpeg_gdcm.dcm": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "JPEGLSNearLossless_08.dcm": "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE lossless
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # Deflated explicit VR little endian
}
UNCOMPRESSED_FILES = ("CT_small.dcm", "MR_small.dcm")


def fresh_copy(name: str, folder: Path) -> tuple[Path, pydicom.Dataset]:
    """Copy a pydicom test file with a new SOP Instance UID, in its own transfer syntax.

    Several test files are the same image in different syntaxes (same SOP
    Instance UID); a fresh UID lets them all be stored side by side.
    """
    ds = pydicom.dcmread(pydicom_sample(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if keyword not in ds:  # some JPEG-LS samples have none; Orthanc needs both
            setattr(ds, keyword, generate_uid())
    if "PatientID" not in ds:
        ds.PatientID = "RIG-TEST"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    ds.save_as(target)
    assert pydicom.dcmread(target).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    return target, ds


# ---------------------------------------------------------------------------
# Orthanc
# ---------------------------------------------------------------------------


def test_orthanc_answers_on_loopback(pacs: Orthanc, node_port: int) -> None:
    system = pacs.system()
    assert system["Version"].startswith("1.")
    assert system["DicomAet"] == PACS_AET
    assert system["DicomPort"] == pacs.dicom_port
    assert system["HttpPort"] == pacs.http_port
    assert pacs.url == f"http://{LOOPBACK}:{pacs.http_port}"
    assert pacs.get("/modalities?expand")[NODE_MODALITY]["Port"] == node_port
    assert pacs.studies() == []


def test_echoscu_against_orthanc(pacs: Orthanc) -> None:
    result = echoscu(LOOPBACK, pacs.dicom_port, called_ae=PACS_AET, calling_ae="RIGTEST")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("check_called_aet", [False, True])
def test_echoscu_wrong_called_ae(orthanc_factory: OrthancFactory, check_called_aet: bool) -> None:
    orthanc = orthanc_factory(config={"DicomCheckCalledAet": check_called_aet})
    result = echoscu(LOOPBACK, orthanc.dicom_port, called_ae="NOT_THE_PACS")
    if check_called_aet:
        assert result.returncode != 0
        assert "Called AE Title Not Recognized" in result.stdout + result.stderr
    else:  # Orthanc's default, and the rig's: any called AE title is accepted
        assert result.returncode == 0, result.stderr


def test_storescu_uncompressed_files_are_found_by_rest(pacs: Orthanc) -> None:
    files = [pydicom_sample(name) for name in UNCOMPRESSED_FILES]
    result = storescu(LOOPBACK, pacs.dicom_port, files, called_ae=PACS_AET)
    assert result.returncode == 0, result.stdout + result.stderr

    for path in files:
        sent = pydicom.dcmread(path)
        study_id = pacs.find_study(sent.StudyInstanceUID)
        assert study_id is not None
        assert study_id in pacs.studies()
        (series,) = pacs.study_series(study_id)
        (instance,) = pacs.series_instances(series["ID"])
        assert instance["MainDicomTags"]["SOPInstanceUID"] == sent.SOPInstanceUID
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.instance_file(instance["ID"])))
        assert stored.SOPInstanceUID == sent.SOPInstanceUID
        assert stored.PixelData == sent.PixelData
        assert pacs.instance_metadata(instance["ID"], "RemoteAET") == "STORESCU"
    assert pacs.find_study("1.2.3.4.5.6.7.8.9") is None


def test_storescu_sends_compressed_files_in_their_own_transfer_syntax(
    pacs: Orthanc, tmp_path: Path
) -> None:
    folder = tmp_path / "compressed"
    copies = {
        name: fresh_copy(name, folder / f"{i:02d}") for i, name in enumerate(COMPRESSED_FILES)
    }

    # One association for the whole (recursively scanned) folder.
    result = storescu(LOOPBACK, pacs.dicom_port, [folder], called_ae=PACS_AET)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert log.count("Association Accepted") == 1
    assert log.count("Received Store Response (Success)") == len(COMPRESSED_FILES)

    for name, (_, sent) in copies.items():
        instance_id = pacs.find_instance(sent.SOPInstanceUID)
        assert instance_id is not None, name
        assert pacs.instance_metadata(instance_id, "TransferSyntax") == COMPRESSED_FILES[name]
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.instance_file(instance_id)))
        assert stored.file_meta.TransferSyntaxUID == COMPRESSED_FILES[name], name
        assert stored.PixelData == sent.PixelData, name  # not transcoded on the way


def test_orthanc_survives_stop_and_start(pacs: Orthanc) -> None:
    stored = pacs.upload(pydicom_sample("CT_small.dcm"))
    assert stored["Status"] == "Success"
    ports = (pacs.dicom_port, pacs.http_port)

    pacs.stop()
    assert not pacs.is_running
    with pytest.raises(OrthancError) as error:
        pacs.system()
    assert error.value.status == 0
    assert echoscu(LOOPBACK, pacs.dicom_port, timeout=10).returncode != 0

    pacs.start()
    assert (pacs.dicom_port, pacs.http_port) == ports
    assert pacs.instances() == [stored["ID"]]
    assert echoscu(LOOPBACK, pacs.dicom_port).returncode == 0


def test_orthanc_dicomweb_plugin(orthanc_factory: OrthancFactory) -> None:
    orthanc = orthanc_factory(plugins=[DICOMWEB_PLUGIN])
    uploaded = orthanc.upload(pydicom_sample("MR_small.dcm"))
    assert uploaded["Status"] == "Success"
    studies = orthanc.get("/dicom-web/studies")
    study_uid = pydicom.dcmread(pydicom_sample("MR_small.dcm")).StudyInstanceUID
    assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]


# ---------------------------------------------------------------------------
# storescp
# ---------------------------------------------------------------------------


def test_storescp_receives_compressed_file_as_sent(
    storescp_factory: StoreSCPFactory, tmp_path: Path
) -> None:
    scp = storescp_factory(aet="DEST")
    path, sent = fresh_copy("MR_small_RLE.dcm", tmp_path / "send")
    result = storescu(LOOPBACK, scp.port, [path], called_ae="DEST")
    assert result.returncode == 0, result.stdout + result.stderr

    (received,) = scp.wait_for_files(1)
    assert received.parent == scp.output_dir
    got = pydicom.dcmread(received)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert got.PixelData == sent.PixelData


def test_storescp_down_then_up_on_the_same_port(
    storescp_factory: StoreSCPFactory, tmp_path: Path
) -> None:
    scp = storescp_factory(aet="DEST", start=False)
    path, sent = fresh_copy("CT_small.dcm", tmp_path / "send")
    down = storescu(LOOPBACK, scp.port, [path], called_ae="DEST", timeout=30)
    assert down.returncode != 0

    scp.start()
    scp.stop()
    scp.start()  # again, on the port given out first
    assert storescu(LOOPBACK, scp.port, [path], called_ae="DEST").returncode == 0
    (received,) = scp.wait_for_files(1)
    assert pydicom.dcmread(received).SOPInstanceUID == sent.SOPInstanceUID


def test_storescu_fails_when_the_association_is_refused(
    storescp_factory: StoreSCPFactory,
) -> None:
    scp = storescp_factory(extra_args=["--refuse"])
    result = storescu(LOOPBACK, scp.port, [pydicom_sample("CT_small.dcm")])
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout + result.stderr
    assert scp.received() == []


def test_orthanc_store_to_modality_reaches_storescp(
    orthanc_factory: OrthancFactory, storescp_factory: StoreSCPFactory
) -> None:
    scp = storescp_factory(aet="DEST")
    orthanc = orthanc_factory(modalities={"dest": ["DEST", LOOPBACK, scp.port]})
    assert orthanc.echo_modality("dest")
    study_id = orthanc.upload(pydicom_sample("CT_small.dcm"))["ParentStudy"]

    summary = orthanc.store_to_modality("dest", [study_id])
    assert summary["InstancesCount"] == 1
    assert summary["FailedInstancesCount"] == 0

    (received,) = scp.wait_for_files(1)
    assert pydicom.dcmread(received).SOPInstanceUID == (
        pydicom.dcmread(pydicom_sample("CT_small.dcm")).SOPInstanceUID
    )


def test_orthanc_store_to_absent_modality_fails(orthanc_factory: OrthancFactory) -> None:
    orthanc = orthanc_factory(modalities={"gone": ["GONE", LOOPBACK, 9]})
    study_id = orthanc.upload(pydicom_sample("CT_small.dcm"))["ParentStudy"]
    assert not orthanc.echo_modality("gone")
    with pytest.raises(OrthancError) as error:
        orthanc.store_to_modality("gone", [study_id])
    assert error.value.status >= 400


# ---------------------------------------------------------------------------
# PostgreSQL and the index database fixture
# ---------------------------------------------------------------------------


def test_postgres_cluster_connects_restarts_and_recovers(
    postgres_cluster_factory: PostgresClusterFactory,
) -> None:
    cluster = postgres_cluster_factory()
    assert cluster.url == f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/dicom_node"
    engine = sa.create_engine(cluster.url, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SHOW listen_addresses")).scalar() == LOOPBACK
            conn.execute(sa.text("CREATE TABLE rig (id integer PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO rig VALUES (1)"))

        cluster.stop()
        assert not cluster.is_running
        with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

        cluster.start()
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO rig VALUES (2)"))

        cluster.kill()  # as in a crash: the next start runs recovery
        assert not cluster.is_running
        cluster.start()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id FROM rig ORDER BY id")).scalars().all() == [1, 2]
    finally:
        engine.dispose()


def test_database_url_is_an_empty_database(database_url: str, database_backend: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        assert engine.dialect.name == database_backend
        with engine.begin() as conn:
            assert sa.inspect(conn).get_table_names() == []
            conn.execute(sa.text("CREATE TABLE rig (id integer PRIMARY KEY)"))
    finally:
        engine.dispose()
    if database_backend == "postgresql":
        assert (sa.make_url(database_url).database or "").startswith("test_")


def test_missing_peer_program_is_reported_with_install_hint() -> None:
    with pytest.raises(PeerMissingError, match="scripts/install-system-deps"):
        require_binary("no-such-dicom-peer")
    assert Path(require_binary("Orthanc", ["/usr/sbin"])).name == "Orthanc"
