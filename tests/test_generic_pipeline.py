"""The generic classifier pipeline, its shared building blocks, and the real demo model.

Fast tests use a randomly initialised model written as a card in a temporary
folder. Tests marked ``slow`` build the real demo model once per session
(minutes on 2 CPU cores) into a temporary models folder and check that it
works on phantoms it has never seen.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from pydicom.data import get_testdata_file
from torch.utils.data import TensorDataset

from pipelines import registry
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
    load_card,
    sha256_file,
    write_card,
)
from pipelines.common.cam import compute_heatmaps
from pipelines.common.models import build_classifier, supported_architectures, target_layer
from pipelines.common.phantoms import (
    PhantomFile,
    dataset_labels,
    write_radiograph_dataset,
    write_radiograph_study,
)
from pipelines.common.preprocess import display_image, to_model_input
from pipelines.common.train import (
    CheckpointMismatchError,
    TrainConfig,
    fit,
    predict,
    sgd,
    stratified_kfold,
)
from pipelines.generic.demo import split_seed
from pipelines.generic.pipeline import GenericClassifier

from bars import Bar, check

CPU = torch.device("cpu")
LESION = CodeSpec(value="52988006", scheme="SCT", meaning="Lesion")
NORMAL = CodeSpec(value="17621005", scheme="SCT", meaning="Normal")
LUNG = CodeSpec(value="39607008", scheme="SCT", meaning="Lung")


def write_test_card(folder: Path, *, top_k: int = 2, seed: int = 0) -> Path:
    """A card for a random (untrained) ResNet-18 at 64 pixels: fast to load and run."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_classifier("resnet18", 2)
    torch.save(model.state_dict(), folder / "weights.pt")
    card = ModelCard(
        name="test-random",
        pipeline="generic",
        version="0.0.1",
        description="random weights for tests",
        architecture="resnet18",
        labels=[
            LabelSpec(name="normal", code=NORMAL, report=False),
            LabelSpec(name="lesion", code=LESION, threshold=0.5, finding_site=LUNG),
        ],
        input=InputSpec(size=64),
        explainer=ExplainerSpec(method="gradcam", target_layer="layer3", top_k=top_k),
        weights=WeightsSpec(file="weights.pt", sha256=sha256_file(folder / "weights.pt")),
        provenance=Provenance(synthetic=True, data="none: random initialisation"),
    )
    write_card(card, folder / "card.yaml")
    return folder / "card.yaml"


@pytest.fixture
def random_pipeline(tmp_path: Path) -> GenericClassifier:
    return GenericClassifier(load_card(write_test_card(tmp_path / "card")), CPU)


# -- models, preprocessing, CAM ---------------------------------------------------------


def test_registry_serves_the_generic_classifier() -> None:
    assert registry.get("generic") is GenericClassifier


def test_build_classifier_replaces_the_head_and_resolves_layers() -> None:
    model = build_classifier("mobilenet_v3_small", 3, in_channels=1)
    model.eval()
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 3)
    assert target_layer(model, "features.-1") is model.features[-1]
    with pytest.raises(ValueError, match="must be one of"):
        build_classifier("resnet9000", 2)
    with pytest.raises(ValueError, match="no child 'layer9'"):
        target_layer(build_classifier("resnet18", 2), "layer9")
    assert "resnet18" in supported_architectures()


def test_build_classifier_loads_a_local_pretrained_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = build_classifier("mobilenet_v3_small", 1000)
    torch.save(reference.state_dict(), tmp_path / "imagenet.pt")
    model = build_classifier("mobilenet_v3_small", 2, pretrained_path=tmp_path / "imagenet.pt")
    assert torch.equal(
        model.features[3].block[0][0].weight, reference.features[3].block[0][0].weight
    )
    assert model.classifier[-1].out_features == 2
    with pytest.raises(FileNotFoundError, match="train from scratch"):
        build_classifier("resnet18", 2, pretrained_path=tmp_path / "missing.pt")


