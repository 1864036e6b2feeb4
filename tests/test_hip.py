"""Seed 003 building blocks: VOC files, DEXA pairing, sides, crops and mirroring, guards,
reading, the phantoms, the augmentation, the card's localiser check and a few training steps."""

from __future__ import annotations

import csv
import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from pipelines.card import CardError, load_card
from pipelines.common.augment import AugmentSpec, image_augment
from pipelines.common.radiograph import RadiographError
from pipelines.hip.codes import LEFT, RIGHT, label_of
from pipelines.hip.dexa import (
    AMBIGUOUS,
    NO_DEXA,
    NO_PATIENT_ID,
    NOT_A_HIP_RADIOGRAPH,
    NOT_DICOM,
    OUTSIDE_WINDOW,
    UNREADABLE_DATE,
    DexaError,
    DexaRecord,
    RadiographHeader,
    pair_dexa,
    pair_records,
    read_dexa_csv,
    read_labels,
    write_labels,
    write_unpaired,
)
from pipelines.hip.radiograph import (
    header_laterality,
    localiser_image,
    not_a_hip_radiograph,
    read_hip_radiograph,
    rows_run_to_patient_right,
)
from pipelines.hip.sides import (
    Side,
    assign_sides,
    crop_region,
    crop_to_source,
    extract_crop,
    is_mirrored,
    paste_heatmap,
    side_of_box,
)
from pipelines.hip.synth import (
    LEFT_HIP,
    PELVIS,
    RIGHT_HIP,
    cortex_thickness,
    draw_anatomy,
    render_pelvis,
    trabecular_fraction,
    write_hip_dataset,
)
from pipelines.hip.voc import (
    VocAnnotation,
    VocError,
    VocObject,
    read_voc,
    read_voc_folder,
    write_voc,
)

from dicom_validation import dciodvfy_errors


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory):
    """Forty patients' phantoms at 192 px: pelvis and single-hip, flipped and MONOCHROME1 ones."""
    return write_hip_dataset(
        tmp_path_factory.mktemp("hip-unit"),
        patients=40,
        seed=11,
        size=192,
        single_hip_fraction=0.3,
        flipped_fraction=0.3,
        monochrome1_fraction=0.3,
    )


# -- LabelImg Pascal VOC --------------------------------------------------------------------


def test_voc_round_trip_keeps_every_field(tmp_path: Path) -> None:
    annotation = VocAnnotation(
        filename="hip_0001.png",
        width=384,
        height=288,
        depth=1,
        folder="images",
        path="/data/images/hip_0001.png",
        objects=(
            VocObject("femoral_neck", 60, 120, 98, 161),
            VocObject("femoral_neck", 280, 118, 320, 160, difficult=True),
            VocObject("implant", 1, 1, 384, 288, truncated=True),
        ),
    )
    write_voc(annotation, tmp_path / "hip_0001.xml")
    assert read_voc(tmp_path / "hip_0001.xml") == annotation
    # LabelImg's layout: tab indentation, the fields it writes
    text = (tmp_path / "hip_0001.xml").read_text()
    assert "\t<size>\n\t\t<width>384</width>" in text and "<segmented>0</segmented>" in text


def test_voc_boxes_are_one_based_inclusive_pixels() -> None:
    # pixels 11..20 (1-based) are the continuous interval [10, 20]
    obj = VocObject("femoral_neck", 11, 21, 20, 40)
    assert obj.box == (10.0, 20.0, 20.0, 40.0)
    assert VocObject.from_box("femoral_neck", obj.box, width=100, height=100) == obj
    # clamped to the image, never inverted
    clamped = VocObject.from_box("n", (-3.2, -1.0, 250.0, 99.6), width=100, height=100)
    assert (clamped.xmin, clamped.ymin, clamped.xmax, clamped.ymax) == (1, 1, 100, 100)


def _voc_text(box: str = "<xmin>5</xmin><ymin>6</ymin><xmax>50</xmax><ymax>60</ymax>") -> str:
    return (
        "<annotation><filename>a.png</filename><size><width>100</width><height>80</height>"
        f"<depth>1</depth></size><object><name>femoral_neck</name><bndbox>{box}</bndbox>"
        "</object></annotation>"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<annotation><filename>a.png", "not well-formed XML"),
        ("<voc/>", "root element is <voc>"),
        (_voc_text().replace("<filename>a.png</filename>", ""), "<filename> is missing"),
        (_voc_text().replace("<width>100</width>", ""), "<size><width> is missing"),
        (_voc_text().replace("<width>100</width>", "<width>wide</width>"), "'wide', not a number"),
        (_voc_text().replace("<name>femoral_neck</name>", ""), "<object> 1 <name> is missing"),
        (
            _voc_text("<xmin>5</xmin><ymin>6</ymin><xmax>150</xmax><ymax>60</ymax>"),
            r"<object> 1 \(femoral_neck\) <bndbox><xmax> 150 is outside 1..100",
        ),
        (
            _voc_text("<xmin>0</xmin><ymin>6</ymin><xmax>50</xmax><ymax>60</ymax>"),
            "<xmin> 0 is outside 1..100 .LabelImg writes 1-based",
        ),
        (
            _voc_text("<xmin>50</xmin><ymin>6</ymin><xmax>5</xmax><ymax>60</ymax>"),
            "is inverted: xmin 50 xmax 5",
        ),
        (_voc_text("<xmin>5</xmin><ymin>6</ymin><xmax>50</xmax>"), "<bndbox><ymax> is missing"),
    ],
)
def test_voc_errors_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broken.xml"
    path.write_text(text)
    with pytest.raises(VocError, match=message) as info:
        read_voc(path)
    assert str(path) in str(info.value)


