"""Retention against the test database (SQLite or PostgreSQL): what a finished study is, expiry by
age, the emergency cleanup's order and limits, and copies received again during a purge."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from test_stages import CONFIG, World

from dicom_node.config import parse_config
from dicom_node.db import transaction
from dicom_node.dispatch.tables import Delivery, DeliveryState
from dicom_node.events import Event
from dicom_node.jobs.tables import Job, JobState, Result
from dicom_node.receive.tables import Instance, Series, Study
from dicom_node.retention import Retention, finished_studies
from dicom_node.spool import Spool

DAY = 86400.0


class SmallDisk(Spool):
    """A spool on a disk 1024 times smaller than it says: ``capacity_mb`` KiB, reported as MiB.

    Free space is what the spool's files leave, so the emergency cleanup's
    order and stopping point can be checked exactly (the real disk-full
    path runs on a tmpfs in ``test_disk_full.py``).
    """

    capacity_mb = 1024.0

    def free_mb(self) -> float:
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return self.capacity_mb - used / 1024


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> World:
    return World(tmp_path, database_url)


def finish(world: World, study: str, delivery: str = DeliveryState.DONE) -> None:
    """Complete the study's jobs with one result file each and one delivery in ``delivery``."""
    with transaction(world.sessions) as session:
        jobs = list(session.scalars(select(Job).where(Job.study_instance_uid == study)))
        assert jobs, f"no job for {study}"
        for job in jobs:
            job.state, job.finished_at = JobState.DONE, world.t0
            sop = f"2.25.{job.id}{len(study)}"
            relative = world.spool.result_path(job.id, sop)
            world.spool.write(relative, b"R" * 4096)
            session.add(
                Result(
                    sop_instance_uid=sop,
                    job_id=job.id,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                    kind="SR",
                    path=str(relative),
                    created_at=world.t0,
                )
            )
            session.add(
                Delivery(
                    job_id=job.id,
                    destination="pacs",
                    state=delivery,
                    attempts=1,
                    next_attempt_at=world.t0,
                    created_at=world.t0,
                    delivered_at=world.t0 if delivery == DeliveryState.DONE else None,
                )
            )


def study(world: World, uid: str, at: float, images: int = 2, size: int = 0) -> None:
    for i in range(images):
        world.receive(uid, f"{uid}.1", f"{uid}.1.{i}", "DX", at=at)
        if size:
            path = world.spool.absolute(world.spool.instance_path(uid, f"{uid}.1", f"{uid}.1.{i}"))
            with open(path, "ab") as fh:
                fh.write(b"\0" * size)
    world.poll(at + 60)


def spooled(world: World, uid: str) -> list[Path]:
    """The study's instance files."""
    folder = world.spool.root / "instances" / uid
    return sorted(p for p in folder.rglob("*") if p.is_file())


def rows(world: World, uid: str) -> int:
    with world.sessions() as session:
        return session.scalar(
            select(func.count()).select_from(Instance).where(Instance.study_instance_uid == uid)
        )


def test_only_studies_with_nothing_outstanding_are_finished(world: World) -> None:
    study(world, "1.1", at=0)
    finish(world, "1.1")
    study(world, "1.2", at=10)
    finish(world, "1.2", delivery=DeliveryState.PENDING)
    study(world, "1.3", at=20)
    finish(world, "1.3", delivery=DeliveryState.DEAD)  # kept until resent
    study(world, "1.4", at=30)  # job still pending
    study(world, "1.5", at=40)
    finish(world, "1.5")
    world.receive("1.5", "1.5.1", "1.5.1.9", "DX", at=50)  # a late instance, not completed yet
    with world.sessions() as session:
        assert [s.study_instance_uid for s in finished_studies(session)] == ["1.1"]


