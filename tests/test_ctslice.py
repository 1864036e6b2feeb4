"""The ``ct-slice-classifier`` pipeline (seed 000) without trained weights: maths, cards, CLI.

Windowing and HU, the series aggregation, Inception-v3 with its auxiliary
loss, every architecture a card may name, a new CT task by card alone, the
abdominal CT phantoms and their contrast attributes, and the command line
from phantoms to a parameter table, repeats and an evaluation. The demo
models are tested in ``test_ctslice_model.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml

from imaging.contrast import contrast_decision, contrast_state
from pipelines.base import PipelineInputError, SeriesInput
from pipelines.card import (
    CardError,
    CodeSpec,
    ExplainerSpec,
    InputSpec,
    LabelSpec,
    ModelCard,
    Provenance,
    WeightsSpec,
    WindowSpec,
    load_card,
    sha256_file,
    write_card,
)
from pipelines.common.aggregate import aggregate, key_slices
from pipelines.common.metrics import STUDY_METRICS, study_metrics
from pipelines.common.models import (
    build_classifier,
    default_target_layer,
    supported_architectures,
    target_layer,
)
from pipelines.common.preprocess import to_model_input
from pipelines.ctslice.data import (
    DataError,
    label_order,
    read_class_dir,
    read_slice_csv,
    split_slices,
)
from pipelines.ctslice.evaluate import slice_and_series_report
from pipelines.ctslice.pipeline import CtSliceClassifier, input_spec
from pipelines.ctslice.synth import (
    RESCALE_INTERCEPT,
    render_series,
    write_abdomen_dataset,
    write_abdomen_series,
)
from pipelines.ctslice.train import SliceRecipe, aux_train_step, load_grid, zero_init_residual
from pipelines.registry import get as get_pipeline

from dicom_validation import dciodvfy_errors

NORMAL = LabelSpec(
    name="normal", code=CodeSpec(value="17621005", scheme="SCT", meaning="Normal"), report=False
)
CHOLECYSTITIS = LabelSpec(
    name="cholecystitis",
    code=CodeSpec(value="76581006", scheme="SCT", meaning="Cholecystitis"),
    finding_site=CodeSpec(value="28231008", scheme="SCT", meaning="Gallbladder"),
)


def random_card(
    folder: Path,
    *,
    architecture: str = "mobilenet_v3_small",
    labels: list[LabelSpec] | None = None,
    size: int = 64,
    input_update: dict | None = None,
    options: dict | None = None,
    explainer: ExplainerSpec | None = None,
    seed: int = 0,
) -> Path:
    """A ``ct-slice-classifier`` card with random weights (speed and plumbing need no training)."""
    labels = labels or [NORMAL, CHOLECYSTITIS]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_classifier(architecture, len(labels))
    torch.save(model.state_dict(), folder / "weights.pt")
    card = ModelCard(
        name=folder.name,
        pipeline="ct-slice-classifier",
        version="0.0.1",
        architecture=architecture,
        labels=labels,
        input=InputSpec(size=size, **(input_update or {})),
        explainer=explainer
        or ExplainerSpec(target_layer=default_target_layer(architecture), top_k=1),
        weights=WeightsSpec(file="weights.pt", sha256=sha256_file(folder / "weights.pt")),
        provenance=Provenance(synthetic=True),
        options=options or {},
    )
    write_card(card, folder / "card.yaml")
    return folder / "card.yaml"


@pytest.fixture(scope="module")
def series_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """One patient's unenhanced and portal venous series with cholecystitis, 6 slices of 96 px."""
    root = tmp_path_factory.mktemp("ct-abdomen")
    return {
        kind: write_abdomen_series(
            root / kind,
            seed=31,
            index=2,
            contrast=kind,
            cholecystitis=True,
            n_slices=6,
            size=96,
            phase=None if kind == "unenhanced" else "portal_venous",
        )
        for kind in ("unenhanced", "enhanced")
    }


# -- windowing and Hounsfield units ------------------------------------------------------


