"""The stages after receiving, in process against the test database (SQLite or PostgreSQL):
completion policy and generations, routing into jobs, the outbox's retries and dead letters."""

from __future__ import annotations

from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from sqlalchemy import select

from dicom_node.complete.completion import CompletionStage
from dicom_node.config import Config, RetryPolicy, parse_config
from dicom_node.db import make_engine, migrate, session_factory, transaction, utcnow
from dicom_node.dispatch import outbox
from dicom_node.dispatch.tables import Delivery, DeliveryState
from dicom_node.events import Event
from dicom_node.jobs import queue
from dicom_node.jobs.tables import Job, JobState
from dicom_node.receive.index import ReceivedInstance, index_instance, record_release
from dicom_node.receive.tables import PerformedStep
from dicom_node.route.router import Router
from dicom_node.spool import Spool

CONFIG = """
completion: {series_quiet_seconds: 10, study_quiet_seconds: 30, force_after_seconds: 600}
destinations: {pacs: {ae_title: PACS, host: 127.0.0.1, port: 4242}}
pipelines: {generic: {card: card.yaml}, ct: {card: ct.yaml}}
routes:
  - {name: chest, match: {Modality: DX}, pipeline: generic, destinations: [pacs]}
  - {name: ct, match: {Modality: CT}, pipeline: ct, destinations: [pacs]}
  - {name: rest, fallback: true, pipeline: generic, shadow: true}
"""


