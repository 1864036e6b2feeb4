"""The node end to end, as a process, against real peers.

* a real Orthanc (the PACS) forwards a study; the node sends back its SR and
  heatmap SC into the same study; the SR parses back with the finding, its
  certainty and the source reference; both objects pass dciodvfy;
* DCMTK storescu/echoscu talk to the node; unknown AE titles are refused;
* the node is killed mid-queue and finishes the work after a restart;
* dead-lettered deliveries go out with ``dicom-node resend``;
* routing edits apply while the node runs, bad edits are refused.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from pipelines.card import CARD_FILE, mark_building, unmark_building
from pipelines.common.phantoms import PhantomFile, write_radiograph_study

from dicom_validation import dciodvfy_errors
from node import TEST_AET, NodeProcess, node_config
from peers import PACS_AET, Orthanc, echoscu, pydicom_sample, storescu, wait_for

pytestmark = pytest.mark.e2e

CHEST_ROUTE = {
    "name": "chest-xr",
    "match": {"Modality": ["CR", "DX"], "BodyPartExamined": "CHEST"},
    "pipeline": "generic",
    "destinations": ["pacs"],
}
SHADOW_FALLBACK = {
    "name": "everything-else",
    "fallback": True,
    "pipeline": "generic",
    "shadow": True,
}
PEERS = [
    {"ae_title": TEST_AET, "host": "127.0.0.1"},
    {"ae_title": PACS_AET, "host": "127.0.0.1"},
    {"ae_title": "STORESCU", "host": "127.0.0.1"},
]


def make_node(tmp_path: Path, database_url: str, port: int | None = None, **kw: Any) -> NodeProcess:
    kw.setdefault("peers", PEERS)
    kw.setdefault("routes", [CHEST_ROUTE, SHADOW_FALLBACK])
    workdir = tmp_path / "node"
    return NodeProcess(workdir, node_config(workdir, database_url, port=port, **kw))


def pacs_destination(pacs: Orthanc) -> dict[str, Any]:
    return {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}}


def phantom(tmp_path: Path, index: int = 0, lesion: bool = True, **kw: Any) -> PhantomFile:
    return write_radiograph_study(
        tmp_path / "phantoms", seed=4242, index=index, lesion=lesion, **kw
    )


def results_in_pacs(pacs: Orthanc, study_id: str) -> dict[str, list[pydicom.Dataset]]:
    """Objects of the study in Orthanc, by modality."""
    out: dict[str, list[pydicom.Dataset]] = {}
    for item in pacs.study_instances(study_id):
        ds = pydicom.dcmread(io.BytesIO(pacs.instance_file(item["ID"])))
        out.setdefault(ds.Modality, []).append(ds)
    return out


def test_pacs_forwards_study_and_gets_sr_and_heatmap_back(
    pacs: Orthanc, node_port: int, tmp_path: Path, database_url: str, demo_card: Path
) -> None:
    source = phantom(tmp_path, lesion=True)
    node = make_node(tmp_path, database_url, port=node_port, destinations=pacs_destination(pacs))
    with node:
        pacs.upload(source.path)
        study_id = pacs.find_study(source.study_instance_uid)
        assert study_id is not None
        summary = pacs.store_to_modality("node", [study_id])
        assert summary.get("FailedInstancesCount", 0) == 0
        pacs.wait_for(
            lambda: len(pacs.study_instances(study_id)) >= 3,
            timeout=120,
            message=f"SR and SC back in the study\n{node.log_tail()}",
        )
        assert node.wait_for("SELECT state FROM deliveries", "done") == "done"

    objects = results_in_pacs(pacs, study_id)
    assert set(objects) == {"DX", "SR", "OT"}, objects.keys()
    (sr,) = objects["SR"]
    (sc,) = objects["OT"]

    # same study, new series, descriptions say which model and that it is a demo
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == source.study_instance_uid
        assert ds.SeriesInstanceUID != source.series_instance_uid
        assert "generic-demo" in ds.SeriesDescription
        assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription

    # the SR reads back: one finding about the lesion, certainty in %, the source referenced
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert report.SOPClassUID == sr.SOPClassUID
    certainty = _certainties(sr)
    assert len(certainty) == 1
    probability = node_probability(node)
    assert abs(certainty[0] - 100 * probability) < 1e-3
    assert source.sop_instance_uid in _referenced_sops(sr)
    assert [item.ReferencedSOPInstanceUID for item in sc.SourceImageSequence] == [
        source.sop_instance_uid
    ]
    assert (sc.Rows, sc.Columns) == (
        pydicom.dcmread(source.path).Rows,
        pydicom.dcmread(source.path).Columns,
    )

    for ds in (sr, sc):
        assert dciodvfy_errors(ds) == [], ds.Modality


def node_probability(node: NodeProcess) -> float:
    """The probability the pipeline reported, from the result stored in the node's spool."""
    path = node.scalar("SELECT path FROM results WHERE kind = 'SR'")
    sr = pydicom.dcmread(Path(node.config["storage"]["spool"]) / path)
    (value,) = _certainties(sr)
    return value / 100


