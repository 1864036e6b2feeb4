"""Ingest benchmark: images/s into DCMTK storescp, Orthanc and the node, measured in one run.

Sends the same synthetic CT series (default 300 slices of 512×512, 16-bit)
with DCMTK ``storescu`` — over one association, then split over N parallel
associations — to each receiver, and prints images/s and the node's ratio
to each baseline. storescp writes without fsync; Orthanc fsyncs each file
and keeps a durable index; the node fsyncs every object and its index
before answering Success. A fourth baseline, pynetdicom with a handler that
does nothing (:mod:`bench.bare_scp`), is the floor under the node: on one
association storescu waits for each answer, so every millisecond of the
path adds up, and this shows how much of it is the library's own.

Run: ``.venv/bin/python -m bench.ingest [--slices 300] [--parallel 4] [--receivers 4] [--repeat 3]``
(``--repeat`` sends each case that many times and reports the median;
``--smoke`` sends a few slices only: CI runs it so the benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# the real-peer harness of the test suite runs the baselines and the node
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from node import NODE_AET, TEST_AET, NodeProcess, node_config  # noqa: E402
from peers import Orthanc, StoreSCP, free_port, storescu, wait_for_port  # noqa: E402


def write_ct_series(folder: Path, slices: int, size: int = 512, seed: int = 0) -> list[Path]:
    """A synthetic axial CT series (one study, one series) as uncompressed DICOM files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series, frame = (generate_uid(entropy_srcs=[str(seed), k]) for k in "abc")
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.42 * size) ** 2
    paths = []
    for i in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "sop", str(i)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID = "BENCH^CT", "BENCH-1"
        ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = "CT", "ABDOMEN", "bench 1mm"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-250.0, -250.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.98, 0.98], 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = np.where(body, 1064, 24) + rng.normal(0, 20, (size, size))
        ds.PixelData = pixels.astype(np.int16).tobytes()
        path = folder / f"ct{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def timed_send(port: int, called: str, calling: str, groups: Sequence[Sequence[Path]]) -> float:
    """Send each group over its own association, all at once; return the wall time."""

    def one(group: Sequence[Path]) -> None:
        result = storescu("127.0.0.1", port, list(group), called_ae=called, calling_ae=calling)
        if result.returncode != 0:
            raise RuntimeError(f"storescu to {called} failed:\n{result.stderr[-2000:]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(len(groups)) as pool:
        list(pool.map(one, groups))
    return time.perf_counter() - started


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    return [list(files[i::parts]) for i in range(parts)]


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process tree: ``root``, its reaped children (a forked
    storescp's), and every live descendant (the node's receivers)."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = text.rsplit(")", 1)[1].split()
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [p for p, f in stats.items() if int(f[1]) == pid and p not in tree]
    user = system = 0.0
    for pid in tree & stats.keys():
        f = stats[pid]
        user += int(f[11]) + (int(f[13]) if pid == root else 0)
        system += int(f[12]) + (int(f[14]) if pid == root else 0)
    return user / _TICK, system / _TICK


def measure(
    name: str,
    send: Callable[[Sequence[Sequence[Path]]], float],
    files: Sequence[Path],
    parallel: int,
    reset: Callable[[], None],
    repeat: int = 1,
    pid: Callable[[], int] | None = None,
) -> dict[str, float]:
    """Images/s over one and over ``parallel`` associations: the median of ``repeat`` sends.

    With ``pid`` (the receiver's process), also the receiver's CPU per object (user and
    system, milliseconds; the sender's own CPU not counted), the median over the sends.
    """
    rates = {}
    for label, groups in (("1 assoc", [files]), (f"{parallel} assoc", split(files, parallel))):
        runs, cpu = [], []
        for _ in range(repeat):
            reset()
            before = cpu_seconds(pid()) if pid else (0.0, 0.0)
            runs.append(len(files) / send(groups))
            if pid:
                after = cpu_seconds(pid())
                cpu.append(
                    tuple(1000 * (a - b) / len(files) for a, b in zip(after, before, strict=True))
                )
        rates[label] = statistics.median(runs)
        spread = f" (runs {', '.join(f'{r:.0f}' for r in runs)})" if repeat > 1 else ""
        used = ""
        if cpu:
            user = statistics.median(c[0] for c in cpu)
            system = statistics.median(c[1] for c in cpu)
            rates[f"{label} cpu ms"] = user + system
            used = (
                f"; receiver CPU {user + system:.2f} ms/object (user {user:.2f}, sys {system:.2f})"
            )
        print(f"  {name:<10} {label:>8}: {rates[label]:8.1f} img/s{spread}{used}", flush=True)
    return rates


