"""``dicom-node train generic`` and ``evaluate generic``: seed 004 on a folder of labelled images.

A hospital trains the generic classifier from its own images (DICOM, or PNG
for a quick start) and a CSV, with k-fold cross-validation and a held-out
test share, and gets a complete card the node loads and the results quote.
Small and quick here (64 pixels, 2 folds, 2 epochs): what is checked is the
protocol and the card, not the model's quality.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.base import SeriesInput
from pipelines.card import load_card
from pipelines.generic.pipeline import GenericClassifier
from pipelines.generic.recipe import GenericRecipe
from pipelines.generic.train import DataError, read_labels, train_generic

QUICK = ["--size", "64", "--epochs", "2", "--folds", "2", "--batch-size", "8"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", *args], capture_output=True, text=True, check=False
    )


def test_train_and_evaluate_generic_from_dicom_write_a_card_the_node_uses(tmp_path: Path) -> None:
    data, fresh, model = tmp_path / "data", tmp_path / "fresh", tmp_path / "model"
    assert (
        _cli("synth", "radiograph", "--out", str(data), "--n", "40", "--seed", "5").returncode == 0
    )
    trained = _cli(
        "train", "generic", "--images", str(data), "--labels", str(data / "labels.csv"),
        "--out", str(model), "--synthetic", *QUICK,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "fold 2/2" in trained.stdout

    card = load_card(model / "card.yaml")
    assert card.pipeline == "generic" and card.provenance.synthetic
    assert [(label.name, label.report) for label in card.labels] == [
        ("lesion", True),
        ("normal", False),
    ]
    recipe = card.provenance.recipe
    assert recipe["folds"][0]["fold"] == 1 and len(recipe["folds"]) == 2
    assert recipe["lr"] == 0.001 and recipe["momentum"] == 0.9  # the seed's SGD
    cross, held = card.metrics["cross_validation"], card.metrics["held_out_test"]
    assert cross["n"] + held["n"] == 40
    assert np.sum(cross["confusion"]["matrix"]) == cross["n"]
    assert set(cross["report"]) >= {"lesion", "normal", "accuracy"}
    splits = {(p.label, p.unit, p.split) for p in card.performance}
    assert splits == {
        ("lesion", "image", "cross_validation"),
        ("lesion", "image", "held_out_test"),
    }
    for entry in card.performance:
        assert {"sensitivity", "specificity", "f1", "accuracy"} <= set(entry.metrics)
        sens = entry.metrics["sensitivity"]
        assert sens.value is not None and sens.ci_low is not None and sens.ci_high is not None
        assert sens.ci_low <= sens.value <= sens.ci_high

    # the node loads the card and runs it
    image = sorted(data.glob("*.dcm"))[0]
    result = GenericClassifier(card, torch.device("cpu")).run([SeriesInput("s", (image,))])
    assert [f.label for f in result.findings] == ["lesion"] and result.findings[0].unit == "image"

    assert (
        _cli("synth", "radiograph", "--out", str(fresh), "--n", "12", "--seed", "6").returncode == 0
    )
    evaluated = _cli(
        "evaluate", "generic", "--model", str(model), "--images", str(fresh),
        "--labels", str(fresh / "labels.csv"), "--out", str(tmp_path / "eval"),
        "--bootstrap", "50",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["n"] == 12 and saved["model"]["sha256"] == card.weights.sha256
    assert "lesion (n+" in evaluated.stdout


def test_train_generic_reads_png_with_patients_kept_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "png"
    folder.mkdir()
    rows = []
    for i in range(24):
        bright = i % 2 == 1
        pixels = rng.integers(0, 80, (48, 48)).astype(np.uint8)
        if bright:
            pixels[16:32, 16:32] = 250
        name = f"img{i}.png"
        Image.fromarray(pixels).save(folder / name)
        rows.append(
            {"file": name, "label": "spot" if bright else "normal", "patient": f"p{i // 2}"}
        )
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    card_path = train_generic(
        folder,
        folder / "labels.csv",
        tmp_path / "model",
        GenericRecipe(size=48, epochs=1, folds=2, batch_size=4, bootstrap_resamples=20),
        progress=False,
    )
    card = load_card(card_path)
    held = card.metrics["held_out_test"]
    # both images of a patient are on one side of the split
    assert held["n"] % 2 == 0 and held["n"] > 0


def test_bad_labels_are_refused_naming_the_problem(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,class\na.dcm,x\n")
    with pytest.raises(DataError, match="columns file and label"):
        read_labels(tmp_path, tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("file,label\nmissing.dcm,x\n")
    with pytest.raises(DataError, match="missing.dcm does not exist"):
        read_labels(tmp_path, tmp_path / "labels.csv")
    (tmp_path / "a.dcm").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("file,label\na.dcm,x\n")
    with pytest.raises(DataError, match="one class only"):
        read_labels(tmp_path, tmp_path / "labels.csv")


@dataclass(frozen=True)
class Spec:
    """A nested spec (an augmentation, a localiser)."""

    rotation: float = 10.0
    size: int = 64


@dataclass(frozen=True)
class Recipe:
    """Every kind of field a study's recipe has."""

    lr: float = field(default=0.001, metadata={"help": "learning rate"})
    cache: bool = False
    split: tuple[float, float] = (0.8, 0.2)
    views: tuple[float, ...] = (-10.0, 10.0)
    schedule: Literal["onecycle", "constant"] = "onecycle"
    test_year: int | None = None
    augment: Spec = Spec(rotation=20.0)
    localiser: Spec = field(default_factory=Spec)
    extra: dict[str, int] = field(default_factory=dict)  # not an option: the card's


def test_recipe_options_come_from_the_recipe_fields() -> None:
    """No default written twice: the options are the recipe's fields, defaults and helps."""
    import argparse

    from pipelines.common.options import add_recipe_arguments, recipe_from_args

    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser, Recipe, flatten={"augment"}, help={"views": "TTA angles"})
    assert recipe_from_args(Recipe, parser.parse_args([]), flatten={"augment"}) == Recipe()
    given = parser.parse_args(
        "--lr 0.01 --cache --split 0.7 0.3 --views --schedule constant --test-year 2022 "
        "--rotation 5 --localiser-size 96".split()
    )
    assert recipe_from_args(Recipe, given, flatten={"augment"}, lr=0.5) == Recipe(
        lr=0.5,  # an override wins
        cache=True,
        split=(0.7, 0.3),
        views=(),
        schedule="constant",
        test_year=2022,
        augment=Spec(rotation=5.0),
        localiser=Spec(size=96),
    )
    text = parser.format_help()
    assert "learning rate (default: 0.001)" in text and "TTA angles (default: -10.0 10.0)" in text
    assert "rotation (default: 20.0)" in text  # the recipe's instance, not the class default
    assert "--extra" not in text and "--augment-rotation" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--schedule", "cosine"])  # not among the Literal's choices
    with pytest.raises(
        ValueError, match="localiser.rotation and augment.rotation would both be --rotation"
    ):
        add_recipe_arguments(argparse.ArgumentParser(), Recipe, flatten={"augment", "localiser"})
    own = argparse.ArgumentParser()
    add_recipe_arguments(own, Recipe, defaults={"lr": 0.1}, skip={"localiser"})
    assert own.parse_args([]).lr == 0.1 and "--localiser-size" not in own.format_help()
    assert recipe_from_args(GenericRecipe, argparse.Namespace(folds=3)).folds == 3
