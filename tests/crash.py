"""The ``kill -9`` campaign, shared by ``tests/test_crash.py`` (a few rounds in CI) and ``bench/crash.py``.

Each round sends one study (three images) from an in-process SCU to the node
(in one association, the sender marked ``complete_on_release``: the study
completes on release unless the kill cut the association), whose results go
to a real Orthanc playing the PACS, and kills the node:

* ``random`` -- SIGKILL from outside after a random delay in the first
  :data:`RANDOM_WINDOW` seconds: mid-association, during completion,
  inference or dispatch, wherever it lands;
* a crash point of :mod:`dicom_node.faults` -- the node kills itself (main
  process and receivers) in a window too narrow to hit by chance: a file in
  the spool but not in the index, an uncommitted completion or job result,
  half of a delivery sent.

Then it restarts the node, checks that every instance answered Success is in
the index and its file in the spool (a row not yet committed at the kill is
indexed at start from the object's receipt), resends what the
SCU never saw confirmed (as a PACS retries), waits until nothing is
outstanding, and checks that every study was analysed and every result of
every job is in the PACS exactly once: the PACS holds exactly the result
UIDs the node's index lists (result UIDs are deterministic per job, so a
job run twice or a delivery resent replaces rather than adds).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicom_node.faults import CRASH_POINTS
from pipelines.common.phantoms import write_radiograph_study

from node import NODE_AET, TEST_AET, NodeProcess, node_config
from peers import Orthanc

#: Every kind of kill a round can use.
KINDS: tuple[str, ...] = ("random", *CRASH_POINTS)
#: A study is received, completed, analysed and delivered within about this many seconds.
RANDOM_WINDOW = 3.5
IMAGES_PER_STUDY = 3
#: a node start loads torch and the model: slow on a busy 2-core machine
START_TIMEOUT = 180.0


class CampaignError(AssertionError):
    """An invariant broke: something answered Success or produced was lost or duplicated."""


@dataclass(frozen=True)
class Round:
    """What one round did."""

    number: int
    kind: str
    #: seconds from the first C-STORE to the node's death
    died_after: float
    #: instances the SCU saw answered Success before the kill
    acknowledged: int
    #: where the study was when the node died (read from the index after the kill)
    phase: str
    #: deliveries attempted more than once so far (a resend after a kill)
    redelivered: int
    seconds: float


class Campaign:
    """A node, its PACS, and the rounds run against them.

    Parameters
    ----------
    workdir : Path
        Holds the node's folder and the generated studies.
    database_url : str
        The node's index.
    pacs : Orthanc
        A running Orthanc the node delivers results to.
    seed : int
        Seed of the random delays (and the phantoms).
    engine : dict, optional
        The node's ``engine`` section (default: local); its ``ray`` key, if
        any, becomes the generic pipeline's Ray resources.
    """

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        pacs: Orthanc,
        *,
        seed: int = 0,
        engine: dict[str, Any] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.pacs = pacs
        self.inputs = workdir / "in"
        config = node_config(
            workdir / "node",
            database_url,
            destinations={
                "pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
            },
            routes=[
                {"name": "all", "fallback": True, "pipeline": "generic", "destinations": ["pacs"]}
            ],
        )
        config["completion"].update(
            series_quiet_seconds=0.5, study_quiet_seconds=1, poll_seconds=0.25
        )
        # the sender puts each study in one association: completion on its release is the
        # path a round takes unless the kill cut the association (then the quiet timers)
        for peer in config["node"]["peers"]:
            peer["complete_on_release"] = peer["ae_title"] == TEST_AET
        config["dispatch"].update(
            poll_seconds=0.25,
            retry={
                "initial_seconds": 0.5,
                "multiplier": 1,
                "max_seconds": 0.5,
                "max_attempts": 1000,
            },
        )
        if engine is not None:  # e.g. the Ray engine: {"kind": "ray", ..., "ray": resources}
            config["engine"] = {k: v for k, v in engine.items() if k != "ray"}
            config["pipelines"]["generic"]["ray"] = engine.get("ray", {})
        self.node = NodeProcess(workdir / "node", config)
        self.sent: dict[str, list[Dataset]] = {}
        self.rounds: list[Round] = []

    # --- one round --------------------------------------------------------------------

    def run(self, kind: str) -> Round:
        """One round: send a study, kill the node (``kind``), check, restart, settle, check."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        started = time.monotonic()
        number = len(self.rounds)
        study = self._study(number)
        acknowledged: set[str] = set()
        self.node.start(
            START_TIMEOUT, env={"DICOM_NODE_CRASH_AT": kind} if kind != "random" else None
        )
        t0 = time.monotonic()
        sender = threading.Thread(target=self._send, args=(study, acknowledged), daemon=True)
        sender.start()
        if kind == "random":
            time.sleep(self.rng.uniform(0.0, RANDOM_WINDOW))
            died_after = time.monotonic() - t0
        else:
            died_after = self._wait_for_death(kind, t0)
        self.node.kill()
        sender.join(30)
        phase = self._phase(study[0].StudyInstanceUID, len(acknowledged))
        self.node.start(START_TIMEOUT)
        # what was answered but not yet indexed at the kill is indexed at start, from its receipt
        self._check_acknowledged_are_stored(acknowledged)
        unconfirmed = [ds for ds in study if ds.SOPInstanceUID not in acknowledged]
        if unconfirmed:
            retried: set[str] = set()
            self._send(unconfirmed, retried)
            if len(retried) != len(unconfirmed):
                raise CampaignError(f"round {number}: the restarted node refused a resend")
        self._settle(number)
        self._check_results(number)
        redelivered = self.node.scalar("SELECT count(*) FROM deliveries WHERE attempts > 1")
        self.node.kill()  # settled: a kill here is one more crash the next round starts from
        done = Round(
            number,
            kind,
            round(died_after, 2),
            len(acknowledged),
            phase,
            int(redelivered or 0),
            round(time.monotonic() - started, 1),
        )
        self.rounds.append(done)
        return done

    def _study(self, number: int) -> list[Dataset]:
        """Three images of one new study (one phantom, three SOP Instance UIDs)."""
        phantom = write_radiograph_study(
            self.inputs, seed=self.seed, index=number, lesion=bool(number % 2)
        )
        base = pydicom.dcmread(phantom.path)
        study = []
        for k in range(IMAGES_PER_STUDY):
            ds = pydicom.dcmread(phantom.path) if k else base
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[base.SOPInstanceUID, str(k)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = k + 1
            study.append(ds)
        self.sent[base.StudyInstanceUID] = study
        return study

    def _send(self, datasets: list[Dataset], acknowledged: set[str]) -> None:
        """C-STORE over one association; add each instance answered Success to ``acknowledged``."""
        ae = AE(ae_title=TEST_AET)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ds0 = datasets[0]
        ae.add_requested_context(ds0.SOPClassUID, ds0.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", self.node.port, ae_title=NODE_AET)
        if not assoc.is_established:
            return
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if getattr(status, "Status", None) != 0x0000:
                    return
                acknowledged.add(ds.SOPInstanceUID)
        except Exception:  # noqa: BLE001 - the node died under the association
            return
        finally:
            if assoc.is_established:
                assoc.release()

    def _wait_for_death(self, point: str, t0: float, timeout: float = 60.0) -> float:
        process = self.node.process
        assert process is not None
        try:
            process.wait(timeout)
        except Exception as exc:  # noqa: BLE001
            raise CampaignError(
                f"crash point {point!r} was not reached in {timeout} s:\n{self.node.log_tail()}"
            ) from exc
        return time.monotonic() - t0

    # --- invariants -------------------------------------------------------------------

    def _check_acknowledged_are_stored(self, acknowledged: set[str]) -> None:
        """Every instance answered Success is indexed, and its file in the spool is that instance."""
        spool = Path(self.node.config["storage"]["spool"])
        for sop in sorted(acknowledged):
            path = self.node.scalar(
                "SELECT path FROM instances WHERE sop_instance_uid = :sop", sop=sop
            )
            if path is None:
                raise CampaignError(f"{sop} was answered Success but is not in the index")
            stored = spool / path
            if not stored.is_file():
                raise CampaignError(f"{sop} was answered Success but {stored} is missing")
            if pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID != sop:
                raise CampaignError(f"{stored} does not hold {sop}")

    def _phase(self, study_uid: str, acknowledged: int) -> str:
        """The study's stage at the kill, as the index shows it."""
        node = self.node
        jobs = [
            r[0]
            for r in node.query("SELECT state FROM jobs WHERE study_instance_uid = :s", s=study_uid)
        ]
        deliveries = [
            r[0]
            for r in node.query(
                "SELECT d.state FROM deliveries d JOIN jobs j ON j.id = d.job_id"
                " WHERE j.study_instance_uid = :s",
                s=study_uid,
            )
        ]
        if "done" in deliveries:
            return "delivered"
        if deliveries:
            return "delivery queued"
        if "running" in jobs:
            return "inference"
        if jobs:
            return "completed, job queued"
        indexed = node.scalar(
            "SELECT count(*) FROM instances WHERE study_instance_uid = :s", s=study_uid
        )
        if indexed < IMAGES_PER_STUDY:
            return f"receiving ({indexed} indexed, {acknowledged} confirmed)"
        return "received, not yet complete"

    def _settle(self, number: int, timeout: float = 120.0) -> None:
        """Wait until every study sent is routed, analysed and delivered."""
        expected = IMAGES_PER_STUDY * len(self.sent)
        node = self.node
        node.wait_for("SELECT count(*) FROM instances", expected, timeout=timeout)
        node.wait_for(
            "SELECT count(*) FROM instances i WHERE i.id > COALESCE((SELECT max(c.through_instance_id)"
            " FROM completions c WHERE c.study_instance_uid = i.study_instance_uid), 0)",
            0,
            timeout=timeout,
        )
        node.wait_for(
            "SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')", 0, timeout=timeout
        )
        node.wait_for("SELECT count(*) FROM deliveries WHERE state <> 'done'", 0, timeout=timeout)
        failed = node.scalar("SELECT count(*) FROM jobs WHERE state = 'failed'")
        if failed:
            raise CampaignError(f"round {number}: {failed} job(s) failed:\n{node.log_tail()}")

    def _check_results(self, number: int) -> None:
        """Every study analysed; the PACS holds exactly the node's result UIDs, each once."""
        node = self.node
        analysed = {
            r[0] for r in node.query("SELECT study_instance_uid FROM jobs WHERE state = 'done'")
        }
        missing = set(self.sent) - analysed
        if missing:
            raise CampaignError(f"round {number}: studies never analysed: {sorted(missing)}")
        results = Counter(r[0] for r in node.query("SELECT sop_instance_uid FROM results"))
        in_pacs = Counter(
            item["MainDicomTags"]["SOPInstanceUID"]
            for item in self.pacs.post(
                "/tools/find", {"Level": "Instance", "Query": {}, "Expand": True}
            )
        )
        if set(in_pacs) != set(results):
            raise CampaignError(
                f"round {number}: PACS and index disagree: only in the PACS "
                f"{sorted(set(in_pacs) - set(results))}, never delivered "
                f"{sorted(set(results) - set(in_pacs))}"
            )
        count = int(self.pacs.get("/statistics")["CountInstances"])
        if count != len(results):
            raise CampaignError(
                f"round {number}: {count} instances in the PACS for {len(results)} results"
            )


def summary(rounds: list[Round]) -> dict[str, Any]:
    """Counts by kind and by phase, for the bench's printout and README figures."""
    return {
        "rounds": len(rounds),
        "by_kind": dict(Counter(r.kind for r in rounds)),
        "by_phase": dict(Counter(r.phase.split(" (")[0] for r in rounds)),
        "acknowledged_instances": sum(r.acknowledged for r in rounds),
        "redelivered": max((r.redelivered for r in rounds), default=0),
        "seconds": round(sum(r.seconds for r in rounds), 1),
    }