def test_slices_are_windowed_hounsfield_units(series_pair: dict[str, list]) -> None:
    """Input = clip((stored x slope + intercept - (WL - WW/2)) / WW, 0, 1), then the card's mean/std."""
    slices = series_pair["enhanced"]
    rendered = render_series(31, 2, phase="portal_venous", cholecystitis=True, n_slices=6, size=96)
    ds = pydicom.dcmread(slices[3].path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, rendered.hu[3])
    assert int(ds.RescaleIntercept) == RESCALE_INTERCEPT

    spec = InputSpec(size=96, channels=1, mean=[0.2], std=[0.5], window_center=40, window_width=400)
    from pipelines.common.slices import read_slice

    _, image = read_slice(slices[3].path, spec)
    expected = np.clip((hu - (40 - 200)) / 400, 0.0, 1.0)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    x = to_model_input([image], spec)
    np.testing.assert_allclose(x[0, 0].numpy(), (expected - 0.2) / 0.5, atol=1e-5)

    # another slope / intercept, same HU: the same input
    ds2 = pydicom.dcmread(slices[3].path)
    stored = ((hu + 2048) / 2).astype(np.uint16)  # even HU only survive exactly: compare those
    ds2.PixelData = stored.tobytes()
    ds2.RescaleSlope, ds2.RescaleIntercept = 2, -2048
    ds2.BitsStored, ds2.HighBit = 16, 15
    ds2.save_as(slices[3].path.with_name("rescaled.dcm"))
    _, image2 = read_slice(slices[3].path.with_name("rescaled.dcm"), spec)
    even = (hu % 2) == 0
    np.testing.assert_allclose(image2[even], expected[even], atol=1e-6)
    slices[3].path.with_name("rescaled.dcm").unlink()


def test_a_card_without_window_gets_the_abdomen_window(tmp_path: Path) -> None:
    card = load_card(random_card(tmp_path / "plain"))
    spec = input_spec(card)
    assert (spec.window_center, spec.window_width) == (40.0, 400.0)
    windows = [
        WindowSpec(name=n, center=c, width=w) for n, c, w in (("a", 40, 400), ("b", 100, 700))
    ]
    multi = load_card(
        random_card(tmp_path / "multi", input_update={"channels": 2, "windows": windows})
    )
    assert input_spec(multi).windows == windows and input_spec(multi).window_center is None
    lung = load_card(
        random_card(tmp_path / "lung", input_update={"window_center": -600, "window_width": 1500})
    )
    assert (input_spec(lung).window_center, input_spec(lung).window_width) == (-600, 1500)


# -- aggregation -------------------------------------------------------------------------


def test_series_aggregation_and_key_slices() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    np.testing.assert_allclose(aggregate(probs, "max", 3), [0.95, 0.8])
    np.testing.assert_allclose(
        aggregate(probs, "top_k_mean", 3), [(0.95 + 0.9 + 0.6) / 3, (0.8 + 0.7 + 0.4) / 3]
    )
    np.testing.assert_allclose(aggregate(probs, "top_k_mean", 10), probs.mean(axis=0))
    np.testing.assert_allclose(aggregate(probs, "mean", 1), probs.mean(axis=0))
    np.testing.assert_allclose(aggregate(probs, "top_k_mean", 1), aggregate(probs, "max", 9))
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(probs, "median", 3)
    with pytest.raises(ValueError, match="k must be"):
        aggregate(probs, "top_k_mean", 0)
    with pytest.raises(ValueError, match="slices, labels"):
        aggregate(np.zeros((0, 2)), "max", 1)

    column = probs[:, 1]  # 0.1 0.8 0.4 0.7 0.05
    # top_k_mean k=2: the two it averaged (1, 3), then others >= threshold (none above 0.35 but 2)
    assert key_slices(column, "top_k_mean", 2, 0.35, 5) == [1, 3, 2]
    assert key_slices(column, "top_k_mean", 2, 0.35, 2) == [1, 3]
    assert key_slices(column, "max", 3, 0.5, 5) == [1, 3]  # max used one, then 0.7 >= 0.5
    assert key_slices(column, "max", 3, 0.9, 5) == [1]  # negative: the most suspicious slice
    assert key_slices(column, "mean", 3, 0.9, 5) == [1, 3, 2]