def bare_pynetdicom(work: Path, aet: str = "BARE_SCP") -> tuple[subprocess.Popen[bytes], int]:
    """Start :mod:`bench.bare_scp` in its own process; return it and its port."""
    port = free_port()
    (work / "bare-tmp").mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_scp", str(port), aet, str(work / "bare-tmp")],
        cwd=Path(__file__).resolve().parent.parent,
    )
    wait_for_port(port)
    return process, port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--receivers", type=int, default=4, help="node receiver processes")
    parser.add_argument("--repeat", type=int, default=1, help="sends per case; the median counts")
    parser.add_argument("--smoke", action="store_true", help="a few slices, to check it runs")
    args = parser.parse_args(argv)
    slices = 8 if args.smoke else args.slices
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        files = write_ct_series(work / "series", slices)
        mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{slices} CT slices, {mb:.0f} MB, storescu with TCP_NODELAY=1", flush=True)
        results: dict[str, dict[str, float]] = {}

        scp = StoreSCP(work / "storescp", extra_args=["--fork"]).start()
        try:
            results["storescp"] = measure(
                "storescp",
                lambda g: timed_send(scp.port, scp.aet, "STORESCU", g),
                files,
                args.parallel,
                lambda: shutil.rmtree(scp.output_dir, ignore_errors=True) or scp.output_dir.mkdir(),
                args.repeat,
                lambda: scp.pid,
            )
        finally:
            scp.stop()

        orthanc = Orthanc(work / "orthanc").start()
        try:
            results["orthanc"] = measure(
                "orthanc",
                lambda g: timed_send(orthanc.dicom_port, orthanc.aet, "STORESCU", g),
                files,
                args.parallel,
                orthanc.delete_all,
                args.repeat,
                lambda: orthanc.pid,
            )
        finally:
            orthanc.stop()

        bare, bare_port = bare_pynetdicom(work)
        try:
            results["pynetdicom"] = measure(
                "pynetdicom",
                lambda g: timed_send(bare_port, "BARE_SCP", "STORESCU", g),
                files,
                args.parallel,
                lambda: None,
                args.repeat,
                lambda: bare.pid,
            )
        finally:
            bare.kill()
            bare.wait()

        runs = iter(range(100))

        def fresh_node() -> None:
            nonlocal node
            if node is not None:
                node.stop()
            folder = work / f"node{next(runs)}"
            config = node_config(folder, f"sqlite:///{folder}/index.db", routes=[])
            config["pipelines"] = {}
            config["node"]["receiver_processes"] = args.receivers
            config["storage"]["min_free_disk_mb"] = 0
            node = NodeProcess(folder, config).start()

        node: NodeProcess | None = None
        try:
            results["node"] = measure(
                "dicom-node",
                lambda g: timed_send(node.port, NODE_AET, TEST_AET, g),  # type: ignore[union-attr]
                files,
                args.parallel,
                fresh_node,
                args.repeat,
                lambda: node.process.pid,  # type: ignore[union-attr]
            )
            stored = node.scalar("SELECT count(*) FROM instances")  # type: ignore[union-attr]
            if stored != len(files):
                raise RuntimeError(f"node indexed {stored} of {len(files)} instances")
        finally:
            if node is not None:
                node.stop()

        print("\nratios (node / baseline):")
        for label in ("1 assoc", f"{args.parallel} assoc"):
            for base in ("storescp", "orthanc", "pynetdicom"):
                ratio = results["node"][label] / results[base][label]
                print(f"  {label:>8}: node/{base} = {ratio:.2f}")
        one, many = results["node"]["1 assoc"], results["node"][f"{args.parallel} assoc"]
        print(f"  node {args.parallel} assoc / 1 assoc = {many / one:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