def _walk(items: Any) -> Any:
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def _certainties(sr: pydicom.Dataset) -> list[float]:
    return [
        float(item.MeasuredValueSequence[0].NumericValue)
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "111012"
    ]


def _referenced_sops(sr: pydicom.Dataset) -> set[str]:
    return {
        ref.ReferencedSOPInstanceUID
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "IMAGE"
        for ref in item.ReferencedSOPSequence
    }


def test_dcmtk_storescu_every_transfer_syntax_is_indexed_and_unknown_ae_refused(
    tmp_path: Path, database_url: str
) -> None:
    names = [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",  # implicit VR little endian
        "MR_small_bigendian.dcm",  # explicit VR big endian (retired, still sent)
        "JPEG2000.dcm",  # JPEG 2000
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "JPEG-lossy.dcm",  # JPEG baseline
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, RGB
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_RLE.dcm",  # RLE lossless
        "image_dfl.dcm",  # deflated explicit VR little endian
        "rtplan.dcm",  # a non-image storage SOP class
    ]
    files = [pydicom_sample(n) for n in names]
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    with make_node(tmp_path, database_url, routes=[], pipelines={}) as node:
        echo = echoscu("127.0.0.1", node.port, called_ae="DICOM_NODE", calling_ae=TEST_AET)
        assert echo.returncode == 0, echo.stderr
        result = storescu(
            "127.0.0.1", node.port, files, called_ae="DICOM_NODE", calling_ae="STORESCU"
        )
        assert result.returncode == 0, result.stderr
        indexed = {row[0] for row in node.query("SELECT sop_instance_uid FROM instances")}
        assert indexed == expected
        for (relative,) in node.query("SELECT path FROM instances"):
            assert (Path(node.config["storage"]["spool"]) / relative).is_file()

        # a second copy is accepted and counted once
        again = storescu(
            "127.0.0.1", node.port, files[:1], called_ae="DICOM_NODE", calling_ae="STORESCU"
        )
        assert again.returncode == 0
        assert node.scalar("SELECT count(*) FROM instances") == len(expected)
        ct_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
        copies = "SELECT copies FROM instances WHERE sop_instance_uid = :uid"
        assert node.scalar(copies, uid=ct_uid) == 2

        refused = storescu(
            "127.0.0.1", node.port, files[:1], called_ae="DICOM_NODE", calling_ae="INTRUDER"
        )
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        wrong_called = echoscu(
            "127.0.0.1", node.port, called_ae="NOT_THE_NODE", calling_ae=TEST_AET
        )
        assert wrong_called.returncode != 0
    assert "rejected association from calling AE 'INTRUDER'" in node.log_text()


