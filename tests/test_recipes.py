"""The recipe base every study shares: its fields, its checks, its options, its split refusal."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from pipelines.common.options import add_recipe_arguments, recipe_from_args
from pipelines.common.recipe import Recipe, SplitRecipe, one_of
from pipelines.ctslice.train import SliceRecipe
from pipelines.cxr.train import CxrRecipe
from pipelines.hip.train import HipRecipe
from pipelines.ich.train import IchRecipe

STUDY_RECIPES = (IchRecipe, CxrRecipe, HipRecipe, SliceRecipe)


@pytest.mark.parametrize("recipe", STUDY_RECIPES, ids=lambda r: r.__name__)
def test_every_study_recipe_has_the_shared_fields_once(recipe: type[Recipe]) -> None:
    assert issubclass(recipe, Recipe)
    names = [f.name for f in dataclasses.fields(recipe)]
    for shared in ("pretrained", "cache", "bootstrap_resamples", "seed"):
        assert names.count(shared) == 1, shared
    with pytest.raises(ValueError, match="bootstrap_resamples must be >= 0"):
        recipe(bootstrap_resamples=-1)


@pytest.mark.parametrize("recipe", (IchRecipe, CxrRecipe, SliceRecipe), ids=lambda r: r.__name__)
def test_split_recipes_refuse_a_split_without_train_or_validation(
    recipe: type[SplitRecipe],
) -> None:
    assert recipe().split == (0.7, 0.15, 0.15)
    with pytest.raises(ValueError, match="split must be three shares"):
        recipe(split=(0.85, 0.0, 0.15))


@pytest.mark.parametrize(
    ("recipe", "field"),
    [(CxrRecipe, "architecture"), (HipRecipe, "architecture"), (SliceRecipe, "architecture")],
)
def test_a_named_choice_outside_its_list_names_the_list(recipe: type[Recipe], field: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown {field} 'nope'; use one of \w"):
        recipe(**{field: "nope"})


def test_one_of_says_what_was_given_and_what_is_allowed() -> None:
    one_of("schedule", "onecycle", ("constant", "onecycle"))
    with pytest.raises(
        ValueError, match="unknown schedule 'cosine'; use one of constant, onecycle"
    ):
        one_of("schedule", "cosine", ("constant", "onecycle"))


def test_shared_fields_become_options_after_the_studys_own_with_the_base_docs() -> None:
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser, IchRecipe, flatten={"augment"})
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings[0] != "-h"]
    assert flags.index("--backbone") < flags.index("--seed")
    assert flags[-5:] == ["--pretrained", "--cache", "--bootstrap-resamples", "--seed", "--split"]
    seed = next(a for a in parser._actions if a.dest == "seed")
    assert seed.help.startswith("seed of the split")  # the base's #: comment
    parser.format_help()  # the base's "95 %" reaches argparse escaped
    given = parser.parse_args(["--seed", "7", "--split", "0.6", "0.2", "0.2", "--no-cache"])
    recipe = recipe_from_args(IchRecipe, given, flatten={"augment"})
    assert (recipe.seed, recipe.split, recipe.cache) == (7, (0.6, 0.2, 0.2), False)


def test_train_refuses_too_few_patients_as_a_data_error(tmp_path: Path, capsys) -> None:
    from dicom_node.cli import main

    data = tmp_path / "data"
    assert main(["synth", "ich", "--out", str(data), "--patients", "1", "--slices", "3",
                 "--size", "64"]) == 0  # fmt: skip
    capsys.readouterr()
    status = main(
        ["train", "ich", "--dicom-dir", str(data / "dicom"), "--labels", str(data / "labels.csv"),
         "--out", str(tmp_path / "model"), "--synthetic", "--backbone", "resnet18", "--size", "64"]
    )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("data error: 1 patient(s) cannot be split into train and validation")
    assert not (tmp_path / "model" / "card.yaml").exists()


def test_named_optimizers_and_schedules_are_the_ones_the_trainers_share() -> None:
    import torch

    from pipelines.common.train import lr_schedule, optimizer

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[0].requires_grad_(False)  # a frozen stage
    sgd = optimizer("sgd", lr=0.1, nesterov=True, trainable_only=True)(net.parameters())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    assert sum(len(g["params"]) for g in sgd.param_groups) == 2  # the frozen layer left out
    adamw = optimizer("adamw", lr=0.1, weight_decay=0.01)(net.parameters())
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; use one of sgd, adamw, adam"):
        optimizer("lion", lr=0.1)

    one = lr_schedule("onecycle", lr=1.0, epochs=2, steps=20, warmup=0.25)
    assert one["scheduler_interval"] == "batch"
    opt = torch.optim.SGD(net[1].parameters(), lr=1.0)
    scheduler = one["scheduler_factory"](opt)
    rates = []
    for _ in range(20):
        opt.step()
        scheduler.step()
        rates.append(opt.param_groups[0]["lr"])
    assert (
        max(rates) == pytest.approx(1.0, rel=1e-3) and rates.index(max(rates)) == 3
    )  # warm-up: a quarter
    # too few steps to warm up and decay: constant, not a division by zero
    assert lr_schedule("onecycle", lr=1.0, epochs=1, steps=3)["scheduler_factory"] is None
    assert lr_schedule("constant", lr=1.0, epochs=3)["scheduler_factory"] is None
    step = lr_schedule("step", lr=1.0, epochs=9, step_size=2, gamma=0.5)
    assert step["scheduler_interval"] == "epoch"
    opt = torch.optim.SGD(net[1].parameters(), lr=1.0)
    scheduler = step["scheduler_factory"](opt)
    for _ in range(4):
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_schedule("linear", lr=1.0, epochs=1)
