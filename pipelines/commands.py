"""How a pipeline package adds its own ``dicom-node`` subcommands.

The service's command line (:mod:`dicom_node.cli`) owns the command groups a
study's tooling fills in: ``synth`` (phantoms as real DICOM), ``dataset``
(turn data into the study's training format), ``train`` and ``evaluate``.
Each study package that has such tooling declares a ``commands`` module with
an ``add_commands(groups)`` function in its ``STUDY`` (:mod:`pipelines.study`),
so a new study brings its commands without editing the service's CLI.

A command module imports :mod:`argparse` and this module's helpers at module
level, nothing heavier: torch, the generators and trainers are imported inside
the handlers, so that ``dicom-node --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.study import studies

#: Exit codes shared with :mod:`dicom_node.cli`.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class CommandGroups:
    """The ``add_subparsers()`` actions of the command groups a pipeline may extend."""

    models: argparse._SubParsersAction[argparse.ArgumentParser]
    synth: argparse._SubParsersAction[argparse.ArgumentParser]
    dataset: argparse._SubParsersAction[argparse.ArgumentParser]
    train: argparse._SubParsersAction[argparse.ArgumentParser]
    evaluate: argparse._SubParsersAction[argparse.ArgumentParser]


def add_pipeline_commands(groups: CommandGroups) -> None:
    """Let every study's ``commands`` module add its subcommands, in study order, and the demo
    builder its ``models build-demo`` (:mod:`pipelines.demo_commands`)."""
    from pipelines import demo_commands

    demo_commands.add_commands(groups)
    for study in studies():
        if study.commands:
            importlib.import_module(study.module(study.commands)).add_commands(groups)


def data_error(exc: Exception) -> int:
    """Report input data a command cannot use (the message says what to fix); exit status 2."""
    print(f"data error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def model_ready(card: object) -> int:
    """The closing line of every ``train`` command."""
    print(f"model ready: {card} (route series to it with a pipelines: entry naming this card)")
    return EXIT_OK


#: A numpydoc parameter line: ``name : type`` (or ``a, b : type``), not indented.
_PARAMETER = re.compile(r"^([a-z_][a-z0-9_, ]*?)\s*:\s*\S")


def parameter_docs(function: Callable[..., object]) -> dict[str, str]:
    """The numpydoc ``Parameters`` descriptions of ``function``, one line each, by name."""
    docs: dict[str, str] = {}
    in_section, names = False, []
    for line in (inspect.getdoc(function) or "").splitlines():
        text = line.strip()
        if text == "Parameters":
            in_section = True
        elif not in_section or not text or set(text) == {"-"}:
            continue
        elif not line[0].isspace():
            match = _PARAMETER.match(line)
            if match is None:
                break  # the next section
            names = [name.strip() for name in match.group(1).split(",")]
        else:
            for name in names:
                docs[name] = f"{docs.get(name, '')} {text}".strip()
    # help is plain text: ``x`` and :role:`x` read as x
    return {name: re.sub(r"(?::[a-z]+:)?`+~?([^`]+)`+", r"\1", doc) for name, doc in docs.items()}


def add_writer_arguments(
    parser: argparse.ArgumentParser,
    writer: Callable[..., object],
    *,
    defaults: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
) -> None:
    """``--out`` and one option per keyword-only parameter of a phantom ``writer``.

    A ``synth`` command's options are its writer's parameters: their defaults
    come from the signature (or ``defaults``, for one the writer requires), their
    help from its numpydoc ``Parameters``, their choices from a ``Literal``; a
    ``(int, int)`` takes two values. ``flags`` renames an option (``n_slices`` ->
    ``--slices``). :func:`writer_options` reads them back.
    """
    given, renamed, hints = dict(defaults or {}), dict(flags or {}), typing.get_type_hints(writer)
    docs = parameter_docs(writer)
    parser.add_argument("--out", required=True, help=docs.get("out_dir", "output folder"))
    for name, param in inspect.signature(writer).parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or name in skip:
            continue
        default = given.get(name, param.default)
        if default is inspect.Parameter.empty:
            raise ValueError(f"{writer.__name__}() requires {name}: give its command a default")
        kwargs: dict[str, Any] = {"dest": name, "default": default}
        hint = hints[name]
        if typing.get_origin(hint) is Literal:
            kwargs["choices"] = typing.get_args(hint)
        elif isinstance(default, tuple):
            kwargs.update(type=type(default[0]), nargs=len(default), metavar=name.upper())
        else:
            kwargs.update(type=type(default), metavar=renamed.get(name, name).upper())
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = docs.get(name, name.replace("_", " ")).replace("%", "%%")
        flag = "--" + renamed.get(name, name).replace("_", "-")
        parser.add_argument(flag, help=f"{text} (default: {shown})", **kwargs)


def writer_options(writer: Callable[..., object], args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``writer`` that :func:`add_writer_arguments` gave options."""
    names = inspect.signature(writer).parameters
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in vars(args).items()
        if name in names and name != "out_dir"
    }