class World:
    """An index, a spool and the completion stage wired to the router, with a settable clock."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.config: Config = parse_config(CONFIG, tmp_path)
        self.engine = make_engine(database_url)
        migrate(self.engine)
        self.sessions = session_factory(self.engine)
        self.spool = Spool(tmp_path / "spool", fsync=False)
        router = Router(self.spool)
        self.stage = CompletionStage(lambda: self.config, self.sessions, router, hold=router.hold)
        self.t0 = utcnow()

    def receive(
        self,
        study: str,
        series: str,
        sop: str,
        modality: str,
        at: float,
        calling: str = "PACS",
        manufacturer: str = "ACME",
        association: str | None = None,
        description: str | None = None,
    ) -> bool:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, modality
        ds.Manufacturer = manufacturer
        if description is not None:
            ds.SeriesDescription = description
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        relative = self.spool.instance_path(study, series, sop)
        self.spool.write(relative, buffer.getvalue())
        item = ReceivedInstance(
            sop_instance_uid=sop,
            sop_class_uid=SecondaryCaptureImageStorage,
            series_instance_uid=series,
            study_instance_uid=study,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            modality=modality,
            body_part_examined=None,
            series_description=None,
            path=str(relative),
            size=len(buffer.getvalue()),
            calling_ae_title=calling,
            source_address="127.0.0.1",
            received_at=self.t0 + timedelta(seconds=at),
            association=association,
        )
        with transaction(self.sessions) as session:
            return index_instance(session, item)

    def step(self, uid: str, study: str, status: str, instances: list[str], at: float) -> None:
        """An MPPS step as the MPPS SCP records it."""
        with transaction(self.sessions) as session:
            session.merge(
                PerformedStep(
                    sop_instance_uid=uid,
                    study_instance_uid=study,
                    status=status,
                    instances=instances,
                    calling_ae_title="CT1",
                    updated_at=self.t0 + timedelta(seconds=at),
                )
            )

    def release(self, association: str, at: float) -> None:
        """A complete_on_release peer released ``association`` (as the SCP records it)."""
        with transaction(self.sessions) as session:
            record_release(session, association, "PACS", self.t0 + timedelta(seconds=at))

    def poll(self, at: float) -> list[Any]:
        return self.stage.poll(self.t0 + timedelta(seconds=at))

    def jobs(self) -> list[Job]:
        with self.sessions() as session:
            return list(session.scalars(select(Job).order_by(Job.id)))


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> World:
    return World(tmp_path, database_url)


def test_study_completes_after_quiet_periods_and_routes_each_series(world: World) -> None:
    world.receive("1.1", "1.1.1", "1.1.1.1", "DX", at=0)
    world.receive("1.1", "1.1.2", "1.1.2.1", "CT", at=5)
    world.receive("1.1", "1.1.2", "1.1.2.2", "CT", at=20)
    assert world.poll(at=29) == []  # series 1.1.2 quiet, but the study is not (30 s)
    assert world.poll(at=49) == []
    (done,) = world.poll(at=51)
    assert (done.generation, done.reason, done.series_uids) == (1, "quiet", ["1.1.1", "1.1.2"])
    jobs = world.jobs()
    assert [(j.route, j.pipeline, j.series_uids, j.destinations, j.shadow) for j in jobs] == [
        ("chest", "generic", ["1.1.1"], ["pacs"], False),
        ("ct", "ct", ["1.1.2"], ["pacs"], False),
    ]
    assert world.poll(at=120) == []  # nothing new: nothing more


def test_a_released_association_completes_its_studies_once_settled(world: World) -> None:
    """Release after the settle time (0.5 s), not the quiet timers (30 s); an instance of the
    study from an association not released (or released too recently) holds it back."""
    world.receive("2.1", "2.1.1", "2.1.1.1", "CT", at=0, association="a1")
    world.receive("2.1", "2.1.1", "2.1.1.2", "CT", at=1, association="a1")
    world.receive("2.2", "2.2.1", "2.2.1.1", "DX", at=1, association="a1")
    world.receive("2.3", "2.3.1", "2.3.1.1", "DX", at=1, association="a2")  # never released
    world.release("a1", at=1.2)
    assert world.poll(at=1.5) == [], "released 0.3 s ago: within the settle time"
    done = world.poll(at=1.8)
    assert sorted((d.study_instance_uid, d.reason) for d in done) == [
        ("2.1", "released"),
        ("2.2", "released"),
    ]
    assert [j.series_uids for j in world.jobs()] == [["2.1.1"], ["2.2.1"]]
    # a late instance in a new association: its own generation, after its own release
    world.receive("2.1", "2.1.1", "2.1.1.3", "CT", at=5, association="a3")
    world.receive("2.1", "2.1.9", "2.1.9.1", "CT", at=5, association="a4")
    world.release("a3", at=5.1)
    assert world.poll(at=6) == [], "a4 is still open"
    world.release("a4", at=6)
    (late,) = world.poll(at=7)
    assert (late.study_instance_uid, late.generation, late.reason) == ("2.1", 2, "released")
    (quiet,) = world.poll(at=32)
    assert (quiet.study_instance_uid, quiet.reason) == ("2.3", "quiet"), "the fallback"


def test_a_completed_mpps_completes_its_study_once_every_listed_instance_arrived(
    world: World,
) -> None:
    world.step("9.1.step", "9.1", "IN PROGRESS", [], at=0)
    world.receive("9.1", "9.1.1", "9.1.1.1", "CT", at=0)
    world.receive("9.1", "9.1.1", "9.1.1.2", "CT", at=1)
    assert world.poll(at=2) == [], "the step is still in progress"
    world.step("9.1.step", "9.1", "COMPLETED", ["9.1.1.1", "9.1.1.2", "9.1.1.3"], at=2)
    assert world.poll(at=2.5) == [], "one listed instance has not arrived"
    world.receive("9.1", "9.1.1", "9.1.1.3", "CT", at=3)
    (done,) = world.poll(at=3.1)
    assert (done.study_instance_uid, done.reason) == ("9.1", "mpps")
    # a step whose instances never all arrive: named once, then the quiet timers decide
    world.step("9.2.step", "9.2", "COMPLETED", ["9.2.1.1", "9.2.1.2"], at=10)
    world.receive("9.2", "9.2.1", "9.2.1.1", "CT", at=10)
    assert world.poll(at=20) == []
    (quiet,) = world.poll(at=41)
    assert (quiet.study_instance_uid, quiet.reason) == ("9.2", "quiet")
    with world.sessions() as session:
        events = session.scalars(select(Event).where(Event.kind == "mpps-incomplete")).all()
    assert [(e.subject, "9.2.1.2" in (e.detail or "")) for e in events] == [("9.2", True)]


REQUIRING = """
completion: {series_quiet_seconds: 10, study_quiet_seconds: 30, force_after_seconds: 600}
destinations: {pacs: {ae_title: PACS, host: 127.0.0.1, port: 4242}}
pipelines: {generic: {card: card.yaml}, ct: {card: ct.yaml}}
routes:
  - name: ct
    match: {Modality: CT}
    pipeline: ct
    destinations: [pacs]
    require: {series: [{SeriesDescription: {regex: "(?i)bone"}}], wait: true}
  - name: chest
    match: {Modality: DX}
    pipeline: generic
    destinations: [pacs]
    require: {series: [{SeriesDescription: LAT}], wait: false, when_missing: proceed}
