"""Silence is never mistaken for a negative: a study the AI could not analyse gets an SR that
says so, and why, in the PACS.

Tried as a new user would: a pelvis radiograph on which the hip demo finds no femoral neck
used to end as a failed job in the node and nothing at all in the PACS. Here a blank image
labelled HIP (refused as flat before the localiser runs) and a pelvis with a metal prosthesis
(an image seed 003 excluded), both routed by the shipped ``hip-xr`` rule.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from dicom_validation import dciodvfy_errors
from inputs import blank_hip, implant_hip
from node import NodeProcess, pacs_node_config
from peers import Orthanc

pytestmark = pytest.mark.e2e


def _comments(sr: pydicom.Dataset) -> list[str]:
    """The TEXT items of concept (121106, DCM, "Comment")."""

    def walk(items: pydicom.Sequence) -> list[str]:
        found = []
        for item in items:
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106":
                found.append(str(item.TextValue))
            if "ContentSequence" in item:
                found += walk(item.ContentSequence)
        return found

    return walk(sr.ContentSequence)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (blank_hip, "poor image quality (no contrast"),
        (implant_hip, "metal implant suspected"),
    ],
    ids=["blank", "implant"],
)
def test_a_study_the_model_cannot_analyse_gets_an_sr_saying_so(
    pacs: Orthanc,
    node_port: int,
    tmp_path: Path,
    database_url: str,
    hip_demo_card: Path,
    make: Callable[[Path], Path],
    reason: str,
) -> None:
    image = make(tmp_path)
    workdir = tmp_path / "node"
    config = pacs_node_config(workdir, database_url, pacs, "hip-xr", port=node_port)
    for peer in config["node"]["peers"]:
        peer["complete_on_release"] = peer["ae_title"] == pacs.aet
    with NodeProcess(workdir, config) as node:
        pacs.upload(image)
        study_id = pacs.find_study(pydicom.dcmread(image).StudyInstanceUID)
        assert study_id is not None
        assert pacs.store_to_modality("node", [study_id]).get("FailedInstancesCount", 0) == 0
        pacs.wait_for(
            lambda: len(pacs.study_instances(study_id)) >= 2,
            timeout=180,
            message=f"the not-analysed SR in the PACS\n{node.log_tail()}",
        )
        state, error = node.query("SELECT state, error FROM jobs")[0]
        notices = node.query("SELECT detail FROM events WHERE kind = 'job-not-analysed'")
    assert state == "failed" and reason in error, error
    assert len(notices) == 1
    objects = [
        pydicom.dcmread(io.BytesIO(pacs.instance_file(item["ID"])))
        for item in pacs.study_instances(study_id)
    ]
    (sr,) = [ds for ds in objects if ds.Modality == "SR"]
    assert sr.SeriesDescription.startswith("AI NOT ANALYSED hip-demo")
    (text,) = _comments(sr)
    assert text.startswith("AI analysis not performed by hip-demo"), text
    assert reason in text and "check the route" not in text, text
    # the node's log says which image was refused and why (its UID, no patient data)
    assert re.search(rf"skipping [0-9.]+: {re.escape(reason)}", node.log_text()), node.log_tail()
    assert dciodvfy_errors(sr) == []
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert report.PreliminaryFlag == "PRELIMINARY"
    # nothing in it reads as a finding: no certainty, no present / absent
    (measurements,) = (
        item
        for item in sr.ContentSequence
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    assert not [
        item
        for item in measurements.ContentSequence[0].ContentSequence
        if item.ValueType in ("NUM", "CODE")
        and item.ConceptNameCodeSequence[0].CodeValue in ("111012", "121071")
    ]