def add_synth_command(
    groups: CommandGroups,
    name: str,
    writer: Callable[..., Any],
    describe: Callable[[Any, argparse.Namespace], str],
    *,
    help: str,  # noqa: A002 - argparse's own word
    defaults: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
) -> argparse.ArgumentParser:
    """``synth <name>``: write phantoms with ``writer(out, **options)`` and print
    ``describe(result, args)``; options as :func:`add_writer_arguments` derives them.

    A ``ValueError`` of the writer (a bad share, a folder holding foreign files) is
    reported as a data error, not a traceback.
    """

    def run(args: argparse.Namespace) -> int:
        try:
            result = writer(Path(args.out), **writer_options(writer, args))
        except ValueError as exc:
            return data_error(exc)
        print(describe(result, args))
        return EXIT_OK

    parser = groups.synth.add_parser(name, help=help)
    add_writer_arguments(parser, writer, defaults=defaults, flags=flags, skip=skip)
    parser.set_defaults(func=run, writer=writer)
    return parser


def add_model_output_arguments(
    parser: argparse.ArgumentParser, *, example: str, reads: str | None = None
) -> None:
    """The options every ``train`` command shares: where the model goes, its name, the device,
    whether the data are phantoms (the card says so) and, for trainers that read with a
    DataLoader, how many processes read (``reads`` names what they read)."""
    parser.add_argument(
        "--out", required=True, help=f"model folder to write, e.g. models/{example}"
    )
    parser.add_argument("--name", help="card name (default: the folder name)")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
    if reads:
        parser.add_argument(
            "--workers", type=int, default=0, help=f"DataLoader processes reading {reads}"
        )
    parser.add_argument("--synthetic", action="store_true", help="the data are generated phantoms")


def add_evaluation_arguments(
    parser: argparse.ArgumentParser, *, out: str, saves: str, device: bool = True
) -> None:
    """The options every ``evaluate`` command shares: the model, the output folder (``saves``
    names what is written there), the device, the bootstrap resamples and their seed."""
    parser.add_argument("--model", required=True, help="model folder (with card.yaml) or the card")
    parser.add_argument("--out", default=out, help=f"folder for {saves}")
    if device:
        parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")


def run_training(
    train: Callable[..., object],
    args: argparse.Namespace,
    *inputs: Any,
    recipe: object,
    errors: tuple[type[Exception], ...],
    **extra: Any,
) -> int:
    """Call a study's trainer ``train(*inputs, out_dir=, recipe=, name=, device=, synthetic=,
    [workers=,] say=, **extra)`` with the options of :func:`add_model_output_arguments`, and
    close as every ``train`` does: the card's path, or a data error that says what to fix."""
    from pipelines.common.train import DataSplitError

    if "workers" in args:
        extra["workers"] = args.workers
    refused: tuple[type[Exception], ...] = (*errors, DataSplitError)
    try:
        card = train(
            *inputs,
            out_dir=args.out,
            recipe=recipe,
            name=args.name,
            device=args.device,
            synthetic=args.synthetic,
            say=print,
            **extra,
        )
    except refused as exc:
        return data_error(exc)
    return model_ready(card)


def run_evaluation(
    evaluate: Callable[..., Any],
    report: Callable[[Any], str],
    args: argparse.Namespace,
    *inputs: Any,
    errors: tuple[type[Exception], ...],
    saves: Iterable[str],
    **extra: Any,
) -> int:
    """Call a study's evaluator ``evaluate(args.model, *inputs, out_dir=, [device=,]
    n_bootstrap=, seed=, **extra)`` with the options of :func:`add_evaluation_arguments`, print
    its report and the files it saved in the output folder (``saves``), or a data error."""
    if "device" in args:
        extra["device"] = args.device
    try:
        result = evaluate(
            args.model,
            *inputs,
            out_dir=args.out,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            **extra,
        )
    except errors as exc:
        return data_error(exc)
    print(report(result))
    print("saved " + " and ".join(str(Path(args.out) / name) for name in saves))
    return EXIT_OK
