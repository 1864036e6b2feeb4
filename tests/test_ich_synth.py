"""Synthetic head CTs: deterministic, plausible HU, blood where each subtype belongs, RSNA layout."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from pipelines.common.phantoms import PHANTOM_MANUFACTURER
from pipelines.ich.synth import (
    BLOOD_HU_RANGE,
    CT_IMAGE_STORAGE,
    FIELD_OF_VIEW_MM,
    LABELS,
    SUBTYPES,
    HeadPhantom,
    main,
    make_head_volume,
    min_label_pixels,
    render_head,
    series_hemorrhages,
    series_rng,
    slice_labels,
    write_head_ct_series,
    write_rsna_dataset,
)

from dicom_validation import dciodvfy_errors

SIZE = 96
SLICES = 12


def _head(seed: int, hemorrhages: tuple[str, ...] = SUBTYPES) -> HeadPhantom:
    return render_head(
        np.random.default_rng(seed), size=SIZE, n_slices=SLICES, hemorrhages=hemorrhages
    )


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation of (n, S, S) masks in-plane by ``steps`` pixels (3x3 neighbourhood)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[:, 1:, :] |= out[:, :-1, :]
        grown[:, :-1, :] |= out[:, 1:, :]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def _positive_slices(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))


def test_volume_is_deterministic_and_blood_is_the_only_difference() -> None:
    a, masks_a = make_head_volume(
        np.random.default_rng(3), size=SIZE, n_slices=SLICES, hemorrhages=SUBTYPES
    )
    b, masks_b = make_head_volume(
        np.random.default_rng(3), size=SIZE, n_slices=SLICES, hemorrhages=SUBTYPES
    )
    assert a.dtype == np.float32 and a.shape == (SLICES, SIZE, SIZE)
    assert np.array_equal(a, b)
    assert masks_a.keys() == set(SUBTYPES)
    assert all(np.array_equal(masks_a[s], masks_b[s]) for s in SUBTYPES)
    other, _ = make_head_volume(np.random.default_rng(4), size=SIZE, n_slices=SLICES)
    assert not np.array_equal(a, other)
    # the same generator state without blood: identical anatomy and noise outside the masks
    clean, none = make_head_volume(np.random.default_rng(3), size=SIZE, n_slices=SLICES)
    assert none == {}
    blood = np.logical_or.reduce([masks_a[s] for s in SUBTYPES])
    assert np.array_equal(a[~blood], clean[~blood])
    assert np.median(a[blood] - clean[blood]) > 20.0


def test_unknown_subtype_and_tiny_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        make_head_volume(np.random.default_rng(0), size=64, n_slices=4, hemorrhages=["chronic"])
    with pytest.raises(ValueError):
        make_head_volume(np.random.default_rng(0), size=32, n_slices=4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hounsfield_units_of_the_tissues(seed: int) -> None:
    head = _head(seed)
    hu = head.hu
    blood = np.logical_or.reduce([head.masks[s] for s in SUBTYPES])
    outside = ~_dilate(head.skull | head.brain, 4)
    assert abs(np.median(hu[outside]) + 1000.0) < 10.0
    parenchyma = head.brain & ~head.csf & ~head.ventricles & ~_dilate(blood, 1)
    assert 20.0 <= np.median(hu[parenchyma]) <= 45.0
    assert np.median(hu[head.skull]) > 500.0
    assert np.percentile(hu[head.skull], 5) > 150.0  # the tables' partial-volume edge aside
    clean = _head(seed, hemorrhages=()).hu
    assert np.median(clean[head.ventricles]) < 20.0
    lo, hi = BLOOD_HU_RANGE
    px = FIELD_OF_VIEW_MM / SIZE
    for subtype in SUBTYPES:
        # away from the inner table, where a pixel is blood and bone in part
        values = hu[head.masks[subtype] & (head.depth_mm > px)]
        assert values.size > 0, subtype
        assert lo <= np.median(values) <= hi, subtype
        assert np.percentile(values, 1) >= lo - 25.0 and np.percentile(values, 99) <= hi + 25.0


@pytest.mark.parametrize("seed", range(6))
def test_each_subtype_lies_where_it_belongs(seed: int) -> None:
    head = _head(seed)
    px = FIELD_OF_VIEW_MM / SIZE
    depth = head.depth_mm
    for subtype, mask in head.masks.items():
        assert (mask & ~head.brain).sum() == 0, f"{subtype} outside the inner table"
        assert 3 <= len(_positive_slices(mask)) <= 8 or subtype == "intraventricular", subtype
    for subtype in ("subdural", "epidural"):
        mask = head.masks[subtype]
        for k in _positive_slices(mask):
            # against the inner table of the skull on every slice it is on
            assert depth[k][mask[k]].min() < px, (subtype, k)
            assert (mask[k] & _dilate(head.skull[k : k + 1], 2)[0]).any(), (subtype, k)
        assert depth[mask].max() < 17.0
    iph = head.masks["intraparenchymal"]
    assert depth[iph].min() > 3.0  # clear of the skull
    assert not (iph & _dilate(head.ventricles | head.skull, 2)).any()
    ivh = head.masks["intraventricular"]
    assert (ivh & ~head.ventricles).sum() == 0
    for k in _positive_slices(ivh):
        # dependent layering: the blood is in the posterior (lower in the image) part
        blood_rows, blood_cols = np.nonzero(ivh[k])
        vent_rows, vent_cols = np.nonzero(head.ventricles[k])
        same_side = np.isin(vent_cols, blood_cols)
        assert blood_rows.mean() >= vent_rows[same_side].mean() - 0.5
    assert not (head.masks["subarachnoid"] & head.ventricles).any()


@pytest.mark.parametrize("seed", range(6))
def test_subarachnoid_blood_fills_the_csf_spaces(seed: int) -> None:
    # a finer grid than elsewhere: 1-2 mm sulci are mostly CSF in a 1.2 mm pixel
    head = render_head(
        np.random.default_rng(seed), size=192, n_slices=10, hemorrhages=("subarachnoid",)
    )
    sah = head.masks["subarachnoid"]
    assert sah.any() and not (sah & (head.ventricles | ~head.brain)).any()
    # blood in the CSF spaces outside the ventricles: sulci, surface rim, cisterns
    assert (sah & _dilate(head.csf, 2)).sum() >= 0.95 * sah.sum()


def test_subarachnoid_blood_is_on_the_convexity_or_in_the_basal_cisterns() -> None:
    modes = Counter()
    for seed in range(16):
        # a full-length series: the basal cisterns span enough slices for a 3-slice bleed
        head = render_head(
            np.random.default_rng(seed), size=64, n_slices=24, hemorrhages=("subarachnoid",)
        )
        depth = head.depth_mm[head.masks["subarachnoid"]]
        if np.percentile(depth, 95) < 16.0:
            modes["convexity"] += 1
        else:
            # basal: around the brain's centre, far from the skull
            assert np.median(depth) > 25.0
            modes["basal"] += 1
    assert modes["convexity"] >= 5 and modes["basal"] >= 2, modes


def _arc(mask: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """Angular span (radians, around the brain's centroid) and pixel area of a 2-D mask."""
    cy, cx = (c.mean() for c in np.nonzero(brain))
    ys, xs = np.nonzero(mask)
    angles = np.arctan2(ys - cy, xs - cx)
    mean = np.angle(np.exp(1j * angles).mean())
    rel = np.angle(np.exp(1j * (angles - mean)))
    return float(rel.max() - rel.min()), float(mask.sum())


def test_epidural_is_a_short_thick_lens_and_subdural_a_long_thin_crescent() -> None:
    px = FIELD_OF_VIEW_MM / SIZE
    ratios: dict[str, list[float]] = {"epidural": [], "subdural": []}
    for seed in range(8):
        head = _head(seed, hemorrhages=("epidural", "subdural"))
        for subtype, ratio in ratios.items():
            mask = head.masks[subtype]
            k = int(np.argmax(mask.reshape(SLICES, -1).sum(axis=1)))
            span, area = _arc(mask[k], head.brain[k])
            thickness = head.depth_mm[k][mask[k]].max()
            length = span * np.sqrt(head.brain[k].sum() / np.pi) * px  # arc length in mm
            ratio.append(thickness / length)
            if subtype == "epidural":
                assert span < np.radians(70), np.degrees(span)
                assert thickness >= 6.0
            else:
                assert span > np.radians(90), np.degrees(span)
                # thin relative to its length: area / length is about the mean thickness
                assert area * px * px / length < 12.0
    assert min(ratios["epidural"]) > max(ratios["subdural"]), ratios


def test_labels_follow_the_mask_threshold_and_no_blood_is_unlabelled() -> None:
    head = _head(5)
    labels = slice_labels(head.masks, SIZE)
    threshold = min_label_pixels(SIZE)
    assert threshold == 5  # 0.05 % of 96 x 96, at least 4
    for k, row in enumerate(labels):
        assert set(row) == set(LABELS)
        for subtype in SUBTYPES:
            count = int(head.masks[subtype][k].sum())
            assert row[subtype] == int(count >= threshold)
            assert count == 0 or count >= threshold  # blood is never drawn below threshold
        assert row["any"] == max(row[s] for s in SUBTYPES)


def test_written_series_has_the_ct_attributes_and_hu(tmp_path: Path) -> None:
    slices = write_head_ct_series(
        tmp_path, seed=11, index=3, hemorrhages=("subdural",), n_slices=6, size=64
    )
    head = render_head(series_rng(11, 3), size=64, n_slices=6, hemorrhages=("subdural",))
    assert [s.slice_index for s in slices] == list(range(6))
    assert {p.name for p in tmp_path.iterdir()} == {f"ID_{s.sop_instance_uid}.dcm" for s in slices}
    assert len({s.sop_instance_uid for s in slices}) == 6
    assert len({(s.study_instance_uid, s.series_instance_uid) for s in slices}) == 1
    zs = [s.z_mm for s in slices]
    assert np.allclose(np.diff(zs), 5.0)
    for s in slices:
        ds = pydicom.dcmread(s.path)
        assert ds.SOPClassUID == CT_IMAGE_STORAGE
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (ds.Modality, ds.PhotometricInterpretation, ds.BodyPartExamined) == (
            "CT",
            "MONOCHROME2",
            "HEAD",
        )
        assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 0)
        assert (float(ds.RescaleIntercept), float(ds.RescaleSlope), ds.RescaleType) == (
            -1024.0,
            1.0,
            "HU",
        )
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert [float(x) for x in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(s.z_mm)
        assert float(ds.SliceLocation) == pytest.approx(s.z_mm)
        assert ds.InstanceNumber == s.slice_index + 1
        assert float(ds.SliceThickness) == 5.0
        assert float(ds.PixelSpacing[0]) == pytest.approx(FIELD_OF_VIEW_MM / 64)
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 80.0)
        assert ds.Manufacturer == PHANTOM_MANUFACTURER
        assert ds.PatientID == s.patient_id == "ICH-11-3"
        assert str(ds.PatientName).startswith("PHANTOM^")
        assert ds.SOPInstanceUID == s.sop_instance_uid
        assert ds.SeriesInstanceUID == s.series_instance_uid
        assert ds.FrameOfReferenceUID
        hu = apply_modality_lut(ds.pixel_array, ds)
        assert np.array_equal(hu, head.hu[s.slice_index])
        assert s.labels == slice_labels(head.masks, 64)[s.slice_index]
    assert sum(s.labels["subdural"] for s in slices) >= 1