# -- architectures ------------------------------------------------------------------------


def test_inception_v3_trains_with_its_auxiliary_loss_and_evaluates_at_299() -> None:
    torch.manual_seed(0)
    model = build_classifier("inception_v3", 2, in_channels=1)
    assert model.fc.out_features == 2 and model.AuxLogits.fc.out_features == 2
    assert model.Conv2d_1a_3x3.conv.in_channels == 1
    assert target_layer(model, default_target_layer("inception_v3")) is model.Mixed_7c
    x, y = torch.randn(2, 1, 299, 299), torch.tensor([0, 1])
    model.train()
    step = aux_train_step(0.4)
    torch.manual_seed(1)
    loss = step(model, x, y)
    torch.manual_seed(1)  # same dropout draws: the same forward pass by hand
    out = model(x)
    ce = torch.nn.functional.cross_entropy
    expected = ce(out.logits, y) + 0.4 * ce(out.aux_logits, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > ce(out.logits, y).item()  # the auxiliary term counts
    loss.backward()
    assert model.AuxLogits.fc.weight.grad is not None
    assert float(model.AuxLogits.fc.weight.grad.abs().sum()) > 0
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 2)
    with pytest.raises(ValueError, match="299"):
        SliceRecipe(architecture="inception_v3", size=224)
    assert SliceRecipe(architecture="inception_v3", size=299).size == 299


def test_zero_init_residual_starts_residual_blocks_as_identity() -> None:
    model = build_classifier("mobilenet_v3_large", 2)
    assert zero_init_residual(model) == 10
    x = torch.randn(1, 16, 32, 32)
    block = model.features[2]  # 16 -> 24 channels, no residual: untouched
    assert not block.use_res_connect
    residual = model.features[3]
    assert residual.use_res_connect
    residual.eval()
    y = torch.randn(1, 24, 16, 16)
    torch.testing.assert_close(residual(y), y)
    assert zero_init_residual(build_classifier("resnet18", 2)) == 8
    assert zero_init_residual(build_classifier("densenet121", 2)) == 0
    del x


@pytest.mark.parametrize("architecture", supported_architectures())
def test_every_card_architecture_runs_through_the_pipeline(
    architecture: str, tmp_path: Path, series_pair: dict[str, list]
) -> None:
    """Build from a card, score a series, explain the top slice with the default CAM layer."""
    size = 80 if architecture == "inception_v3" else 64
    card = load_card(random_card(tmp_path / architecture, architecture=architecture, size=size))
    pipeline = CtSliceClassifier(card, torch.device("cpu"))
    slices = series_pair["unenhanced"]
    result = pipeline.run([SeriesInput("s", tuple(s.path for s in slices))])
    (finding,) = result.findings
    assert finding.label == "cholecystitis" and 0.0 <= finding.probability <= 1.0
    assert 1 <= len(finding.source_sop_instance_uids) <= 5
    (heatmap,) = result.heatmaps
    assert heatmap.array.shape == (96, 96) and heatmap.sop_instance_uid in {
        s.sop_instance_uid for s in slices
    }


def test_inception_card_too_small_is_refused(tmp_path: Path) -> None:
    card = load_card(random_card(tmp_path / "inc", architecture="inception_v3", size=64))
    with pytest.raises(CardError, match="input.size >= 75"):
        CtSliceClassifier(card, torch.device("cpu"))


# -- a new CT task by card alone -----------------------------------------------------------


