"""The ``hip-demo`` model: held-out phantoms, findings per neck, SR and SC, CLI, node end to end.

The demo model is trained by ``dicom-node models build-demo`` on phantoms of
seed 0 (``pipelines.hip.demo``); every phantom here uses another seed, so the
model has never seen them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_node import __version__
from dicom_node.results import AlgorithmInfo, build_heatmap_sc, build_sr
from pipelines.base import PipelineInputError, SeriesInput
from pipelines.card import load_card, sha256_file
from pipelines.hip.dexa import pair_dexa, read_labels, write_labels
from pipelines.hip.evaluate import evaluate_hip, iou
from pipelines.hip.pipeline import HipOsteoporosis
from pipelines.hip.sides import Side
from pipelines.hip.synth import PELVIS, write_hip_dataset

from bars import Bar, check, check_remeasured
from dicom_validation import dciodvfy_errors
from node import results_for_a_secret_patient
from peers import Orthanc

HELD_OUT_SEED = 7003  # the demo trains on seed 0 phantoms
#: What the demo must reach on these held-out phantoms: at or below the mean - 3 sd of five
#: builds (three CPU code paths, three seeds: bench.demo_spread, tests/bars.py); "worst" is the
#: lowest build.
#: necks found with IoU >= 0.5: worst 0.864, mean 0.919, sd 0.044
LOCALISER_RECALL_BAR = Bar("hip.localiser.recall_iou50", 0.75)
LOCALISER_IOU_BAR = Bar("hip.localiser.mean_iou", 0.6)  # worst 0.702, mean 0.731, sd 0.035
#: per neck, the node's crops: worst 0.857, mean 0.886, sd 0.021
ACCURACY_BAR = Bar("hip.node.accuracy", 0.8)
#: the study's setting, true boxes: worst 0.873, mean 0.881, sd 0.008
GT_ACCURACY_BAR = Bar("hip.ground_truth_crops.accuracy", 0.8)
#: of osteoporosis, per neck: worst 0.75 (avx2 seed 1), mean 0.913, sd 0.094
RECALL_BAR = Bar("hip.node.osteoporosis_recall", 0.6)
#: the node's boxes on 7 images: the share that is the true neck box (IoU >= 0.5): worst 0.917
BOX_HIT_BAR = Bar("hip.node.box_iou50_share", 0.75)
#: every box is on its side's neck: worst 0.463 (the end-to-end test, avx2 seed 1); the other
#: side's neck never overlaps a box (IoU 0), so any real overlap names the right neck
BOX_MIN_IOU_BAR = Bar("hip.node.box_min_iou", 0.2)
#: Mirroring: the necks found on FLIP_IMAGES pelvis images and on their left-right mirror
#: images. The localiser is not mirror-symmetric by construction (it learned from phantoms of
#: either orientation), so the two boxes of a neck agree as well as two good boxes of it do.
#: The old single-image bar (IoU > 0.7) failed at 0.695 on the AMD EPYC of issue 15, which
#: is this machine's native path. Over five builds, 12 neck pairs each:
FLIP_IMAGES = 6
#: mean IoU of a box and its mirrored twin: worst 0.578 (avx2 seed 1), mean 0.672, sd 0.085
FLIP_MEAN_IOU_BAR = Bar("hip.flip.mean_iou", 0.4)
#: the worst pair: 0.184 (native seed 0), mean 0.378, sd 0.149 (3 sd would cross 0). The bar
#: says "the same neck": the other side's neck never overlaps a box (IoU 0).
FLIP_MIN_IOU_BAR = Bar("hip.flip.min_iou", 0.1)
#: mean change of a neck's probability: worst 0.105, mean 0.061, sd 0.038. A single neck's
#: change is not barred: the classifier answers a crop a few pixels off quite differently (up
#: to 0.49 in one build, with every box pair at IoU >= 0.33).
FLIP_PROBABILITY_BAR = Bar("hip.flip.mean_probability_change", 0.2, "<=")

SCT = "SCT"
OSTEOPOROSIS, NECK_OF_FEMUR = "64859006", "29627003"
RIGHT, LEFT = "24028007", "7771000"


@pytest.fixture(scope="module")
def pipeline(hip_demo_card: Path) -> HipOsteoporosis:
    return HipOsteoporosis(load_card(hip_demo_card), torch.device("cpu"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, hip_demo_card: Path):
    """Held-out phantoms like the demo's (same size and year range) and their labels."""
    from pipelines.hip.demo import HipDemoData

    data = HipDemoData()
    root = tmp_path_factory.mktemp("hip-held-out")
    dataset = write_hip_dataset(
        root / "data",
        patients=60,
        seed=HELD_OUT_SEED,
        size=data.phantom_size,
        years=data.years,
        osteoporosis_fraction=0.5,
        flipped_fraction=0.2,
    )
    labels = root / "labels.csv"
    write_labels(pair_dexa(dataset.dicom_dir, dataset.dexa_csv), labels)
    return dataset, labels