def test_rewriting_gives_identical_files_in_any_write_order(tmp_path: Path) -> None:
    kw = {"seed": 2, "index": 9, "hemorrhages": ("epidural",), "n_slices": 5, "size": 64}
    a = write_head_ct_series(tmp_path / "a", **kw)
    b = write_head_ct_series(tmp_path / "b", **kw, shuffle_files=False)
    assert [s.sop_instance_uid for s in a] == [s.sop_instance_uid for s in b]
    assert all(x.path.read_bytes() == y.path.read_bytes() for x, y in zip(a, b, strict=True))
    c = write_head_ct_series(tmp_path / "c", **{**kw, "index": 10})
    assert not {s.sop_instance_uid for s in a} & {s.sop_instance_uid for s in c}
    assert a[0].series_instance_uid != c[0].series_instance_uid


def test_series_can_join_a_given_study_and_patient(tmp_path: Path) -> None:
    slices = write_head_ct_series(
        tmp_path, seed=1, index=4, n_slices=3, size=64, patient_id="P-7", study_instance_uid="1.2.3"
    )
    ds = pydicom.dcmread(slices[0].path)
    assert (ds.PatientID, ds.StudyInstanceUID) == ("P-7", "1.2.3")
    assert all(s.labels == dict.fromkeys(LABELS, 0) for s in slices)


