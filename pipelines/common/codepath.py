"""CPU code paths: make this machine compute the way another x86-64 machine would.

PyTorch, its math libraries and NumPy pick their vector kernels at run time
from the CPU they find: ATen's own kernels (``ATEN_CPU_CAPABILITY``), oneDNN's
convolutions (``ONEDNN_MAX_CPU_ISA``), MKL's BLAS (``MKL_ENABLE_INSTRUCTIONS``,
and its conditional-reproducibility mode ``MKL_CBWR``) and NumPy's ufuncs
(``NPY_DISABLE_CPU_FEATURES``). Wider vectors add floating-point numbers in
another order, so one training recipe with one seed gives different weights on
an AVX-512 server and on an AVX2 laptop, and a short training from scratch
amplifies those last-bit differences into different models.

Each :data:`CODE_PATHS` entry caps those libraries at what an older or another
CPU offers, so a single machine can build the demo models the way several
machines would. The demo builds run under one of them
(``dicom-node models build-demo --code-path NAME``, or ``DICOM_NODE_CODE_PATH``);
``bench.demo_spread`` builds them under several to measure the spread that the
demo-quality tests' bars must stay clear of.

The variables are read when each library first starts, so they only take
effect in a *new* process: :func:`environment` gives the variables to start it
with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The environment variable that selects a code path for demo builds.
ENV_VAR = "DICOM_NODE_CODE_PATH"


@dataclass(frozen=True)
class CodePath:
    """A named set of caps on the CPU features PyTorch, MKL, oneDNN and NumPy may use."""

    name: str
    description: str
    variables: Mapping[str, str] = field(default_factory=dict)
    #: a CPU flag (``/proc/cpuinfo``) the path needs; without it, the cap is no cap
    requires: str | None = None


#: NumPy 2.x dispatch targets above its x86-64-v2 baseline.
_NUMPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"

CODE_PATHS: dict[str, CodePath] = {
    path.name: path
    for path in (
        CodePath("native", "whatever this CPU offers (nothing capped)"),
        CodePath(
            "avx2",
            "an AVX2 machine without AVX-512 (e.g. AMD Zen 2/3, Intel client CPUs): "
            "ATen, oneDNN, MKL and NumPy capped at AVX2",
            {
                "ATEN_CPU_CAPABILITY": "avx2",
                "ONEDNN_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                "NPY_DISABLE_CPU_FEATURES": _NUMPY_AVX512,
            },
            requires="avx2",
        ),
        CodePath(
            "avx512-cnr",
            "an AVX-512 server of another generation (e.g. Intel Skylake-SP): oneDNN without "
            "VNNI/BF16 kernels, MKL in its conditional-reproducibility mode (COMPATIBLE)",
            {
                "ATEN_CPU_CAPABILITY": "avx512",
                "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
                "MKL_CBWR": "COMPATIBLE",
            },
            requires="avx512f",
        ),
        CodePath(
            "portable",
            "the plainest x86-64 code: ATen's default kernels, oneDNN at SSE4.1, MKL in its "
            "COMPATIBLE mode, NumPy at its baseline (a ResNet-18 training step takes 2.7x as long)",
            {
                "ATEN_CPU_CAPABILITY": "default",
                "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_CBWR": "COMPATIBLE",
                "NPY_DISABLE_CPU_FEATURES": f"X86_V3 {_NUMPY_AVX512}",
            },
        ),
    )
}


#: Every variable some path sets: what a process's code path is read from.
VARIABLES = frozenset(key for path in CODE_PATHS.values() for key in path.variables)


def _cpuinfo(field: str) -> str:
    """The value of ``field`` for this machine's first CPU in ``/proc/cpuinfo`` ('' if none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith(field):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The flags of this machine's first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    return set(_cpuinfo("flags").split())


def cpu_model() -> str:
    """This machine's CPU model name from ``/proc/cpuinfo`` ('' where there is none)."""
    return _cpuinfo("model name")


def code_path(name: str) -> CodePath:
    """The code path called ``name``.

    Raises
    ------
    ValueError
        If there is no such path, or this CPU lacks what the path needs (an
        AVX-512 cap on a machine without AVX-512 would silently be native).
    """
    try:
        path = CODE_PATHS[name]
    except KeyError:
        raise ValueError(f"unknown code path {name!r}; known: {', '.join(CODE_PATHS)}") from None
    if path.requires and path.requires not in cpu_flags():
        raise ValueError(
            f"code path {name!r} needs a CPU with {path.requires}, which this one lacks; "
            f"use one of: {', '.join(n for n in CODE_PATHS if n != name)}"
        )
    return path


def default_code_path() -> str:
    """``$DICOM_NODE_CODE_PATH`` if set, else ``native``."""
    return os.environ.get(ENV_VAR, "").strip() or "native"


def environment(name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the variables of path ``name``.

    A ``native`` build clears the variables the other paths set, so that a
    stray ``ATEN_CPU_CAPABILITY`` in the caller's shell does not make it
    something else.
    """
    path = code_path(name)
    env = dict(os.environ if base is None else base)
    for key in VARIABLES:
        env.pop(key, None)
    env.update(path.variables)
    env[ENV_VAR] = name
    return env


def in_effect(name: str) -> bool:
    """Whether this process started under path ``name``'s variables (they act only at start)."""
    wanted = code_path(name).variables
    return all(os.environ.get(key) == wanted.get(key) for key in VARIABLES)


def active_code_path() -> dict[str, str]:
    """What this process runs under: the path's name and the variables set, for a card."""
    return {
        "name": os.environ.get(ENV_VAR, "native"),
        **{key: os.environ[key] for key in sorted(VARIABLES) if key in os.environ},
    }