def test_a_new_ct_task_runs_by_card_alone(tmp_path: Path, series_pair: dict[str, list]) -> None:
    """A pulmonary-embolism card: its own labels, codes, window and aggregation, random weights."""
    pe = LabelSpec(
        name="pulmonary_embolism",
        code=CodeSpec(value="59282003", scheme="SCT", meaning="Pulmonary embolism"),
        threshold=0.3,
    )
    other = LabelSpec(
        name="other_finding",
        code=CodeSpec(value="OTHER", scheme="99LOCAL", meaning="Other finding"),
        threshold=0.99,
    )
    path = random_card(
        tmp_path / "ct-pe-site",
        architecture="resnet18",
        labels=[NORMAL, pe, other],
        size=64,
        input_update={"channels": 3, "window_center": 100, "window_width": 700},
        options={"aggregation": "max", "max_key_slices": 2},
        explainer=ExplainerSpec(target_layer="layer3", top_k=2),
    )
    card = load_card(path)
    pipeline = get_pipeline("ct-slice-classifier")(card, torch.device("cpu"))
    series = [
        SeriesInput(kind, tuple(s.path for s in slices)) for kind, slices in series_pair.items()
    ]
    result = pipeline.run(series)
    # one finding per series and reported label, from the card
    assert [(f.label, f.code.value) for f in result.findings] == [
        ("pulmonary_embolism", "59282003"),
        ("other_finding", "OTHER"),
    ] * 2
    assert len(result.heatmaps) == 4  # top_k per series

    # the numbers: the card's window (100 / 700), max over slices, thresholds per label
    from pipelines.common.slices import read_slice

    model = build_classifier("resnet18", 3)
    model.load_state_dict(torch.load(card.weights_path, weights_only=True))
    model.eval()
    for s_index, slices in enumerate(series_pair.values()):
        images = []
        for s in slices:
            ds = pydicom.dcmread(s.path)
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            images.append(np.clip((hu - (100 - 350)) / 700, 0, 1).astype(np.float32))
            np.testing.assert_allclose(read_slice(s.path, pipeline.spec)[1], images[-1], atol=1e-6)
        with torch.no_grad():
            p = torch.softmax(model(to_model_input(images, card.input)), dim=1).numpy()
        found = result.findings[2 * s_index : 2 * s_index + 2]
        for f, column, label in zip(found, (1, 2), (pe, other), strict=True):
            assert f.probability == pytest.approx(float(p[:, column].max()), abs=1e-5)
            assert f.present == (f.probability >= label.threshold)
            order = np.argsort(-p[:, column], kind="stable")
            assert f.source_sop_instance_uids[0] == slices[int(order[0])].sop_instance_uid
            assert len(f.source_sop_instance_uids) <= 2
        assert {h.sop_instance_uid for h in result.heatmaps[2 * s_index : 2 * s_index + 2]} <= {
            s.sop_instance_uid for s in slices
        }


def test_contrast_mismatch_is_logged_not_refused(
    tmp_path: Path, series_pair: dict[str, list], caplog: pytest.LogCaptureFixture
) -> None:
    card = load_card(random_card(tmp_path / "c", options={"contrast": "enhanced"}))
    pipeline = CtSliceClassifier(card, torch.device("cpu"))
    plain = series_pair["unenhanced"]
    with caplog.at_level(logging.WARNING, logger="pipelines.ctslice.pipeline"):
        result = pipeline.run([SeriesInput("plain-uid", tuple(s.path for s in plain))])
    assert len(result.findings) == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "plain-uid" in warning.getMessage() and "unenhanced" in warning.getMessage()
    assert "PHANTOM" not in warning.getMessage()  # no patient name
    caplog.clear()
    enhanced = series_pair["enhanced"]
    with caplog.at_level(logging.WARNING, logger="pipelines.ctslice.pipeline"):
        pipeline.run([SeriesInput("pv", tuple(s.path for s in enhanced))])
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_invalid_cards_and_inputs_fail_with_the_reason(tmp_path: Path) -> None:
    card = load_card(random_card(tmp_path / "bad", options={"aggregation": "median"}))
    with pytest.raises(CardError, match="options.aggregation"):
        CtSliceClassifier(card, torch.device("cpu"))
    card = load_card(
        random_card(tmp_path / "none", labels=[NORMAL, NORMAL.model_copy(update={"name": "x"})])
    )
    with pytest.raises(CardError, match="report: true"):
        CtSliceClassifier(card, torch.device("cpu"))
    pipeline = CtSliceClassifier(load_card(random_card(tmp_path / "ok")), torch.device("cpu"))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(PipelineInputError, match="not a readable DICOM file"):
        pipeline.run([SeriesInput("x", (junk,))])