def test_demo_beats_the_bar_on_held_out_phantoms(
    held_out, hip_demo_card: Path, tmp_path: Path
) -> None:
    dataset, labels = held_out
    report = evaluate_hip(
        hip_demo_card,
        dataset.dicom_dir,
        dataset.voc_dir,
        labels,
        out_dir=tmp_path,
        n_bootstrap=200,
    )
    loc = report["localiser"]
    assert loc["necks"] > 60
    node = report["node"]["report"]
    assert node["osteoporosis"]["support"] > 15 and node["normal/osteopenia"]["support"] > 15
    recall = report["node"]["binary"]["recall"]
    assert recall["ci_low"] <= recall["value"] <= recall["ci_high"]
    # the found-necks view counts the necks found; end to end counts every true neck
    assert report["node"]["binary"]["n"] == loc["found_iou50"]
    assert report["end_to_end"]["binary"]["n"] == loc["necks"] == report["data"]["necks"]
    check(
        (LOCALISER_RECALL_BAR, loc["recall_iou50"]["value"]),
        (LOCALISER_IOU_BAR, loc["mean_iou"]),
        (ACCURACY_BAR, node["accuracy"]),
        (RECALL_BAR, node["osteoporosis"]["recall"]),
        # the study's own setting, the true boxes, clears the bar too
        (GT_ACCURACY_BAR, report["ground_truth_crops"]["report"]["accuracy"]),
    )
    assert json.loads((tmp_path / "metrics.json").read_text())["localiser"] == loc


def _by_uid(dataset):
    return {image.sop_instance_uid: image for image in dataset.images}


def test_findings_are_one_per_neck_with_side_box_and_heatmap(held_out, pipeline) -> None:
    dataset, _ = held_out
    chosen = [i for i in dataset.images if i.kind == PELVIS and not i.flipped][:3]
    chosen += [i for i in dataset.images if i.kind != PELVIS][:2]
    chosen += [i for i in dataset.images if i.flipped][:2]
    result = pipeline.run([SeriesInput("1.2.3", tuple(i.path for i in chosen))])
    assert result.skipped == []
    truth = _by_uid(dataset)
    sides = {Side.RIGHT: RIGHT, Side.LEFT: LEFT}
    overlaps = []
    for image in chosen:
        findings = [
            f for f in result.findings if f.source_sop_instance_uids == (image.sop_instance_uid,)
        ]
        # one finding per neck, on the side the neck is
        assert {f.laterality.value for f in findings} == {sides[s] for s in image.necks}
        for f in findings:
            assert (f.code.value, f.finding_site.value) == (OSTEOPOROSIS, NECK_OF_FEMUR)
            side = Side.RIGHT if f.laterality.value == RIGHT else Side.LEFT
            box = (f.box.x0, f.box.y0, f.box.x1, f.box.y1)
            necks = truth[image.sop_instance_uid].necks
            overlaps.append(iou(box, necks[side]))
            # the box is on that side's neck (BOX_MIN_IOU_BAR below), not on the other one
            assert all(iou(box, other) == 0.0 for s, other in necks.items() if s is not side)
            assert f.present == (f.probability >= pipeline.label.threshold)
    # most boxes are the true neck box (IoU 0.5; the localiser's recall is in its card)
    check(
        (BOX_HIT_BAR, float(np.mean(np.array(overlaps) >= 0.5))),
        (BOX_MIN_IOU_BAR, float(np.min(overlaps))),
        context=f"IoUs {np.round(overlaps, 3).tolist()}",
    )
    # one heatmap (top_k 1): on the image with the highest probability, inside its necks' crops
    (heatmap,) = result.heatmaps
    best = max(result.findings, key=lambda f: f.probability)
    assert heatmap.sop_instance_uid == best.source_sop_instance_uids[0]
    header = pydicom.dcmread(truth[heatmap.sop_instance_uid].path, stop_before_pixels=True)
    rows, cols = int(header.Rows), int(header.Columns)
    assert heatmap.array.shape == (rows, cols) and heatmap.array.max() > 0
    inside = np.zeros(heatmap.array.shape, dtype=bool)
    margin = pipeline.options.crop_margin
    for a in heatmap.annotations:
        w, h = a.box.x1 - a.box.x0, a.box.y1 - a.box.y0
        inside[
            max(0, int(a.box.y0 - margin * h) - 1) : int(a.box.y1 + margin * h) + 2,
            max(0, int(a.box.x0 - margin * w) - 1) : int(a.box.x1 + margin * w) + 2,
        ] = True
        assert re.fullmatch(r"osteoporosis [RL] \d+%", a.text)
    assert not heatmap.array[~inside].any()  # zero outside the neck regions
    drawn = {a.box for a in heatmap.annotations}
    assert drawn == {
        f.box for f in result.findings if f.box.sop_instance_uid == heatmap.sop_instance_uid
    }


