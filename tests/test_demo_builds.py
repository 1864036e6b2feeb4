"""Demo builds: CPU code paths that stand in for other machines, and the build cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.card import CARD_FILE, card_state, load_card, mark_building, unmark_building
from pipelines.common import buildcache, codepath
from pipelines.demo import build_demo, build_order
from pipelines.study import demo_models

#: One SGD step of a small convolutional network on one thread, then the weights' sha256 and
#: the capability ATen reports: what a demo build does, in a second.
_STEP = """
import hashlib, json, torch
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 2),
)
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(8, 3, 64, 64), torch.tensor([0, 1] * 4)
for _ in range(3):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
blob = b"".join(p.detach().numpy().tobytes() for p in net.parameters())
print(json.dumps({"sha": hashlib.sha256(blob).hexdigest(),
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def _step(path: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _STEP],
        env=codepath.environment(path),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout)


def test_a_code_path_makes_this_cpu_train_like_another() -> None:
    """The same training step under the native path and under the AVX2 path: other sums, so
    other weights (what another machine would train); the same path twice: the same weights."""
    if "avx512f" not in codepath.cpu_flags():
        pytest.skip("the AVX2 path differs from the native one only on an AVX-512 CPU")
    native, avx2, again = _step("native"), _step("avx2"), _step("avx2")
    assert (native["capability"], avx2["capability"]) == ("AVX512", "AVX2")
    assert avx2["sha"] == again["sha"]
    assert native["sha"] != avx2["sha"]


def test_code_path_environment_sets_its_caps_and_clears_the_others() -> None:
    base = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "HOME": "/root"}
    avx2 = codepath.environment("avx2", base)
    assert avx2["ATEN_CPU_CAPABILITY"] == "avx2" and avx2["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert "MKL_CBWR" not in avx2 and avx2["HOME"] == "/root"
    assert avx2[codepath.ENV_VAR] == "avx2"
    native = codepath.environment("native", base)
    assert "ATEN_CPU_CAPABILITY" not in native and "MKL_CBWR" not in native


def test_unknown_or_impossible_code_paths_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown code path 'avx9'; known: native, avx2"):
        codepath.code_path("avx9")
    monkeypatch.setattr(codepath, "cpu_flags", lambda: {"sse2", "avx2"})
    with pytest.raises(ValueError, match="needs a CPU with avx512f"):
        codepath.code_path("avx512-cnr")
    assert codepath.code_path("avx2").name == "avx2"


def test_cli_refuses_an_unknown_code_path(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "models", "build-demo", "--code-path", "avx9"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "invalid choice: 'avx9'" in done.stderr


def test_build_keys_change_with_what_changes_the_weights() -> None:
    key = buildcache.build_key("ct-gb-noncontrast-demo", seed=0, code_path="native")
    assert key == buildcache.build_key("ct-gb-noncontrast-demo", seed=0, code_path="native")
    others = {
        buildcache.build_key("ct-gb-noncontrast-demo", seed=1, code_path="native"),
        buildcache.build_key("ct-gb-noncontrast-demo", seed=0, code_path="portable"),
        buildcache.build_key("ct-gb-contrast-demo", seed=0, code_path="native"),
    }
    assert key not in others and len(others) == 3


def test_a_build_key_covers_the_code_its_builder_imports_and_no_other() -> None:
    """A demo's key follows every pipelines module its builder reaches (lazy imports and
    other studies' modules included), so editing another study keeps its cached build."""
    files = {
        p.relative_to(buildcache._ROOT).as_posix()
        for p in buildcache.source_files("pipelines.ctslice.demo", "pipelines.demo")
    }
    # ctslice reads slices with the shared slice reader, and pixels with the imaging helpers
    assert {
        "pipelines/ctslice/train.py",
        "pipelines/common/slices.py",
        "pipelines/common/train.py",
        "pipelines/card.py",
        "imaging/pixels.py",
    } <= files
    assert not any(
        f.startswith(("pipelines/hip/", "pipelines/cxr/", "pipelines/generic/")) for f in files
    ), files
    hip = {p.name for p in buildcache.source_files("pipelines.hip.demo")}
    assert "slices.py" not in hip
    # the command line is not in any key: editing it retrains nothing
    assert not {"pipelines/commands.py", "pipelines/demo_commands.py"} & files, files


def test_a_cached_build_is_copied_not_trained(
    ct_noncontrast_demo_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build in the cache under the right key is copied into a new models folder, verified,
    and nothing trains (the builder is never called); without the entry, it would train."""
    import pipelines.demo as demo

    monkeypatch.setenv(buildcache.CACHE_ENV, str(tmp_path / "cache"))
    name = "ct-gb-noncontrast-demo"
    shipped = load_card(ct_noncontrast_demo_card)
    built_under = (shipped.provenance.code_path or {}).get("name", "native")
    key = buildcache.build_key(name, seed=0, code_path=built_under)
    buildcache.store(name, key, ct_noncontrast_demo_card.parent)

    def no_training(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the cached build should have been used")

    monkeypatch.setattr(demo, "builder", lambda _name: no_training)
    (card,) = build_demo(tmp_path / "models", only=[name], code_path=built_under, progress=False)
    assert card == tmp_path / "models" / name / CARD_FILE
    assert load_card(card).weights.sha256 == shipped.weights.sha256
    # another seed is another model: not in the cache, so it is trained (here, in process)
    with pytest.raises(AssertionError, match="cached build should have been used"):
        build_demo(tmp_path / "seed1", seed=1, only=[name], code_path="native", progress=False)


def test_a_model_folder_built_by_other_code_is_built_again_not_reused(
    ct_noncontrast_demo_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card in the models folder whose recorded build key is not today's (the code changed
    since) is not used as it is: restored from the cache when today's build is there, else
    trained; one without any recorded key likewise."""
    import shutil

    import pipelines.demo as demo

    monkeypatch.setenv(buildcache.CACHE_ENV, str(tmp_path / "cache"))
    name = "ct-gb-noncontrast-demo"
    built_under = "native"  # in effect in this process: a build would run here, not in a child
    folder = tmp_path / "models" / name
    shutil.copytree(ct_noncontrast_demo_card.parent, folder)
    buildcache.mark_built(folder, "0" * 24)  # built by code that no longer exists
    trained: list[str] = []

    def training(models_dir: Path, **kwargs: object) -> Path:
        trained.append(str(kwargs.get("force")))
        raise RuntimeError("trained")

    monkeypatch.setattr(demo, "builder", lambda _name: training)
    with pytest.raises(RuntimeError, match="trained"):
        build_demo(tmp_path / "models", only=[name], code_path=built_under, progress=False, jobs=1)
    assert trained == ["True"], "the builder was asked to rebuild over the stale card"
    # today's build in the cache: copied over the stale folder, nothing trains
    key = buildcache.build_key(name, seed=0, code_path=built_under)
    buildcache.store(name, key, ct_noncontrast_demo_card.parent)
    (card,) = build_demo(
        tmp_path / "models", only=[name], code_path=built_under, progress=False, jobs=1
    )
    assert buildcache.built_key(card.parent) == key and len(trained) == 1


def test_a_cached_build_that_does_not_verify_is_dropped(
    ct_noncontrast_demo_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(buildcache.CACHE_ENV, str(tmp_path / "cache"))
    name = "ct-gb-noncontrast-demo"
    buildcache.store(name, "k" * 24, ct_noncontrast_demo_card.parent)
    entry = tmp_path / "cache" / "demo-models" / f"{name}-{'k' * 24}"
    weights = entry / load_card(ct_noncontrast_demo_card).weights.file
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert not buildcache.restore(name, "k" * 24, tmp_path / "models" / name)
    assert not entry.exists() and not (tmp_path / "models" / name).exists()


def test_card_state_tells_ready_building_and_a_build_that_died(tmp_path: Path) -> None:
    card = tmp_path / "m" / CARD_FILE
    assert card_state(card) == ("missing", f"{card} does not exist")
    alive = subprocess.Popen(["sleep", "60"])
    try:
        mark_building(card, alive.pid)
        assert card_state(card) == ("building", f"process {alive.pid} is building {card}")
    finally:
        alive.kill()
        alive.wait()
    state, detail = card_state(card)
    assert state == "missing" and f"its build (process {alive.pid}) stopped" in detail
    card.write_text("name: x\n")
    assert card_state(card)[0] == "ready"
    unmark_building(card)
    assert not (card.parent / ".building").exists()


def test_the_first_builds_to_finish_are_the_quick_ones_without_delaying_the_last() -> None:
    """Two workers: the longest build starts at once on one; the other builds the rest
    shortest first, so a node serving meanwhile gets its first models in minutes."""
    names = list(demo_models())
    order = build_order(names, 2)
    minutes = {n: demo_models()[n][1].minutes for n in names}
    assert order[0] == max(names, key=minutes.__getitem__)
    rest = [minutes[n] for n in order[1:]]
    assert rest == sorted(rest) and sorted(order) == sorted(names)
    assert build_order(names, 1) == sorted(names, key=minutes.__getitem__)


def test_build_demo_in_the_background_marks_its_models_and_returns_at_once(
    ct_noncontrast_demo_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``models build-demo --background LOG`` returns before the build ends, with the model
    marked as building (so a node keeps its jobs); the build then finishes (here from the
    cache) and the marker goes."""
    name = "ct-gb-noncontrast-demo"
    shipped = load_card(ct_noncontrast_demo_card)
    built_under = (shipped.provenance.code_path or {}).get("name", "native")
    monkeypatch.setenv(buildcache.CACHE_ENV, str(tmp_path / "cache"))
    key = buildcache.build_key(name, seed=0, code_path=built_under)
    buildcache.store(name, key, ct_noncontrast_demo_card.parent)
    models, log = tmp_path / "models", tmp_path / "build.log"
    command = [
        sys.executable, "-m", "dicom_node", "models", "build-demo", "--only", name,
        "--models-dir", str(models), "--code-path", built_under, "--background", str(log),
    ]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "in the background" in done.stdout and name in done.stdout
    card = models / name / CARD_FILE
    assert card_state(card)[0] == "building", "marked before the command returned"
    while card_state(card)[0] == "building" and time.monotonic() - start < 300:
        time.sleep(0.5)
    assert card_state(card)[0] == "ready", log.read_text()
    assert load_card(card).weights.sha256 == shipped.weights.sha256
    assert f"demo model ready: {card}" in log.read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "demo models ready: nothing to build"


def test_build_demo_in_the_background_refuses_an_unknown_demo_before_marking_anything(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node", "models", "build-demo", "--only", "no-such-demo",
         "--models-dir", str(models), "--background", str(tmp_path / "build.log")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown demo model(s) ['no-such-demo']" in done.stderr
    assert not models.exists() and not (tmp_path / "build.log").exists()


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipelines.demo import _one_build_at_a_time
with _one_build_at_a_time(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(models_dir: Path, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(models_dir), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    return child


def test_a_second_build_waits_for_the_first_and_says_whose(tmp_path: Path, caplog) -> None:
    """Two ``build-demo`` runs into one models folder take turns (the run-node background build
    and a test run in the same checkout would otherwise train one model twice, over each other)."""
    from pipelines.demo import _one_build_at_a_time

    child = _holder(tmp_path, 2.0)
    t0 = time.monotonic()
    with caplog.at_level("INFO", logger="pipelines.demo"), _one_build_at_a_time(tmp_path):
        waited = time.monotonic() - t0
    assert waited > 1.0
    assert child.wait(timeout=10) == 0
    assert f"waiting for the demo build of process {child.pid}" in caplog.text


def test_a_killed_build_lets_the_next_one_in_at_once(tmp_path: Path) -> None:
    from pipelines.demo import _one_build_at_a_time

    child = _holder(tmp_path, 60.0)
    child.kill()  # kill -9: the kernel drops its lock with the process
    child.wait(timeout=10)
    t0 = time.monotonic()
    with _one_build_at_a_time(tmp_path):
        assert time.monotonic() - t0 < 5.0
