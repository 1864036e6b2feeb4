"""Every shipped model's results say how good it is, in the unit each finding is reported in.

Each demo model is run as the node runs it (its registered pipeline, its
card) on a phantom it was not trained on; its SR is written, validated with
dciodvfy and read back. Every finding's group must quote the card's held-out
metrics for its label counted in the finding's own unit (per study for the
hemorrhage model, per box or image for the chest detector, per femoral neck
for the hip model...), each with its 95 % interval and n; a present hip
finding must carry the seed's DEXA advice. The cards themselves must hold
those entries for every reported label, in the pipeline's unit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import torch

from dicom_node import __version__
from dicom_node.cardtable import BEGIN, END, cards_tables
from dicom_node.results import AlgorithmInfo, build_sr
from pipelines import registry
from pipelines.base import SeriesInput
from pipelines.card import load_card
from pipelines.common.phantoms import write_radiograph_study
from pipelines.ctslice.synth import write_abdomen_series
from pipelines.cxr.synth import write_cxr_dataset
from pipelines.hip.codes import DEXA_ADVICE
from pipelines.hip.synth import write_hip_dataset
from pipelines.ich.synth import write_head_ct_series

from dicom_validation import dciodvfy_report

README = Path(__file__).resolve().parent.parent / "models" / "README.md"
CPU = torch.device("cpu")
#: Seeds no demo build uses for its phantoms.
FRESH = 777_001
#: "<metric> 0.93 (95% CI 0.88-0.97)": a value with its interval.
WITH_CI = re.compile(r"\d\.\d\d \(95% CI \d\.\d\d-\d\.\d\d\)")


def _generic(folder: Path) -> list[Path]:
    return [write_radiograph_study(folder, seed=FRESH, index=1, lesion=True, size=128).path]


def _cxr(folder: Path) -> list[Path]:
    data = write_cxr_dataset(folder, n=4, seed=FRESH, size=256)
    return [max(data.images, key=lambda image: len(image.findings)).path]


def _ich(folder: Path) -> list[Path]:
    slices = write_head_ct_series(
        folder, seed=FRESH, index=1, hemorrhages=("subdural",), n_slices=10
    )
    return [s.path for s in slices]


def _ctslice(contrast: str) -> Callable[[Path], list[Path]]:
    def write(folder: Path) -> list[Path]:
        slices = write_abdomen_series(
            folder, seed=FRESH, index=1, contrast=contrast, cholecystitis=True, n_slices=10
        )
        return [s.path for s in slices]

    return write


def _hip(folder: Path) -> list[Path]:
    # every patient osteoporotic: the advice must appear on the necks the model calls
    data = write_hip_dataset(folder, patients=4, seed=FRESH, osteoporosis_fraction=1.0)
    return [image.path for image in data.images]  # one study each: run one at a time


CASES = {
    "generic-demo": ("demo_card", _generic),
    "cxr-demo": ("cxr_demo_card", _cxr),
    "ich-demo": ("ich_demo_card", _ich),
    "ct-gb-contrast-demo": ("ct_contrast_demo_card", _ctslice("enhanced")),
    "ct-gb-noncontrast-demo": ("ct_noncontrast_demo_card", _ctslice("unenhanced")),
    "hip-demo": ("hip_demo_card", _hip),
}


def _texts(group: pydicom.Dataset, code_value: str) -> list[str]:
    return [
        str(item.TextValue)
        for item in group.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == code_value
    ]


def _groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (measurements,) = (
        item
        for item in sr.ContentSequence
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    return list(measurements.ContentSequence)


@pytest.mark.parametrize("demo", list(CASES))
def test_each_demo_card_quotes_held_out_metrics_for_every_label_in_its_unit(
    demo: str, request: pytest.FixtureRequest
) -> None:
    card = load_card(request.getfixturevalue(CASES[demo][0]))
    units = {registry.get(card.pipeline).reports}
    if card.pipeline == "cxr-findings":
        units.add("box")  # a detector's present findings are its boxes
    for label in (label for label in card.labels if label.report):
        for unit in units:
            held_out = [
                p for p in card.performance_for(label.name, unit) if p.split == "held_out_test"
            ]
            assert held_out, f"{demo}: no held-out metrics for {label.name} per {unit}"
            for entry in held_out:
                assert entry.n > 0 and entry.metrics
                assert all(e.has_ci for e in entry.metrics.values() if e.value is not None)


@pytest.mark.parametrize("demo", list(CASES))
def test_each_demo_sr_carries_its_metrics_with_ci_in_the_findings_unit(
    demo: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    fixture, write = CASES[demo]
    card = load_card(request.getfixturevalue(fixture))
    written = write(tmp_path / "input")
    pipeline = registry.get(card.pipeline)(card, CPU)
    # one job per study: the hip phantoms are one study each, the first with a present finding
    jobs = [[path] for path in written] if demo == "hip-demo" else [written]
    for files in jobs:
        result = pipeline.run([SeriesInput("1.2.3", tuple(files))])
        if any(f.present for f in result.findings):
            break
    algorithm = AlgorithmInfo.from_card(card, __version__)
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    sr = build_sr(result.findings, headers, algorithm, job_key=f"{demo}-job", series_number=900)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    report = dciodvfy_report(path)
    assert report.errors == [], report.output
    groups = _groups(pydicom.dcmread(path))
    assert len(groups) == len(result.findings)
    for finding, group in zip(result.findings, groups, strict=True):
        lines = _texts(group, "model-perf")
        assert finding.unit is not None
        assert lines, f"{demo}: {finding.label} has no model-performance item"
        assert all(f"per {finding.unit} (n=" in line for line in lines), lines
        assert any(WITH_CI.search(line) for line in lines), lines
        assert lines[0].startswith("held-out test"), lines
        advice = _texts(group, "121075")
        if demo == "hip-demo" and finding.present:
            assert advice == [DEXA_ADVICE]
        elif not finding.present:
            assert advice == []
    if demo == "hip-demo":
        assert any(f.present for f in result.findings), "no osteoporotic neck was called"


def _shape(tables: str) -> list[str]:
    """The tables with every metric cell blanked: what a build on any CPU must reproduce.

    Labels, units, splits, n and n+ follow from the seed and split (the hip model's
    necks too: it is quoted per true neck, found or not); the metric values move
    with the CPU's kernels ("Demo metrics are ranges"), so only whether a cell
    holds a value is compared.
    """
    out = []
    for line in tables.strip().splitlines():
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) > 5 and not line.startswith("| label |"):
            line = " | ".join([*cells[:5], *("v" if c.strip(" |") else "" for c in cells[5:])])
        out.append(line)
    return out


def test_the_readme_tables_are_what_models_table_prints_for_the_demo_cards(
    request: pytest.FixtureRequest,
) -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "models/README.md lost its markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    names = re.findall(r"^\*\*(\S+) \S+\*\* \(", block, flags=re.MULTILINE)
    assert sorted(names) == sorted(CASES), "the README's block must show every demo card"
    cards = [load_card(request.getfixturevalue(CASES[name][0])) for name in names]
    assert _shape(block) == _shape(cards_tables(cards)), (
        "models/README.md's tables no longer match the cards: run "
        "`dicom-node models table models/<each demo> --into models/README.md`"
    )
