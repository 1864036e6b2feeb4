"""``bench.demo_spread``: the build matrix, the suggested bars and the report's tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.demo_spread import Build, matrix, report, suggest


def test_matrix_is_every_path_at_seed_0_and_the_first_path_at_the_other_seeds() -> None:
    assert matrix(["avx2", "native"], [0, 1, 2]) == [
        Build("avx2", 0),
        Build("native", 0),
        Build("avx2", 1),
        Build("avx2", 2),
    ]
    assert Build("avx512-cnr", 0).name == "avx512-cnr-seed0"


def test_suggested_bars_are_three_sd_beyond_the_mean_rounded_outwards() -> None:
    assert suggest(0.8, 0.05, higher_is_better=True) == pytest.approx(0.65)
    assert suggest(0.8, 0.04, higher_is_better=True) == pytest.approx(0.65)  # 0.68 rounds down
    assert suggest(0.1, 0.02, higher_is_better=False) == pytest.approx(0.2)  # 0.16 rounds up
    assert suggest(1.0, 0.0, higher_is_better=True) == pytest.approx(1.0)


def _card(folder: Path, sha: str, metrics: dict) -> None:
    folder.mkdir(parents=True)
    card = {"weights": {"file": "weights.pt", "sha256": sha}, "metrics": metrics}
    (folder / "card.yaml").write_text(yaml.safe_dump(card))


def test_report_tabulates_card_metrics_and_bars_over_the_builds(tmp_path: Path) -> None:
    builds = [Build("avx2", 0), Build("native", 0)]
    for build, (auc, sha, measured) in zip(
        builds, [(0.9, "a" * 64, 0.7), (0.8, "b" * 64, 0.5)], strict=True
    ):
        _card(
            tmp_path / build.name / "generic-demo",
            sha,
            {
                "held_out_test": {
                    "roc_auc": {"value": auc, "ci_low": 0.1, "ci_high": 1.0},
                    "n": 200,
                    "confusion_matrix": {"tp": 1},
                },
                "validation": {"roc_auc": {"value": 0.1}},
            },
        )
        bar = {"name": "generic.x", "op": ">=", "bar": 0.6, "value": measured, "context": ""}
        (tmp_path / build.name / "bars.jsonl").write_text(json.dumps(bar) + "\n")
    result = report(tmp_path, builds, ["generic-demo"])
    rows = {row["metric"]: row for row in result["demos"]["generic-demo"]["metrics"]}
    # the held-out split only, counts and intervals left out
    assert list(rows) == ["held_out_test.roc_auc"]
    assert (rows["held_out_test.roc_auc"]["min"], rows["held_out_test.roc_auc"]["max"]) == (
        0.8,
        0.9,
    )
    assert result["demos"]["generic-demo"]["sha256"] == {
        "avx2-seed0": "a" * 12,
        "native-seed0": "b" * 12,
    }
    (bar,) = result["bars"]
    assert bar["values"] == [0.7, 0.5] and bar["worst"] == 0.5
    assert bar["margin"] == pytest.approx(-0.1)  # the worst build misses the bar
    text = (tmp_path / "report.md").read_text()
    assert "| generic-demo | roc_auc | 0.80-0.90 | 0.85 |" in text
    assert "| generic.x | >= 0.6 | 0.700 | 0.500 | 0.500 |" in text