def test_a_flipped_image_gives_the_same_necks_on_the_other_sides(
    held_out, pipeline, tmp_path: Path
) -> None:
    dataset, _ = held_out
    images = [i for i in dataset.images if i.kind == PELVIS and not i.flipped][:FLIP_IMAGES]
    assert len(images) == FLIP_IMAGES
    overlaps, changes = [], []
    for n, image in enumerate(images):
        ds = pydicom.dcmread(image.path)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).astype("<u2").tobytes()
        ds.PatientOrientation = ["R", "F"]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(tmp_path / f"flipped{n}.dcm")
        plain = pipeline.run([SeriesInput("1", (image.path,))]).findings
        flipped = pipeline.run([SeriesInput("1", (tmp_path / f"flipped{n}.dcm",))]).findings
        assert {f.laterality.value for f in plain} == {RIGHT, LEFT}
        width = int(ds.Columns)
        for f in plain:
            # the patient's right neck is now on the image's right half: its box is mirrored
            (twin,) = [g for g in flipped if g.laterality == f.laterality]
            mirrored = (width - f.box.x1, f.box.y0, width - f.box.x0, f.box.y1)
            overlaps.append(iou(mirrored, (twin.box.x0, twin.box.y0, twin.box.x1, twin.box.y1)))
            # and its crop, mirrored to the canonical view either way, gives about the same answer
            changes.append(abs(twin.probability - f.probability))
    check(
        (FLIP_MEAN_IOU_BAR, float(np.mean(overlaps))),
        (FLIP_MIN_IOU_BAR, float(np.min(overlaps))),
        (FLIP_PROBABILITY_BAR, float(np.mean(changes))),
        context=f"IoUs {np.round(overlaps, 3).tolist()}",
    )


def _groups(sr: pydicom.Dataset) -> list[dict[str, object]]:
    """Finding, site, laterality, presence, certainty and polyline of every measurement group."""
    out = []
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":
            continue
        for group in container.ContentSequence:
            found: dict[str, object] = {}
            for item in group.ContentSequence:
                name = item.ConceptNameCodeSequence[0].CodeValue
                if name == "121071":
                    found["finding"] = item.ConceptCodeSequence[0].CodeValue
                elif name == "363698007":  # Finding Site
                    found["site"] = item.ConceptCodeSequence[0].CodeValue
                    for sub in item.get("ContentSequence", []):
                        if sub.ConceptNameCodeSequence[0].CodeValue == "272741003":
                            found["laterality"] = sub.ConceptCodeSequence[0].CodeValue
                elif name == OSTEOPOROSIS:
                    found["presence"] = item.ConceptCodeSequence[0].CodeMeaning
                elif name == "111030" and item.ValueType == "SCOORD":
                    found["polyline"] = np.array(item.GraphicData).reshape(-1, 2)
                elif item.ValueType == "NUM":
                    found["certainty"] = float(item.MeasuredValueSequence[0].NumericValue)
            out.append(found)
    return out


