"""Ingest benchmark: images/s into DCMTK storescp, Orthanc and the node, measured in one run.

Sends the same synthetic CT series (default 300 slices of 512×512, 16-bit)
with DCMTK ``storescu`` — over one association, then split over N parallel
associations — to each receiver, and prints images/s and the node's ratio
to each baseline. storescp writes without fsync; Orthanc fdatasyncs each
file; the node fsyncs each object with its receipt before answering Success
(its index row follows, in groups: :mod:`dicom_node.receive.indexer`). Two
more baselines, pynetdicom with a handler that does nothing
(:mod:`bench.bare_scp`), in one process and in as many processes as the
node has receivers, are the floor under the node: on one association
storescu waits for each answer, so every millisecond of the path adds up,
and this shows how much of it is the library's own.

Every receiver runs from the start; the sends take turns, receiver after
receiver, round after round, so that the machine's drift falls on all of
them alike, and each ratio is the median of the rounds' ratios.

Run: ``.venv/bin/python -m bench.ingest [--slices 300] [--parallel 4] [--receivers 2] [--repeat 3]``
(``--repeat``: rounds; ``--smoke`` sends a few slices only: CI runs it so the
benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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


@dataclass
class Receiver:
    """One receiver under test: how to send to it, to empty it, and whose CPU to count."""

    name: str
    send: Callable[[Sequence[Sequence[Path]]], float]
    reset: Callable[[], None]
    pid: Callable[[], int]
    runs: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def measure(
    receivers: Sequence[Receiver],
    files: Sequence[Path],
    parallel: int,
    repeat: int = 1,
) -> None:
    """Send the series to every receiver, over one and over ``parallel`` associations,
    ``repeat`` rounds, the receivers taking turns within each round (in a rotating order).

    Interleaved, so that the machine's drift (a shared VM varies by a third over minutes)
    falls on every receiver alike: each round's ratios compare sends made minutes apart at
    most. Records each send's images/s and the receiver's CPU per object (its process
    tree's user and system time over the send, milliseconds; the sender's not counted).
    """
    for label, groups in (("1 assoc", [files]), (f"{parallel} assoc", split(files, parallel))):
        for round_ in range(repeat):
            turn = round_ % len(receivers)
            for receiver in [*receivers[turn:], *receivers[:turn]]:
                receiver.reset()
                before = cpu_seconds(receiver.pid())
                receiver.runs.setdefault(label, []).append(len(files) / receiver.send(groups))
                after = cpu_seconds(receiver.pid())
                receiver.cpu.setdefault(label, []).append(
                    tuple(1000 * (a - b) / len(files) for a, b in zip(after, before, strict=True))  # type: ignore[arg-type]
                )
        for receiver in receivers:
            runs = receiver.runs[label]
            user = statistics.median(c[0] for c in receiver.cpu[label])
            system = statistics.median(c[1] for c in receiver.cpu[label])
            spread = f" (runs {', '.join(f'{r:.0f}' for r in runs)})" if repeat > 1 else ""
            print(
                f"  {receiver.name:<12} {label:>8}: {statistics.median(runs):8.1f} img/s{spread}; "
                f"receiver CPU {user + system:.2f} ms/object (user {user:.2f}, sys {system:.2f})",
                flush=True,
            )


def ratios(node: Receiver, base: Receiver, label: str) -> tuple[float, list[float]]:
    """node / base: the median of the rounds' ratios, and each round's."""
    each = [n / b for n, b in zip(node.runs[label], base.runs[label], strict=True)]
    return statistics.median(each), each


def bare_pynetdicom(
    work: Path, aet: str = "BARE_SCP", processes: int = 1
) -> tuple[subprocess.Popen[bytes], int]:
    """Start :mod:`bench.bare_scp` (``processes`` of them on one port, in a process group of
    their own); return the first and the port."""
    port = free_port()
    (work / "bare-tmp").mkdir(exist_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bare_scp",
            str(port),
            aet,
            str(work / "bare-tmp"),
            str(processes),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        start_new_session=True,
    )
    wait_for_port(port)
    return process, port


def _empty(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class _FreshNode:
    """The node under test, started afresh (new spool and index) before each of its sends."""

    def __init__(self, work: Path, receivers: int) -> None:
        self.work = work
        self.receivers = receivers
        self.node: NodeProcess | None = None
        self.count = 0

    def reset(self) -> None:
        self.stop()
        folder = self.work / f"node{self.count}"
        self.count += 1
        config = node_config(folder, f"sqlite:///{folder}/index.db", routes=[])
        config["pipelines"] = {}
        config["node"]["receiver_processes"] = self.receivers
        config["storage"]["min_free_disk_mb"] = 0
        self.node = NodeProcess(folder, config).start()

    def _running(self) -> NodeProcess:
        if self.node is None or self.node.process is None:
            raise RuntimeError("the node is not running: reset() first")
        return self.node

    def send(self, groups: Sequence[Sequence[Path]]) -> float:
        return timed_send(self._running().port, NODE_AET, TEST_AET, groups)

    def pid(self) -> int:
        process = self._running().process
        assert process is not None
        return process.pid

    def check(self, expected: int) -> None:
        """The last send was indexed whole: a fast node that lost objects is no result."""
        stored = self._running().scalar("SELECT count(*) FROM instances")
        if stored != expected:
            raise RuntimeError(f"node indexed {stored} of {expected} instances")

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument(
        "--receivers", type=int, default=2, help="node receiver processes (the shipped config: 2)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="sends per case; the median counts")
    parser.add_argument("--smoke", action="store_true", help="a few slices, to check it runs")
    args = parser.parse_args(argv)
    slices = 8 if args.smoke else args.slices
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        files = write_ct_series(work / "series", slices)
        mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{slices} CT slices, {mb:.0f} MB, storescu with TCP_NODELAY=1", flush=True)
        many = f"pynetdicom×{args.receivers}"  # as many processes as the node's receivers
        with contextlib.ExitStack() as stack:
            scp = StoreSCP(work / "storescp", extra_args=["--fork"]).start()
            stack.callback(scp.stop)
            orthanc = Orthanc(work / "orthanc").start()
            stack.callback(orthanc.stop)
            bare, bare_port = bare_pynetdicom(work, "BARE_SCP", 1)
            stack.callback(_kill_group, bare)
            bares, bares_port = bare_pynetdicom(work, "BARE_SCP", args.receivers)
            stack.callback(_kill_group, bares)
            nodes = _FreshNode(work, args.receivers)
            stack.callback(nodes.stop)
            receivers = [
                Receiver(
                    "storescp",
                    lambda g: timed_send(scp.port, scp.aet, "STORESCU", g),
                    lambda: _empty(scp.output_dir),
                    lambda: scp.pid,
                ),
                Receiver(
                    "orthanc",
                    lambda g: timed_send(orthanc.dicom_port, orthanc.aet, "STORESCU", g),
                    orthanc.delete_all,
                    lambda: orthanc.pid,
                ),
                Receiver(
                    "pynetdicom",
                    lambda g: timed_send(bare_port, "BARE_SCP", "STORESCU", g),
                    lambda: None,
                    lambda: bare.pid,
                ),
                Receiver(
                    many,
                    lambda g: timed_send(bares_port, "BARE_SCP", "STORESCU", g),
                    lambda: None,
                    lambda: bares.pid,
                ),
                Receiver("dicom-node", nodes.send, nodes.reset, nodes.pid),
            ]
            measure(receivers, files, args.parallel, args.repeat)
            nodes.check(len(files))

        node = receivers[-1]
        print("\nratios (node / baseline; the median of the rounds' ratios, each round's):")
        for label in ("1 assoc", f"{args.parallel} assoc"):
            for base in receivers[:-1]:
                median, each = ratios(node, base, label)
                rounds = ", ".join(f"{r:.2f}" for r in each)
                print(f"  {label:>8}: node/{base.name} = {median:.2f} ({rounds})")
        one = statistics.median(node.runs["1 assoc"])
        many_rate = statistics.median(node.runs[f"{args.parallel} assoc"])
        print(f"  node {args.parallel} assoc / 1 assoc = {many_rate / one:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
