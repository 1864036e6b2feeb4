"""The package and stage boundaries hold: checked on the source, so a shortcut fails here first.

* ``pipelines`` never imports the service (``dicom_node``); ``imaging`` imports neither;
* the service reaches the pipelines only through ``pipelines.base``, ``card`` and ``registry``;
* a stage reads another stage's tables through that stage's functions: importing another
  stage's table classes is refused, except their documented state vocabularies and the
  exceptions listed here with their reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("receive", "complete", "route", "jobs", "results", "dispatch")
#: closed vocabularies any module may name
VOCABULARIES = {"JobState", "DeliveryState", "ResultKind"}
#: (importing file, imported module): why it may import that stage's table classes
EXCEPTIONS = {
    ("dicom_node/tables.py", "*"): "registers every stage's tables with the metadata",
    ("dicom_node/complete/completion.py", "dicom_node.receive.tables"): (
        "the watermark query joins the received instances; issue 18 rewrites completion"
    ),
    ("dicom_node/route/router.py", "dicom_node.complete.tables"): (
        "the completion row is what the completion stage hands to its callback"
    ),
}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file, lazy ones in functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["pipelines", "imaging"])
def test_the_model_side_never_imports_the_service(package: str) -> None:
    refused = {"dicom_node"} | ({"pipelines"} if package == "imaging" else set())
    found = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _files(package)
        for module, _ in _imports(path)
        if module.split(".")[0] in refused
    ]
    assert not found, found


def test_the_service_reaches_the_pipelines_only_through_their_interface() -> None:
    allowed = {"pipelines.base", "pipelines.card", "pipelines.registry"}
    found = []
    for path in _files("dicom_node"):
        for module, names in _imports(path):
            if module == "pipelines":
                module = f"pipelines.{names[0]}" if names else module
            if module.split(".")[0] == "pipelines" and module not in allowed:
                found.append(f"{path.relative_to(ROOT)}: {module}")
    assert not found, found


def test_stages_do_not_read_each_others_tables() -> None:
    found = []
    for path in _files("dicom_node"):
        name = path.relative_to(ROOT).as_posix()
        parts = name.split("/")
        own = parts[1] if len(parts) > 2 else None
        if (name, "*") in EXCEPTIONS or name.startswith("dicom_node/migrations/"):
            continue
        for module, names in _imports(path):
            pieces = module.split(".")
            if len(pieces) != 3 or pieces[0] != "dicom_node" or pieces[2] != "tables":
                continue
            if pieces[1] == own or (name, module) in EXCEPTIONS:
                continue
            tables = [n for n in names if n not in VOCABULARIES]
            if tables:
                found.append(f"{name}: {module} {tables}")
    assert not found, (
        "read another stage's tables through its functions (or list the exception "
        f"with its reason): {found}"
    )


def test_every_stage_named_here_exists() -> None:
    """The rule above is only as good as its list of stages."""
    for stage in STAGES:
        assert (ROOT / "dicom_node" / stage / "__init__.py").is_file(), stage
    for name, _ in EXCEPTIONS:
        assert (ROOT / name).is_file(), name
