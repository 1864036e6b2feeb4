"""How a pipeline package adds its own ``dicom-node`` subcommands.

The service's command line (:mod:`dicom_node.cli`) owns the command groups a
study's tooling fills in: ``synth`` (phantoms as real DICOM), ``dataset``
(turn data into the study's training format), ``train`` and ``evaluate``.
Each study package that has such tooling declares a ``commands`` module with
an ``add_commands(groups)`` function in its ``STUDY`` (:mod:`pipelines.study`),
so a new study brings its commands without editing the service's CLI.

Command modules import only :mod:`argparse` at module level; torch, the
generators and trainers are imported inside the handlers, so that
``dicom-node --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

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
    builder (:mod:`pipelines.demo`) its ``models build-demo``."""
    from pipelines import demo

    demo.add_commands(groups)
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
