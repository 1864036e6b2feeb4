"""Every ``dicom-node`` command, including those the pipeline packages add, prints its help."""

from __future__ import annotations

import argparse

from dicom_node.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_renders_its_help() -> None:
    seen = []
    for path, parser in _commands(build_parser()):
        text = parser.format_help()  # a stray % in a help string raises here
        assert text.startswith("usage: dicom-node"), path
        seen.append(" ".join(path))
    # the pipeline packages' commands are there
    for command in (
        "synth ct-abdomen",
        "synth hip",
        "dataset pair-dexa",
        "train ct-slice-classifier",
        "train hip-osteoporosis",
        "evaluate cxr-findings",
        "evaluate hip-osteoporosis",
    ):
        assert command in seen, command