# -- phantoms ----------------------------------------------------------------------------


def test_phantoms_carry_real_contrast_attributes_and_pass_dciodvfy(
    series_pair: dict[str, list], tmp_path: Path
) -> None:
    enhanced = pydicom.dcmread(series_pair["enhanced"][0].path)
    plain = pydicom.dcmread(series_pair["unenhanced"][0].path)
    assert enhanced.ContrastBolusAgent and enhanced.ContrastBolusRoute == "IV"
    assert float(enhanced.ContrastBolusVolume) > 0
    assert "ContrastBolusAgent" not in plain and "ContrastBolusRoute" not in plain
    assert enhanced.BodyPartExamined == plain.BodyPartExamined == "ABDOMEN"
    assert contrast_state(enhanced) == "enhanced" and contrast_state(plain) == "unenhanced"
    for ds in (enhanced, plain):
        assert dciodvfy_errors(ds) == [], ds.SeriesDescription
    # every variant the generator writes is routed as what it is
    seen = set()
    for index in range(24):
        for kind in ("enhanced", "unenhanced"):
            (s,) = write_abdomen_series(
                tmp_path / f"{kind}{index}",
                seed=5,
                index=index,
                contrast=kind,
                cholecystitis=False,
                n_slices=4,
                size=64,
            )[:1]
            ds = pydicom.dcmread(s.path, stop_before_pixels=True)
            decision = contrast_decision(ds)
            assert decision.state == kind, (ds.SeriesDescription, decision.because)
            seen.add((kind, str(ds.SeriesDescription), "ContrastBolusAgent" in ds))
    descriptions = {d for k, d, _ in seen if k == "enhanced"}
    assert len(descriptions) >= 4  # PV and arterial, with and without a contrast word
    assert "ABDOMEN 5mm" in descriptions  # only the Contrast/Bolus module tells


def test_phantom_labels_geometry_and_pairs(tmp_path: Path) -> None:
    sick = render_series(8, 1, phase="unenhanced", cholecystitis=True, n_slices=8, size=96)
    well = render_series(8, 1, phase="unenhanced", cholecystitis=False, n_slices=8, size=96)
    assert sick.gallbladder_slices == well.gallbladder_slices and sick.gallbladder_slices
    assert [k for k, lab in enumerate(sick.labels) if lab == "cholecystitis"] == list(
        sick.gallbladder_slices
    )
    assert set(well.labels) == {"normal"}
    # the finding changes the pixels only on the gallbladder's slices, around it
    diff = np.abs(sick.hu - well.hu) > 0
    others = [k for k in range(8) if k not in sick.gallbladder_slices]
    assert not diff[others].any()
    rows, cols = np.nonzero(diff[sick.gallbladder_slices[0]])
    r0, c0 = sick.gallbladder_centre
    assert np.hypot(rows - r0, cols - c0).max() < 30  # within ~11 cm of its centre
    # deterministic: the same dataset twice is the same bytes
    a_csv, a = write_abdomen_dataset(tmp_path / "a", patients=2, seed=4, n_slices=4, size=64)
    b_csv, b = write_abdomen_dataset(tmp_path / "b", patients=2, seed=4, n_slices=4, size=64)
    assert [s.path.read_bytes() for s in a] == [s.path.read_bytes() for s in b]
    assert len({s.series_instance_uid for s in a}) == 4  # two phases per patient
    assert len({s.study_instance_uid for s in a}) == 2  # in one study each
    rows_csv = list(csv.DictReader(a_csv.open()))
    assert [r["sop_instance_uid"] for r in rows_csv] == [s.sop_instance_uid for s in a]


# -- data --------------------------------------------------------------------------------


