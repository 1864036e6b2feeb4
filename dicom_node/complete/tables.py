"""Tables owned by the completion stage.

A :class:`Completion` row records that a study was handed on for routing:
``generation`` counts hand-overs of the same study (a late instance starts a
new generation), ``through_instance_id`` is the highest instance id it
covered, and ``series_uids`` the series that had new instances.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dicom_node.db import Base, UTCDateTime


class Completion(Base):
    __tablename__ = "completions"
    __table_args__ = (UniqueConstraint("study_instance_uid", "generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    through_instance_id: Mapped[int] = mapped_column(BigInteger)
    series_uids: Mapped[list[str]] = mapped_column(JSON)
    #: "quiet" or "forced"
    reason: Mapped[str] = mapped_column(String(16))
    completed_at: Mapped[datetime] = mapped_column(UTCDateTime())