def test_sr_carries_finding_site_laterality_and_box_and_both_pass_dciodvfy(
    held_out, pipeline, tmp_path: Path
) -> None:
    dataset, _ = held_out
    image = next(i for i in dataset.images if i.kind == PELVIS)
    result = pipeline.run([SeriesInput("1.2.3", (image.path,))])
    algorithm = AlgorithmInfo.from_card(pipeline.card, __version__)
    header = pydicom.dcmread(image.path, stop_before_pixels=True)
    sr = build_sr(result.findings, [header], algorithm, job_key="job-1", series_number=900)
    sr.save_as(tmp_path / "sr.dcm")
    groups = _groups(pydicom.dcmread(tmp_path / "sr.dcm"))
    assert len(groups) == len(result.findings) == 2
    for group, finding in zip(groups, result.findings, strict=True):
        assert group["finding"] == OSTEOPOROSIS and group["site"] == NECK_OF_FEMUR
        assert group["laterality"] == finding.laterality.value
        assert group["presence"] == ("Present" if finding.present else "Absent")
        assert group["certainty"] == pytest.approx(finding.probability * 100, abs=1e-3)
        b = finding.box
        expected = [[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1], [b.x0, b.y0]]
        np.testing.assert_allclose(group["polyline"], expected, atol=1e-3)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    (heatmap,) = result.heatmaps
    sc = build_heatmap_sc(
        pydicom.dcmread(image.path),
        heatmap.array,
        algorithm,
        job_key="job-1",
        series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_number=901,
        instance_number=1,
        label=heatmap.label,
        annotations=heatmap.annotations,
    )
    assert dciodvfy_errors(sc) == []


def test_frog_leg_and_chest_images_are_skipped_and_alone_fail(
    held_out, pipeline, tmp_path: Path
) -> None:
    dataset, _ = held_out
    ds = pydicom.dcmread(dataset.images[0].path)
    ds.SeriesDescription = "Hip frog-leg lateral"
    ds.save_as(tmp_path / "frog.dcm")
    ds = pydicom.dcmread(dataset.images[0].path)
    ds.BodyPartExamined = "CHEST"
    ds.save_as(tmp_path / "chest.dcm")
    result = pipeline.run(
        [SeriesInput("1", (tmp_path / "frog.dcm", tmp_path / "chest.dcm", dataset.images[1].path))]
    )
    assert result.skipped == [
        ("frog.dcm", "lateral or frog-leg view (SeriesDescription says so)"),
        ("chest.dcm", "Body Part Examined is CHEST, not the hip or pelvis"),
    ]
    assert {f.source_sop_instance_uids for f in result.findings} == {
        (dataset.images[1].sop_instance_uid,)
    }
    with pytest.raises(PipelineInputError, match="frog-leg"):
        pipeline.run([SeriesInput("1", (tmp_path / "frog.dcm",))])


def _noisy(image_path: Path, out: Path, sigma: float, seed: int = 0) -> Path:
    """``image_path`` with Gaussian noise of ``sigma`` stored values added: a poor exposure."""
    ds = pydicom.dcmread(image_path)
    pixels = ds.pixel_array.astype(np.float64)
    noise = np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    top = 2 ** int(ds.BitsStored) - 1
    ds.PixelData = np.clip(np.rint(pixels + noise), 0, top).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(out)
    return out