def test_voc_folder_pairs_by_image_stem_and_refuses_two_files_for_one(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write_voc(VocAnnotation("hip_7.png", 10, 10), tmp_path / "a" / "x.xml")
    write_voc(VocAnnotation("hip_8.png", 10, 10), tmp_path / "hip_8.xml")
    assert sorted(read_voc_folder(tmp_path)) == ["hip_7", "hip_8"]
    write_voc(VocAnnotation("hip_7.jpg", 10, 10), tmp_path / "y.xml")
    with pytest.raises(VocError, match="both annotate an image named 'hip_7'"):
        read_voc_folder(tmp_path)
    with pytest.raises(VocError, match="does not exist"):
        read_voc_folder(tmp_path / "missing")
    with pytest.raises(VocError, match="no such file"):
        read_voc(tmp_path / "missing.xml")


# -- DEXA pairing ----------------------------------------------------------------------------


def _header(file: str, patient: str = "P1", date: dt.date | None = dt.date(2021, 6, 1)):
    return RadiographHeader(file, f"1.2.3.{file}", patient, date)


def _dexa(patient: str, date: dt.date, t: float, row: int = 2) -> DexaRecord:
    return DexaRecord(row, patient, date, t)


def test_label_is_the_who_rule_on_the_t_score() -> None:
    assert label_of(-2.5) == 1 and label_of(-2.5000000001) == 1 and label_of(-3.1) == 1
    assert label_of(-2.4) == 0 and label_of(1.2) == 0
    with pytest.raises(ValueError, match="finite"):
        label_of(float("nan"))


def test_pairing_takes_the_nearest_dexa_within_the_window() -> None:
    day = dt.date(2021, 6, 1)
    records = [
        _dexa("P1", day - dt.timedelta(days=100), -3.0),  # nearer: osteoporosis
        _dexa("P1", day + dt.timedelta(days=150), -1.0),
        _dexa("P2", day - dt.timedelta(days=182), -2.5),  # exactly at the window: paired
        _dexa("P3", day + dt.timedelta(days=183), -2.6),  # one day beyond
    ]
    report = pair_records(
        [_header("a", "P1"), _header("b", "P2"), _header("c", "P3")], records, window_days=182
    )
    assert [(p.file, p.label, p.t_score, p.days_apart) for p in report.paired] == [
        ("a", 1, -3.0, -100),
        ("b", 1, -2.5, -182),
    ]
    (out,) = report.unpaired
    assert (out.file, out.reason) == ("c", OUTSIDE_WINDOW)
    assert "183 days away (window +-182 days)" in out.detail
    # a configurable window
    wide = pair_records([_header("c", "P3")], records, window_days=200)
    assert [p.file for p in wide.paired] == ["c"]


def test_two_dexas_equally_near_pair_only_when_they_agree() -> None:
    day = dt.date(2021, 6, 1)
    before, after = day - dt.timedelta(days=30), day + dt.timedelta(days=30)
    agree = [_dexa("P1", before, -2.0), _dexa("P1", after, -1.5)]
    report = pair_records([_header("a")], agree)
    assert [(p.dexa_date, p.label) for p in report.paired] == [(before, 0)]
    disagree = [_dexa("P1", before, -2.0), _dexa("P1", after, -2.7)]
    (out,) = pair_records([_header("a")], disagree).unpaired
    assert out.reason == AMBIGUOUS and "T-scores -2, -2.7" in out.detail


def test_pairing_reports_each_reason_without_patient_ids(caplog: pytest.LogCaptureFixture) -> None:
    headers = [
        _header("no-dexa", "SECRET-A"),
        _header("no-id", ""),
        _header("no-date", "SECRET-B", None),
        RadiographHeader(
            "chest", "1.2.9", "SECRET-B", dt.date(2021, 1, 1), (NOT_A_HIP_RADIOGRAPH, "x")
        ),
    ]
    with caplog.at_level(logging.DEBUG):
        report = pair_records(headers, [_dexa("SECRET-B", dt.date(2021, 1, 1), -3.0)])
    assert {u.file: u.reason for u in report.unpaired} == {
        "no-dexa": NO_DEXA,
        "no-id": NO_PATIENT_ID,
        "no-date": UNREADABLE_DATE,
        "chest": NOT_A_HIP_RADIOGRAPH,
    }
    counts = report.counts()
    assert counts[NO_DEXA] == counts[NO_PATIENT_ID] == counts[UNREADABLE_DATE] == 1
    text = report.summary() + caplog.text + " ".join(u.detail for u in report.unpaired)
    assert "SECRET" not in text


def test_dexa_csv_rows_are_read_checked_and_named_by_row(tmp_path: Path) -> None:
    path = tmp_path / "dexa.csv"
    path.write_text(
        "\ufeffPatientID,Date,NeckT\nSECRET-1,2021-01-02,-2.6\nSECRET-2,20210105,\n"
        ",2021/01/06,-1\nSECRET-3,2021/01/07,0.4\n"
    )
    with pytest.raises(DexaError, match=r"no column\(s\) \['patient_id'"):
        read_dexa_csv(path)
    records, ignored = read_dexa_csv(
        path, patient_column="PatientID", date_column="Date", t_score_column="NeckT"
    )
    assert [(r.row, r.patient_id, r.date, r.t_score) for r in records] == [
        (2, "SECRET-1", dt.date(2021, 1, 2), -2.6),
        (5, "SECRET-3", dt.date(2021, 1, 7), 0.4),
    ]
    assert ignored == 2  # no T-score, no Patient ID
    path.write_text(
        "patient_id,scan_date,neck_t_score\nSECRET-1,2021-13-40,-1\nSECRET-2,2021-01-01,low\n"
    )
    with pytest.raises(DexaError) as info:
        read_dexa_csv(path)
    assert "row 2: scan_date '2021-13-40' is not a date" in str(info.value)
    assert "row 3: neck_t_score 'low' is not a number" in str(info.value)
    assert "SECRET" not in str(info.value)


def test_pair_dexa_reads_headers_and_writes_labels_and_unpaired(phantoms, tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    folder.mkdir()
    image = phantoms.images[0]
    (folder / "a.dcm").write_bytes(image.path.read_bytes())
    (folder / "notes.txt").write_text("not dicom")
    ds = pydicom.dcmread(image.path)
    ds.BodyPartExamined = "CHEST"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.save_as(folder / "chest.dcm")
    dexa = tmp_path / "dexa.csv"
    dexa.write_text(
        f"patient_id,scan_date,neck_t_score\n{image.patient_id},{image.study_date},-2.7\n"
    )
    report = pair_dexa(folder, dexa)
    (paired,) = report.paired
    assert (paired.file, paired.sop_instance_uid, paired.label) == (
        "a.dcm",
        image.sop_instance_uid,
        1,
    )
    assert {u.file: u.reason for u in report.unpaired} == {
        "chest.dcm": NOT_A_HIP_RADIOGRAPH,
        "notes.txt": NOT_DICOM,
    }
    write_labels(report, tmp_path / "labels.csv")
    write_unpaired(report, tmp_path / "unpaired.csv")
    labels = read_labels(tmp_path / "labels.csv")
    assert labels[image.sop_instance_uid].label == 1
    assert labels[image.sop_instance_uid].image_date == image.study_date
    written = (tmp_path / "labels.csv").read_text() + (tmp_path / "unpaired.csv").read_text()
    assert image.patient_id not in written  # the labels carry no patient identifier
    with open(tmp_path / "unpaired.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["file"]: r["reason"] for r in rows} == {
        "chest.dcm": NOT_A_HIP_RADIOGRAPH,
        "notes.txt": NOT_DICOM,
    }


def test_read_labels_refuses_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("sop_instance_uid,label\n1.2,1\n1.2,0\n")
    with pytest.raises(DexaError, match="row 3: SOP Instance UID 1.2 repeats"):
        read_labels(path)
    path.write_text("sop_instance_uid,label\n1.2,yes\n")
    with pytest.raises(DexaError, match="label 'yes' is not 0 or 1"):
        read_labels(path)
    path.write_text("uid,label\n")
    with pytest.raises(DexaError, match="no column 'sop_instance_uid'"):
        read_labels(path)


def test_synthetic_dexa_export_pairs_to_the_rendered_t_scores(phantoms) -> None:
    report = pair_dexa(phantoms.dicom_dir, phantoms.dexa_csv)
    truth = {image.sop_instance_uid: image for image in phantoms.images}
    assert report.paired and report.unpaired
    for pairing in report.paired:
        assert pairing.label == truth[pairing.sop_instance_uid].label
        assert pairing.t_score == truth[pairing.sop_instance_uid].t_score
    for left in report.unpaired:
        image = truth[left.sop_instance_uid]
        distances = [
            abs((d - image.study_date).days) for d in phantoms.dexa_dates[image.patient_id]
        ]
        assert left.reason == (OUTSIDE_WINDOW if distances else NO_DEXA)
        assert not distances or min(distances) > 182
    assert len(report.paired) + len(report.unpaired) == len(phantoms.images)


# -- sides, crops, mirroring and the way back -----------------------------------------------


def test_side_follows_the_display_convention_and_patient_orientation() -> None:
    left_half, right_half = (10.0, 5.0, 30.0, 20.0), (70.0, 5.0, 90.0, 20.0)
    # AP as usual: the patient's right is on the image's left
    assert side_of_box(left_half, 100, flipped=False) is Side.RIGHT
    assert side_of_box(right_half, 100, flipped=False) is Side.LEFT
    # rows running to the patient's right: the image is flipped
    assert side_of_box(left_half, 100, flipped=True) is Side.LEFT
    boxes = [left_half, right_half, (12.0, 6.0, 28.0, 21.0)]
    assert assign_sides(boxes, [0.9, 0.8, 0.95], 100, flipped=False, laterality=None) == {
        Side.RIGHT: 2,  # the better of the two on the image's left
        Side.LEFT: 1,
    }
    assert assign_sides(boxes, [0.9, 0.8, 0.95], 100, flipped=True, laterality=None) == {
        Side.RIGHT: 1,
        Side.LEFT: 2,
    }
    # a single-hip image says which hip it shows: one neck, wherever it is
    assert assign_sides(boxes, [0.9, 0.99, 0.95], 100, flipped=False, laterality="R") == {
        Side.RIGHT: 1
    }
    assert assign_sides([], [], 100, flipped=False, laterality=None) == {}
    assert Side.RIGHT.code == RIGHT and Side.LEFT.code == LEFT


def test_header_orientation_and_laterality() -> None:
    ds = Dataset()
    assert not rows_run_to_patient_right(ds) and header_laterality(ds) is None
    ds.PatientOrientation = ["R", "F"]
    assert rows_run_to_patient_right(ds)
    ds.PatientOrientation = ["L", "F"]
    assert not rows_run_to_patient_right(ds)
    ds.ImageLaterality = "B"
    ds.Laterality = "L"
    assert header_laterality(ds) == "L"  # B says nothing about one side; Laterality does
    ds.ImageLaterality = "R"
    assert header_laterality(ds) == "R"


def test_right_crops_are_mirrored_unless_the_image_is_flipped() -> None:
    assert is_mirrored(Side.RIGHT, flipped=False) and not is_mirrored(Side.LEFT, flipped=False)
    assert is_mirrored(Side.LEFT, flipped=True) and not is_mirrored(Side.RIGHT, flipped=True)


def test_crop_region_grows_the_box_and_clips_to_the_image() -> None:
    region = crop_region((20.0, 30.0, 40.0, 50.0), 0.25, (100, 80), mirrored=False)
    assert (region.x0, region.y0, region.x1, region.y1) == (15, 25, 45, 55)
    edge = crop_region((2.5, 90.0, 30.0, 100.0), 0.5, (100, 80), mirrored=True)
    assert (edge.x0, edge.y0, edge.x1, edge.y1, edge.mirrored) == (0, 85, 44, 100, True)
    with pytest.raises(ValueError, match="does not overlap"):
        crop_region((200.0, 200.0, 210.0, 210.0), 0.1, (100, 80), mirrored=False)
    with pytest.raises(ValueError, match="margin"):
        crop_region((2.0, 2.0, 5.0, 5.0), -0.1, (100, 80), mirrored=False)


@pytest.mark.parametrize("mirrored", [False, True])
def test_a_point_in_the_crop_maps_back_to_its_source_pixel(mirrored: bool) -> None:
    display = np.zeros((120, 160), dtype=np.float32)
    display[52, 37] = 1.0  # the marker: row 52, column 37
    region = crop_region((30.0, 40.0, 70.0, 80.0), 0.1, display.shape, mirrored=mirrored)
    crop = extract_crop(display, region)
    row, col = np.unravel_index(np.argmax(crop), crop.shape)
    # mirrored: the marker near the region's left edge is near the crop's right edge
    assert (col > crop.shape[1] / 2) == mirrored
    # pixel centres map back to the marker's centre
    x, y = crop_to_source((col + 0.5, row + 0.5), region, crop.shape)
    assert (x, y) == pytest.approx((37.5, 52.5))
    # through a resize to the classifier's input, the mapping holds to a resized pixel
    x, y = crop_to_source(
        ((col + 0.5) * 64 / crop.shape[1], (row + 0.5) * 64 / crop.shape[0]), region, (64, 64)
    )
    assert (x, y) == pytest.approx((37.5, 52.5))


def test_heatmaps_are_mirrored_back_into_their_region() -> None:
    canvas = np.zeros((100, 120), dtype=np.float32)
    right = crop_region((10.0, 20.0, 40.0, 50.0), 0.0, canvas.shape, mirrored=True)
    left = crop_region((80.0, 20.0, 110.0, 50.0), 0.0, canvas.shape, mirrored=False)
    cam = np.zeros((30, 30), dtype=np.float32)
    cam[5, 2] = 1.0  # near the crop's left edge
    paste_heatmap(canvas, right, cam)
    paste_heatmap(canvas, left, cam * 0.5)
    # the mirrored crop's left edge is the region's right edge; the other is as is
    assert canvas[25, 10 + 27] == 1.0 and canvas[25, 80 + 2] == 0.5
    assert np.count_nonzero(canvas) == 2
    with pytest.raises(ValueError, match="does not fit"):
        paste_heatmap(canvas, left, np.zeros((5, 5), dtype=np.float32))


# -- reading and guards ---------------------------------------------------------------------


def _dx(phantoms, **changes: object) -> Dataset:
    ds = pydicom.dcmread(phantoms.images[0].path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"BodyPartExamined": "CHEST"}, "Body Part Examined is CHEST, not the hip or pelvis"),
        ({"ViewPosition": "LL"}, "lateral view (View Position LL)"),
        ({"SeriesDescription": "Hip frog-leg"}, "lateral or frog-leg view (SeriesDescription"),
        ({"ProtocolName": "HIP CROSS TABLE"}, "lateral or frog-leg view (ProtocolName"),
        ({"NumberOfFrames": 2}, "multi-frame object"),
        ({"SamplesPerPixel": 3}, "colour image"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "is not a CR or DX image"),
    ],
)
def test_other_views_and_objects_are_refused(phantoms, changes: dict, reason: str) -> None:
    assert reason in (not_a_hip_radiograph(_dx(phantoms, **changes)) or "")


