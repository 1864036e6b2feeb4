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


def _synth_commands() -> dict[str, argparse.ArgumentParser]:
    return {
        path[1]: parser
        for path, parser in _commands(build_parser())
        if path[:1] == ("synth",) and len(path) == 2
    }


def test_synth_options_are_their_writers_parameters() -> None:
    """A ``synth`` option's default is its phantom writer's (the one place it is written),
    and every keyword the writer takes has an option: a new parameter cannot be missed."""
    import inspect

    from pipelines.commands import parameter_docs

    synth = _synth_commands()
    assert {"ich", "cxr", "hip", "ct-abdomen", "radiograph"} <= set(synth)
    for name, parser in synth.items():
        function = parser.get_default("writer")
        parameters = inspect.signature(function).parameters
        options = {a.dest: a for a in parser._actions if a.dest in parameters}
        keywords = [p for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert {p.name for p in keywords} == set(options), name
        docs = parameter_docs(function)
        for p in keywords:
            if p.default is not inspect.Parameter.empty:
                default = options[p.name].default
                assert default == p.default, (name, p.name)
            if p.name in docs:  # the writer's own words are the help
                assert docs[p.name].split()[0] in (options[p.name].help or ""), (name, p.name)


def test_synth_into_a_folder_with_foreign_files_is_a_data_error(tmp_path, capsys) -> None:
    from dicom_node.cli import main

    stray = tmp_path / "images" / "someone-elses.dcm"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not ours")
    status = main(["synth", "cxr", "--out", str(tmp_path), "--n", "2", "--size", "128"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("data error: ") and "someone-elses.dcm" in err
    assert stray.read_bytes() == b"not ours"
