"""The MPPS SCP: a modality's Modality Performed Procedure Step, a signal that a study is complete.

A modality creates a step (N-CREATE, ``IN PROGRESS``) when it starts
acquiring and sets it ``COMPLETED`` (N-SET) with the list of every series and
instance it produced. The node records each step
(:class:`~dicom_node.receive.tables.PerformedStep`); the completion stage then
completes the study as soon as every listed instance has arrived, instead of
waiting for the quiet timers (and says which are missing when they never do).

The node keeps only what completion needs (UIDs, status); the step's other
attributes (patient, procedure codes) are answered back to the SCU as it
sent them and not stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from sqlalchemy import Engine, insert, update
from sqlalchemy.orm import Session

from dicom_node.db import utcnow
from dicom_node.receive.tables import PerformedStep

log = logging.getLogger(__name__)

SUCCESS = 0x0000
#: N-CREATE of an instance that exists
DUPLICATE = 0x0111
#: N-SET of an instance that does not exist
NO_SUCH_INSTANCE = 0x0112
#: N-SET of a step no longer IN PROGRESS (PS3.4 F.7.2.2: may not be modified)
NOT_MODIFIABLE = 0xA710
PROCESSING_FAILURE = 0x0110
STATUSES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")


def listed_instances(ds: Dataset) -> list[str]:
    """The SOP Instance UIDs a step's Performed Series Sequence lists (images and others)."""
    uids = []
    for series in ds.get("PerformedSeriesSequence", []):
        for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            uids += [str(item.ReferencedSOPInstanceUID) for item in series.get(key, [])]
    return uids


def _step_uid(event: evt.Event) -> str:
    """The step's SOP Instance UID: N-CREATE's Affected, N-SET's Requested one."""
    request = event.request
    if isinstance(request, N_CREATE):
        return str(request.AffectedSOPInstanceUID or "")
    assert isinstance(request, N_SET)
    return str(request.RequestedSOPInstanceUID or "")


def _study(ds: Dataset) -> str | None:
    for item in ds.get("ScheduledStepAttributesSequence", []):
        if item.get("StudyInstanceUID"):
            return str(item.StudyInstanceUID)
    return str(ds.StudyInstanceUID) if ds.get("StudyInstanceUID") else None


class MppsSCP:
    """N-CREATE and N-SET handlers for the Storage SCP's associations.

    Parameters
    ----------
    engine : Engine
        The index.
    on_completed : callable, optional
        Called when a step is set COMPLETED (the receiver wakes completion with it).
    """

    def __init__(self, engine: Engine, on_completed: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.on_completed = on_completed

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_N_CREATE, self.on_create), (evt.EVT_N_SET, self.on_set)]

    def on_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        ds = event.attribute_list
        uid, calling = _step_uid(event), event.assoc.requestor.ae_title.strip()
        status = str(ds.get("PerformedProcedureStepStatus", "")).strip()
        if not uid or status != "IN PROGRESS":
            log.error("refused MPPS N-CREATE %s from %s: status %r", uid, calling, status)
            return PROCESSING_FAILURE, None
        try:
            with Session(self.engine) as session, session.begin():
                if session.get(PerformedStep, uid) is not None:
                    return DUPLICATE, None
                session.execute(
                    insert(PerformedStep).values(
                        sop_instance_uid=uid,
                        study_instance_uid=_study(ds),
                        status=status,
                        instances=listed_instances(ds),
                        calling_ae_title=calling,
                        updated_at=utcnow(),
                    )
                )
        except Exception as exc:  # noqa: BLE001 - the SCU retries a failed step
            log.error("MPPS N-CREATE %s from %s not recorded: %s", uid, calling, exc)
            return PROCESSING_FAILURE, None
        log.info("MPPS %s from %s: IN PROGRESS, study %s", uid, calling, _study(ds))
        return SUCCESS, ds

    def on_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        changes = event.modification_list
        uid, calling = _step_uid(event), event.assoc.requestor.ae_title.strip()
        try:
            with Session(self.engine) as session, session.begin():
                step = session.get(PerformedStep, uid)
                if step is None:
                    return NO_SUCH_INSTANCE, None
                if step.status != "IN PROGRESS":
                    return NOT_MODIFIABLE, None
                status = str(changes.get("PerformedProcedureStepStatus", step.status)).strip()
                if status not in STATUSES:
                    return PROCESSING_FAILURE, None
                values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
                if "PerformedSeriesSequence" in changes:
                    values["instances"] = listed_instances(changes)
                session.execute(
                    update(PerformedStep)
                    .where(PerformedStep.sop_instance_uid == uid)
                    .values(**values)
                )
                study, count = step.study_instance_uid, len(values.get("instances", step.instances))
        except Exception as exc:  # noqa: BLE001 - the SCU retries a failed step
            log.error("MPPS N-SET %s from %s not recorded: %s", uid, calling, exc)
            return PROCESSING_FAILURE, None
        log.info(
            "MPPS %s from %s: %s, study %s, %d instance(s)", uid, calling, status, study, count
        )
        if status == "COMPLETED" and self.on_completed is not None:
            self.on_completed()
        return SUCCESS, changes
