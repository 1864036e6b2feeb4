"""Study completion by DICOM's own signals, against real senders.

* a PACS forwarding a study (Orthanc: one association per study) marked
  ``complete_on_release``: the study completes once the association is
  released and the settle time passed, long before the quiet timers; the
  ``study-complete`` event says ``released``;
* DCMTK ``storescu`` sending one study in several associations, from a peer
  not so marked: the quiet timers complete it (the fallback), once;
* pynetdicom as a modality's MPPS SCU: the study completes as soon as its step
  is COMPLETED and every instance it lists has arrived.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from pipelines.common.phantoms import write_radiograph_study

from node import NODE_AET, TEST_AET, NodeProcess, node_config
from peers import Orthanc, free_port, storescu

pytestmark = pytest.mark.e2e

#: quiet timers far longer than the release path needs: a study done within them was released
QUIET = {"series_quiet_seconds": 15, "study_quiet_seconds": 20, "force_after_seconds": 300}


def _node(tmp_path: Path, database_url: str, port: int, pacs: Orthanc) -> NodeProcess:
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        port=port,
        peers=[
            {"ae_title": pacs.aet, "host": "127.0.0.1", "complete_on_release": True},
            {"ae_title": TEST_AET, "host": "127.0.0.1"},
            {"ae_title": "STORESCU", "host": "127.0.0.1"},
        ],
        # the poll timers are far too slow for what is asserted: only the wake-ups explain it
        completion={**QUIET, "release_settle_seconds": 0.5, "poll_seconds": 30},
        dispatch={"poll_seconds": 30, "timeout_seconds": 10},
        monitoring={"host": "127.0.0.1", "port": free_port()},
        destinations={"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}},
        routes=[
            {
                "name": "chest",
                "match": {"Modality": "DX"},
                "pipeline": "generic",
                "destinations": ["pacs"],
            },
            {"name": "rest", "fallback": True, "pipeline": "generic", "shadow": True},
        ],
    )
    return NodeProcess(workdir, config)


def test_a_study_forwarded_by_the_pacs_completes_on_release_and_storescu_on_quiet(
    pacs: Orthanc, node_port: int, tmp_path: Path, database_url: str, demo_card: Path
) -> None:
    forwarded = write_radiograph_study(tmp_path / "a", seed=51, index=0, lesion=True)
    first = write_radiograph_study(tmp_path / "b", seed=52, index=0, lesion=False)
    with _node(tmp_path, database_url, node_port, pacs) as node:
        pacs.upload(forwarded.path)
        study_id = pacs.find_study(forwarded.study_instance_uid)
        assert study_id is not None
        sent = time.monotonic()
        assert pacs.store_to_modality("node", [study_id]).get("FailedInstancesCount", 0) == 0
        node.wait_for("SELECT count(*) FROM completions WHERE reason = 'released'", 1, timeout=60)
        completed = time.monotonic() - sent
        pacs.wait_for(
            lambda: len(pacs.study_instances(study_id)) >= 3,
            timeout=60,
            message=f"SR and SC back in the study\n{node.log_tail()}",
        )
        back = time.monotonic() - sent
        # completion and dispatch poll every 30 s here: the receivers' wake-up (completion)
        # and the runner's (dispatch) are what brings the results back this soon
        assert completed < 5, f"completed {completed:.1f} s after the PACS's association ended"
        assert back < 20, f"results in the PACS {back:.1f} s after it sent the study"

        # one study in two associations from storescu (no complete_on_release): quiet timers
        study = first.study_instance_uid
        for path in (first.path, _another_series(first.path, tmp_path / "c.dcm")):
            done = storescu("127.0.0.1", node.port, [path], called_ae=NODE_AET)
            assert done.returncode == 0, done.stderr
        time.sleep(3)
        assert (
            node.scalar("SELECT count(*) FROM completions WHERE study_instance_uid = :s", s=study)
            == 0
        ), "released associations of a peer without complete_on_release complete nothing"
        node.wait_for(
            "SELECT reason FROM completions WHERE study_instance_uid = :s",
            "quiet",
            timeout=90,
            s=study,
        )
        reasons = node.query("SELECT detail FROM events WHERE kind = 'study-complete'")
        metrics = node.get("/metrics")[1].decode()
        status = node.cli("status").stdout
    assert any("released" in row[0] for row in reasons), reasons
    assert 'dicom_node_study_completions{reason="released"} 1.0' in metrics
    assert 'dicom_node_study_completions{reason="quiet"} 1.0' in metrics
    assert "study completions: quiet 1, released 1" in status, status


def _another_series(path: Path, out: Path) -> Path:
    """A second series of the same study (new series and instance UIDs)."""
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesNumber = 2
    ds.save_as(out)
    return out


def _mpps(study_uid: str, status: str, listed: list[pydicom.Dataset]) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PerformedProcedureStepStatus = status
    if status == "IN PROGRESS":
        scheduled = pydicom.Dataset()
        scheduled.StudyInstanceUID = study_uid
        ds.ScheduledStepAttributesSequence = [scheduled]
        ds.PerformedProcedureStepID = "STEP1"
    series: dict[str, list[pydicom.Dataset]] = {}
    for image in listed:
        series.setdefault(image.SeriesInstanceUID, []).append(image)
    performed = []
    for uid, images in series.items():
        item = pydicom.Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedImageSequence = []
        for image in images:
            ref = pydicom.Dataset()
            ref.ReferencedSOPClassUID = image.SOPClassUID
            ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
            item.ReferencedImageSequence.append(ref)
        performed.append(item)
    if performed:
        ds.PerformedSeriesSequence = performed
    return ds


def test_a_modality_s_completed_mpps_completes_its_study_at_once(
    pacs: Orthanc, node_port: int, tmp_path: Path, database_url: str, demo_card: Path
) -> None:
    """pynetdicom as the modality: N-CREATE (IN PROGRESS), C-STORE, N-SET (COMPLETED, listing
    the instances) in one association; the study completes by MPPS, not the quiet timers."""
    first = write_radiograph_study(tmp_path / "m", seed=61, index=0, lesion=True)
    images = [
        pydicom.dcmread(first.path),
        pydicom.dcmread(_another_series(first.path, tmp_path / "m2.dcm")),
    ]
    study = images[0].StudyInstanceUID
    ae = AE(ae_title=TEST_AET)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.add_requested_context(images[0].SOPClassUID, images[0].file_meta.TransferSyntaxUID)
    with _node(tmp_path, database_url, node_port, pacs) as node:
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        assert assoc.is_established
        step = generate_uid()
        status, _ = assoc.send_n_create(
            _mpps(study, "IN PROGRESS", []), ModalityPerformedProcedureStep, step
        )
        assert status.Status == 0x0000
        for image in images:
            assert assoc.send_c_store(image).Status == 0x0000
        time.sleep(3)
        assert node.scalar("SELECT count(*) FROM completions") == 0, "still IN PROGRESS"
        status, _ = assoc.send_n_set(
            _mpps(study, "COMPLETED", images), ModalityPerformedProcedureStep, step
        )
        assert status.Status == 0x0000
        done_at = time.monotonic()
        again, _ = assoc.send_n_set(
            _mpps(study, "DISCONTINUED", []), ModalityPerformedProcedureStep, step
        )
        unknown, _ = assoc.send_n_set(
            _mpps(study, "COMPLETED", []), ModalityPerformedProcedureStep, generate_uid()
        )
        node.wait_for("SELECT reason FROM completions", "mpps", timeout=30)
        waited = time.monotonic() - done_at
        assoc.release()
    assert waited < 5, f"completed {waited:.1f} s after the N-SET (completion polls every 30 s)"
    assert again.Status == 0xA710, "a COMPLETED step may not be modified"
    assert unknown.Status == 0x0112, "no such step"
