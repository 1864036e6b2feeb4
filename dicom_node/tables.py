"""Imports every stage's tables so that :data:`dicom_node.db.Base.metadata` knows them all."""

from dicom_node.complete.tables import Completion
from dicom_node.console.tables import ConsoleSession, ConsoleUser
from dicom_node.dispatch.tables import Delivery
from dicom_node.events import Event
from dicom_node.jobs.tables import Job, Result
from dicom_node.receive.tables import (
    Instance,
    PerformedStep,
    ReleasedAssociation,
    Series,
    Study,
)

__all__ = [
    "Completion",
    "ConsoleSession",
    "ConsoleUser",
    "Delivery",
    "Event",
    "Instance",
    "Job",
    "PerformedStep",
    "ReleasedAssociation",
    "Result",
    "Series",
    "Study",
]