@pytest.mark.parametrize(("size", "thickness"), [(64, 5.0), (96, 2.5)])
def test_dciodvfy_reports_no_errors(tmp_path: Path, size: int, thickness: float) -> None:
    slices = write_head_ct_series(
        tmp_path,
        seed=0,
        index=1,
        hemorrhages=("intraparenchymal",),
        n_slices=4,
        size=size,
        slice_thickness_mm=thickness,
    )
    assert dciodvfy_errors(slices[2].path) == []


def test_series_hemorrhages_are_balanced() -> None:
    plan = series_hemorrhages(40, seed=3, positive_fraction=0.75)
    assert sum(bool(p) for p in plan) == 30
    assert all(len(p) <= 2 and len(set(p)) == len(p) for p in plan)
    counts = Counter(s for p in plan for s in p)
    assert set(counts) == set(SUBTYPES)
    assert max(counts.values()) - min(counts.values()) <= 2, counts
    assert plan == series_hemorrhages(40, seed=3, positive_fraction=0.75)


def test_rsna_dataset_layout_and_labels_csv(tmp_path: Path) -> None:
    labels_csv, slices = write_rsna_dataset(
        tmp_path, patients=3, seed=4, n_slices=5, size=64, positive_fraction=0.7
    )
    assert labels_csv == tmp_path / "labels.csv"
    assert len(slices) == 15
    files = sorted(p.name for p in (tmp_path / "dicom").iterdir())
    assert files == sorted(f"ID_{s.sop_instance_uid}.dcm" for s in slices)

    lines = labels_csv.read_text().splitlines()
    assert lines[0] == "ID,Label"
    assert len(lines) == 1 + 6 * len(slices)
    for i, s in enumerate(slices):
        group = lines[1 + 6 * i : 7 + 6 * i]
        assert [line.rsplit(",", 1)[0] for line in group] == [
            f"ID_{s.sop_instance_uid}_{lab}" for lab in LABELS
        ]
        values = {lab: int(line.rsplit(",", 1)[1]) for lab, line in zip(LABELS, group, strict=True)}
        assert values == s.labels
        assert values["any"] == max(values[sub] for sub in SUBTYPES)
    assert sum(s.labels["any"] for s in slices) > 0  # 2 of 3 series are positive

    with (tmp_path / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(slices)
    assert list(rows[0]) == [
        "patient_id",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "slice_index",
        "z_mm",
        *LABELS,
    ]
    for row, s in zip(rows, slices, strict=True):
        assert row["sop_instance_uid"] == s.sop_instance_uid
        assert row["patient_id"] == s.patient_id
        assert int(row["slice_index"]) == s.slice_index
        assert float(row["z_mm"]) == pytest.approx(s.z_mm)
        assert {lab: int(row[lab]) for lab in LABELS} == s.labels
    assert {s.patient_id for s in slices} == {"ICH-4-0", "ICH-4-1", "ICH-4-2"}


def test_several_series_per_patient(tmp_path: Path) -> None:
    _, slices = write_rsna_dataset(
        tmp_path, patients=2, seed=1, n_slices=3, size=64, series_per_patient=2
    )
    per_patient = Counter(s.patient_id for s in slices)
    assert per_patient == {"ICH-1-0": 6, "ICH-1-1": 6}
    assert len({s.series_instance_uid for s in slices}) == 4


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    argv = ["--out", str(out), "--patients", "2", "--seed", "5", "--slices", "4", "--size", "64"]
    assert main(argv) == 0
    assert "wrote 8 slices in 2 series of 2 patients" in capsys.readouterr().out
    assert len(list((out / "dicom").glob("ID_*.dcm"))) == 8
    assert (out / "labels.csv").is_file() and (out / "manifest.csv").is_file()
