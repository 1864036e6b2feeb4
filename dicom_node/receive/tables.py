"""Tables owned by the receive stage: what arrived, where it is in the spool.

Only :mod:`dicom_node.receive.index` writes these tables.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from dicom_node.db import Base, UTCDateTime

UID = String(64)


class Study(Base):
    """A study seen at least once. Activity times come from its instances."""

    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: the first instance's Accession Number (operators search by it; not patient identity)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)


class Series(Base):
    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("studies.study_instance_uid"), index=True
    )
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Instance(Base):
    """One stored object. ``id`` grows with every first arrival: the completion
    stage uses it as a watermark of what it has already handed on."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("series.series_instance_uid"), index=True
    )
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    #: path relative to the spool folder
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    source_address: Mapped[str | None] = mapped_column(String(64))
    #: when the latest copy arrived (a resent copy counts as activity for completion)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    #: how many times this SOP Instance UID was received (duplicates count once as an instance)
    copies: Mapped[int] = mapped_column(Integer, default=1)
    #: the association its latest copy came in (a random id the receiver gives each association)
    association: Mapped[str | None] = mapped_column(String(32))


class ReleasedAssociation(Base):
    """An association a ``complete_on_release`` peer released after storing objects.

    The completion stage treats the studies it carried as complete once every
    new instance of theirs came in a released association (and the settle
    time passed): the peer said, by releasing, that it sent what it had.
    """

    __tablename__ = "released_associations"

    association: Mapped[str] = mapped_column(String(32), primary_key=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    released_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class PerformedStep(Base):
    """A Modality Performed Procedure Step a peer reported (MPPS N-CREATE / N-SET).

    When its status is COMPLETED, the completion stage treats its study as
    complete as soon as every instance it lists is indexed.
    """

    __tablename__ = "performed_steps"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    #: IN PROGRESS, COMPLETED or DISCONTINUED
    status: Mapped[str] = mapped_column(String(16))
    #: the SOP Instance UIDs its performed series list (known once COMPLETED)
    instances: Mapped[list[str]] = mapped_column(JSON, default=list)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