def test_expired_studies_lose_files_and_rows_but_keep_the_audit_trail(world: World) -> None:
    study(world, "1.1", at=0)
    finish(world, "1.1")
    study(world, "1.2", at=0)
    finish(world, "1.2", delivery=DeliveryState.DEAD)
    assert len(spooled(world, "1.1")) == 2
    retention = Retention(lambda: world.config, world.sessions, world.spool)
    # the default keeps seven days
    assert retention.run(now=world.t0 + timedelta(days=6)).expired == []
    run = retention.run(now=world.t0 + timedelta(days=8))
    assert run.expired == ["1.1"] and run.files == 3  # two images and the result
    assert spooled(world, "1.1") == [] and rows(world, "1.1") == 0
    assert len(spooled(world, "1.2")) == 2 and rows(world, "1.2") == 2
    with world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 1  # 1.2's
        assert not session.scalar(select(Study).where(Study.study_instance_uid == "1.1"))
        assert not session.scalar(select(Series).where(Series.study_instance_uid == "1.1"))
        assert session.scalar(select(func.count()).select_from(Job)) == 2  # audit trail stays
        kinds = session.execute(select(Event.kind, Event.subject).where(Event.stage == "retention"))
        assert list(kinds) == [("expired", "1.1")]


def test_emergency_deletes_oldest_finished_first_until_the_target(
    tmp_path: Path, database_url: str
) -> None:
    config = (
        CONFIG
        + "storage: {min_free_disk_mb: 500, retention: {keep_days: null, emergency_free_mb: 600}}\n"
    )
    world = World(tmp_path, database_url)
    world.config = parse_config(config, tmp_path)
    world.spool = SmallDisk(tmp_path / "spool", fsync=False)
    for n, uid in enumerate(["1.3", "1.1", "1.2", "1.4"]):
        study(world, uid, at=n * 100, size=100_000)  # ~200 KiB each
        if uid != "1.4":
            finish(world, uid)
    with transaction(world.sessions) as session:  # 1.1 delivered last: it stays longest
        session.execute(update(Delivery).values(delivered_at=world.t0))
        session.execute(
            update(Job)
            .where(Job.study_instance_uid == "1.1")
            .values(finished_at=world.t0 + timedelta(hours=1))
        )
    retention = Retention(lambda: world.config, world.sessions, world.spool)
    assert world.spool.free_mb() < 500
    run = retention.run(now=world.t0 + timedelta(days=1))
    # 1.3 then 1.2 by last activity: 600 free after two; 1.4 has a pending job
    assert run.emergency == ["1.3", "1.2"] and not run.still_low
    assert run.free_mb >= 600
    assert rows(world, "1.1") == 2 and rows(world, "1.4") == 2
    # nothing else finished: a second, harder squeeze deletes 1.1 and then reports it is stuck
    world.spool.capacity_mb = 450
    run = retention.run(now=world.t0 + timedelta(days=1))
    assert run.emergency == ["1.1"] and run.still_low
    assert rows(world, "1.4") == 2


def test_emergency_can_be_switched_off(tmp_path: Path, database_url: str) -> None:
    world = World(tmp_path, database_url)
    world.config = parse_config(
        CONFIG
        + "storage: {min_free_disk_mb: 500, retention: {keep_days: null, emergency: false}}\n",
        tmp_path,
    )
    world.spool = SmallDisk(tmp_path / "spool", fsync=False)
    study(world, "1.1", at=0, size=600_000)
    finish(world, "1.1")
    run = Retention(lambda: world.config, world.sessions, world.spool).run(
        world.t0 + timedelta(days=1)
    )
    assert run.emergency == [] and run.still_low and rows(world, "1.1") == 2


def test_a_copy_received_again_during_the_purge_is_kept_and_indexed_anew(world: World) -> None:
    study(world, "1.1", at=0)
    finish(world, "1.1")
    now = world.t0 + timedelta(days=8)
    # one image arrives again just now: its file is newer than the cut-off
    again = world.spool.absolute(world.spool.instance_path("1.1", "1.1.1", "1.1.1.0"))
    os.utime(again, (now.timestamp(), now.timestamp()))
    Retention(lambda: world.config, world.sessions, world.spool).run(now=now)
    assert spooled(world, "1.1") == [again]
    # the receiver's upsert of that copy (after the purge committed) indexes it as new
    assert world.receive("1.1", "1.1.1", "1.1.1.0", "DX", at=8 * DAY)
    assert rows(world, "1.1") == 1


def test_config_defaults_and_limits(tmp_path: Path) -> None:
    storage = parse_config(CONFIG, tmp_path).storage
    assert storage.retention.keep_days == 7 and storage.retention.emergency
    assert storage.emergency_free_mb == pytest.approx(storage.min_free_disk_mb * 1.1)