def test_slice_csv_class_folders_and_patient_split(tmp_path: Path) -> None:
    csv_path, slices = write_abdomen_dataset(
        tmp_path / "d", patients=6, seed=2, contrast="unenhanced", n_slices=4, size=64
    )
    read = read_slice_csv(csv_path)
    assert [s.sop_instance_uid for s in read] == [s.sop_instance_uid for s in slices]
    # identifiers come from the headers when the CSV has only path and label
    short = tmp_path / "short.csv"
    short.write_text(
        "path,label\n" + "".join(f"{s.path},{s.label}\n" for s in slices), encoding="utf-8"
    )
    assert read_slice_csv(short) == read
    # class folders: DIR/<label>/...
    for s in slices:
        target = tmp_path / "classes" / s.label / s.patient_id / s.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s.path.read_bytes())
    (tmp_path / "classes" / "normal" / "notes.txt").write_text("not dicom")
    by_dir = read_class_dir(tmp_path / "classes")
    assert sorted((s.sop_instance_uid, s.label) for s in by_dir) == sorted(
        (s.sop_instance_uid, s.label) for s in read
    )
    assert label_order(read) == ("normal", "cholecystitis")
    with pytest.raises(DataError, match="does not list"):
        label_order(read, ["normal"])
    parts = split_slices(read, (0.5, 0.25, 0.25), label_order(read), seed=0)
    groups = [{s.group for s in p} for p in parts]
    assert sum(len(g) for g in groups) == 6 and not (groups[0] & groups[1] or groups[0] & groups[2])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.dcm,normal\n")
    with pytest.raises(DataError, match="path, label"):
        read_slice_csv(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nnowhere.dcm,normal\n")
    with pytest.raises(DataError, match="missing.csv:2"):
        read_slice_csv(missing)


def test_grid_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "grid.yaml"
    good.write_text("- {architecture: resnet18, lr: 0.01}\n- {epochs: 3, optimizer: sgd}\n")
    assert load_grid(good) == [
        {"architecture": "resnet18", "lr": 0.01},
        {"epochs": 3, "optimizer": "sgd"},
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {architecture: resnet18, learning_rate: 0.01}\n")
    with pytest.raises(DataError, match="learning_rate"):
        load_grid(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({"settings": [{"lr": 0.1}]}))
    assert load_grid(nested) == [{"lr": 0.1}]


def test_slice_and_series_report_counts_by_hand() -> None:
    """Three series; aggregation top-2 mean; reported label 1."""
    probs = np.array(
        [
            [0.9, 0.1], [0.3, 0.7], [0.4, 0.6],  # series a: truth positive, top2 mean 0.65
            [0.8, 0.2], [0.7, 0.3], [0.45, 0.55],  # series b: truth negative, top2 0.425
            [0.2, 0.8], [0.9, 0.1], [0.95, 0.05],  # series c: truth positive, top2 0.45
        ]
    )  # fmt: skip
    targets = np.array([0, 1, 1, 0, 0, 0, 1, 0, 0])
    series = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    report = slice_and_series_report(
        probs, targets, series, ["normal", "x"], [1], [0.5, 0.5],
        aggregation="top_k_mean", k=2, n_bootstrap=50, seed=0,
    )  # fmt: skip
    # slices: calls 0 1 1 0 0 1 1 0 0 vs truth 0 1 1 0 0 0 1 0 0: one false positive
    assert report["slice"]["confusion_matrix"] == {"tn": 5, "fp": 1, "fn": 0, "tp": 3}
    expected = study_metrics(targets, (probs[:, 1] >= 0.5).astype(int))
    for name in STUDY_METRICS:
        assert report["slice"][name]["value"] == pytest.approx(expected[name], nan_ok=True)
    # series: a positive (0.65), b negative (0.425), c missed (0.45)
    assert report["series"]["confusion_matrix"] == {"tn": 1, "fp": 0, "fn": 1, "tp": 1}
    assert report["series"]["sensitivity"]["value"] == 0.5
    assert report["per_class"]["x"]["support"] == 3


# -- command line ------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cli_synth_train_grid_repeats_evaluate(tmp_path: Path) -> None:
    """Tiny data: 8 patients x 4 slices of 64 px, a 2-setting grid of one epoch, 2 repeats."""
    data = tmp_path / "data"
    done = _cli(
        "synth", "ct-abdomen", "--out", str(data), "--patients", "8", "--slices", "4",
        "--size", "64", "--contrast", "unenhanced", "--seed", "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "32 synthetic abdominal CT slices in 8 series" in done.stdout
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "- {architecture: mobilenet_v3_small, lr: 0.003}\n"
        "- {architecture: mobilenet_v3_small, lr: 0.001, batch_size: 4}\n"
    )
    model = tmp_path / "ct-gb-tiny"
    done = _cli(
        "train", "ct-slice-classifier", "--slices", str(data / "slices.csv"), "--out", str(model),
        "--grid", str(grid), "--repeats", "2", "--size", "64", "--epochs", "1",
        "--batch-size", "8", "--split", "0.5", "0.25", "0.25", "--bootstrap-resamples", "50",
        "--synthetic", "--device", "cpu", "--contrast", "unenhanced",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "model ready" in done.stdout and "Sensitivity (Recall P)" in done.stdout
    card = load_card(model / "card.yaml")
    assert card.pipeline == "ct-slice-classifier" and card.provenance.synthetic
    assert [label.name for label in card.labels] == ["normal", "cholecystitis"]
    assert card.labels[1].code.value == "76581006" and not card.labels[0].report
    assert card.options["contrast"] == "unenhanced"
    assert (card.input.window_center, card.input.window_width) == (40.0, 400.0)
    # the parameter table: one row per setting, exactly one chosen
    runs = list(csv.DictReader((model / "train" / "runs.csv").open()))
    assert [r["lr"] for r in runs] == ["0.003", "0.001"] and [r["batch_size"] for r in runs] == [
        "8",
        "4",
    ]
    assert sorted(r["chosen"] for r in runs) == ["0", "1"]
    assert all(0 <= float(r["val_accuracy"]) <= 1 for r in runs)
    chosen = next(r for r in runs if r["chosen"] == "1")
    assert card.provenance.recipe["batch_size"] == int(chosen["batch_size"])
    # repeats: two rows with other seeds; the card's summary is their mean
    repeats = list(csv.DictReader((model / "train" / "repeats.csv").open()))
    assert [r["seed"] for r in repeats] == ["1", "2"]
    summary = card.metrics["held_out_test"]["repeats"]["summary"]
    for name in STUDY_METRICS:
        values = [float(r[name]) for r in repeats if r[name] != "nan"]
        if values:
            assert summary[name]["mean"] == pytest.approx(np.mean(values), abs=1e-3)
            assert summary[name]["n"] == len(values)
    assert not (model / "train" / "runs").exists()  # checkpoints removed
    # evaluate on the same phantoms: every slice scored, series count, CI bounds
    out = tmp_path / "eval"
    done = _cli(
        "evaluate", "ct-slice-classifier", "--model", str(model), "--slices",
        str(data / "slices.csv"), "--out", str(out), "--bootstrap", "50",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text, "an undefined metric is null: strict JSON readers refuse NaN"
    metrics = json.loads(text)
    assert metrics["slice"]["n"] == 32 and metrics["series"]["n"] == 8
    assert metrics["series"]["n_positive"] == 4  # positive fraction 0.5 of 8 patients
    cm = metrics["slice"]["confusion_matrix"]
    assert sum(cm.values()) == 32
    for name in STUDY_METRICS:
        entry = metrics["slice"][name]
        if None not in (entry["value"], entry["ci_low"], entry["ci_high"]):  # defined
            assert entry["ci_low"] - 1e-9 <= entry["value"] <= entry["ci_high"] + 1e-9
    assert "Precision (N)" in done.stdout and "macro avg" in done.stdout
    # a card's label that the data lack is fine; a data label the card lacks is refused
    rows = (data / "slices.csv").read_text().replace(",normal,", ",other,", 1)
    (tmp_path / "other.csv").write_text(rows)
    done = _cli(
        "evaluate", "ct-slice-classifier", "--model", str(model), "--slices",
        str(tmp_path / "other.csv"), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 2 and "other" in done.stderr
