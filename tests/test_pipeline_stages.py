"""The one shape of every pipeline: prepare, forward, interpret; and studies as plug-ins.

The stage contract is what an engine relies on to batch several jobs of one
model together (``Pipeline.score_together``): each job gets back exactly its
own inputs' outputs, in its order, whatever else shared the batch. A study
package that declares ``STUDY`` (in-tree or through the ``dicom_node.studies``
entry point) is found by the registry, the command line and the demo builder
without editing any of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_generic_pipeline import write_test_card

from pipelines import registry
from pipelines.base import (
    Box,
    Code,
    Finding,
    Heatmap,
    Pipeline,
    PipelineInputError,
    SeriesInput,
)
from pipelines.card import load_card
from pipelines.common.phantoms import write_radiograph_study
from pipelines.generic.pipeline import GenericClassifier
from pipelines.study import demo_models, studies

CPU = torch.device("cpu")
LESION = Code("52988006", "SCT", "Lesion")
ROOT = Path(__file__).resolve().parents[1]


class Recording(GenericClassifier):
    """The generic classifier, noting the size of every forward batch."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.batches: list[int] = []

    def forward(self, batch):  # type: ignore[no-untyped-def]
        self.batches.append(len(batch))
        return super().forward(batch)


def _job(folder: Path, seed: int, n: int) -> SeriesInput:
    files = tuple(
        write_radiograph_study(folder, seed=seed, index=i, lesion=bool(i % 2), size=96).path
        for i in range(n)
    )
    return SeriesInput(f"1.2.826.0.1.3680043.10.543.{seed}", files)


@pytest.fixture
def recording(tmp_path: Path) -> Recording:
    return Recording(load_card(write_test_card(tmp_path / "card", top_k=1)), CPU)


def _probabilities(findings: list) -> dict[tuple[str, str], float]:  # type: ignore[type-arg]
    return {(f.source_sop_instance_uids[0], f.label): f.probability for f in findings}


def test_jobs_share_forward_batches_and_each_gets_its_own_results(
    recording: Recording, tmp_path: Path
) -> None:
    a, b = _job(tmp_path / "a", 11, 3), _job(tmp_path / "b", 12, 3)
    alone = {name: recording.run([job]) for name, job in (("a", a), ("b", b))}
    recording.batches.clear()

    scored = recording.score_together([recording.prepare([a]), recording.prepare([b])], 4)

    # 6 inputs in batches of 4: the first batch cannot be one job's (3 images each)
    assert recording.batches == [4, 2]
    for name, job, result in zip("ab", (a, b), scored, strict=True):
        assert [ref.path for ref in result.refs] == list(job.files), "its own inputs, in order"
        together = recording.finish(result)
        expected = _probabilities(alone[name].findings)
        got = _probabilities(together.findings)
        assert got.keys() == expected.keys()
        for key, p in expected.items():
            assert got[key] == pytest.approx(p, abs=1e-5), key
        assert [h.sop_instance_uid for h in together.heatmaps] == [
            h.sop_instance_uid for h in alone[name].heatmaps
        ]


def test_an_unusable_file_is_skipped_with_its_reason_and_the_rest_is_analysed(
    recording: Recording, tmp_path: Path
) -> None:
    job = _job(tmp_path / "ok", 13, 2)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    result = recording.run([SeriesInput(job.series_instance_uid, (junk, *job.files))])
    assert result.skipped == [("junk.dcm", "not a readable DICOM file: no DICOM preamble/header")]
    assert len({f.source_sop_instance_uids for f in result.findings}) == 2


def test_a_job_with_nothing_usable_fails_naming_what_was_expected_and_why(
    recording: Recording, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"")
    with pytest.raises(PipelineInputError) as info:
        recording.run([SeriesInput("1.2.3", (junk,))])
    message = str(info.value)
    assert "none of the 1 file(s) in 1 series is a greyscale single-frame image" in message
    assert "junk.dcm: not a readable DICOM file" in message
    assert "check the route's selection" in message


def test_a_forward_that_loses_outputs_is_an_error_not_a_shifted_result(
    recording: Recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording, "forward", lambda batch: [])
    with pytest.raises(RuntimeError, match="returned 0 outputs for 2 inputs"):
        recording.run([_job(tmp_path / "x", 14, 2)])


def test_every_pipeline_is_one_shape() -> None:
    """Every registered pipeline implements the stages and states what it accepts; none
    overrides the template that holds the shared checks."""
    for name in registry.names():
        cls = registry.get(name)
        assert issubclass(cls, Pipeline)
        assert "run" not in vars(cls) and "finish" not in vars(cls), name
        assert cls.accepts != Pipeline.accepts and "{card}" in cls.accepts, name