def test_images_the_study_excluded_are_refused_with_the_reason_and_said_in_the_sr(
    held_out, pipeline, tmp_path: Path
) -> None:
    """Seed 003 left out images with metal implants and of poor quality: so does the node."""
    from pipelines.hip.quality import exclusion_reason
    from pipelines.hip.radiograph import localiser_image, read_hip_radiograph

    dataset, _ = held_out
    # none of the 60 held-out patients' images is refused (no implant, no added noise)
    spec = pipeline.options.localiser
    refused = {
        image.stem: reason
        for image in dataset.images
        if (
            reason := exclusion_reason(
                localiser_image(read_hip_radiograph(image.path).display, spec.size, spec.max_size)[
                    0
                ],
                pipeline.options.exclusions,
            )
        )
    }
    assert refused == {}
    implants = write_hip_dataset(
        tmp_path / "implants", patients=3, seed=HELD_OUT_SEED + 1, size=320, implant_fraction=1.0
    )
    assert all(image.implant is not None for image in implants.images)
    normal = next(i for i in dataset.images if i.kind == PELVIS)
    noisy = _noisy(normal.path, tmp_path / "noisy.dcm", sigma=700.0)
    files = (*(i.path for i in implants.images), noisy, normal.path)
    result = pipeline.run([SeriesInput("1.2.3", files)])
    reasons = dict(result.skipped)
    assert set(reasons) == {
        *(i.sop_instance_uid for i in implants.images),
        pydicom.dcmread(noisy, stop_before_pixels=True).SOPInstanceUID,
    }
    for image in implants.images:
        assert reasons[image.sop_instance_uid].startswith("metal implant suspected"), reasons
    assert sum(r.startswith("poor image quality (noise") for r in reasons.values()) == 1, reasons
    assert {f.source_sop_instance_uids for f in result.findings} == {(normal.sop_instance_uid,)}
    # the SR of the normal image says which images its findings do not cover, and why
    algorithm = AlgorithmInfo.from_card(pipeline.card, __version__)
    header = pydicom.dcmread(normal.path, stop_before_pixels=True)
    sr = build_sr(
        result.findings,
        [header],
        algorithm,
        job_key="job-x",
        series_number=900,
        not_analysed=result.skipped,
    )
    sr.save_as(tmp_path / "sr.dcm")
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    comments = [
        str(item.TextValue)
        for container in pydicom.dcmread(tmp_path / "sr.dcm").ContentSequence
        if container.ValueType == "CONTAINER"
        for item in container.get("ContentSequence", [])
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    (comment,) = comments
    assert comment.startswith(f"Not analysed by hip-demo {pipeline.card.version}")
    n = len(implants.images)
    assert f"{n + 1} image(s)" in comment and comment.count("metal implant suspected") == n
    # alone, an excluded image fails the job with its reason (the node sends a notice SR)
    with pytest.raises(PipelineInputError, match="metal implant suspected"):
        pipeline.run([SeriesInput("1", (implants.images[0].path,))])


def test_a_card_can_turn_the_exclusions_off(hip_demo_card: Path, tmp_path: Path) -> None:
    card = load_card(hip_demo_card)
    options = {**card.options, "exclusions": {"enabled": False}}
    lenient = HipOsteoporosis(card.model_copy(update={"options": options}), torch.device("cpu"))
    assert not lenient.options.exclusions.enabled
    implants = write_hip_dataset(
        tmp_path / "implants", patients=1, seed=HELD_OUT_SEED + 2, size=320, implant_fraction=1.0
    )
    try:
        reasons = [
            why for _, why in lenient.run([SeriesInput("1", (implants.images[0].path,))]).skipped
        ]
    except PipelineInputError as exc:  # the localiser may find no neck under the prosthesis
        reasons = [str(exc)]
    assert not any("metal implant" in why for why in reasons), reasons


def test_evaluation_leaves_out_what_the_node_refuses_and_says_so(
    hip_demo_card: Path, tmp_path: Path
) -> None:
    """The card's metrics are measured on what the node analyses: evaluate (and train) leave
    out the images it refuses, and the report counts them with their reason."""
    data = write_hip_dataset(
        tmp_path / "data", patients=6, seed=HELD_OUT_SEED + 3, size=320, implant_fraction=0.5
    )
    labels = tmp_path / "labels.csv"
    write_labels(pair_dexa(data.dicom_dir, data.dexa_csv), labels)
    labelled = [image for image in data.images if image.sop_instance_uid in read_labels(labels)]
    implants = [image for image in labelled if image.implant is not None]
    assert implants and len(implants) < len(labelled)
    report = evaluate_hip(
        hip_demo_card, data.dicom_dir, data.voc_dir, labels, n_bootstrap=10, out_dir=tmp_path
    )
    assert report["excluded"] == {
        "images": len(implants),
        "reasons": {"metal implant suspected": len(implants)},
    }
    assert report["data"]["images"] == len(labelled) - len(implants)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["excluded"]["images"] == len(implants)


def test_training_leaves_out_what_the_node_refuses_before_it_splits(tmp_path: Path) -> None:
    """The card is trained and measured on what the node analyses: images it refuses (here
    prostheses) are left out of every split, and the card's recipe counts them."""
    from pipelines.hip.train import HipRecipe, LocaliserRecipe, train_hip

    data = write_hip_dataset(
        tmp_path / "data", patients=8, seed=HELD_OUT_SEED + 4, size=320, implant_fraction=0.5
    )
    labels = tmp_path / "labels.csv"
    write_labels(pair_dexa(data.dicom_dir, data.dexa_csv), labels)
    labelled = [image for image in data.images if image.sop_instance_uid in read_labels(labels)]
    implants = [image for image in labelled if image.implant is not None]
    assert implants and len(implants) < len(labelled)
    recipe = HipRecipe(
        size=32,
        epochs=1,
        batch_size=8,
        test_fraction=0.0,
        localiser=LocaliserRecipe(size=96, max_size=128, epochs=1),
        bootstrap_resamples=20,
    )
    said: list[str] = []
    card = load_card(
        train_hip(data.dicom_dir, data.voc_dir, labels, tmp_path / "model", recipe, say=said.append)
    )
    recipe_record = card.provenance.recipe
    assert recipe_record["excluded"] == {
        "images": len(implants),
        "reasons": {"metal implant suspected": len(implants)},
    }
    assert recipe_record["splits"]["pool"]["images"] == len(labelled) - len(implants)
    assert any(f"left out {len(implants)} image(s) the node refuses" in line for line in said)


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


#: a tiny training run: seconds, not minutes
_TINY = (
    "--size", "32", "--epochs", "2", "--batch-size", "8", "--lr", "0.01",
    "--localiser-size", "96", "--localiser-max-size", "128", "--localiser-epochs", "1",
    "--cache", "--synthetic",
)  # fmt: skip


@pytest.mark.slow
def test_cli_synth_pair_dexa_train_with_folds_and_evaluate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = _cli(
        "synth", "hip", "--out", str(data), "--patients", "16", "--seed", "5", "--size", "160",
        "--years", "2021", "2022",
    )  # fmt: skip
    assert "synthetic hip radiographs" in out
    out = _cli(
        "dataset", "pair-dexa", "--dicom-dir", str(data / "dicom"), "--dexa-csv",
        str(data / "dexa.csv"), "--out", str(tmp_path / "labels.csv"),
    )  # fmt: skip
    assert "paired" in out and (tmp_path / "labels.unpaired.csv").is_file()
    assert "HIP-PHANTOM" not in out + (tmp_path / "labels.csv").read_text()
    model = tmp_path / "model"
    out = _cli(
        "train", "hip-osteoporosis", "--dicom-dir", str(data / "dicom"), "--voc-dir",
        str(data / "voc"), "--labels", str(tmp_path / "labels.csv"), "--out", str(model),
        "--folds", "2", "--test-year", "2022", *_TINY,
    )  # fmt: skip
    assert "model ready" in out and "fold 2/2" in out and "2-fold cross-validation" in out
    # the study's report: per class, accuracy, averages; and the recall with its interval
    assert re.search(r"precision\s+recall\s+f1-score\s+support", out)
    assert "macro avg" in out and "weighted avg" in out
    assert re.search(r"osteoporosis recall \d\.\d\d \(95 % CI", out)
    assert "temporal split: train on years before 2022" in out
    card = load_card(model / "card.yaml")
    assert card.pipeline == "hip-osteoporosis" and card.provenance.synthetic
    assert card.metrics["cross_validation"]["folds"] == 2
    assert set(card.metrics["held_out_test"]) >= {"localiser", "node", "ground_truth_crops"}
    assert card.options["localiser"]["sha256"] == sha256_file(model / "weights-localiser.pt")
    assert not list((model / "train").rglob("checkpoint.pt"))
    out = _cli(
        "evaluate", "hip-osteoporosis", "--model", str(model), "--dicom-dir", str(data / "dicom"),
        "--voc-dir", str(data / "voc"), "--labels", str(tmp_path / "labels.csv"),
        "--test-year", "2022", "--out", str(tmp_path / "eval"), "--bootstrap", "50",
    )  # fmt: skip
    assert "ground-truth neck boxes" in out and "the node" in out and "localiser:" in out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"]["name"] == "model"


@pytest.mark.slow
def test_training_twice_gives_identical_weights(tmp_path: Path) -> None:
    from pipelines.hip.train import HipRecipe, LocaliserRecipe, train_hip

    data = write_hip_dataset(tmp_path / "data", patients=8, seed=2, size=160)
    labels = tmp_path / "labels.csv"
    write_labels(pair_dexa(data.dicom_dir, data.dexa_csv), labels)
    recipe = HipRecipe(
        size=32,
        epochs=2,
        batch_size=8,
        lr=0.01,
        test_fraction=0.0,
        localiser=LocaliserRecipe(size=96, max_size=128, epochs=1),
        cache=True,
        bootstrap_resamples=20,
    )
    digests = []
    for run in ("a", "b"):
        train_hip(data.dicom_dir, data.voc_dir, labels, tmp_path / run, recipe, progress=False)
        digests.append(
            (
                sha256_file(tmp_path / run / "weights.pt"),
                sha256_file(tmp_path / run / "weights-localiser.pt"),
            )
        )
    assert digests[0] == digests[1]


@pytest.mark.e2e
@pytest.mark.pipeline
def test_hip_radiograph_through_orthanc_gets_sr_per_neck_and_heatmap(
    pacs: Orthanc,
    node_port: int,
    tmp_path: Path,
    database_url: str,
    hip_demo_card: Path,
    held_out,
) -> None:
    dataset, _ = held_out
    secret = "ZQXJ-HIP-SECRET-42"  # Patient ID and part of the name: must never be logged
    image = next(i for i in dataset.images if i.kind == PELVIS)
    objects, log = results_for_a_secret_patient(
        pacs, tmp_path, database_url, node_port, image.path, "hip-xr", secret
    )
    (sr,) = objects["SR"]
    (sc,) = objects["OT"]
    groups = _groups(sr)
    assert {g["laterality"] for g in groups} == {RIGHT, LEFT}
    for group in groups:
        assert group["finding"] == OSTEOPOROSIS and group["site"] == NECK_OF_FEMUR
        side = Side.RIGHT if group["laterality"] == RIGHT else Side.LEFT
        polyline = group["polyline"]
        box = (
            polyline[:, 0].min(),
            polyline[:, 1].min(),
            polyline[:, 0].max(),
            polyline[:, 1].max(),
        )
        # the neck the study boxed, read back (BOX_MIN_IOU_BAR: the box is on that neck)
        check((BOX_MIN_IOU_BAR, iou(box, image.necks[side])), context="end to end")
        assert 0.0 <= group["certainty"] <= 100.0
    assert {r.ReferencedSOPInstanceUID for r in sc.SourceImageSequence} == {image.sop_instance_uid}
    for result in (sr, sc):
        assert dciodvfy_errors(result) == [], result.Modality
        assert "hip-demo" in result.SeriesDescription
    assert sr.PatientID == secret  # the results carry the patient, the logs do not
    assert "hip-demo" in log and secret not in log


@pytest.mark.slow
def test_the_cards_neck_metrics_are_measured_again_from_the_builds_held_out_year(
    hip_demo_card: Path, tmp_path: Path
) -> None:
    """The per-neck numbers the results quote are re-measured, not trusted: the build's phantoms
    are written again from its seed and paired again, and its held-out year is evaluated as the
    node decides (localiser, then classifier)."""
    from pipelines.hip.demo import HipDemoData

    card = load_card(hip_demo_card)
    data = HipDemoData()
    dataset = write_hip_dataset(
        tmp_path / "phantoms",
        patients=data.patients,
        seed=card.provenance.seed or 0,
        size=data.phantom_size,
        years=data.years,
        osteoporosis_fraction=data.osteoporosis_fraction,
    )
    labels = tmp_path / "labels.csv"
    write_labels(pair_dexa(dataset.dicom_dir, dataset.dexa_csv), labels)
    report = evaluate_hip(
        hip_demo_card,
        dataset.dicom_dir,
        dataset.voc_dir,
        labels,
        test_year=card.provenance.recipe["test_year"],
        n_bootstrap=10,
    )
    measured = report["end_to_end"]["binary"]
    (entry,) = (
        p for p in card.performance if p.unit == "femoral neck" and p.split == "held_out_test"
    )
    assert entry.n == measured["n"]
    assert all(e.value is not None for e in entry.metrics.values())
    check_remeasured(entry, measured, "osteoporosis")