"""


def _events(world: World, kind: str) -> list[tuple[str | None, str | None]]:
    with world.sessions() as session:
        rows = session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)).all()
    return [(e.subject, e.detail) for e in rows]


def test_a_route_requiring_series_holds_the_study_for_them_or_discards_or_proceeds(
    world: World, tmp_path: Path
) -> None:
    world.config = parse_config(REQUIRING, tmp_path)
    world.receive("7.1", "7.1.1", "7.1.1.1", "CT", at=0, description="soft tissue")
    assert world.poll(at=31) == [] and world.poll(at=40) == [], "held for the bone series"
    assert [s for s, _ in _events(world, "completion-held")] == ["7.1"], "said once"
    world.receive("7.1", "7.1.2", "7.1.2.1", "CT", at=45, description="Bone 1mm")
    (done,) = world.poll(at=76)
    assert (done.reason, done.series_uids) == ("quiet", ["7.1.1", "7.1.2"])
    assert [(j.route, j.series_uids) for j in world.jobs()] == [("ct", ["7.1.1", "7.1.2"])]
    # never comes: the force deadline completes the study, and the route discards
    world.receive("7.2", "7.2.1", "7.2.1.1", "CT", at=100, description="soft tissue")
    assert world.poll(at=690) == []
    (forced,) = world.poll(at=701)
    assert forced.reason == "forced"
    assert len(world.jobs()) == 1, "no job for the study without its bone series"
    ((subject, detail),) = _events(world, "required-missing-discard")
    assert subject == "7.2" and "SeriesDescription regex '(?i)bone'" in (detail or "")
    # wait: false and proceed: the study completes on its timers and the job runs anyway
    world.receive("7.3", "7.3.1", "7.3.1.1", "DX", at=800, description="PA")
    (chest,) = world.poll(at=831)
    assert chest.reason == "quiet"
    assert [j.route for j in world.jobs()] == ["ct", "chest"]
    assert [s for s, _ in _events(world, "required-missing-proceed")] == ["7.3"]


def test_force_deadline_completes_a_study_that_never_goes_quiet(world: World) -> None:
    for second in range(0, 601, 20):
        world.receive("2.1", "2.1.1", f"2.1.1.{second + 1}", "CT", at=second)
    assert world.poll(at=599) == []
    (done,) = world.poll(at=601)
    assert done.reason == "forced"


def test_late_instance_starts_a_new_generation_for_its_series_only(world: World) -> None:
    world.receive("3.1", "3.1.1", "3.1.1.1", "DX", at=0)
    world.receive("3.1", "3.1.2", "3.1.2.1", "CT", at=0)
    assert len(world.poll(at=40)) == 1
    world.receive("3.1", "3.1.2", "3.1.2.2", "CT", at=100)  # late
    assert world.poll(at=110) == []
    (late,) = world.poll(at=131)
    assert (late.generation, late.series_uids) == (2, ["3.1.2"])
    assert [(j.generation, j.route) for j in world.jobs()] == [(1, "chest"), (1, "ct"), (2, "ct")]


def test_a_resent_copy_is_counted_once_and_starts_nothing(world: World) -> None:
    assert world.receive("4.1", "4.1.1", "4.1.1.1", "DX", at=0) is True
    assert len(world.poll(at=40)) == 1
    assert world.receive("4.1", "4.1.1", "4.1.1.1", "DX", at=50) is False
    assert world.poll(at=200) == []
    assert len(world.jobs()) == 1


def test_fallback_fires_only_for_unmatched_series_and_calling_ae_is_used(world: World) -> None:
    world.config = parse_config(
        CONFIG.replace("{Modality: DX}", "{Modality: DX}, calling_ae: [MODALITY1]"), Path(".")
    )
    world.receive("5.1", "5.1.1", "5.1.1.1", "DX", at=0, calling="PACS")  # wrong sender
    world.receive("5.1", "5.1.2", "5.1.2.1", "MR", at=0)
    world.poll(at=40)
    jobs = world.jobs()
    assert [(j.route, sorted(j.series_uids), j.shadow, j.destinations) for j in jobs] == [
        ("rest", ["5.1.1", "5.1.2"], True, [])
    ]


def test_the_nodes_own_results_coming_back_are_not_routed(world: World) -> None:
    """A PACS that forwards everything must not make the node analyse its own SR/heatmaps."""
    world.receive("7.1", "7.1.9", "7.1.9.1", "SR", at=0, manufacturer="dicom-node")
    world.receive("7.1", "7.1.8", "7.1.8.1", "OT", at=0, manufacturer="dicom-node")
    assert len(world.poll(at=40)) == 1
    assert world.jobs() == []
    with world.sessions() as session:
        kinds = [e.kind for e in session.scalars(select(Event))]
    assert kinds.count("own-result") == 2


def test_jobs_are_claimed_once_and_recovered_after_a_crash(world: World) -> None:
    world.receive("6.1", "6.1.1", "6.1.1.1", "DX", at=0)
    world.poll(at=40)
    job_id = queue.claim_next(world.sessions)
    assert job_id is not None
    assert queue.claim_next(world.sessions) is None  # running: nobody else gets it
    assert queue.recover(world.sessions) == 1  # as at start-up after kill -9
    assert queue.claim_next(world.sessions) == job_id
    queue.fail(world.sessions, job_id, "boom")
    (job,) = world.jobs()
    assert (job.state, job.attempts, job.error) == (JobState.FAILED, 2, "boom")


def test_outbox_backs_off_then_dead_letters_and_resend_requeues(world: World) -> None:
    policy = RetryPolicy(initial_seconds=0, multiplier=2, max_seconds=0, max_attempts=3)
    with transaction(world.sessions) as session:
        outbox.enqueue(session, 42, ["pacs"])
    states = []
    for _ in range(3):
        delivery = outbox.claim_due(world.sessions)
        assert delivery is not None and delivery.state == DeliveryState.SENDING
        assert outbox.claim_due(world.sessions) is None  # one sender at a time
        states.append(outbox.failed(world.sessions, delivery, "refused", policy))
    assert states == [DeliveryState.PENDING, DeliveryState.PENDING, DeliveryState.DEAD]
    assert outbox.claim_due(world.sessions) is None  # dead letters are not retried
    assert outbox.resend(world.sessions) == 1
    delivery = outbox.claim_due(world.sessions)
    assert delivery is not None and delivery.attempts == 1
    outbox.succeeded(world.sessions, delivery.id)
    with world.sessions() as session:
        kinds = [e.kind for e in session.scalars(select(Event).order_by(Event.id))]
    assert "dead-letter" in kinds and "resend" in kinds and "delivered" in kinds


def test_outbox_waits_for_the_backoff(world: World) -> None:
    policy = RetryPolicy(initial_seconds=3600, multiplier=2, max_seconds=7200, max_attempts=5)
    with transaction(world.sessions) as session:
        outbox.enqueue(session, 7, ["pacs"])
    delivery = outbox.claim_due(world.sessions)
    assert delivery is not None
    outbox.failed(world.sessions, delivery, "timeout", policy)
    assert outbox.claim_due(world.sessions) is None  # not due for an hour: no busy loop
    with world.sessions() as session:
        (row,) = session.scalars(select(Delivery))
        assert row.next_attempt_at > utcnow() + timedelta(minutes=59)
        assert isinstance(row.next_attempt_at, datetime)
    assert outbox.recover(world.sessions) == 0