def test_the_seed_studies_declare_themselves() -> None:
    names = [s.name for s in studies()]
    assert names == ["ctslice", "cxr", "ich", "hip", "generic"]  # seeds 000 to 004
    assert set(registry.names()) == {
        "ct-slice-classifier",
        "cxr-findings",
        "ich",
        "hip-osteoporosis",
        "generic",
    }
    assert list(demo_models()) == [
        "ct-gb-contrast-demo",
        "ct-gb-noncontrast-demo",
        "cxr-demo",
        "ich-demo",
        "hip-demo",
        "generic-demo",
    ]
    benches = [s.bench for s in studies() if s.bench]
    assert benches == ["bench.ctslice", "bench.cxr", "bench.ich", "bench.hip"]


TOY_INIT = """\"\"\"A toy study from another distribution.\"\"\"

from pipelines.study import DemoModel, Study

STUDY = Study(__name__, "900", demos=(DemoModel("toy-demo", "demo:build", minutes=0.1),))
"""

TOY_PIPELINE = """
from pipelines.generic.pipeline import GenericClassifier
from pipelines.registry import register


@register("toy")
class Toy(GenericClassifier):
    accepts = "a toy image that {card} can read"
"""

TOY_COMMANDS = """
def add_commands(groups):
    groups.train.add_parser("toy", help="train the toy study (plugged in)")
"""

TOY_DEMO = """
def build(models_dir, *, seed=0, force=False, progress=True):
    raise NotImplementedError
"""


def test_a_new_study_from_another_distribution_plugs_in(tmp_path: Path) -> None:
    """A package with a STUDY and an entry point: the registry serves its pipeline, the CLI
    lists its command, the demo builder knows its demo, and nothing in the node was edited."""
    package = tmp_path / "toy_study"
    package.mkdir()
    for name, text in {
        "__init__.py": TOY_INIT,
        "pipeline.py": TOY_PIPELINE,
        "commands.py": TOY_COMMANDS,
        "demo.py": TOY_DEMO,
    }.items():
        (package / name).write_text(textwrap.dedent(text))
    dist = tmp_path / "toy_study-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-study\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dicom_node.studies]\ntoy = toy_study:STUDY\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    code = (
        "from pipelines import registry; from pipelines.study import demo_models\n"
        "print(registry.get('toy').__name__, list(demo_models())[-1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Toy", "toy-demo"]
    cli = subprocess.run(
        [sys.executable, "-m", "dicom_node", "train", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "train the toy study (plugged in)" in cli.stdout

    (dist / "entry_points.txt").write_text("[dicom_node.studies]\ntoy = toy_study:Toy\n")
    (package / "__init__.py").write_text(TOY_INIT + "\nToy = object()\n")
    broken = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert broken.returncode != 0
    assert "is a object, not a pipelines.study.Study" in broken.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Box("", 0, 0, 1, 1), "Box.sop_instance_uid must name the image"),
        (
            lambda: Box("1.2", 0, float("nan"), 1, 1),
            "Box.y0 must be a finite number of pixels, got NaN",
        ),
        (lambda: Box("1.2", 5, 0, 5, 1), "needs x0 < x1 and y0 < y1"),
        (lambda: Finding("", LESION, 0.5, True), "Finding.label must be the card's label name"),
        (
            lambda: Finding("a", LESION, 1.5, True),
            r"Finding.probability must be in \[0, 1\], got 1.5",
        ),
        (
            lambda: Finding("a", LESION, 0.5, True, source_sop_instance_uids=["1.2"]),  # type: ignore[arg-type]
            "must be a tuple of SOP Instance UIDs",
        ),
        (
            lambda: Finding(
                "a",
                LESION,
                0.5,
                True,
                source_sop_instance_uids=("1.2",),
                box=Box("1.3", 0, 0, 1, 1),
            ),
            "Finding.box is on image 1.3, which is not one of its source",
        ),
        (
            lambda: Heatmap(Path("a"), "1.2", np.zeros((4, 4), np.uint8)),
            "must be a float .* got uint8",
        ),
        (
            lambda: Heatmap(Path("a"), "1.2", np.zeros((1, 4, 4), np.float32)),
            r"2-D .* got shape \(1, 4, 4\)",
        ),
        (lambda: Heatmap(Path("a"), "1.2", np.full((4, 4), np.nan, np.float32)), "NaN or infinite"),
        (
            lambda: Heatmap(Path("a"), "1.2", np.full((4, 4), 2.0, np.float32)),
            r"\[0, 1\] \(normalise",
        ),
    ],
)
def test_results_refuse_bad_values_naming_the_argument(make: Any, message: str) -> None:
    """A pipeline that builds a bad Box, Finding or Heatmap fails where it builds it, with the
    argument's name, what is allowed and what it got: not later, inside the SR or SC builder."""
    with pytest.raises(ValueError, match=message):
        make()
