"""The dashboard's charts: the last hours, hour by hour, drawn as SVG on the server.

Read from the index when the page is asked for (no counters to keep): studies
received, jobs finished and their mean latency (queued to finished), and the
queue's depth (jobs waiting) at each hour's end. No JavaScript: the page
embeds the bars as inline SVG.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from dicom_node.jobs import queue
from dicom_node.receive.index import studies_first_received_since

#: how many hours the charts cover
HOURS = 12


@dataclass(frozen=True)
class Chart:
    """One bar per hour, oldest first."""

    title: str
    unit: str
    #: each hour's end (UTC) and value
    bars: list[tuple[datetime, float]]

    @property
    def peak(self) -> float:
        return max((value for _, value in self.bars), default=0.0)

    @property
    def top(self) -> float:
        """What the full bar height stands for (1 when every bar is 0)."""
        return self.peak or 1.0


def hourly(session: Session, now: datetime, hours: int = HOURS) -> list[Chart]:
    """Studies received, jobs finished, mean job latency and queue depth, per hour."""
    start = now - timedelta(hours=hours)
    ends = [start + timedelta(hours=h + 1) for h in range(hours)]

    def bucket(at: datetime) -> int | None:
        index = int((at - start).total_seconds() // 3600)
        return index if 0 <= index < hours else None

    studies = [0.0] * hours
    for at in studies_first_received_since(session, start):
        if (i := bucket(at)) is not None:
            studies[i] += 1
    finished = [0.0] * hours
    latency_sum = [0.0] * hours
    depth = [0.0] * hours
    for created, started, done in queue.job_times(session, start):
        if done is not None and (i := bucket(done)) is not None:
            finished[i] += 1
            latency_sum[i] += (done - created).total_seconds()
        for i, end in enumerate(ends):  # waiting at the hour's end: queued, not yet started
            if (
                created <= end
                and (started is None or started > end)
                and (done is None or done > end)
            ):
                depth[i] += 1
    latency = [s / n if n else 0.0 for s, n in zip(latency_sum, finished, strict=True)]
    return [
        Chart("Studies received", "studies", list(zip(ends, studies, strict=True))),
        Chart("Jobs finished", "jobs", list(zip(ends, finished, strict=True))),
        Chart("Job latency, queued to finished (mean)", "s", list(zip(ends, latency, strict=True))),
        Chart("Jobs waiting at the hour's end", "jobs", list(zip(ends, depth, strict=True))),
    ]
