"""A card's headline metrics: typed, in a unit and a split, and required before clinical use.

Results quote these entries next to every finding (``tests/test_result_validation.py``),
so the card refuses what a result could not honestly quote: a label or unit it
does not know, and a card marked for clinical use without held-out metrics
with their intervals for every reported label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_generic_pipeline import write_test_card

from dicom_node.cardtable import performance_table
from pipelines.card import CardError, Estimate, LabelPerformance, load_card
from pipelines.common.metrics import binary_report, bootstrap_ci, label_performance, recall

CI = {"value": 0.9, "ci_low": 0.8, "ci_high": 0.97}


def _card(tmp_path: Path, **changes: Any) -> Path:
    path = write_test_card(tmp_path / "card")
    raw = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key == "clinical_use":
            raw["provenance"].update(synthetic=False, clinical_use=value)
        else:
            raw[key] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "label": "lesion",
        "unit": "image",
        "split": "held_out_test",
        "n": 200,
        "n_positive": 60,
        "metrics": {"sensitivity": CI, "specificity": CI},
    }
    return {**entry, **changes}


def test_a_clinical_card_without_held_out_metrics_is_refused_naming_the_label(
    tmp_path: Path,
) -> None:
    with pytest.raises(CardError, match=r"clinical_use is true, but label\(s\) lesion"):
        load_card(_card(tmp_path, clinical_use=True))


@pytest.mark.parametrize(
    "entry",
    [
        _entry(split="validation"),  # the split that chose the threshold is not held out
        _entry(metrics={"sensitivity": {"value": 0.9}}),  # no interval
        _entry(label="normal"),  # not the reported label
    ],
    ids=["validation-only", "no-ci", "other-label"],
)
def test_a_clinical_card_needs_a_held_out_interval_for_every_reported_label(
    tmp_path: Path, entry: dict[str, Any]
) -> None:
    with pytest.raises(CardError, match="held-out data"):
        load_card(_card(tmp_path, clinical_use=True, performance=[entry]))


@pytest.mark.parametrize(
    ("metrics", "refusal"),
    [
        ({"test": {"unit": "image", "accuracy": 0.9}}, r"metrics\.test: each top-level section"),
        ({"held_out_test": {"accuracy": 0.9}}, r"metrics\.held_out_test\.accuracy is a number"),
        (
            {"validation": {"per_class": {"lesion": {"recall": 0.8}}}, "held_out_test": {}},
            r"metrics\.validation\.per_class\.lesion\.recall is a number that names no unit",
        ),
        ({"held_out_test": {"unit": "box (COCO)", "ap50": 0.5}}, r"unit is 'box \(COCO\)'"),
        (
            {"held_out_test": {"unit": "image", "cm": [[3, 1], [0, 4]], "x": {"unit": "voxel"}}},
            r"metrics\.held_out_test\.x\.unit is 'voxel'",
        ),
    ],
    ids=["not-a-split", "no-unit", "no-unit-deep", "unit-not-in-vocabulary", "bad-nested-unit"],
)
def test_every_number_in_the_detailed_metrics_names_its_split_and_unit(
    tmp_path: Path, metrics: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(CardError, match=refusal):
        load_card(_card(tmp_path, metrics=metrics))


def test_a_unit_holds_below_it_until_a_section_names_another(tmp_path: Path) -> None:
    metrics = {
        "held_out_test": {
            "unit": "slice",
            "confidence": 0.95,
            "per_label": {"lesion": {"auc": 0.9}},
            "confusion_matrix": [[5, 1], [2, 7]],
            "study": {"unit": "study", "n": 12, "per_label": {"lesion": {"auc": 0.8}}},
        },
        "cross_validation": {"unit": "image", "folds": 5, "note": "pooled out-of-fold"},
    }
    card = load_card(_card(tmp_path, metrics=metrics))
    assert card.metrics["held_out_test"]["study"]["n"] == 12


def test_a_clinical_card_with_held_out_intervals_loads(tmp_path: Path) -> None:
    card = load_card(_card(tmp_path, clinical_use=True, performance=[_entry()]))
    assert card.for_diagnostic_use
    (entry,) = card.performance_for("lesion", "image")
    assert entry.metrics["sensitivity"] == Estimate(value=0.9, ci_low=0.8, ci_high=0.97)
    assert card.performance_for("lesion", "study") == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_entry(label="tumour"), "not among the card's labels"),
        (_entry(unit="patient"), "performance.0.unit"),
        (_entry(split="test"), "performance.0.split"),
        (_entry(metrics={"auc": CI}), "performance.0.metrics"),
        (_entry(metrics={}), "performance.0.metrics"),
        (_entry(n=0), "performance.0.n"),
    ],
)
def test_every_entry_names_a_known_label_unit_split_and_metric(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    with pytest.raises(CardError, match=message):
        load_card(_card(tmp_path, performance=[entry]))


def test_an_entry_reads_as_one_line_with_its_split_unit_n_and_intervals() -> None:
    entry = LabelPerformance.model_validate(
        _entry(unit="study", metrics={"sensitivity": CI, "ppv": {"value": None}})
    )
    assert entry.describe() == (
        "held-out test, per study (n=200, 60 positive): sensitivity 0.90 (95% CI 0.80-0.97), "
        "PPV undefined"
    )


def test_label_performance_takes_a_binary_report_as_measured() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 120)
    score = np.clip(truth * 0.5 + rng.random(120) * 0.6, 0, 1)
    report = binary_report(truth, score, 0.5, n_bootstrap=200)
    entry = label_performance(report, label="lesion", unit="image", split="held_out_test", n=120)
    assert entry.n_positive == int(truth.sum()) and entry.threshold == 0.5
    assert entry.metrics["sensitivity"].value == pytest.approx(report["recall"]["value"], abs=1e-4)
    assert entry.metrics["ppv"].ci_low == pytest.approx(report["precision"]["ci_low"], abs=1e-4)
    assert set(entry.metrics) == {"sensitivity", "specificity", "ppv", "roc_auc"}


def test_a_bootstrap_over_patients_is_wider_than_over_their_repeated_rows() -> None:
    """Five rows per patient are not five cases: resampling rows would overstate the certainty."""
    rng = np.random.default_rng(0)
    truth = np.repeat(np.ones(30, dtype=int), 5)
    called = np.repeat(rng.random(30) < 0.7, 5).astype(int)
    patients = np.repeat(np.arange(30), 5)
    _, lo_rows, hi_rows = bootstrap_ci(recall, truth, called, n=400)
    point, lo, hi = bootstrap_ci(recall, truth, called, n=400, groups=patients)
    assert lo <= point <= hi
    assert hi - lo > 1.5 * (hi_rows - lo_rows)


def test_the_models_table_is_generated_from_the_card(tmp_path: Path) -> None:
    card = load_card(_card(tmp_path, performance=[_entry(), _entry(split="validation")]))
    table = performance_table(card)
    assert table.splitlines() == [
        "| label | unit | split | n | n+ | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|",
        "| lesion | image | held out test | 200 | 60 | 0.90 [0.80, 0.97] | 0.90 [0.80, 0.97] |",
    ]


def test_models_table_prints_the_cards_tables_and_refuses_a_missing_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess
    import sys

    card = _card(tmp_path, performance=[_entry()])
    run = subprocess.run(
        [sys.executable, "-m", "dicom_node", "models", "table", str(card.parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("**test-random 0.0.1** (95% intervals)")
    assert "| lesion | image | held out test | 200 | 60 |" in run.stdout
    from dicom_node.cli import main  # the rest in-process: the wiring is tested above

    assert main(["models", "table", str(tmp_path / "nothing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_models_table_into_rewrites_only_the_marked_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dicom_node.cardtable import BEGIN, END
    from dicom_node.cli import main

    card = _card(tmp_path, performance=[_entry()])
    readme = tmp_path / "README.md"
    readme.write_text(f"# Models\n\nbefore\n\n{BEGIN}\nold table\n{END}\n\nafter\n")

    def into(path: Path) -> int:  # in-process: the CLI's wiring is tested above
        return main(["models", "table", str(card), "--into", str(path)])

    assert into(readme) == 0
    text = readme.read_text()
    assert text.startswith("# Models\n\nbefore\n\n" + BEGIN + "\n\n**test-random 0.0.1**")
    assert "old table" not in text and text.endswith(f"{END}\n\nafter\n")
    assert "| lesion | image | held out test | 200 | 60 |" in text
    assert into(readme) == 0 and readme.read_text() == text  # idempotent
    unmarked = tmp_path / "other.md"
    unmarked.write_text("no markers\n")
    capsys.readouterr()
    assert into(unmarked) == 2
    assert "BEGIN models table" in capsys.readouterr().err
    assert unmarked.read_text() == "no markers\n"
