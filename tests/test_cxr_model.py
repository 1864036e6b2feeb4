"""The ``cxr-demo`` detector: findings on held-out phantoms, SR boxes, CLI, node end to end.

The demo model is trained by ``dicom-node models build-demo`` on phantoms of
seed 0 (``pipelines.cxr.demo``); every phantom here uses another seed, so the
model has never seen them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from dicom_node import __version__
from dicom_node.results import AlgorithmInfo, build_heatmap_sc, build_sr
from pipelines.base import PipelineInputError, SeriesInput
from pipelines.card import load_card
from pipelines.cxr.coco import load_coco
from pipelines.cxr.evaluate import evaluate_cxr
from pipelines.cxr.pipeline import ChestFindings
from pipelines.cxr.synth import CLASSES, write_cxr_dataset

from bars import Bar, check
from dicom_validation import dciodvfy_errors
from node import results_for_a_secret_patient
from peers import Orthanc

HELD_OUT_SEED = 7001  # the demo trains on seed 0 phantoms
#: AP50 per class the demo must reach on these 60 held-out phantoms. Each bar is at or below the
#: mean - 3 sd of five builds (three CPU code paths, three seeds: bench.demo_spread, tests/bars.py);
#: "worst" is the lowest of those builds. A detector that learned nothing scores about 0.
AP50_BAR = {
    # worst 0.31 (avx2 seed 2), mean 0.40, sd 0.08
    "aortic_atherosclerosis_calcification": Bar("cxr.ap50.calcification", 0.15),
    # worst 0.47 (native seed 0, the AMD EPYC failure of issue 15), mean 0.70, sd 0.13
    "lung_field_infiltration": Bar("cxr.ap50.infiltration", 0.3),
    # 1.00 in every build; kept at 0.9 (sd 0)
    "cardiac_hypertrophy": Bar("cxr.ap50.hypertrophy", 0.9),
}
MEAN_AP50_BAR = Bar("cxr.ap50.all", 0.55)  # worst 0.62 (native), mean 0.70, sd 0.05
#: the node's reported boxes on 20 held-out images: the share that are right (IoU >= 0.5 with
#: a true box of their class) and the share of true boxes found. Precision is the least stable
#: figure of the demo: worst 0.47 (native seed 0: 27 hits, 31 false alarms), mean 0.63, sd 0.15;
#: recall worst 0.68, mean 0.71, sd 0.04. Random boxes would score about 0 on both.
BOX_PRECISION_BAR = Bar("cxr.node.box_precision", 0.15)
BOX_RECALL_BAR = Bar("cxr.node.box_recall", 0.6)


@pytest.fixture(scope="module")
def pipeline(cxr_demo_card: Path) -> ChestFindings:
    return ChestFindings(load_card(cxr_demo_card), torch.device("cpu"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, cxr_demo_card: Path):
    size = load_card(cxr_demo_card).input.size
    return write_cxr_dataset(
        tmp_path_factory.mktemp("cxr-held-out"), n=60, seed=HELD_OUT_SEED, size=size
    )


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_demo_detects_the_synthetic_findings_on_held_out_phantoms(
    held_out, cxr_demo_card: Path, tmp_path: Path
) -> None:
    report = evaluate_cxr(
        cxr_demo_card,
        held_out.images_dir,
        held_out.annotations,
        out_dir=tmp_path,
        n_bootstrap=200,
    )
    per_class = report["per_class"]
    assert list(per_class) == list(CLASSES)
    for name in AP50_BAR:
        assert per_class[name]["n_gt"] > 5, name
        assert per_class[name]["ci_low"] <= per_class[name]["ap50"] <= per_class[name]["ci_high"]
    check(
        *((bar, per_class[name]["ap50"]) for name, bar in AP50_BAR.items()),
        (MEAN_AP50_BAR, report["coco"]["AP50"]),
    )
    assert len(report["coco_lines"]) == 12
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["per_class"] == per_class
    with Image.open(tmp_path / "precision_recall.png") as png:
        assert png.size[0] > 200


def test_node_findings_are_the_boxes_on_each_image(held_out, pipeline: ChestFindings) -> None:
    coco = load_coco(held_out.annotations)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    truth: dict[str, dict[str, list[tuple[float, ...]]]] = {}
    uid_of = {img["id"]: img["sop_instance_uid"] for img in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        truth.setdefault(uid_of[ann["image_id"]], {}).setdefault(names[ann["category_id"]], [])
        truth[uid_of[ann["image_id"]]][names[ann["category_id"]]].append((x, y, x + w, y + h))
    images = [img.path for img in held_out.images[:20]]
    result = pipeline.run([SeriesInput("1.2.3", tuple(images))])
    assert result.skipped == []
    by_image: dict[str, list] = {}
    for f in result.findings:
        (uid,) = f.source_sop_instance_uids
        by_image.setdefault(uid, []).append(f)
    assert len(by_image) == len(images)
    hits = misses = false_alarms = 0
    for uid, findings in by_image.items():
        # every reported class appears: boxes when present, else one absent finding
        assert {f.label for f in findings} == set(CLASSES)
        for f in findings:
            if not f.present:
                assert (
                    f.box is None
                    and f.probability < pipeline.card.labels[CLASSES.index(f.label)].threshold
                )
                continue
            assert f.box is not None and f.box.sop_instance_uid == uid
            assert f.finding_site is not None
            boxes = truth.get(uid, {}).get(f.label, [])
            box = (f.box.x0, f.box.y0, f.box.x1, f.box.y1)
            if any(_iou(box, b) >= 0.5 for b in boxes):
                hits += 1
            else:
                false_alarms += 1
        for label, boxes in truth.get(uid, {}).items():
            found = [
                (f.box.x0, f.box.y0, f.box.x1, f.box.y1)
                for f in findings
                if f.present and f.label == label
            ]
            misses += sum(1 for b in boxes if not any(_iou(b, p) >= 0.5 for p in found))
    # the demo's reported boxes: most are right, few findings missed; calcification is the weak
    # class (its card threshold is low), see models/README.md
    check(
        (BOX_PRECISION_BAR, hits / max(1, hits + false_alarms)),
        (BOX_RECALL_BAR, hits / max(1, hits + misses)),
        context=f"{hits} hits, {false_alarms} false alarms, {misses} misses",
    )
    # one heatmap (top_k 1) with the reported boxes of its image drawn
    (heatmap,) = result.heatmaps
    assert (
        heatmap.array.shape == (256, 256)
        and 0.0 <= heatmap.array.min() <= heatmap.array.max() <= 1.0
    )
    drawn = {a.box for a in heatmap.annotations}
    assert drawn == {
        f.box
        for f in result.findings
        if f.present and f.box.sop_instance_uid == heatmap.sop_instance_uid
    }


def _graphic_regions(sr: pydicom.Dataset) -> list[tuple[str, str, np.ndarray]]:
    """(finding meaning, referenced SOP Instance UID, polyline) of every TID 1410 group."""
    out = []
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":
            continue
        for group in container.ContentSequence:
            finding = region = None
            for item in group.ContentSequence:
                code = item.ConceptNameCodeSequence[0].CodeValue
                if code == "121071":
                    finding = item.ConceptCodeSequence[0].CodeMeaning
                if code == "111030" and item.ValueType == "SCOORD":
                    ref = item.ContentSequence[0].ReferencedSOPSequence[0]
                    region = (
                        ref.ReferencedSOPInstanceUID,
                        np.array(item.GraphicData).reshape(-1, 2),
                    )
            if region is not None:
                out.append((finding, *region))
    return out


def test_sr_boxes_read_back_equal_the_detector_boxes(
    held_out, pipeline: ChestFindings, tmp_path: Path
) -> None:
    image = next(i for i in held_out.images if len(i.findings) >= 2)
    result = pipeline.run([SeriesInput("1.2.3", (image.path,))])
    boxed = [f for f in result.findings if f.box is not None]
    assert boxed, "the demo should box at least one finding on an image with two"
    algorithm = AlgorithmInfo.from_card(pipeline.card, __version__)
    header = pydicom.dcmread(image.path, stop_before_pixels=True)
    sr = build_sr(result.findings, [header], algorithm, job_key="job-1", series_number=900)
    sr.save_as(tmp_path / "sr.dcm")
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    regions = _graphic_regions(back)
    assert len(regions) == len(boxed)
    for (meaning, uid, polyline), finding in zip(regions, boxed, strict=True):
        assert meaning == finding.code.meaning and uid == image.sop_instance_uid
        b = finding.box
        expected = [[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1], [b.x0, b.y0]]
        np.testing.assert_allclose(polyline, expected, atol=1e-3)  # FL is float32
    absent = [f for f in result.findings if not f.present]
    groups = sum(
        len(c.ContentSequence)
        for c in back.ContentSequence
        if c.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    assert groups == len(boxed) + len(absent)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    (heatmap,) = result.heatmaps
    sc = build_heatmap_sc(
        pydicom.dcmread(image.path),
        heatmap.array,
        algorithm,
        job_key="job-1",
        series_instance_uid="1.2.826.0.1.3680043.8.498.1",
        series_number=901,
        instance_number=1,
        label=heatmap.label,
        annotations=heatmap.annotations,
    )
    assert dciodvfy_errors(sc) == []


def test_lateral_views_are_skipped_and_alone_fail_with_the_reason(
    held_out, pipeline: ChestFindings, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(held_out.images[0].path)
    ds.ViewPosition = "LL"
    ds.save_as(tmp_path / "lateral.dcm")
    result = pipeline.run(
        [SeriesInput("1.2.3", (tmp_path / "lateral.dcm", held_out.images[1].path))]
    )
    assert result.skipped == [("lateral.dcm", "lateral view (View Position LL)")]
    assert {f.source_sop_instance_uids for f in result.findings} == {
        (held_out.images[1].sop_instance_uid,)
    }
    with pytest.raises(PipelineInputError, match="lateral view"):
        pipeline.run([SeriesInput("1.2.3", (tmp_path / "lateral.dcm",))])


def test_eigencam_is_selectable_and_other_methods_refused(cxr_demo_card: Path) -> None:
    from pipelines.card import CardError, ModelCard

    card = load_card(cxr_demo_card)
    data = card.model_dump()
    eigen = ModelCard.model_validate(
        {**data, "explainer": {**data["explainer"], "method": "eigencam"}, "folder": card.folder}
    )
    ChestFindings(eigen, torch.device("cpu"))
    grad = ModelCard.model_validate(
        {**data, "explainer": {**data["explainer"], "method": "gradcam"}, "folder": card.folder}
    )
    with pytest.raises(CardError, match="cannot explain a detector"):
        ChestFindings(grad, torch.device("cpu"))


@pytest.mark.slow
def test_cli_synth_masks_to_coco_train_and_evaluate(tmp_path: Path) -> None:
    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "dicom_node.cli", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    data = tmp_path / "data"
    cli("synth", "cxr", "--out", str(data), "--n", "16", "--seed", "5", "--size", "160")
    # the seed's data preparation: masks -> COCO, split by Patient ID
    out = cli(
        "dataset",
        "masks-to-coco",
        "--images",
        str(data / "images"),
        "--masks",
        str(data / "masks"),
        "--out",
        str(tmp_path / "coco.json"),
        "--split",
        "0.75",
        "0.25",
        "--classes",
        *CLASSES,
    )
    assert "coco.train.json" in out and "coco.val.json" in out
    whole = json.loads((tmp_path / "coco.json").read_text())
    assert whole == json.loads((data / "annotations.json").read_text())
    train = json.loads((tmp_path / "coco.train.json").read_text())
    val = json.loads((tmp_path / "coco.val.json").read_text())
    assert not {i["patient_id"] for i in train["images"]} & {i["patient_id"] for i in val["images"]}
    model = tmp_path / "model"
    out = cli(
        "train",
        "cxr-findings",
        "--images",
        str(data / "images"),
        "--coco",
        str(tmp_path / "coco.train.json"),
        "--out",
        str(model),
        "--architecture",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "--size",
        "128",
        "--epochs",
        "1",
        "--lr",
        "0.01",
        "--synthetic",
        "--explainer",
        "eigencam",
    )
    assert "model ready" in out and "val mAP" in out
    card = load_card(model / "card.yaml")
    assert card.pipeline == "cxr-findings" and card.provenance.synthetic
    assert [label.name for label in card.labels] == list(CLASSES)
    assert card.provenance.recipe["lr"] == 0.01 and card.provenance.recipe["nesterov"] is True
    assert "validation" in card.metrics and "per_class" in card.metrics["validation"]
    out = cli(
        "evaluate",
        "cxr-findings",
        "--model",
        str(model),
        "--images",
        str(data / "images"),
        "--coco",
        str(tmp_path / "coco.val.json"),
        "--out",
        str(tmp_path / "eval"),
        "--bootstrap",
        "50",
    )
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert (tmp_path / "eval" / "precision_recall.png").is_file()


@pytest.mark.e2e
@pytest.mark.pipeline
def test_chest_radiograph_through_orthanc_gets_boxed_sr_and_heatmap(
    pacs: Orthanc,
    node_port: int,
    tmp_path: Path,
    database_url: str,
    cxr_demo_card: Path,
    held_out,
) -> None:
    secret = "ZQXJ-CXR-SECRET-99"  # Patient ID and part of the name: must never be logged
    image = next(i for i in held_out.images if len(i.findings) >= 2)
    objects, log = results_for_a_secret_patient(
        pacs, tmp_path, database_url, node_port, image.path, "chest-xr", secret
    )
    (sr,) = objects["SR"]
    (sc,) = objects["OT"]
    regions = _graphic_regions(sr)
    assert regions, "the SR carries the detector's boxes as image regions"
    for _, uid, polyline in regions:
        assert uid == image.sop_instance_uid
        assert polyline.shape == (5, 2) and np.array_equal(polyline[0], polyline[-1])
    assert {r.ReferencedSOPInstanceUID for r in sc.SourceImageSequence} == {image.sop_instance_uid}
    assert "box" in sc.DerivationDescription
    for result in (sr, sc):
        assert dciodvfy_errors(result) == [], result.Modality
        assert "cxr-demo" in result.SeriesDescription
    assert sr.PatientID == secret  # the results carry the patient, the logs do not
    assert "cxr-demo" in log and secret not in log


@pytest.mark.slow
def test_the_cards_ap50_per_box_is_measured_again_from_the_builds_held_out_patients(
    cxr_demo_card: Path, tmp_path: Path
) -> None:
    """The per-box AP50 the results quote is re-measured, not trusted: the build's phantoms are
    written again from its seed, split by patient as the recipe says, and the held-out part is
    evaluated as the node detects."""
    from pipelines.cxr.coco import split_by_patient
    from pipelines.cxr.demo import CxrDemoData

    card = load_card(cxr_demo_card)
    recipe = card.provenance.recipe
    images_dir, annotations = CxrDemoData().write(tmp_path, card.provenance.seed or 0).inputs
    coco = load_coco(annotations, images_dir)
    test = split_by_patient(
        coco, tuple(recipe["split"]), seed=recipe["seed"], images_dir=images_dir
    )[2]
    test_json = tmp_path / "test.json"
    test_json.write_text(json.dumps(test))
    report = evaluate_cxr(cxr_demo_card, images_dir, test_json, n_bootstrap=10)
    quoted = {
        p.label: p for p in card.performance if p.unit == "box" and p.split == "held_out_test"
    }
    assert set(quoted) == set(report["per_class"])
    for name, entry in quoted.items():
        measured = report["per_class"][name]
        assert entry.n == measured["n_gt"], name
        # scores differ in the last bits between this CPU's kernels and the build's
        assert measured["ap50"] == pytest.approx(entry.metrics["ap50"].value, abs=0.02), name
