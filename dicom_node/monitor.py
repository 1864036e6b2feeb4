"""What the monitoring endpoints answer: the health checks and the Prometheus metrics.

Served by the console (:mod:`dicom_node.console`), open to the monitoring network:

==============  ===========================================================
``/health``     200 ``{"status": "ok", "checks": {...}}`` when the index
                answers, every receiver process is alive, the spool disk
                is above ``min_free_disk_mb`` and the inference engine can
                run every pipeline; 503 with the failing checks
                named otherwise (for a load balancer, systemd or a probe)
``/metrics``    Prometheus text format (see :class:`NodeCollector`)
==============  ===========================================================

``/status`` (the JSON of ``dicom-node status --json``) needs a signed-in user.

Every number is read from the index and the spool when it is asked for,
not kept in counters of one process: the receivers run in processes of
their own, and a restart or a ``kill -9`` loses nothing. The endpoints take
no input and show counts and UIDs only, never patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from dicom_node.config import Config
from dicom_node.db import session_factory, utcnow
from dicom_node.dispatch import outbox
from dicom_node.dispatch.tables import DeliveryState
from dicom_node.jobs import queue
from dicom_node.jobs.tables import JobState
from dicom_node.spool import Spool
from dicom_node.status import stage_counts

log = logging.getLogger(__name__)

JOB_STATES = tuple(JobState)
#: the signals that complete a study (dicom_node.complete.completion)
COMPLETION_REASONS = ("mpps", "released", "quiet", "forced")
DELIVERY_STATES = tuple(DeliveryState)
#: the window of the job latency gauges
RECENT = timedelta(hours=1)
MIB = 1 << 20

#: (alive, configured) receiver processes
ReceiverCount = Callable[[], tuple[int, int]]
#: the inference engine's health: ``{"ok": bool, "kind": ..., "waiting": {pipeline: why}}``
InferenceHealth = Callable[[], dict[str, Any]]


def _local_inference() -> dict[str, Any]:
    return {"ok": True, "kind": "local"}


@dataclass(frozen=True)
class NodeView:
    """What the endpoints read: the configuration, the index, the spool, the receivers, the engine."""

    config: Callable[[], Config]
    engine: Engine
    spool: Spool
    receivers: ReceiverCount
    inference: InferenceHealth = _local_inference


class NodeCollector(Collector):
    """The node's state as Prometheus gauges, read from the index on each scrape.

    ``dicom_node_index_up``: 1 when the index answered (the others that come
    from it are left out when it did not); ``dicom_node_indexed{object}``:
    studies, series and instances held; ``dicom_node_jobs{state}`` and
    ``dicom_node_deliveries{state}``: work per state, failed jobs and dead
    letters included; ``dicom_node_oldest_pending_job_age_seconds`` and
    ``dicom_node_oldest_pending_delivery_age_seconds``: how long the oldest
    waiting work has waited (0 when none), the numbers to alert on;
    ``dicom_node_jobs_finished_last_hour`` and
    ``dicom_node_job_latency_seconds_last_hour{stat}``: from queued to
    finished, mean and max; ``dicom_node_spool_free_bytes`` and
    ``dicom_node_spool_min_free_bytes``: the receivers refuse stores below the
    second; ``dicom_node_receivers{state}``: alive and configured processes;
    ``dicom_node_inference_up``: 1 when the engine can run every configured
    pipeline now, and ``dicom_node_pipeline_waiting{pipeline}``: 1 for a
    pipeline whose jobs wait (no live Ray node can host it, its model is
    still being built).
    """

    def __init__(self, view: NodeView) -> None:
        self._config = view.config
        self._sessions = session_factory(view.engine)
        self._spool = view.spool
        self._receivers = view.receivers
        self._inference = view.inference

    def collect(self) -> Iterator[Metric]:
        storage = self._config().storage
        yield _gauge(
            "spool_free_bytes", "Free space on the spool disk", self._spool.free_mb() * MIB
        )
        yield _gauge(
            "spool_min_free_bytes",
            "Receivers refuse stores (0xA700) below this free space",
            storage.min_free_disk_mb * MIB,
        )
        alive, configured = self._receivers()
        receivers = GaugeMetricFamily(
            "dicom_node_receivers", "Storage SCP processes", labels=["state"]
        )
        receivers.add_metric(["alive"], alive)
        receivers.add_metric(["configured"], configured)
        yield receivers
        inference = self._inference()
        yield _gauge(
            "inference_up", "1 when the engine can run every pipeline now", int(inference["ok"])
        )
        waiting = GaugeMetricFamily(
            "dicom_node_pipeline_waiting",
            "1 for a configured pipeline whose jobs cannot run now",
            labels=["pipeline"],
        )
        for name in self._config().pipelines:
            waiting.add_metric([name], int(name in inference.get("waiting", {})))
        yield waiting
        try:
            families = self._from_index()
        except Exception as exc:  # noqa: BLE001 - a scrape reports the index down, never a trace
            log.warning("metrics: index not readable: %s", str(exc).splitlines()[0])
            yield _gauge("index_up", "1 when the index answered this scrape", 0)
            return
        yield _gauge("index_up", "1 when the index answered this scrape", 1)
        yield from families

    def _from_index(self) -> list[Metric]:
        with self._sessions() as session:
            work = work_figures(session, utcnow())
        counts = work.counts
        indexed = GaugeMetricFamily(
            "dicom_node_indexed", "Objects held in the index", labels=["object"]
        )
        for name, count in counts["received"].items():
            indexed.add_metric([name], count)
        completions = GaugeMetricFamily(
            "dicom_node_study_completions",
            "Study completions held in the index, by the signal that completed them",
            labels=["reason"],
        )
        for reason in COMPLETION_REASONS:
            completions.add_metric([reason], counts["completed"].get(reason, 0))
        latency = GaugeMetricFamily(
            "dicom_node_job_latency_seconds_last_hour",
            "Seconds from queued to finished of the jobs finished in the last hour",
            labels=["stat"],
        )
        latency.add_metric(["mean"], work.latency_mean or 0.0)
        latency.add_metric(["max"], work.latency_max or 0.0)
        return [
            indexed,
            completions,
            _by_state("jobs", "Jobs per state", counts["jobs"], JOB_STATES),
            _by_state(
                "deliveries",
                "Deliveries per state (dead = dead letters)",
                counts["deliveries"],
                DELIVERY_STATES,
            ),
            _gauge(
                "oldest_pending_job_age_seconds",
                "Seconds the oldest pending job has waited (0 when none)",
                work.oldest_job_age or 0.0,
            ),
            _gauge(
                "oldest_pending_delivery_age_seconds",
                "Seconds since the oldest undelivered delivery was queued (0 when none)",
                work.oldest_delivery_age or 0.0,
            ),
            _gauge(
                "jobs_finished_last_hour",
                "Jobs done or failed in the last hour",
                work.finished_last_hour,
            ),
            latency,
        ]


@dataclass(frozen=True)
class WorkFigures:
    """What the stages hold and how fast work goes: for ``/metrics`` and the dashboard."""

    counts: dict[str, dict[str, int]]
    #: seconds the oldest pending job / undelivered delivery has waited; None when none waits
    oldest_job_age: float | None
    oldest_delivery_age: float | None
    finished_last_hour: int
    #: queued to finished, of the jobs finished in the last hour; None when none finished
    latency_mean: float | None
    latency_max: float | None


def work_figures(session: Session, now: datetime) -> WorkFigures:
    """Read :class:`WorkFigures` from the index."""
    counts = stage_counts(session)
    oldest_job = queue.oldest_pending_since(session)
    oldest_delivery = outbox.oldest_waiting_since(session)
    recent = queue.finished_since(session, now - RECENT)
    latencies = [(finished - created).total_seconds() for created, finished in recent]
    return WorkFigures(
        counts=counts,
        oldest_job_age=_age(now, oldest_job),
        oldest_delivery_age=_age(now, oldest_delivery),
        finished_last_hour=len(recent),
        latency_mean=sum(latencies) / len(latencies) if latencies else None,
        latency_max=max(latencies, default=None),
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"dicom_node_{name}", documentation, value=value)


def _by_state(
    name: str, documentation: str, counts: dict[str, int], states: tuple[str, ...]
) -> GaugeMetricFamily:
    """One sample per known state, zeros included, so a query never finds a state missing."""
    family = GaugeMetricFamily(f"dicom_node_{name}", documentation, labels=["state"])
    for state in dict.fromkeys([*states, *counts]):
        family.add_metric([state], counts.get(state, 0))
    return family


def _age(now: datetime, since: datetime | None) -> float | None:
    return max(0.0, (now - since).total_seconds()) if since is not None else None


def health(
    config: Config,
    engine: Engine,
    spool: Spool,
    receivers: ReceiverCount,
    inference: InferenceHealth = _local_inference,
) -> tuple[bool, dict[str, Any]]:
    """Whether the node can take and keep studies now, and each check's reading."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["index"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - the reason is the answer
        checks["index"] = {"ok": False, "error": str(exc).splitlines()[0][:300]}
    alive, configured = receivers()
    checks["receivers"] = {"ok": alive == configured, "alive": alive, "configured": configured}
    free = spool.free_mb()
    minimum = config.storage.min_free_disk_mb
    checks["spool"] = {"ok": free >= minimum, "free_mb": round(free), "min_free_disk_mb": minimum}
    checks["inference"] = inference()
    ok = all(check["ok"] for check in checks.values())
    return ok, {"status": "ok" if ok else "failing", "checks": checks}
