"""Seed 002 (intracranial hemorrhage): preprocessing, model, data and training mechanics.

These tests need no trained model; ``test_ich_model.py`` checks the demo
model's detections, the evaluation numbers and the node end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipelines.card import CardError, InputSpec, WindowSpec
from pipelines.common.augment import AugmentSpec, image_augment
from pipelines.common.metrics import choose_thresholds
from pipelines.common.slices import SliceError, slice_image
from pipelines.common.train import TrainConfig, fit
from pipelines.ich.data import (
    DataError,
    SliceDataset,
    index_folder,
    read_labels,
    split_by_group,
)
from pipelines.ich.labels import LABELS, LOSS_WEIGHTS, WINDOWS
from pipelines.ich.model import FixedPosition, ICHNet, WeightedBCE
from pipelines.ich.pipeline import aggregate
from pipelines.ich.slices import input_spec
from pipelines.ich.synth import write_rsna_dataset
from pipelines.ich.train import default_target_layer

CT = "1.2.840.10008.5.1.4.1.1.2"


def ct_slice(
    stored: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    padding: int | None = None,
    signed: bool = False,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if padding is not None:
        ds.PixelPaddingValue = padding
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


# --- HU and windows ----------------------------------------------------------------------


def test_hu_and_the_three_windows_match_hand_computed_values() -> None:
    # HU = stored * 1 - 1024: stored 1064 -> 40 HU (brain centre), 1024 -> 0 HU, 1104 -> 80 HU
    hu = np.array([[-1000, 0, 40, 80], [50, 115, 600, 2000]], dtype=np.float64)
    ds = ct_slice((hu + 1024).astype(np.uint16))
    spec = input_spec(8, [0.0] * 3, [1.0] * 3)
    brain, subdural, bone = slice_image(ds, spec)
    # brain 40/80: [0, 80] -> [0, 1]
    np.testing.assert_allclose(brain, [[0, 0, 0.5, 1], [0.625, 1, 1, 1]], atol=1e-6)
    # subdural 50/130: [-15, 115] -> [0, 1]
    np.testing.assert_allclose(
        subdural, [[0, 15 / 130, 55 / 130, 95 / 130], [0.5, 1, 1, 1]], atol=1e-6
    )
    # bone 600/2800: [-800, 2000] -> [0, 1]
    np.testing.assert_allclose(
        bone,
        [[0, 800 / 2800, 840 / 2800, 880 / 2800], [850 / 2800, 915 / 2800, 0.5, 1]],
        atol=1e-6,
    )


def test_rescale_slope_and_padding_are_respected() -> None:
    # slope 2, intercept -1000: stored 520 -> 40 HU; padding (stored 0) must not look like tissue
    stored = np.array([[520, 520, 0, 0], [540, 500, 520, 0]], dtype=np.uint16)
    ds = ct_slice(stored, slope=2.0, intercept=-1000.0, padding=0)
    brain, _, _ = slice_image(ds, input_spec(8, [0.0] * 3, [1.0] * 3))
    np.testing.assert_allclose(brain[0, :2], 0.5, atol=1e-6)  # 40 HU
    np.testing.assert_allclose(brain[1, :3], [1.0, 0.0, 0.5], atol=1e-6)  # 80, 0, 40 HU
    # padded pixels take the lowest real value (0 HU here), not -1000 HU + window maths
    np.testing.assert_allclose(brain[stored == 0], 0.0, atol=1e-6)


def test_signed_pixels_and_the_seed_windows_in_the_card_spec() -> None:
    ds = ct_slice(np.array([[-1024, 40], [80, 0]]), intercept=0.0, signed=True)
    brain, _, _ = slice_image(ds, input_spec(8, [0.0] * 3, [1.0] * 3))
    np.testing.assert_allclose(brain, [[0, 0.5], [1, 0]], atol=1e-6)  # -1024, 40, 80, 0 HU
    assert [(w.name, w.center, w.width) for w in WINDOWS] == [
        ("brain", 40, 80),
        ("subdural", 50, 130),
        ("bone", 600, 2800),
    ]
    with pytest.raises(ValueError, match="one window per channel"):
        InputSpec(channels=3, windows=[WindowSpec(center=40, width=80)])


def test_a_slice_with_an_empty_rescale_slope_is_skipped_not_a_crash() -> None:
    ds = ct_slice(np.zeros((4, 4)))
    ds.RescaleSlope = ""  # as some anonymisers leave it
    with pytest.raises(SliceError, match="modality LUT"):
        slice_image(ds, input_spec(8, [0.0] * 3, [1.0] * 3))


def test_slice_without_pixels_or_in_colour_is_refused_with_a_reason() -> None:
    ds = ct_slice(np.zeros((4, 4)))
    del ds.PixelData
    with pytest.raises(SliceError, match="no Pixel Data"):
        slice_image(ds, input_spec(8, [0.0] * 3, [1.0] * 3))
    ds = ct_slice(np.zeros((4, 4)))
    ds.SamplesPerPixel = 3
    with pytest.raises(SliceError, match="colour"):
        slice_image(ds, input_spec(8, [0.0] * 3, [1.0] * 3))


# --- model -------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "features"), [("resnet50", 2048), ("efficientnet_b3", 1536)])
def test_model_outputs_six_logits_per_slice(backbone: str, features: int) -> None:
    model = ICHNet(backbone, len(LABELS)).eval()
    assert model.feature_dim == features
    assert model.position[0].in_features == 1 and model.position[0].out_features == 64
    assert model.head[0].in_features == features + 64
    x = torch.randn(2, 3, 64, 64)
    z = torch.tensor([0.1, 0.9])
    with torch.inference_mode():
        logits = model(x, z)
        assert logits.shape == (2, 6)
        # the position is an input: the same image at another z gives other logits
        other = model(x, torch.tensor([0.9, 0.1]))
    assert not torch.allclose(logits, other)
    assert FixedPosition(model, z)(x).shape == (2, 6)
    assert default_target_layer(backbone) in ("backbone.layer4", "backbone.features.-1")


def test_weighted_bce_is_the_rsna_weighted_log_loss() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.0, 0.5, -3.0, 1.5]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]])
    weights = torch.tensor([LOSS_WEIGHTS[label] for label in LABELS])
    assert weights.tolist() == [1, 1, 1, 1, 1, 2]
    p = torch.sigmoid(logits)
    bce = -(target * p.log() + (1 - target) * (1 - p).log())
    expected = (bce * weights).sum() / 7.0
    assert WeightedBCE(weights)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        ICHNet("vgg16")


# --- aggregation and thresholds ----------------------------------------------------------


def test_study_aggregation_max_and_top_k_mean() -> None:
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4]])
    np.testing.assert_allclose(aggregate(probs, "max", 3), [0.8, 0.9])
    np.testing.assert_allclose(aggregate(probs, "top_k_mean", 2), [0.55, 0.65])
    np.testing.assert_allclose(aggregate(probs, "top_k_mean", 10), probs.mean(axis=0))
    with pytest.raises(ValueError):
        aggregate(np.zeros((0, 6)), "max", 1)


def test_thresholds_maximise_f1_on_validation() -> None:
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    p = np.array([[0.9, 0.2], [0.6, 0.3], [0.55, 0.1], [0.1, 0.4]])
    # label 0: threshold 0.6 separates perfectly (F1 1); label 1 has no positives -> 0.5
    assert choose_thresholds(y, p) == [0.6, 0.5]
    # never rounded above the probability that set it
    (t,) = choose_thresholds(np.array([[1], [0]]), np.array([[0.9999996], [0.2]]))
    assert t <= 0.9999996


# --- augmentation ------------------------------------------------------------------------


def test_augmentation_is_deterministic_and_mixup_mixes_labels() -> None:
    mean, std = [0.2, 0.3, 0.4], [0.25, 0.25, 0.25]
    augment = image_augment(AugmentSpec(), mean, std)
    x = torch.rand(4, 3, 32, 32)
    z = torch.tensor([0.0, 0.25, 0.5, 1.0])
    y = torch.eye(4, 6)  # every row different: any mixing shows
    (xa, za), ya = augment((x, z), y, torch.Generator().manual_seed(3))
    (xb, zb), yb = augment((x, z), y, torch.Generator().manual_seed(3))
    assert torch.equal(xa, xb) and torch.equal(za, zb) and torch.equal(ya, yb)
    assert xa.shape == x.shape and ya.shape == y.shape
    # Mixup: labels become convex combinations (rows still sum to 1 here)
    assert ((ya >= 0) & (ya <= 1)).all()
    torch.testing.assert_close(ya.sum(dim=1), torch.ones(4))
    mixed = [augment((x, z), y, torch.Generator().manual_seed(s))[1] for s in range(5)]
    assert any(not torch.equal(m, y) for m in mixed)
    # photometric steps stay in the displayable range once de-normalised
    shown = xa * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert shown.min() >= -1e-5 and shown.max() <= 1 + 1e-5
    no_mix = image_augment(AugmentSpec(mixup_alpha=0.0), mean, std)
    _, y_plain = no_mix((x, z), y, torch.Generator().manual_seed(3))
    assert torch.equal(y_plain, y)


# --- RSNA data ---------------------------------------------------------------------------


def test_read_labels_parses_rsna_rows_and_refuses_bad_ones(tmp_path: Path) -> None:
    good = tmp_path / "labels.csv"
    rows = ["ID,Label"]
    rows += [f"ID_abc123_{label},{int(label in ('subdural', 'any'))}" for label in LABELS]
    rows += [f"ID_def456_{label},0" for label in LABELS]
    rows.append("ID_def456_any,0")  # identical duplicate, as in the competition file
    good.write_text("\ufeff" + "\n".join(rows) + "\n")  # with a BOM, as Excel saves it
    labels = read_labels(good)
    assert labels == {"abc123": (0, 0, 0, 0, 1, 1), "def456": (0,) * 6}

    def bad(text: str, match: str) -> None:
        path = tmp_path / "bad.csv"
        path.write_text(text)
        with pytest.raises(DataError, match=match):
            read_labels(path)

    bad("id,label\n", "header")
    bad("ID,Label\nID_x_subdurall,1\n", "subtype")
    bad("ID,Label\nID_x_any,2\n", "0 or 1")
    bad("ID,Label\nID_x_any,1\n", "lack some of the six labels")
    bad("ID,Label\n" + "".join(f"ID_x_{lb},0\n" for lb in LABELS) + "ID_x_any,1\n", "conflicting")


def test_dataset_index_split_and_items(tmp_path: Path) -> None:
    labels_csv, slices = write_rsna_dataset(
        tmp_path / "rsna", patients=6, seed=11, n_slices=6, size=64, positive_fraction=0.5
    )
    labels = read_labels(labels_csv)
    assert len(labels) == len(slices) == 36
    indexed = index_folder(tmp_path / "rsna" / "dicom", labels)
    assert len(indexed) == 36
    truth = {s.sop_instance_uid: s for s in slices}
    for item in indexed:
        generated = truth[item.sop_instance_uid]
        assert item.labels == tuple(generated.labels[label] for label in LABELS)
    # z follows the slice order within each series, 0 at the lowest slice
    for series in {i.series_instance_uid for i in indexed}:
        members = sorted(
            (i for i in indexed if i.series_instance_uid == series),
            key=lambda i: truth[i.sop_instance_uid].slice_index,
        )
        assert [round(m.z, 6) for m in members] == [round(k / 5, 6) for k in range(6)]
    parts = split_by_group(indexed, (0.5, 0.25, 0.25), seed=0)
    groups = [{s.group for s in part} for part in parts]
    assert sum(len(p) for p in parts) == 36
    assert all(groups) and not (
        groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]
    )
    spec = input_spec(32, [0.5] * 3, [0.25] * 3)
    (image, z), y = SliceDataset(indexed, spec)[0]
    assert image.shape == (3, 32, 32) and z.shape == () and y.shape == (6,)


def test_missing_files_and_unlabelled_folders_are_reported(tmp_path: Path) -> None:
    labels_csv, slices = write_rsna_dataset(
        tmp_path / "rsna", patients=3, seed=12, n_slices=4, size=64
    )
    labels = read_labels(labels_csv)
    slices[0].path.unlink()
    with pytest.raises(DataError, match="1 labelled image"):
        index_folder(tmp_path / "rsna" / "dicom", labels, require_all=True)
    assert len(index_folder(tmp_path / "rsna" / "dicom", labels)) == 11
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="none of the"):
        index_folder(tmp_path / "empty", labels)
    # exports often name files by SOP Instance UID (a "suffix" of digits) or without suffix
    for s in slices[1:]:
        s.path.rename(s.path.with_name(str(s.sop_instance_uid)))
    (tmp_path / "rsna" / "dicom" / "notes.txt").write_text("not DICOM")
    assert len(index_folder(tmp_path / "rsna" / "dicom", labels)) == 11


def test_a_few_training_steps_reduce_the_loss(tmp_path: Path) -> None:
    labels_csv, _ = write_rsna_dataset(
        tmp_path / "rsna", patients=4, seed=13, n_slices=6, size=64, positive_fraction=1.0
    )
    indexed = index_folder(tmp_path / "rsna" / "dicom", read_labels(labels_csv))
    spec = input_spec(48, [0.3, 0.3, 0.2], [0.3, 0.3, 0.2])
    data = SliceDataset(indexed, spec, cache=True)
    torch.manual_seed(0)
    model = ICHNet("resnet18", 6, hidden=64, dropout=0.0)
    loss_fn = WeightedBCE(torch.tensor([LOSS_WEIGHTS[label] for label in LABELS]))
    result = fit(
        model,
        data,
        None,
        TrainConfig(epochs=4, batch_size=8, seed=0, device="cpu", progress=False),
        loss_fn=loss_fn,
        optimizer_factory=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses


def test_card_for_ich_needs_windows_and_an_any_label(tmp_path: Path) -> None:
    from pipelines.card import ExplainerSpec, LabelSpec, ModelCard, Provenance, WeightsSpec
    from pipelines.ich.labels import CODES
    from pipelines.ich.pipeline import IntracranialHemorrhage

    weights = tmp_path / "w.pt"
    torch.save(ICHNet("resnet18", 6).state_dict(), weights)
    from pipelines.card import sha256_file

    def card(**kw: object) -> ModelCard:
        base = {
            "name": "t",
            "pipeline": "ich",
            "version": "1",
            "architecture": "resnet18",
            "labels": [LabelSpec(name=n, code=CODES[n]) for n in LABELS],
            "input": input_spec(64, [0.5] * 3, [0.25] * 3),
            "explainer": ExplainerSpec(target_layer="backbone.layer3", top_k=1),
            "weights": WeightsSpec(file="w.pt", sha256=sha256_file(weights)),
            "provenance": Provenance(synthetic=True),
            "folder": tmp_path,
        }
        base.update(kw)
        return ModelCard(**base)

    IntracranialHemorrhage(card(), torch.device("cpu"))  # loads
    with pytest.raises(CardError, match="windows"):
        IntracranialHemorrhage(card(input=InputSpec(size=64)), torch.device("cpu"))
    renamed = [LabelSpec(name=n if n != "any" else "other", code=CODES[n]) for n in LABELS]
    with pytest.raises(CardError, match="'any'"):
        IntracranialHemorrhage(card(labels=renamed), torch.device("cpu"))
    with pytest.raises(CardError, match="options.aggregation"):
        IntracranialHemorrhage(card(options={"aggregation": "mean"}), torch.device("cpu"))
    with pytest.raises(CardError, match="do not fit"):
        IntracranialHemorrhage(card(architecture="resnet34"), torch.device("cpu"))
    ablation = ExplainerSpec(method="ablationcam", target_layer="backbone.layer3", top_k=1)
    with pytest.raises(CardError, match="copies of each slice"):
        IntracranialHemorrhage(card(explainer=ablation), torch.device("cpu"))


def test_split_spreads_every_subtype_and_keeps_patients_whole() -> None:
    from pipelines.ich.data import LabelledSlice
    from pipelines.ich.synth import series_hemorrhages

    plan = series_hemorrhages(60, seed=0, positive_fraction=0.75)
    slices = []
    for i, present in enumerate(plan):
        subtypes = tuple(int(label in present) for label in LABELS[:5])
        for k in range(3):  # three slices per patient
            slices.append(
                LabelledSlice(
                    Path(f"{i}-{k}"),
                    f"{i}-{k}",
                    f"{i}.{k}",
                    f"P{i}",
                    f"S{i}",
                    f"E{i}",
                    k / 2,
                    (*subtypes, int(any(subtypes))),
                )
            )
    parts = split_by_group(slices, (0.6, 0.2, 0.2), seed=0)
    assert [len({s.group for s in p}) for p in parts] == [36, 12, 12]
    for part in parts:
        positives = np.array([s.labels for s in part]).sum(axis=0)
        assert (positives > 0).all(), positives  # every label in every split
    groups = [{s.group for s in p} for p in parts]
    assert (
        not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    )
    assert split_by_group(slices, (0.6, 0.2, 0.2), seed=0) == parts  # reproducible