def test_frog_leg_view_modifier_is_refused_and_bilateral_is_frontal(phantoms) -> None:
    ds = _dx(phantoms, SeriesDescription="BILATERAL HIPS AP", BodyPartExamined="")
    assert not_a_hip_radiograph(ds) is None
    modifier = Dataset()
    modifier.CodeValue, modifier.CodingSchemeDesignator = "399169008", "SCT"
    modifier.CodeMeaning = "Lauenstein"
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = [modifier]
    assert not_a_hip_radiograph(ds) == "frog-leg view (Lauenstein view modifier)"


def test_reading_is_the_display_min_max_and_monochrome1_reads_like_monochrome2(
    phantoms, tmp_path: Path
) -> None:
    image = next(i for i in phantoms.images if not i.monochrome1)
    ds = pydicom.dcmread(image.path)
    radiograph = read_hip_radiograph(image.path)
    assert radiograph.display.min() == 0.0 and radiograph.display.max() == 1.0
    # the object's VOI window, then min-max: values beyond the window saturate
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    raw = ds.pixel_array.astype(np.float64)
    below = np.mean(raw <= c - 0.5 - (w - 1) / 2)
    assert below > 0.005 and np.mean(radiograph.display == 0.0) == pytest.approx(below, abs=2e-3)
    # the inverted twin with the mirrored window and INVERSE presentation displays the same
    ds.PixelData = (4095 - ds.pixel_array).astype("<u2").tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter = 4096 - c
    ds.save_as(tmp_path / "m1.dcm")
    twin = read_hip_radiograph(tmp_path / "m1.dcm")
    np.testing.assert_allclose(twin.display, radiograph.display, atol=2e-3)
    # compressed: the same pixels
    ds = pydicom.dcmread(image.path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(
        read_hip_radiograph(tmp_path / "rle.dcm").display, radiograph.display
    )
    assert radiograph.display.dtype == np.float32


def test_refused_files_raise_with_the_reason(phantoms, tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"nothing")
    with pytest.raises(RadiographError, match="not readable as DICOM"):
        read_hip_radiograph(tmp_path / "x.dcm")
    _dx(phantoms, BodyPartExamined="KNEE").save_as(tmp_path / "knee.dcm")
    with pytest.raises(RadiographError, match="Body Part Examined is KNEE"):
        read_hip_radiograph(tmp_path / "knee.dcm")


def test_localiser_input_keeps_the_aspect_and_scales_back() -> None:
    display = np.random.default_rng(0).random((300, 400)).astype(np.float32)
    image, (sy, sx) = localiser_image(display, 192, 256)
    assert image.shape == (192, 256) and (sy, sx) == pytest.approx((0.64, 0.64))
    image, _ = localiser_image(display, 192, 240)  # the cap on the longer side wins
    assert image.shape == (180, 240)


# -- the phantoms ------------------------------------------------------------------------------


def test_lower_t_score_means_sparser_trabeculae_and_thinner_cortex() -> None:
    anatomy = draw_anatomy(np.random.default_rng(1))
    dense = render_pelvis(np.random.default_rng(2), anatomy, 1.0, size=256)
    porotic = render_pelvis(np.random.default_rng(2), anatomy, -3.5, size=256)
    assert dense.necks == porotic.necks  # same anatomy and placement
    diff = dense.pixels.astype(np.int64) - porotic.pixels.astype(np.int64)
    # only the femurs change: the pelvis, soft tissue and noise are the same draws
    for x0, y0, x1, y1 in dense.necks.values():
        inside = diff[int(y0) : int(y1), int(x0) : int(x1)]
        assert inside.mean() > 60  # the neck is denser at T = 1 than at T = -3.5
    assert np.abs(diff[:, 120:136]).max() == 0  # the midline (no femur) is untouched
    assert trabecular_fraction(-2.5) < trabecular_fraction(-1.0) < trabecular_fraction(1.0)
    assert cortex_thickness(-3.5, 256) < cortex_thickness(1.0, 256)


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = write_hip_dataset(tmp_path / "a", patients=3, seed=5, size=160)
    b = write_hip_dataset(tmp_path / "b", patients=3, seed=5, size=160)
    for x, y in zip(a.images, b.images, strict=True):
        assert x.path.read_bytes() == y.path.read_bytes()
        assert x.voc_path.read_bytes() == y.voc_path.read_bytes()
    assert a.dexa_csv.read_bytes() == b.dexa_csv.read_bytes()
    c = write_hip_dataset(tmp_path / "c", patients=3, seed=6, size=160)
    assert {i.sop_instance_uid for i in a.images}.isdisjoint(i.sop_instance_uid for i in c.images)
    with pytest.raises(ValueError, match="does not write"):
        write_hip_dataset(tmp_path / "a", patients=1, seed=9, size=160)


def test_written_files_are_dx_with_their_boxes_and_pass_dciodvfy(phantoms) -> None:
    kinds = {i.kind for i in phantoms.images}
    assert kinds == {PELVIS, RIGHT_HIP, LEFT_HIP}
    assert any(i.flipped for i in phantoms.images) and any(i.monochrome1 for i in phantoms.images)
    years = {i.study_date.year for i in phantoms.images}
    assert {2018, 2022} <= years
    for image in phantoms.images[:12]:
        ds = pydicom.dcmread(image.path)
        assert ds.Modality == "DX" and ds.ViewPosition == "AP"
        assert ds.BodyPartExamined == ("PELVIS" if image.kind == PELVIS else "HIP")
        assert ds.ImageLaterality == ("B" if image.kind == PELVIS else image.kind)
        assert list(ds.PatientOrientation) == ["R" if image.flipped else "L", "F"]
        assert ds.StudyDate == image.study_date.strftime("%Y%m%d")
        voc = read_voc(image.voc_path)
        assert (voc.width, voc.height) == (ds.Columns, ds.Rows) and voc.stem == image.path.stem
        assert len(voc.objects) == len(image.necks) == (2 if image.kind == PELVIS else 1)
        # the sides the node would give the boxes are the true ones
        for obj in voc.objects:
            side = (
                Side(image.kind)
                if image.kind != PELVIS
                else side_of_box(obj.box, int(ds.Columns), flipped=image.flipped)
            )
            assert obj.box == pytest.approx(image.necks[side], abs=1.0)
    for image in phantoms.images[:3]:
        assert dciodvfy_errors(image.path) == []


# -- the seed's brightness change ------------------------------------------------------------


def test_brightness_changes_the_given_share_of_images() -> None:
    spec = AugmentSpec(
        hflip=0,
        rotation=0,
        brightness=0.2,
        contrast=0,
        noise=0,
        mixup_alpha=0,
        brightness_probability=0.3,
    )
    images = torch.full((2000, 1, 4, 4), 0.5)
    out, _ = image_augment(spec, [0.0], [1.0])(
        images, torch.zeros(2000), torch.Generator().manual_seed(1)
    )
    changed = (out != images).flatten(1).any(dim=1).float().mean().item()
    assert changed == pytest.approx(0.3, abs=0.04)
    shifts = (out - images)[:, 0, 0, 0]
    assert shifts.abs().max() <= 0.2 + 1e-6
    # each changed image moves as a whole (a brightness change, not noise)
    assert torch.all((out - images).flatten(1).std(dim=1) < 1e-6)
    with pytest.raises(ValueError, match="brightness_probability"):
        AugmentSpec(brightness_probability=1.5)


def test_every_image_gets_the_brightness_change_by_default() -> None:
    # probability 1 draws nothing more: the same generator gives the same batch as before
    spec = AugmentSpec(hflip=0, rotation=0, contrast=0, noise=0, mixup_alpha=0)
    images = torch.full((64, 1, 4, 4), 0.5)
    g = torch.Generator().manual_seed(3)
    out, _ = image_augment(spec, [0.0], [1.0])(images, torch.zeros(64), g)
    # the contrast gain is drawn first (it is 1 here), then the shift, and nothing else
    g2 = torch.Generator().manual_seed(3)
    torch.rand(64, generator=g2)
    expected = 0.5 + (-0.1 + 0.2 * torch.rand(64, generator=g2))
    torch.testing.assert_close(out[:, 0, 0, 0], expected)
    assert torch.equal(g.get_state(), g2.get_state())


# -- the card's localiser ---------------------------------------------------------------------


def test_localiser_weights_are_verified_like_the_cards(random_card: Path) -> None:
    from pipelines.hip.model import parse_options, verify_localiser
    from pipelines.hip.pipeline import HipOsteoporosis

    card = load_card(random_card)
    HipOsteoporosis(card, torch.device("cpu"))
    path = verify_localiser(card, parse_options(card).localiser)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(CardError, match="localiser weights .* have sha256 .* refusing"):
        HipOsteoporosis(card, torch.device("cpu"))
    path.unlink()
    with pytest.raises(CardError, match="localiser weights .* do not exist"):
        HipOsteoporosis(card, torch.device("cpu"))


@pytest.fixture
def random_card(tmp_path: Path) -> Path:
    """A hip card with random weights (the shapes of a real one)."""
    from pipelines.card import ExplainerSpec, InputSpec, LabelSpec, Provenance, sha256_file
    from pipelines.common.train import save_model
    from pipelines.hip.codes import FEMORAL_NECK, OSTEOPOROSIS
    from pipelines.hip.model import (
        LOCALISER_FILE,
        HipOptions,
        LocaliserOptions,
        build_localiser,
        build_osteoporosis_classifier,
    )

    spec = LocaliserOptions(sha256="0" * 64, size=128, max_size=171)
    torch.manual_seed(0)
    torch.save(build_localiser(spec).state_dict(), tmp_path / LOCALISER_FILE)
    spec = spec.model_copy(update={"sha256": sha256_file(tmp_path / LOCALISER_FILE)})
    return save_model(
        build_osteoporosis_classifier("resnet18"),
        tmp_path,
        name="hip-random",
        pipeline="hip-osteoporosis",
        version="0",
        architecture="resnet18",
        labels=[LabelSpec(name="osteoporosis", code=OSTEOPOROSIS, finding_site=FEMORAL_NECK)],
        input=InputSpec(size=64),
        explainer=ExplainerSpec(method="gradcam", target_layer="layer3", top_k=1),
        provenance=Provenance(synthetic=True),
        options=HipOptions(localiser=spec).model_dump(mode="json"),
    )


def test_a_card_without_finding_site_or_with_two_labels_is_refused(random_card: Path) -> None:
    from pipelines.card import ModelCard
    from pipelines.hip.pipeline import HipOsteoporosis

    card = load_card(random_card)
    data = card.model_dump()
    label = {**data["labels"][0], "finding_site": None}
    with pytest.raises(CardError, match="needs a finding_site"):
        HipOsteoporosis(
            ModelCard.model_validate({**data, "labels": [label], "folder": card.folder}),
            torch.device("cpu"),
        )
    with pytest.raises(CardError, match="has 2 labels"):
        HipOsteoporosis(
            ModelCard.model_validate(
                {**data, "labels": [data["labels"][0]] * 2, "folder": card.folder}
            ),
            torch.device("cpu"),
        )
    with pytest.raises(CardError, match="options.localiser.sha256"):
        HipOsteoporosis(
            ModelCard.model_validate(
                {**data, "options": {"localiser": {"sha256": "xyz"}}, "folder": card.folder}
            ),
            torch.device("cpu"),
        )


def test_an_image_without_a_neck_is_skipped_with_the_localisers_best_score(
    random_card: Path, phantoms
) -> None:
    from pipelines.base import PipelineInputError, SeriesInput
    from pipelines.hip.pipeline import HipOsteoporosis

    card = load_card(random_card)
    data = card.model_dump()
    # an untrained localiser scores nothing at 0.99
    options = {
        **data["options"],
        "localiser": {**data["options"]["localiser"], "score_threshold": 0.99},
    }
    from pipelines.card import ModelCard

    strict = ModelCard.model_validate({**data, "options": options, "folder": card.folder})
    pipeline = HipOsteoporosis(strict, torch.device("cpu"))
    with pytest.raises(PipelineInputError, match="no femoral neck found .best localiser score"):
        pipeline.run([SeriesInput("1.2", (phantoms.images[0].path,))])


def test_crops_shift_and_zoom_within_the_given_range() -> None:
    spec = AugmentSpec(
        hflip=0, rotation=0, brightness=0, contrast=0, noise=0, mixup_alpha=0,
        translate=0.25, zoom=0.0,
    )  # fmt: skip
    images = torch.zeros((200, 1, 41, 41))
    images[:, 0, 20, 20] = 1.0  # a dot in the middle
    out, _ = image_augment(spec, [0.0], [1.0])(
        images, torch.zeros(200), torch.Generator().manual_seed(2)
    )
    flat = out[:, 0].flatten(1).argmax(dim=1)
    rows, cols = flat // 41 - 20, flat % 41 - 20
    assert rows.abs().max() <= 0.25 * 41 + 1 and cols.abs().max() <= 0.25 * 41 + 1
    assert (cols != 0).float().mean() > 0.8 and len(set(cols.tolist())) > 10  # it does move
    with pytest.raises(ValueError, match="translate and zoom"):
        AugmentSpec(zoom=1.5)


def test_the_localiser_is_a_one_class_detector_with_its_box_head_and_anchors() -> None:
    from pipelines.hip.model import LocaliserOptions, build_localiser

    spec = LocaliserOptions(
        sha256="0" * 64, size=128, max_size=171, representation_size=64, anchor_sizes=[16, 32]
    )
    model = build_localiser(spec)
    assert model.roi_heads.box_head.fc6.out_features == 64
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # background + neck
    assert model.rpn.anchor_generator.sizes == ((16, 32),) * 3
    default = build_localiser(LocaliserOptions(sha256="0" * 64))
    assert default.roi_heads.box_head.fc6.out_features == 1024
    assert default.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),) * 3