def test_preprocess_resizes_replicates_and_normalises(tmp_path: Path) -> None:
    f = write_radiograph_study(tmp_path, seed=1, index=0, lesion=False, size=128)
    ds = pydicom.dcmread(f.path)
    spec = InputSpec(size=32, channels=3, mean=[0.5], std=[0.25])
    image = display_image(ds, spec)
    assert image.shape == (128, 128) and image.min() >= 0.0 and image.max() <= 1.0
    batch = to_model_input([image, image], spec)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.equal(batch[:, 0], batch[:, 2])
    assert -2.0 <= float(batch.min()) and float(batch.max()) <= 2.0
    # a fixed window from the card instead of the object's VOI, inverted for MONOCHROME1
    fixed = InputSpec(size=32, window_center=1000.0, window_width=1000.0)
    windowed = display_image(ds, fixed)
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(display_image(ds, fixed), 1.0 - windowed)
    with pytest.raises(ValueError, match="input.mean has 2 values"):
        to_model_input([image], InputSpec(size=32, channels=3, mean=[0.5, 0.5]))


def test_cam_heatmaps_are_unit_range_at_the_source_shape() -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 2)
    maps = compute_heatmaps(
        model,
        torch.randn(3, 3, 64, 64),
        target_layer="layer4",
        class_indices=[1, 1, 0],
        output_shapes=[(100, 80), (64, 64), (30, 200)],
    )
    assert [m.shape for m in maps] == [(100, 80), (64, 64), (30, 200)]
    for m in maps:
        assert m.dtype == np.float32 and m.min() >= 0.0 and m.max() <= 1.0
    with pytest.raises(ValueError, match="explainer.method must be one of"):
        compute_heatmaps(model, torch.randn(1, 3, 64, 64), target_layer="layer4", method="magic")


def test_cam_with_the_graph_cut_at_the_layer_equals_the_library_on_a_full_graph() -> None:
    """compute_heatmaps only records autograd from the target layer on; the maps must not change."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    model = build_classifier("resnet18", 3).eval()
    x = torch.randn(2, 3, 64, 64)
    ours = compute_heatmaps(model, x, target_layer="layer3", class_indices=[2, 0])
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards
    with GradCAM(model=model, target_layers=[model.layer3]) as cam:
        full = cam(
            input_tensor=x.clone().requires_grad_(True),
            targets=[ClassifierOutputTarget(2), ClassifierOutputTarget(0)],
        )
    for mine, theirs in zip(ours, full, strict=True):
        np.testing.assert_allclose(mine, np.clip(theirs, 0, 1), atol=1e-5)


# -- training loop ----------------------------------------------------------------------


def _tiny_data(n: int = 24, seed: int = 0) -> TensorDataset:
    """Bright square present (1) or not (0) on noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.3
    y = torch.arange(n) % 2
    x[y == 1, :, 10:20, 10:20] += 2.0
    return TensorDataset(x, y)


def _ce(model: torch.nn.Module, data: TensorDataset) -> float:
    logits, targets = predict(model, data, device="cpu")
    return float(torch.nn.functional.cross_entropy(logits, targets))


def test_a_few_training_steps_reduce_the_loss() -> None:
    data = _tiny_data()
    torch.manual_seed(0)
    model = build_classifier("resnet18", 2)
    before = _ce(model, data)
    result = fit(
        model,
        data,
        data,
        TrainConfig(epochs=4, batch_size=8, seed=0, device="cpu", progress=False),
        optimizer_factory=sgd(lr=0.01),
    )
    assert len(result.history) == 4  # 12 SGD steps
    assert _ce(model, data) < before
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert 1 <= result.best_epoch <= 4