def test_killed_mid_queue_finishes_after_restart(
    tmp_path: Path, database_url: str, storescp_factory: Any, demo_card: Path
) -> None:
    """kill -9 after Success but before completion; and again with a delivery pending."""
    dest = storescp_factory(aet="RESULTS")
    destinations = {"pacs": {"ae_title": "RESULTS", "host": "127.0.0.1", "port": dest.port}}
    node = make_node(tmp_path, database_url, destinations=destinations)
    node.config["completion"]["study_quiet_seconds"] = 5
    node.write_config(node.config)
    first, second = phantom(tmp_path, 1), phantom(tmp_path, 2, lesion=False)

    node.start()
    sent = storescu(
        "127.0.0.1", node.port, [first.path], called_ae="DICOM_NODE", calling_ae=TEST_AET
    )
    assert sent.returncode == 0, sent.stderr
    node.kill()  # answered Success, not yet complete
    assert node.scalar("SELECT count(*) FROM jobs") == 0

    dest.stop()  # destination down: the delivery will wait in the outbox
    node.start()
    node.wait_for("SELECT count(*) FROM deliveries WHERE attempts >= 1", 1, timeout=120)
    sent = storescu(
        "127.0.0.1", node.port, [second.path], called_ae="DICOM_NODE", calling_ae=TEST_AET
    )
    assert sent.returncode == 0
    node.kill()  # one delivery pending with retries, one study not complete

    dest.start()
    node.start()
    node.wait_for("SELECT count(*) FROM deliveries WHERE state = 'done'", 2, timeout=180)
    node.stop()
    received = {
        pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in dest.received()
    }
    assert received == {first.study_instance_uid, second.study_instance_uid}


def test_dead_letter_then_resend(
    tmp_path: Path, database_url: str, storescp_factory: Any, demo_card: Path
) -> None:
    dest = storescp_factory(aet="RESULTS", start=False)
    destinations = {"pacs": {"ae_title": "RESULTS", "host": "127.0.0.1", "port": dest.port}}
    node = make_node(tmp_path, database_url, destinations=destinations)
    node.config["dispatch"]["retry"] = {
        "initial_seconds": 0.2,
        "multiplier": 2,
        "max_seconds": 1,
        "max_attempts": 3,
    }
    node.write_config(node.config)
    source = phantom(tmp_path, 3)
    with node:
        storescu("127.0.0.1", node.port, [source.path], called_ae="DICOM_NODE", calling_ae=TEST_AET)
        node.wait_for("SELECT state FROM deliveries", "dead", timeout=120)
        assert node.scalar("SELECT attempts FROM deliveries") == 3
        status = node.cli("status", "--json")
        assert status.returncode == 0
        assert '"dead"' in status.stdout
        dest.start()
        resend = node.cli("resend")
        assert resend.returncode == 0, resend.stderr
        node.wait_for("SELECT state FROM deliveries", "done", timeout=60)
    assert len(dest.received()) >= 2  # the SR and at least one heatmap


def test_routes_reload_while_running_and_bad_edit_is_refused(
    tmp_path: Path, database_url: str, demo_card: Path
) -> None:
    node = make_node(tmp_path, database_url, routes=[SHADOW_FALLBACK])
    with node:
        good = dict(node.config)
        good["routes"] = [{**CHEST_ROUTE, "shadow": True, "destinations": []}, SHADOW_FALLBACK]
        node.write_config(good)
        # the worker (main process) must have applied it before the next edit
        wait_for(
            lambda: "main dicom_node.config: configuration reloaded" in node.log_text(),
            15,
            0.2,
            "reload",
        )
        node.config_path.write_text(
            node.config_path.read_text().replace("BodyPartExamined", "BodyPartExamind")
        )
        wait_for(
            lambda: "main dicom_node.config: configuration reload refused" in node.log_text(),
            15,
            0.2,
            "refusal",
        )
        assert "BodyPartExamind" in node.log_text()
        # the running config (with chest-xr) still routes
        source = phantom(tmp_path, 4)
        storescu("127.0.0.1", node.port, [source.path], called_ae="DICOM_NODE", calling_ae=TEST_AET)
        node.wait_for("SELECT route FROM jobs", "chest-xr", timeout=60)
        time.sleep(0.5)
        events = {row[0] for row in node.query("SELECT kind FROM events WHERE stage = 'config'")}
        assert {"reloaded", "reload-refused"} <= events