# -- training data ------------------------------------------------------------------------------


@pytest.fixture
def labelled(phantoms, tmp_path: Path):
    """The phantoms' labels from pair-dexa, and a copy of their VOC folder to edit."""
    import shutil

    from pipelines.hip.dexa import read_labels as read

    labels = tmp_path / "labels.csv"
    write_labels(pair_dexa(phantoms.dicom_dir, phantoms.dexa_csv), labels)
    voc = tmp_path / "voc"
    shutil.copytree(phantoms.voc_dir, voc)
    return read(labels), voc


def test_training_items_join_files_boxes_and_labels(phantoms, labelled) -> None:
    from pipelines.hip.data import index_hip_data

    labels, voc = labelled
    first = next(i for i in phantoms.images if i.sop_instance_uid in labels)
    (voc / f"{first.stem}.xml").unlink()
    index = index_hip_data(phantoms.dicom_dir, read_voc_folder(voc), labels)
    assert index.left_out["without a VOC file"] == 1
    assert index.left_out["without a label (not paired with a DEXA)"] == len(phantoms.images) - len(
        labels
    )
    assert len(index.items) == len(labels) - 1
    truth = {i.sop_instance_uid: i for i in phantoms.images}
    for item in index.items:
        image = truth[item.sop_instance_uid]
        assert item.label == image.label and item.patient_id == image.patient_id
        assert item.year == image.study_date.year and item.flipped == image.flipped
        assert set(item.necks) == set(image.necks)
        for side, box in item.necks.items():
            assert box == pytest.approx(image.necks[side], abs=1.0)
    assert "HIP-PHANTOM" not in index.summary()


