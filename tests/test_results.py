"""Result objects: TID 1500 SR and heatmap Secondary Capture (dicom_node.results).

Every object is written to disk, validated with dciodvfy (zero errors is a
hard requirement: a PACS may reject or mangle a non-conformant object), and
read back with pydicom/highdicom to check that the viewer-facing content is
what the pipeline reported.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code as SRCode
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

from dicom_node.results import (
    NOT_FOR_DIAGNOSTIC_USE,
    AlgorithmInfo,
    build_heatmap_sc,
    build_sr,
    finding_tracking_uid,
    heatmap_series_instance_uid,
    heatmap_sop_instance_uid,
    overlay_rgb,
    result_uid,
    sr_series_instance_uid,
    sr_sop_instance_uid,
)
from dicom_node.results import codes as result_codes
from dicom_node.results.sc import BOX_COLOUR, FOOTER_MAX_SHARE, footer_texts
from imaging.pixels import display_pixels
from pipelines.base import Annotation, Box, Code, Finding, Heatmap
from pipelines.card import Estimate, LabelPerformance

from dicom_validation import dciodvfy_errors, dciodvfy_report

SHA = "0123456789abcdef" * 4
JOB = "study-1.2.3|generic|0.1.0"

LESION = Code("52988006", "SCT", "Lesion")
NODULE = Code("27925004", "SCT", "Nodule")
MASS = Code("4147007", "SCT", "Mass")
LUNG = Code("39607008", "SCT", "Lung structure")
BREAST = Code("76752008", "SCT", "Breast structure")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")

PRESENT = ("52101004", "SCT")
ABSENT = ("272519000", "SCT")

PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(
        name="generic-demo",
        version="0.1.0",
        pipeline="generic",
        weights_sha256=SHA,
        for_diagnostic_use=False,
        software_version="0.1.0",
    )


def _testdata(name: str, *, pixels: bool) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return pydicom.dcmread(path, stop_before_pixels=not pixels)


@pytest.fixture(scope="module")
def ct() -> Dataset:
    return _testdata("CT_small.dcm", pixels=True)


@pytest.fixture(scope="module")
def ct_header() -> Dataset:
    return _testdata("CT_small.dcm", pixels=False)


@pytest.fixture(scope="module")
def mr() -> Dataset:
    return _testdata("MR_small.dcm", pixels=True)


@pytest.fixture(scope="module")
def mr_header() -> Dataset:
    return _testdata("MR_small.dcm", pixels=False)


def _make_dx(image_laterality: str = "L") -> Dataset:
    """A small MONOCHROME1 mammography-like DX image with Image Laterality.

    pydicom ships no CR/DX/MG file; this one exercises projection
    radiography (Patient Orientation instead of Image Orientation, Image
    Laterality, MONOCHROME1 inversion) without network access.
    """
    rows, cols = 48, 40
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = result_uid("test-dx-instance", image_laterality)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = result_uid("test-dx-study")
    ds.SeriesInstanceUID = result_uid("test-dx-series", image_laterality)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "DX-001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "42"
    ds.AccessionNumber = "ACC42"
    ds.ReferringPhysicianName = ""
    ds.Modality = "DX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Test"
    ds.ImageLaterality = image_laterality
    ds.PatientOrientation = ["A", "FR"] if image_laterality == "L" else ["P", "FL"]
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[0:rows, 0:cols]
    ds.PixelData = ((yy * 60 + xx * 20) % 4096).astype(np.uint16).tobytes()
    return ds


@pytest.fixture(scope="module")
def dx() -> Dataset:
    return _make_dx("L")


def _blob(rows: int, cols: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def _write_read(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _assert_valid(path: Path) -> None:
    report = dciodvfy_report(path)
    assert report.errors == [], f"dciodvfy errors for {path.name}:\n{report.output}"


def _code_of(concept: object) -> tuple[str, str]:
    return (concept.value, concept.scheme_designator)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# UIDs, codes and algorithm identity
# ---------------------------------------------------------------------------


def test_result_uid_is_deterministic_valid_and_unambiguous() -> None:
    a = result_uid("sr", "job-1")
    assert a == result_uid("sr", "job-1")
    assert a != result_uid("sr", "job-2")
    assert a != result_uid("sc", "job-1")
    # Parts are serialised unambiguously: no collision by re-splitting.
    assert result_uid("ab", "c") != result_uid("a", "bc")
    for uid in (a, result_uid("x" * 500), result_uid("p", prefix="1.2.826.0.1.3680043.8.498.")):
        assert UID(uid).is_valid and len(uid) <= 64
    assert a.startswith("2.25.")
    assert result_uid("p", prefix="1.2.3.") == result_uid("p", prefix="1.2.3.")
    with pytest.raises(ValueError, match="at least one part"):
        result_uid()
    with pytest.raises(ValueError, match="prefix"):
        result_uid("p", prefix="not-a-prefix")


def test_codes_are_the_dicom_ones() -> None:
    """The codes written into results, checked against PS3.16 values."""
    assert result_codes.PRESENT == SRCode("52101004", "SCT", "Present")
    assert result_codes.ABSENT == SRCode("272519000", "SCT", "Absent")
    assert result_codes.CERTAINTY_OF_FINDING == SRCode("111012", "DCM", "Certainty of Finding")
    assert result_codes.PERCENT == SRCode("%", "UCUM", "Percent")
    assert result_codes.PROCESSING_EQUIPMENT == SRCode("109102", "DCM", "Processing Equipment")
    assert result_codes.DEVICE_OBSERVER == SRCode("121007", "DCM", "Device")
    assert result_codes.SOURCE_IMAGE_FOR_PROCESSING == SRCode(
        "121322", "DCM", "Source image for image processing operation"
    )
    assert result_codes.procedure_reported({"CT"})[0].value == "25045-6"
    assert result_codes.procedure_reported({"DX", "CR"})[0].value == "43468-8"
    assert result_codes.procedure_reported({"XC"}) == [result_codes.IMAGING_PROCEDURE]


def test_algorithm_info(algorithm: AlgorithmInfo) -> None:
    assert (
        algorithm.device_uid
        == AlgorithmInfo(
            name="generic-demo",
            version="0.1.0",
            pipeline="other-pipeline",
            weights_sha256=SHA.upper(),
            for_diagnostic_use=True,
            software_version="9.9",
        ).device_uid
    ), "device UID depends on name, version and weights only"
    assert (
        algorithm.device_uid
        != AlgorithmInfo("generic-demo", "0.2.0", "generic", SHA, False, "0.1.0").device_uid
    )
    assert (
        algorithm.device_uid
        != AlgorithmInfo("generic-demo", "0.1.0", "generic", "f" * 64, False, "0.1.0").device_uid
    )
    assert UID(algorithm.device_uid).is_valid

    assert algorithm.series_description("SC") == (
        "AI generic-demo 0.1.0 heatmap - NOT FOR DIAGNOSTIC USE"
    )
    assert algorithm.series_description("SR") == (
        "AI generic-demo 0.1.0 findings - NOT FOR DIAGNOSTIC USE"
    )
    assert algorithm.series_description("notice") == (
        "AI NOT ANALYSED generic-demo 0.1.0 - NOT FOR DIAGNOSTIC USE"
    )
    clinical = AlgorithmInfo("generic-demo", "0.1.0", "generic", SHA, True, "0.1.0")
    assert clinical.series_description("SR") == "AI generic-demo 0.1.0 findings"

    long = AlgorithmInfo(
        "a-very-long-model-card-name-" * 2, "12.34.56", "generic", SHA, False, "0.1.0"
    )
    for kind, head in (("SR", "AI a-very-long"), ("SC", "AI a-very-long"), ("notice", "AI NOT")):
        text = long.series_description(kind)  # type: ignore[arg-type]
        assert len(text) <= 64
        assert text.endswith(" - " + NOT_FOR_DIAGNOSTIC_USE), "the warning is never cut"
        assert text.startswith(head) and "12.34.56" in text
    with pytest.raises(ValueError, match="'SR', 'SC' or 'notice'"):
        algorithm.series_description("SEG")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="64 hex digits"):
        AlgorithmInfo("m", "1", "p", "abc", False, "0.1.0")
    with pytest.raises(ValueError, match="DICOM LO"):
        AlgorithmInfo("m" * 65, "1", "p", SHA, False, "0.1.0")


# ---------------------------------------------------------------------------
# SR
# ---------------------------------------------------------------------------


def _ct_findings(ct_header: Dataset) -> list[Finding]:
    uid = str(ct_header.SOPInstanceUID)
    return [
        Finding(
            label="lesion",
            code=LESION,
            probability=0.87,
            present=True,
            finding_site=LUNG,
            laterality=RIGHT,
            source_sop_instance_uids=(uid,),
            box=Box(uid, 10.5, 20.0, 50.0, 60.25),
        ),
        Finding(label="nodule", code=NODULE, probability=0.123, present=False, finding_site=LUNG),
        Finding(
            label="mass",
            code=MASS,
            probability=0.5,
            present=True,
            source_sop_instance_uids=(uid,),
        ),
    ]


def _texts(items: object, code_value: str) -> list[str]:
    return [
        str(item.TextValue)
        for item in items  # type: ignore[attr-defined]
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == code_value
    ]


def test_sr_quotes_the_cards_metrics_in_each_findings_unit_and_the_advice(
    tmp_path: Path, ct_header: Dataset, algorithm: AlgorithmInfo
) -> None:
    """Each group carries its label's metrics counted in the finding's unit, with CI and n."""
    ap50 = Estimate(value=0.61, ci_low=0.42, ci_high=0.77)
    sens = Estimate(value=0.9, ci_low=0.8, ci_high=0.97)
    performance = (
        LabelPerformance(
            label="lesion", unit="box", split="held_out_test", n=37, metrics={"ap50": ap50}
        ),
        LabelPerformance(
            label="lesion", unit="image", split="held_out_test", n=34, metrics={"sensitivity": sens}
        ),
        LabelPerformance(
            label="mass", unit="image", split="validation", n=20, metrics={"sensitivity": sens}
        ),
        LabelPerformance(
            label="mass",
            unit="image",
            split="held_out_test",
            n=40,
            n_positive=12,
            metrics={
                "sensitivity": sens,
                "specificity": Estimate(value=0.95, ci_low=0.9, ci_high=1.0),
            },
        ),
    )
    quoted = dataclasses.replace(algorithm, synthetic=True, performance=performance)
    uid = str(ct_header.SOPInstanceUID)
    findings = [
        Finding(
            "lesion",
            LESION,
            0.87,
            True,
            source_sop_instance_uids=(uid,),
            box=Box(uid, 10, 20, 50, 60),
            unit="box",
        ),
        Finding("nodule", NODULE, 0.12, False, unit="image", advice="never shown: absent"),
        Finding(
            "mass",
            MASS,
            0.7,
            True,
            source_sop_instance_uids=(uid,),
            unit="image",
            advice="Biopsy recommended.",
        ),
    ]
    path = tmp_path / "sr.dcm"
    ds = _write_read(build_sr(findings, [ct_header], quoted, job_key=JOB, series_number=9), path)
    _assert_valid(path)
    report = hd.sr.srread(path).content
    groups = report.get_planar_roi_measurement_groups() + report.get_image_measurement_groups()
    by_uid = {str(g.tracking_uid): g for g in groups}
    lines = {
        f.label: _texts(by_uid[finding_tracking_uid(JOB, i)][0].ContentSequence, "model-perf")
        for i, f in enumerate(findings)
    }
    advice = {
        f.label: _texts(by_uid[finding_tracking_uid(JOB, i)][0].ContentSequence, "121075")
        for i, f in enumerate(findings)
    }
    # the box is read with AP50 per box, not the per-image numbers
    assert lines["lesion"] == ["held-out test, per box (n=37): AP50 0.61 (95% CI 0.42-0.77)"]
    # held-out data only, when the card has them (the validation split picked the threshold)
    assert lines["mass"] == [
        (
            "held-out test, per image (n=40, 12 positive): sensitivity 0.90 (95% CI 0.80-0.97), "
            "specificity 0.95 (95% CI 0.90-1.00)"
        )
    ]
    # nothing measured in the unit: said, not left out
    assert lines["nodule"] == ["The model card has no metrics for nodule per image."]
    assert advice == {"lesion": [], "nodule": [], "mass": ["Biopsy recommended."]}
    # the model's provenance and use, at the document level
    (statements,) = [
        item
        for item in ds.ContentSequence
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    ]
    assert _texts(statements.ContentSequence, "model-data") == [
        "Trained on synthetic phantoms (demo weights); never validated on patients."
    ]
    (use,) = _texts(statements.ContentSequence, "model-use")
    assert use.startswith(NOT_FOR_DIAGNOSTIC_USE)
    schemes = {item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence}
    assert "99DCMNODE" in schemes


def test_sr_ct_is_valid_and_reads_back(
    tmp_path: Path, ct_header: Dataset, algorithm: AlgorithmInfo
) -> None:
    findings = _ct_findings(ct_header)
    sr = build_sr(findings, [ct_header], algorithm, job_key=JOB, series_number=901)
    path = tmp_path / "sr.dcm"
    ds = _write_read(sr, path)
    _assert_valid(path)

    # Header: SOP class, transfer syntax, flags, UIDs, series, patient/study.
    assert ds.SOPClassUID == Comprehensive3DSRStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.Modality == "SR"
    assert ds.PreliminaryFlag == "PRELIMINARY"
    assert ds.VerificationFlag == "UNVERIFIED"
    assert ds.SeriesInstanceUID == sr_series_instance_uid(JOB)
    assert ds.SOPInstanceUID == sr_sop_instance_uid(JOB)
    assert ds.SeriesInstanceUID != ct_header.SeriesInstanceUID
    assert ds.SeriesNumber == 901 and ds.InstanceNumber == 1
    assert NOT_FOR_DIAGNOSTIC_USE in ds.SeriesDescription and "generic-demo" in ds.SeriesDescription
    for keyword in PATIENT_STUDY_KEYWORDS:
        assert ds.get(keyword) == ct_header.get(keyword), keyword
    assert ds.Manufacturer == "dicom-node"
    assert ds.ManufacturerModelName == "generic-demo"

    # IHE AIR: the algorithm as contributing (processing) equipment.
    algo_items = [
        item
        for item in ds.ContributingEquipmentSequence
        if item.get("DeviceUID") == algorithm.device_uid
    ]
    assert len(algo_items) == 1
    item = algo_items[0]
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert item.Manufacturer == "dicom-node"
    assert item.ManufacturerModelName == "generic-demo"
    assert list(item.SoftwareVersions)[0] == "0.1.0"

    # Evidence: the source image, in the current study.
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == ct_header.StudyInstanceUID
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == ct_header.SOPInstanceUID

    # Content, through highdicom's TID 1500 API.
    doc = hd.sr.srread(path)
    assert isinstance(doc, hd.sr.Comprehensive3DSR)
    report = doc.content
    assert isinstance(report, hd.sr.MeasurementReport)

    observers = report.get_observer_contexts(observer_type=result_codes.DEVICE_OBSERVER)
    assert len(observers) == 1
    device = observers[0].observer_identifying_attributes
    assert device.uid == algorithm.device_uid
    assert device.manufacturer_name == "dicom-node"
    assert device.model_name == "generic-demo"

    planar = report.get_planar_roi_measurement_groups()
    image_level = report.get_image_measurement_groups()
    # the box and the present "mass" are planar ROIs; the absent "nodule" is image level
    assert len(planar) == 2 and len(image_level) == 1
    groups = planar + image_level
    by_uid = {str(g.tracking_uid): g for g in groups}
    assert len(by_uid) == 3, "tracking UIDs are unique"
    assert set(by_uid) == {finding_tracking_uid(JOB, i) for i in range(3)}

    for i, finding in enumerate(findings):
        group = by_uid[finding_tracking_uid(JOB, i)]
        assert group.tracking_identifier == f"{finding.label} #{i + 1}"
        assert _code_of(group.finding_type) == (finding.code.value, finding.code.scheme)

        (certainty,) = group.get_measurements(name=result_codes.CERTAINTY_OF_FINDING)
        assert certainty.value == pytest.approx(finding.probability * 100.0)
        assert certainty.unit.value == "%" and certainty.unit.scheme_designator == "UCUM"
        assert [r.referenced_sop_instance_uid for r in certainty.referenced_images] == [
            ct_header.SOPInstanceUID
        ]
        assert [r.referenced_sop_class_uid for r in certainty.referenced_images] == [
            ct_header.SOPClassUID
        ]

        (presence,) = group.get_qualitative_evaluations()
        assert _code_of(presence.name) == (finding.code.value, finding.code.scheme)
        assert _code_of(presence.value) == (PRESENT if finding.present else ABSENT)

        sites = group.finding_sites
        if finding.finding_site is None:
            assert sites == []
        else:
            assert [_code_of(s.value) for s in sites] == [(LUNG.value, LUNG.scheme)]
            lat = sites[0].laterality
            if finding.laterality is None:
                assert lat is None
            else:
                assert _code_of(lat) == (RIGHT.value, RIGHT.scheme)

        # Algorithm identification (TID 4019) in every group.
        names = [
            item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT"
            and item.ConceptNameCodeSequence[0].CodeValue in ("111001", "111003")
        ]
        assert names == ["generic-demo", "0.1.0"]

    # The box: TID 1410 with a closed 5-point POLYLINE in pixel coordinates.
    box = findings[0].box
    assert box is not None
    roi_group = planar[0]
    assert roi_group.tracking_uid == finding_tracking_uid(JOB, 0)
    roi = roi_group.roi
    assert roi is not None
    assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    assert _code_of(roi.name) == ("111030", "DCM")
    expected = np.array(
        [
            [box.x0, box.y0],
            [box.x1, box.y0],
            [box.x1, box.y1],
            [box.x0, box.y1],
            [box.x0, box.y0],
        ]
    )
    np.testing.assert_allclose(roi.value, expected)
    source = roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == ct_header.SOPInstanceUID
    assert source.ReferencedSOPClassUID == ct_header.SOPClassUID

    # A present finding without a box: its region is the whole image it was inferred from.
    mass = by_uid[finding_tracking_uid(JOB, 2)]
    rows, cols = int(ct_header.Rows), int(ct_header.Columns)
    whole = [[0, 0], [cols, 0], [cols, rows], [0, rows], [0, 0]]
    np.testing.assert_allclose(mass.roi.value, whole)

    # An absent finding without a box references its images at group level (TID 1501).
    nodule = by_uid[finding_tracking_uid(JOB, 1)]
    assert [s.referenced_sop_instance_uid for s in nodule.source_images] == [
        ct_header.SOPInstanceUID
    ]

    # Every certainty is placed on its image (what OHIF needs to open, draw and track it):
    # INFERRED FROM an SCOORD selected from the image, equal to the region where there is one.
    for i in range(len(findings)):
        group = by_uid[finding_tracking_uid(JOB, i)]
        (num,) = [item for item in group[0].ContentSequence if item.ValueType == "NUM"]
        (scoord,) = [item for item in num.ContentSequence if item.ValueType == "SCOORD"]
        assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
        placed = np.reshape(np.asarray(scoord.GraphicData, dtype=float), (-1, 2))
        selected = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        assert selected.ReferencedSOPInstanceUID == ct_header.SOPInstanceUID
        region = getattr(group, "roi", None)
        np.testing.assert_allclose(placed, region.value if region is not None else whole)

    # Every group says the finding in words (DCM 121106 "Comment"): OHIF's measurement title.
    for i, finding in enumerate(findings):
        group = by_uid[finding_tracking_uid(JOB, i)]
        (comment,) = [
            item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
        ]
        state = "present" if finding.present else "absent"
        percent = round(finding.probability * 100)
        assert comment == f"{finding.code.meaning}: {state}, certainty {percent} %"


def test_sr_uids_follow_the_job_key(ct_header: Dataset, algorithm: AlgorithmInfo) -> None:
    findings = _ct_findings(ct_header)

    def uids(job_key: str) -> tuple[str, str, list[str]]:
        sr = build_sr(findings, [ct_header], algorithm, job_key=job_key, series_number=5)
        report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
        groups = report.get_planar_roi_measurement_groups() + report.get_image_measurement_groups()
        return sr.SeriesInstanceUID, sr.SOPInstanceUID, sorted(str(g.tracking_uid) for g in groups)

    first, again, other = uids(JOB), uids(JOB), uids(JOB + "-rerun")
    assert first == again, "a resend must replace, not duplicate"
    assert first[0] != other[0] and first[1] != other[1]
    assert not set(first[2]) & set(other[2])


def test_sr_mr_and_dx_sources(
    tmp_path: Path, mr_header: Dataset, dx: Dataset, algorithm: AlgorithmInfo
) -> None:
    # MR: a finding naming no image references every source.
    sr = build_sr(
        [Finding(label="lesion", code=LESION, probability=0.31, present=False)],
        [mr_header],
        algorithm,
        job_key="mr-job",
        series_number=7,
        instance_number=3,
    )
    path = tmp_path / "sr_mr.dcm"
    ds = _write_read(sr, path)
    _assert_valid(path)
    assert ds.InstanceNumber == 3
    assert ds.StudyInstanceUID == mr_header.StudyInstanceUID
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    (certainty,) = group.get_measurements(name=result_codes.CERTAINTY_OF_FINDING)
    assert certainty.value == pytest.approx(31.0)
    assert [r.referenced_sop_instance_uid for r in certainty.referenced_images] == [
        mr_header.SOPInstanceUID
    ]

    # DX: two images of one study, a box with laterality on the left one.
    right = _make_dx("R")
    sources = [dx, right]
    finding = Finding(
        label="mass",
        code=MASS,
        probability=0.91,
        present=True,
        finding_site=BREAST,
        laterality=LEFT,
        box=Box(str(dx.SOPInstanceUID), 1.0, 2.0, 30.0, 40.0),
    )
    sr = build_sr([finding], sources, algorithm, job_key="dx-job", series_number=8)
    path = tmp_path / "sr_dx.dcm"
    ds = _write_read(sr, path)
    _assert_valid(path)
    evidence = {
        ref.ReferencedSOPInstanceUID
        for series in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {dx.SOPInstanceUID, right.SOPInstanceUID}
    (roi_group,) = hd.sr.srread(path).content.get_planar_roi_measurement_groups(
        referenced_sop_instance_uid=str(dx.SOPInstanceUID)
    )
    assert _code_of(roi_group.finding_sites[0].laterality) == (LEFT.value, LEFT.scheme)
    (certainty,) = roi_group.get_measurements()
    assert [r.referenced_sop_instance_uid for r in certainty.referenced_images] == [
        dx.SOPInstanceUID
    ]


def test_sr_rejects_bad_input(
    ct_header: Dataset, mr_header: Dataset, algorithm: AlgorithmInfo
) -> None:
    uid = str(ct_header.SOPInstanceUID)

    def build(findings: list[Finding], sources: list[Dataset] | None = None) -> None:
        build_sr(findings, sources or [ct_header], algorithm, job_key=JOB, series_number=1)

    with pytest.raises(ValueError, match="no findings"):
        build([])
    with pytest.raises(ValueError, match="studies"):
        build([Finding("a", LESION, 0.5, True)], [ct_header, mr_header])
    with pytest.raises(ValueError, match="not among the sources"):
        build([Finding("a", LESION, 0.5, True, source_sop_instance_uids=("1.2.3",))])
    with pytest.raises(ValueError, match="outside"):
        build([Finding("a", LESION, 0.5, True, box=Box(uid, 0, 0, 129, 10))])
    with pytest.raises(ValueError, match="x0 < x1"):
        build([Finding("a", LESION, 0.5, True, box=Box(uid, 20, 0, 10, 10))])
    with pytest.raises(ValueError, match="finding_site"):
        build([Finding("a", LESION, 0.5, True, laterality=LEFT)])


# ---------------------------------------------------------------------------
# Secondary Capture heatmaps
# ---------------------------------------------------------------------------


def _check_sc(ds: Dataset, source: Dataset, algorithm: AlgorithmInfo, series_uid: str) -> None:
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.Rows, ds.Columns) == (source.Rows, source.Columns)
    assert ds.SamplesPerPixel == 3 and ds.PhotometricInterpretation == "RGB"
    assert ds.BitsAllocated == 8
    assert ds.pixel_array.shape == (source.Rows, source.Columns, 3)
    assert ds.SeriesInstanceUID == series_uid
    assert ds.SeriesDescription == algorithm.series_description("SC")
    assert NOT_FOR_DIAGNOSTIC_USE in ds.SeriesDescription
    assert ds.BurnedInAnnotation == "NO"
    for keyword in PATIENT_STUDY_KEYWORDS:
        assert ds.get(keyword) == source.get(keyword), keyword
    (ref,) = ds.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == source.SOPClassUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert any(
        item.get("DeviceUID") == algorithm.device_uid for item in ds.ContributingEquipmentSequence
    )


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_heatmap_sc_ct_mr(
    tmp_path: Path, name: str, algorithm: AlgorithmInfo, request: pytest.FixtureRequest
) -> None:
    source: Dataset = request.getfixturevalue("ct" if name.startswith("CT") else "mr")
    rows, cols = int(source.Rows), int(source.Columns)
    heatmap = _blob(rows, cols, rows / 2, cols / 3, rows / 10)
    series_uid = heatmap_series_instance_uid(JOB)
    assert series_uid == heatmap_series_instance_uid(JOB) != sr_series_instance_uid(JOB)
    sc = build_heatmap_sc(
        source,
        heatmap,
        algorithm,
        job_key=JOB,
        series_instance_uid=series_uid,
        series_number=902,
        instance_number=4,
        label="lesion",
    )
    path = tmp_path / f"sc_{name}"
    ds = _write_read(sc, path)
    _assert_valid(path)
    _check_sc(ds, source, algorithm, series_uid)
    assert ds.InstanceNumber == 4 and ds.SeriesNumber == 902
    assert ds.SOPInstanceUID == heatmap_sop_instance_uid(JOB, source.SOPInstanceUID, "lesion")
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(
        [float(v) for v in source.PixelSpacing]
    )
    # Axial images: rows run to the patient's left, columns to posterior.
    assert list(ds.PatientOrientation) == ["L", "P"]
    # Laterality unknown in the source: empty series Laterality, no Image Laterality.
    assert "ImageLaterality" not in ds
    assert "Laterality" in ds and not ds.Laterality

    rgb = ds.pixel_array.astype(int)
    cold = heatmap < 0.05
    np.testing.assert_array_equal(rgb[cold][:, 0], rgb[cold][:, 1])
    np.testing.assert_array_equal(rgb[cold][:, 1], rgb[cold][:, 2])
    hot = heatmap > 0.95
    assert hot.any()
    assert (rgb[hot][:, 0] > rgb[hot][:, 2] + 40).all(), "hot spots are red"


def test_heatmap_sc_dx_copies_laterality_and_orientation(
    tmp_path: Path, dx: Dataset, algorithm: AlgorithmInfo
) -> None:
    heatmap = _blob(int(dx.Rows), int(dx.Columns), 20, 20, 6)
    sc = build_heatmap_sc(
        dx,
        heatmap,
        algorithm,
        job_key=JOB,
        series_instance_uid=result_uid("sc-series", JOB),
        series_number=902,
        instance_number=1,
    )
    path = tmp_path / "sc_dx.dcm"
    ds = _write_read(sc, path)
    _assert_valid(path)
    _check_sc(ds, dx, algorithm, result_uid("sc-series", JOB))
    assert ds.ImageLaterality == "L"
    assert "Laterality" not in ds
    assert list(ds.PatientOrientation) == ["A", "FR"]
    assert "PixelSpacing" not in ds, "ImagerPixelSpacing is not a calibrated Pixel Spacing"


def test_heatmap_sc_uids(ct: Dataset, algorithm: AlgorithmInfo) -> None:
    heatmap = _blob(int(ct.Rows), int(ct.Columns), 64, 64, 10)

    def uid(job_key: str, label: str) -> str:
        return build_heatmap_sc(
            ct,
            heatmap,
            algorithm,
            job_key=job_key,
            series_instance_uid="1.2.3",
            series_number=1,
            instance_number=1,
            label=label,
        ).SOPInstanceUID

    assert uid(JOB, "a") == uid(JOB, "a")
    assert len({uid(JOB, "a"), uid(JOB, "b"), uid(JOB + "x", "a")}) == 3


def test_heatmap_sc_rejects_bad_heatmaps(ct: Dataset, algorithm: AlgorithmInfo) -> None:
    def build(heatmap: np.ndarray) -> None:
        build_heatmap_sc(
            ct,
            heatmap,
            algorithm,
            job_key=JOB,
            series_instance_uid="1.2.3",
            series_number=1,
            instance_number=1,
        )

    with pytest.raises(ValueError, match="does not match the source"):
        build(np.zeros((64, 64), np.float32))
    bad = np.zeros((128, 128), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build(bad)
    with pytest.raises(ValueError, match="normalise"):
        build(np.full((128, 128), 3.0, np.float32))
    with pytest.raises(ValueError, match="float"):
        build(np.zeros((128, 128), np.uint8))


def test_overlay_rgb() -> None:
    gray = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    heat = np.zeros_like(gray)
    heat[5:10, 5:10] = 1.0
    heat[12:14, 12:14] = 0.1  # below the threshold
    out = overlay_rgb(gray, heat)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    grey = np.round(gray * 255).astype(np.uint8)
    mask = heat < 0.25
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel][mask], grey[mask])
    assert (out[5:10, 5:10, 0].astype(int) > out[5:10, 5:10, 2].astype(int)).all()
    with pytest.raises(ValueError, match="differs"):
        overlay_rgb(gray, heat[:, :10])


def _build_sc(
    source: Dataset,
    algorithm: AlgorithmInfo,
    annotations: list[Annotation],
    heat: np.ndarray | None = None,
    unit: str | None = None,
) -> Dataset:
    rows, cols = int(source.Rows), int(source.Columns)
    return build_heatmap_sc(
        source,
        _blob(rows, cols, rows / 2, cols / 2, rows / 8) if heat is None else heat,
        algorithm,
        job_key=JOB,
        series_instance_uid=heatmap_series_instance_uid(JOB),
        series_number=902,
        instance_number=1,
        label="lesion",
        annotations=annotations,
        unit=unit,
    )


def test_heatmap_sc_draws_boxes_and_labels(
    tmp_path: Path, ct: Dataset, algorithm: AlgorithmInfo
) -> None:
    """Outline on the box edges, tag above it, every other pixel as without boxes."""
    uid = str(ct.SOPInstanceUID)
    plain = _build_sc(ct, algorithm, []).pixel_array.astype(int)
    annotated = Annotation(Box(uid, 40, 40, 90, 80), "lesion 87%")
    sc = _build_sc(ct, algorithm, [annotated])
    path = tmp_path / "sc_boxes.dcm"
    ds = _write_read(sc, path)
    _assert_valid(path)
    _check_sc(ds, ct, algorithm, heatmap_series_instance_uid(JOB))  # Burned In Annotation NO
    assert "1 box with labels drawn" in ds.DerivationDescription
    assert ds.SOPInstanceUID == heatmap_sop_instance_uid(JOB, uid, "lesion"), "boxes keep the UID"

    rgb = ds.pixel_array.astype(int)
    colour = np.array(BOX_COLOUR)
    # x1/y1 are exclusive edges: the box covers columns 40..89 and rows 40..79 (above the
    # footer band, which covers at most the bottom quarter).
    for edge in (rgb[40, 40:90], rgb[79, 40:90], rgb[40:80, 40], rgb[40:80, 89]):
        assert (edge == colour).all()
    np.testing.assert_array_equal(rgb[44:76, 44:86], plain[44:76, 44:86])  # inside
    changed = (rgb != plain).any(axis=-1)
    assert not changed[:, :40].any() and not changed[80:].any()  # left of and below the box
    assert not changed[40:, 90:].any()  # right of the box, below the tag
    assert not changed[:15].any()  # well above the tag
    tag = rgb[18:40, 40:90]
    assert changed[18:40, 40:90].mean() > 0.5, "a filled tag sits just above the box"
    # Anti-aliased white text on a black tag.
    assert (tag == 0).all(axis=-1).any() and (tag.min(axis=-1) > 180).any(), "white on black"

    # Empty text: the box without a tag.
    box_only = _build_sc(ct, algorithm, [Annotation(Box(uid, 40, 40, 90, 80), "")])
    changed = (box_only.pixel_array.astype(int) != plain).any(axis=-1)
    assert changed[40, 40:90].all() and not changed[:40].any()
    assert box_only.DerivationDescription.count("1 box drawn") == 1


def test_heatmap_sc_clips_boxes_at_the_image_edge(
    tmp_path: Path, dx: Dataset, algorithm: AlgorithmInfo
) -> None:
    """A box over the border is clipped; with no room above, the tag goes inside."""
    uid = str(dx.SOPInstanceUID)
    rows, cols = int(dx.Rows), int(dx.Columns)
    plain = _build_sc(dx, algorithm, []).pixel_array.astype(int)
    wide = "cardiac_hypertrophy 87% (a caption wider than the image)"
    sc = _build_sc(dx, algorithm, [Annotation(Box(uid, -10.5, -5, 25.2, rows + 30), wide)])
    path = tmp_path / "sc_clipped.dcm"
    ds = _write_read(sc, path)
    _assert_valid(path)
    rgb = ds.pixel_array.astype(int)
    colour = np.array(BOX_COLOUR)
    assert (rgb[20:, 0] == colour).all(), "left edge clipped to column 0"
    assert (rgb[rows - 1, :26] == colour).all(), "bottom edge clipped to the last row"
    assert (rgb[20:, 25] == colour).all(), "right edge: the pixel holding x1 = 25.2"
    assert (rgb[:, 30:] == plain[:, 30:])[20:].all()
    changed = (rgb != plain).any(axis=-1)
    assert changed[3:8, 26:].all(), "tag inside the box at the top, shifted to fit"
    assert (rgb[3:8, :cols] == 0).all(axis=-1).any(), "black tag"


def test_heatmap_sc_rejects_bad_boxes(ct: Dataset, algorithm: AlgorithmInfo) -> None:
    uid = str(ct.SOPInstanceUID)
    other = "1.2.826.0.1.3680043.8.498.1"
    with pytest.raises(ValueError, match=re.escape(other)) as info:
        _build_sc(ct, algorithm, [Annotation(Box(other, 1, 1, 5, 5), "nodule 40%")])
    assert uid in str(info.value), "the error names both images"
    with pytest.raises(ValueError, match="outside"):
        _build_sc(ct, algorithm, [Annotation(Box(uid, 200, 1, 250, 5), "x")])
    with pytest.raises(ValueError, match="x1 < x0"):
        _build_sc(ct, algorithm, [Annotation(Box(uid, 50, 1, 5, 5), "x")])
    with pytest.raises(ValueError, match="NaN"):
        _build_sc(ct, algorithm, [Annotation(Box(uid, float("nan"), 1, 5, 5), "x")])
    with pytest.raises(TypeError, match="Annotation"):
        _build_sc(ct, algorithm, [Box(uid, 1, 1, 5, 5)])  # type: ignore[list-item]


def test_heatmap_annotations_default_and_tuple() -> None:
    array = np.zeros((4, 4), np.float32)
    assert Heatmap(Path("a.dcm"), "1.2", array).annotations == ()
    note = Annotation(Box("1.2", 0, 0, 1, 1), "x 1%")
    heatmap = Heatmap(Path("a.dcm"), "1.2", array, annotations=[note])  # type: ignore[arg-type]
    assert heatmap.annotations == (note,)


def test_dciodvfy_helper_reports_errors(ct: Dataset, algorithm: AlgorithmInfo) -> None:
    """The helper must see real errors, or the zero-error assertions above prove nothing."""
    sc = build_heatmap_sc(
        ct,
        _blob(128, 128, 64, 64, 10),
        algorithm,
        job_key=JOB,
        series_instance_uid="1.2.3",
        series_number=1,
        instance_number=1,
    )
    assert dciodvfy_errors(sc) == []
    del sc.SeriesNumber  # Type 2 in General Series
    del sc.ConversionType  # Type 1 in SC Equipment
    errors = dciodvfy_errors(sc)
    assert any("ConversionType" in e or "Conversion Type" in e for e in errors), errors


def test_heatmap_footer_names_the_model_its_use_and_its_metrics(
    tmp_path: Path, ct: Dataset, algorithm: AlgorithmInfo
) -> None:
    """The words a radiologist reads on the image itself, in the bottom rows only."""
    sens = Estimate(value=0.9, ci_low=0.8, ci_high=0.97)
    quoted = dataclasses.replace(
        algorithm,
        synthetic=True,
        performance=(
            LabelPerformance(
                label="lesion",
                unit="image",
                split="held_out_test",
                n=50,
                metrics={"sensitivity": sens},
            ),
        ),
    )
    assert footer_texts(quoted, "lesion", "image") == [
        "AI generic-demo 0.1.0 | NOT FOR DIAGNOSTIC USE | synthetic demo weights",
        "lesion per image, held-out n=50: sensitivity 0.90 (0.80-0.97)",
    ]
    assert footer_texts(quoted, "lesion", "study")[1] == (
        "lesion: no metrics per study in the model card"
    )
    validated = dataclasses.replace(quoted, for_diagnostic_use=True, synthetic=False)
    assert footer_texts(validated, "", None) == ["AI generic-demo 0.1.0 | preliminary"]

    rows, cols = int(ct.Rows), int(ct.Columns)
    heat = _blob(rows, cols, rows / 4, cols / 2, rows / 10)
    sc = _build_sc(ct, quoted, [], heat=heat, unit="image")
    path = tmp_path / "footer.dcm"
    rgb = _write_read(sc, path).pixel_array.astype(int)
    _assert_valid(path)
    plain = overlay_rgb(display_pixels(ct), heat).astype(int)
    changed = (rgb != plain).any(axis=-1)
    band = rows - int(FOOTER_MAX_SHARE * rows)
    assert changed[band:].any() and not changed[:band].any(), (
        "the footer stays in the bottom quarter"
    )
    bottom = rgb[band:]
    assert (bottom == 0).all(axis=-1).mean() > 0.3, "a black band"
    assert (bottom.min(axis=-1) > 180).any(), "with white text"


def test_the_images_a_result_does_not_cover_are_named_and_the_text_stays_bounded(
    algorithm: AlgorithmInfo,
) -> None:
    from dicom_node.results.sr import not_analysed_text

    assert not_analysed_text(algorithm, []) is None
    text = not_analysed_text(algorithm, [("1.2.3", "metal implant suspected")])
    assert text == (
        f"Not analysed by {algorithm.name} {algorithm.version}, so not covered by the findings "
        "above: 1 image(s): 1.2.3: metal implant suspected"
    )
    many = [(f"1.2.{i}", "poor image quality (noise 0.090 of the grey range)") for i in range(60)]
    long = not_analysed_text(algorithm, many)
    assert long is not None and len(long) == 1024 and long.endswith("...")
    assert "60 image(s)" in long