def _install_card(source: Path, card: Path) -> None:
    """Put a built model where a card is expected, the card last and atomically, as a build does."""
    card.parent.mkdir(parents=True, exist_ok=True)
    for item in source.parent.iterdir():
        if item.is_file() and item.name != card.name:
            shutil.copy2(item, card.parent / item.name)
    staging = card.with_name(".card.tmp")
    shutil.copy2(source, staging)
    staging.replace(card)


def test_jobs_wait_for_a_model_that_is_still_building_then_run(
    tmp_path: Path, database_url: str, demo_card: Path
) -> None:
    """A first run serves before its demo models exist: a study for a model still building
    is received and its job waits (status says so) instead of failing; it runs when the card
    appears. A build that died leaves its jobs to fail with an error that says so."""
    card = tmp_path / "models" / "generic-demo" / CARD_FILE
    builder = subprocess.Popen(["sleep", "600"])  # stands in for 'models build-demo'
    try:
        mark_building(card, builder.pid)
        node = make_node(tmp_path, database_url, routes=[SHADOW_FALLBACK])
        node.config["pipelines"]["generic"]["card"] = str(card)
        node.write_config(node.config)
        first, second = phantom(tmp_path, 1), phantom(tmp_path, 2)
        with node.start():
            sent = storescu("127.0.0.1", node.port, [first.path], "DICOM_NODE", TEST_AET)
            assert sent.returncode == 0, sent.stderr
            node.wait_for("SELECT count(*) FROM jobs", 1, timeout=60)
            time.sleep(4)  # several runner ticks: it must not run, nor fail
            assert node.scalar("SELECT state FROM jobs") == "pending"
            status = node.cli("status")
            assert status.returncode == 0, status.stderr
            assert (
                f"model generic: building: process {builder.pid} is building {card}, "
                "1 job(s) pending" in status.stdout
            ), status.stdout

            _install_card(demo_card, card)  # the build finishes
            builder.kill()
            builder.wait()
            unmark_building(card)
            node.wait_for("SELECT state FROM jobs", "done", timeout=120)
            assert "model generic: ready" in node.cli("status").stdout

            # a build that died: its marker stays, its process is gone
            card.unlink()
            mark_building(card, builder.pid)
            sent = storescu("127.0.0.1", node.port, [second.path], "DICOM_NODE", TEST_AET)
            assert sent.returncode == 0, sent.stderr
            node.wait_for("SELECT count(*) FROM jobs WHERE state = 'failed'", 1, timeout=60)
            assert "model generic: missing" in node.cli("status").stdout
            (error,) = node.query("SELECT error FROM jobs WHERE state = 'failed'")
            assert str(card) in error[0], error
    finally:
        builder.kill()


@pytest.mark.e2e
def test_a_running_job_does_not_hold_up_completion_or_other_jobs(
    tmp_path: Path, database_url: str
) -> None:
    """Inference runs in the runner's own threads: while one job's part-full batch waits for
    company (jobs.batch_wait_ms), another study completes, is routed, and its job runs beside."""
    node = make_node(
        tmp_path,
        database_url,
        routes=[SHADOW_FALLBACK],
        jobs={"in_flight": 2, "batch_wait_ms": 6000},
    )
    first, second = phantom(tmp_path, 1), phantom(tmp_path, 2)
    with node:
        assert (
            storescu("127.0.0.1", node.port, [first.path], "DICOM_NODE", TEST_AET).returncode == 0
        )
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'running'", 1, timeout=60)
        started = time.monotonic()
        assert (
            storescu("127.0.0.1", node.port, [second.path], "DICOM_NODE", TEST_AET).returncode == 0
        )
        node.wait_for("SELECT count(*) FROM completions", 2, timeout=30)
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'running'", 2, timeout=30)
        assert time.monotonic() - started < 6, "the second study completed while the first job ran"
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'done'", 2, timeout=60)
        (detail,) = node.query("SELECT detail FROM events WHERE kind = 'job-done' LIMIT 1")[0]
    assert "local cpu" in detail and "1 shared with other jobs" in detail, detail