def test_boxes_drawn_on_a_smaller_export_are_scaled_and_other_aspects_refused(
    phantoms, labelled
) -> None:
    from pipelines.hip.data import HipDataError, index_hip_data

    labels, voc = labelled
    image = next(i for i in phantoms.images if i.sop_instance_uid in labels and i.kind == PELVIS)
    path = voc / f"{image.stem}.xml"
    full = read_voc(path)
    half = VocAnnotation(
        full.filename,
        full.width // 2,
        full.height // 2,
        objects=tuple(
            VocObject.from_box(
                o.name, tuple(v / 2 for v in o.box), width=full.width // 2, height=full.height // 2
            )
            for o in full.objects
        ),
    )
    write_voc(half, path)
    (item,) = [
        i
        for i in index_hip_data(phantoms.dicom_dir, read_voc_folder(voc), labels).items
        if i.path == image.path
    ]
    for side, box in item.necks.items():
        assert box == pytest.approx(image.necks[side], abs=2.5)
    write_voc(
        VocAnnotation(full.filename, full.width, full.height // 2, objects=half.objects), path
    )
    with pytest.raises(HipDataError, match=rf"{path.name} annotates a .*\(another aspect ratio\)"):
        index_hip_data(phantoms.dicom_dir, read_voc_folder(voc), labels)
    one = full.objects[0]
    write_voc(VocAnnotation(full.filename, full.width, full.height, objects=(one, one)), path)
    with pytest.raises(HipDataError, match="boxes two femoral necks on the patient's"):
        index_hip_data(phantoms.dicom_dir, read_voc_folder(voc), labels)


def test_folds_never_split_a_patient() -> None:
    from pipelines.hip.data import HipItem
    from pipelines.hip.train import _folds

    items = [
        HipItem(Path(f"{p}-{k}.dcm"), f"{p}.{k}", f"P{p}", 2020, p % 2, -1.0, (10, 10), False, None)
        for p in range(12)
        for k in range(1 + p % 3)
    ]
    folds = _folds(items, 3, seed=0)
    assert len(folds) == 3
    seen = []
    for train, val in folds:
        assert not {i.group for i in train} & {i.group for i in val}
        assert {i.label for i in val} == {0, 1}  # stratified by patient label
        seen += [i.sop_instance_uid for i in val]
    assert sorted(seen) == sorted(i.sop_instance_uid for i in items)


def test_train_holds_out_the_latest_year_with_five_folds_by_default(tmp_path: Path) -> None:
    """The study's protocol is the default: 5-fold cross-validation on the earlier years, the
    latest year of the labels held out as test; 'none' holds out patients instead."""
    from dicom_node.cli import build_parser
    from pipelines.hip.commands import _test_year

    labels = tmp_path / "labels.csv"
    labels.write_text(
        "sop_instance_uid,label,image_date\n1.1,0,2019-03-01\n1.2,1,2022-06-30\n1.3,0,2021-01-02\n"
    )
    assert _test_year("latest", str(labels)) == 2022
    assert _test_year(2020, str(labels)) == 2020 and _test_year(None, str(labels)) is None
    undated = tmp_path / "undated.csv"
    undated.write_text("sop_instance_uid,label\n1.1,0\n")
    with pytest.raises(ValueError, match="--test-year none"):
        _test_year("latest", str(undated))

    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "hip-osteoporosis",
            "--dicom-dir",
            "d",
            "--voc-dir",
            "v",
            "--labels",
            "l",
            "--out",
            "o",
        ]
    )
    assert args.folds == 5 and args.test_year == "latest"
    none = parser.parse_args(
        ["train", "hip-osteoporosis", "--dicom-dir", "d", "--voc-dir", "v", "--labels", "l",
         "--out", "o", "--test-year", "none"]
    )  # fmt: skip
    assert none.test_year is None