def _small_cnn() -> torch.nn.Module:
    """Tiny CNN with BatchNorm and dropout: fast, and exercises running stats and the RNG."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(8, 2),
    )


def test_training_resumes_from_a_checkpoint_and_is_deterministic(tmp_path: Path) -> None:
    data, val = _tiny_data(16, seed=1), _tiny_data(8, seed=2)

    def run(out_dir: Path, epochs: int) -> tuple[torch.nn.Module, int]:
        torch.manual_seed(0)
        model = _small_cnn()
        config = TrainConfig(epochs=epochs, batch_size=8, seed=3, device="cpu", progress=False)
        result = fit(model, data, val, config, out_dir=out_dir, val_metric=None)
        return model, result.resumed_from

    straight, resumed_from = run(tmp_path / "a", 3)
    assert resumed_from == 0 and (tmp_path / "a" / "checkpoint.pt").is_file()
    run(tmp_path / "b", 2)
    resumed, resumed_from = run(tmp_path / "b", 3)
    assert resumed_from == 2
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name

    with pytest.raises(CheckpointMismatchError, match="delete it"):
        torch.manual_seed(0)
        fit(
            _small_cnn(),
            data,
            val,
            TrainConfig(epochs=4, batch_size=4, seed=3, device="cpu", progress=False),
            out_dir=tmp_path / "b",
        )


def test_stratified_kfold_covers_every_case_once() -> None:
    labels = [0] * 7 + [1] * 5
    folds = stratified_kfold(labels, k=3, seed=0)
    seen = np.sort(np.concatenate([val for _, val in folds]))
    assert seen.tolist() == list(range(12))
    for train, val in folds:
        assert not set(train) & set(val)
        assert 1 <= sum(labels[i] for i in val) <= 2


# -- the pipeline ------------------------------------------------------------------------


def test_pipeline_reports_one_finding_per_image_and_heatmaps_for_top_k(
    random_pipeline: GenericClassifier, tmp_path: Path
) -> None:
    files = write_radiograph_dataset(tmp_path / "series", n=3, seed=5, size=128)
    series = SeriesInput(files[0].series_instance_uid, tuple(f.path for f in files))
    result = random_pipeline.run([series])
    assert result.skipped == []
    assert len(result.findings) == 3  # one reported label ("lesion") x three images
    for finding, f in zip(result.findings, files, strict=True):
        assert finding.label == "lesion"
        assert finding.code.value == "52988006" and finding.finding_site.value == "39607008"
        assert finding.source_sop_instance_uids == (f.sop_instance_uid,)
        assert 0.0 <= finding.probability <= 1.0
        assert finding.present == (finding.probability >= 0.5)
    probs = {f.source_sop_instance_uids[0]: f.probability for f in result.findings}
    assert len(result.heatmaps) == 2  # card top_k
    top2 = sorted(probs, key=probs.get, reverse=True)[:2]
    assert [h.sop_instance_uid for h in result.heatmaps] == top2
    for h in result.heatmaps:
        assert h.array.shape == (128, 128) and h.array.dtype == np.float32
        assert 0.0 <= h.array.min() and h.array.max() <= 1.0
        assert h.label == "lesion"


def test_pipeline_skips_objects_it_cannot_use_with_a_reason(
    random_pipeline: GenericClassifier, tmp_path: Path
) -> None:
    image = write_radiograph_study(tmp_path, seed=6, index=0, lesion=True, size=96)
    sr = Path(get_testdata_file("reportsi.dcm", download=False))
    no_pixels = tmp_path / "no_pixels.dcm"
    ds = pydicom.dcmread(image.path)
    del ds.PixelData
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.save_as(no_pixels)
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    series = SeriesInput(image.series_instance_uid, (sr, image.path, no_pixels, text))
    result = random_pipeline.run([series])
    assert [f.source_sop_instance_uids for f in result.findings] == [(image.sop_instance_uid,)]
    reasons = dict(result.skipped)
    assert "no Pixel Data" in reasons[str(pydicom.dcmread(sr).SOPInstanceUID)]
    assert "no Pixel Data" in reasons["1.2.826.0.1.3680043.8.498.1"]
    assert "not a readable DICOM file" in reasons["notes.txt"]

    with pytest.raises(PipelineInputError, match="no Pixel Data"):
        random_pipeline.run([SeriesInput("1.2.3", (sr, no_pixels))])


def test_pipeline_logs_uids_never_patient_names(
    random_pipeline: GenericClassifier, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = write_radiograph_study(tmp_path, seed=7, index=0, lesion=True, patient_name="SECRET^NAME")
    sr = Path(get_testdata_file("reportsi.dcm", download=False))
    with caplog.at_level(logging.DEBUG):
        random_pipeline.run([SeriesInput(f.series_instance_uid, (f.path, sr))])
    assert f.sop_instance_uid in caplog.text
    assert "SECRET" not in caplog.text
    assert str(pydicom.dcmread(sr).PatientName) not in caplog.text


def test_weights_that_do_not_fit_the_card_are_refused(tmp_path: Path) -> None:
    card_path = write_test_card(tmp_path / "card")
    raw = yaml.safe_load(card_path.read_text())
    raw["labels"].append({"name": "other", "code": LESION.model_dump()})  # 3 outputs, 2 in file
    card_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CardError, match="resnet18 backbone, 3 outputs"):
        GenericClassifier(load_card(card_path), CPU)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    card_path = write_test_card(tmp_path / "card")
    load_card(card_path)
    weights = card_path.parent / "weights.pt"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(CardError, match="refusing to load"):
        load_card(card_path)


# -- the real demo model (slow) -----------------------------------------------------------

#: Fresh held-out phantoms: a seed that is not of the form ``seed * 1000 + split`` used by
#: the build (see pipelines.generic.demo.split_seed), so none of these images was trained on.
FRESH_SEED = 424_242_7
N_FRESH = 100
#: Accuracy bar on the fresh phantoms. The lesions are conspicuous and the seed-0 build
#: reaches 0.99 on its own held-out set; with 100 cases and a true accuracy of 0.97 the chance
#: of observing < 0.90 is below 0.1 % (binomial), so the bar catches a broken model or
#: preprocessing drift without being flaky across platforms.
#: Over five builds (bench.demo_spread): worst 0.95 (avx512-cnr), mean 0.986, sd 0.02.
ACCURACY_BAR = Bar("generic.fresh.accuracy", 0.90)
#: The demo card explains with Grad-CAM on ResNet-18's layer2: a 16x16 grid at 128 input, so
#: the bilinear peak lands at a cell centre up to ~11 source pixels from where the model
#: responds. A hit is the peak inside the lesion (radius 15-26 px) dilated by 8 px. If the
#: peak fell at random in the lungs it would hit ~15 % of the time. How often it hits is a
#: property of the trained weights: the one-thread seed-0 build (every demo build since the
#: builds run in parallel) hits 0.68 of its 50 true positives here (layer1 0.68, layer3 0.20),
#: an earlier two-thread build 0.86-0.96; the bar is well above chance and below both.
CAM_MARGIN_PX = 8.0
#: Over five builds: worst 0.60 (avx2 seed 0), mean 0.81, sd 0.16: the bar is mean - 3 sd,
#: still twice what a peak falling at random in the lungs would hit.
CAM_HIT_BAR = Bar("generic.fresh.cam_peak_in_lesion", 0.3)


@pytest.fixture(scope="session")
def fresh_phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[PhantomFile]:
    return write_radiograph_dataset(tmp_path_factory.mktemp("fresh"), n=N_FRESH, seed=FRESH_SEED)


@pytest.mark.slow
def test_demo_card_is_honest_about_what_it_is(demo_card: Path) -> None:
    card = load_card(demo_card)
    assert card.pipeline == "generic" and card.architecture == "resnet18"
    assert card.provenance.synthetic and not card.provenance.clinical_use
    assert not card.for_diagnostic_use
    assert "NOT FOR CLINICAL USE" in card.description and "synthetic" in card.description
    assert [label.name for label in card.labels] == ["normal", "lesion"]
    assert card.labels[1].code.value == "52988006" and card.labels[0].report is False
    recipe = card.provenance.recipe
    assert (recipe["optimizer"], recipe["lr"], recipe["momentum"]) == ("SGD", 0.001, 0.9)
    assert recipe["loss"] == "cross_entropy" and recipe["pretrained"] is False
    test = card.metrics["held_out_test"]
    assert test["n"] == recipe["n_test"]
    for name in ("accuracy", "recall", "f1"):
        assert test[name]["ci_low"] <= test[name]["value"] <= test[name]["ci_high"]
    cm = test["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == test["n_positive"]


@pytest.mark.slow
def test_demo_card_metrics_are_measured_not_claimed(demo_card: Path) -> None:
    """The pipeline, run on the build's own held-out phantoms, reproduces the card's numbers."""
    card = load_card(demo_card)
    test = card.metrics["held_out_test"]
    files = sorted((demo_card.parent / "train" / "phantoms" / "test").glob("phantom_*.dcm"))
    assert len(files) == test["n"]
    labels = dataset_labels(n=len(files), seed=split_seed(card.provenance.seed or 0, "test"))
    truth = {pydicom.dcmread(p).SOPInstanceUID: bool(labels[i]) for i, p in enumerate(files)}
    result = GenericClassifier(card, CPU).run([SeriesInput("test", tuple(files))])
    correct = [f.present == truth[f.source_sop_instance_uids[0]] for f in result.findings]
    assert len(correct) == test["n"]
    assert np.mean(correct) == pytest.approx(test["accuracy"]["value"])
    tp = sum(f.present and truth[f.source_sop_instance_uids[0]] for f in result.findings)
    assert tp == test["confusion_matrix"]["tp"]


@pytest.mark.slow
def test_demo_model_classifies_unseen_phantoms_and_looks_at_the_lesion(
    demo_card: Path, fresh_phantoms: list[PhantomFile]
) -> None:
    card = load_card(demo_card)
    # explain every image, not just the card's top 3, to measure localisation
    card = card.model_copy(
        update={"explainer": card.explainer.model_copy(update={"top_k": N_FRESH})}
    )
    pipeline = GenericClassifier(card, CPU)
    series = SeriesInput("fresh", tuple(f.path for f in fresh_phantoms))
    result = pipeline.run([series])
    truth = {f.sop_instance_uid: f for f in fresh_phantoms}
    assert len(result.findings) == N_FRESH
    correct = [
        f.present == truth[f.source_sop_instance_uids[0]].has_lesion for f in result.findings
    ]
    check((ACCURACY_BAR, float(np.mean(correct))))

    present = {f.source_sop_instance_uids[0] for f in result.findings if f.present}
    hits = []
    for heatmap in result.heatmaps:
        phantom = truth[heatmap.sop_instance_uid]
        if not (phantom.has_lesion and heatmap.sop_instance_uid in present):
            continue  # localisation is judged on true positives
        row, col = np.unravel_index(np.argmax(heatmap.array), heatmap.array.shape)
        hits.append(bool(phantom.lesion.mask(heatmap.array.shape, margin=CAM_MARGIN_PX)[row, col]))
    assert len(hits) >= 0.8 * sum(f.has_lesion for f in fresh_phantoms)
    check((CAM_HIT_BAR, float(np.mean(hits))), context=f"{len(hits)} true positives")


@pytest.mark.slow
def test_tampered_demo_weights_are_refused(demo_card: Path, tmp_path: Path) -> None:
    copy = tmp_path / "generic-demo"
    copy.mkdir()
    shutil.copy(demo_card, copy / "card.yaml")
    shutil.copy(demo_card.parent / "weights.pt", copy / "weights.pt")
    load_card(copy / "card.yaml")
    with open(copy / "weights.pt", "r+b") as fh:
        fh.seek(-100, 2)
        byte = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CardError, match="refusing to load a model that is not the one"):
        load_card(copy / "card.yaml")
