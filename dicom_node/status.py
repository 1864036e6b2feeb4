"""``dicom-node status``: what the node holds and what it is doing, read from the index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from dicom_node.complete.completion import completion_counts
from dicom_node.config import Config
from dicom_node.db import make_engine, session_factory
from dicom_node.dispatch import outbox
from dicom_node.events import latest
from dicom_node.jobs import queue
from dicom_node.receive import index
from dicom_node.spool import Spool
from pipelines.card import card_state


def stage_counts(session: Session) -> dict[str, dict[str, int]]:
    """What each stage holds now: received objects, completions by signal, jobs and deliveries
    per state."""
    return {
        "received": index.counts(session),
        "completed": completion_counts(session),
        "jobs": queue.counts_by_state(session),
        "deliveries": outbox.counts_by_state(session),
    }


def collect(config: Config, *, events: int = 15, engine: Engine | None = None) -> dict[str, Any]:
    """Counts per stage, dead letters and the latest events.

    ``engine``: the running node's (the monitoring endpoint passes it); without
    one, an engine is made for this call and disposed of after it.
    """
    own = engine is None
    engine = engine or make_engine(config.storage.database_url)
    sessions = session_factory(engine)
    report: dict[str, Any] = {
        "node": {"ae_title": config.node.ae_title, "port": config.node.port},
        "spool": {
            "path": str(config.storage.spool),
            "free_mb": round(Spool(config.storage.spool, fsync=False).free_mb()),
            "min_free_disk_mb": config.storage.min_free_disk_mb,
            "retention": config.storage.retention.model_dump(),
        },
    }
    try:
        with sessions() as session:
            report.update(stage_counts(session))
            pending = queue.pending_by_pipeline(session)
            report["models"] = {
                name: _model(spec.card, pending.get(name, 0))
                for name, spec in config.pipelines.items()
            }
            report["dead_letters"] = [
                {
                    "id": d.id,
                    "job": d.job_id,
                    "destination": d.destination,
                    "attempts": d.attempts,
                    "error": d.last_error,
                }
                for d in outbox.dead_letters(session)
            ]
            report["events"] = [
                {
                    "at": e.at.isoformat(),
                    "stage": e.stage,
                    "kind": e.kind,
                    "subject": e.subject,
                    "detail": e.detail,
                    "by": e.actor,
                }
                for e in latest(session, limit=events)
            ]
    except Exception as exc:  # noqa: BLE001 - report an unreachable or empty index instead of a trace
        report["error"] = f"index not readable: {str(exc).splitlines()[0]}"
    finally:
        if own:
            engine.dispose()
    return report


def _model(card: Path, pending: int) -> dict[str, Any]:
    state, detail = card_state(card)
    return {"state": state, "detail": detail, "jobs_pending": pending}


def format_status(report: dict[str, Any]) -> str:
    lines = [f"node {report['node']['ae_title']} port {report['node']['port']}"]
    spool = report["spool"]
    lines.append(
        f"spool {spool['path']}: {spool['free_mb']} MiB free (refuses below {spool['min_free_disk_mb']}); "
        f"finished studies kept {_days(spool['retention']['keep_days'])}, emergency cleanup "
        f"{'on' if spool['retention']['emergency'] else 'off'}"
    )
    if "error" in report:
        lines.append(report["error"])
        return "\n".join(lines)
    r = report["received"]
    lines.append(
        f"received: {r['studies']} studies, {r['series']} series, {r['instances']} instances"
    )
    lines.append(
        "study completions: "
        + (", ".join(f"{k} {v}" for k, v in sorted(report["completed"].items())) or "none")
    )
    lines.append(
        "jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(report["jobs"].items())) or "none")
    )
    lines.append(
        "deliveries: "
        + (", ".join(f"{k} {v}" for k, v in sorted(report["deliveries"].items())) or "none")
    )
    for name, model in report["models"].items():
        waiting = f", {model['jobs_pending']} job(s) pending" if model["jobs_pending"] else ""
        why = f": {model['detail']}" if model["state"] != "ready" else ""
        lines.append(f"model {name}: {model['state']}{why}{waiting}")
    for d in report["dead_letters"]:
        lines.append(
            f"  dead letter {d['id']}: job {d['job']} to {d['destination']} after {d['attempts']} attempts: {d['error']}"
        )
    if report["events"]:
        lines.append("latest events:")
        for e in report["events"]:
            detail = (e["detail"] or "").splitlines()  # a configuration edit's is its diff
            shown = detail[0] + (" ..." if len(detail) > 1 else "") if detail else ""
            lines.append(
                f"  {e['at']} {e['stage']}/{e['kind']} {e['subject'] or ''} {shown}".rstrip()
                + (f" (by {e['by']})" if e.get("by") else "")
            )
    return "\n".join(lines)


def _days(keep_days: float | None) -> str:
    return "until the disk runs low" if keep_days is None else f"{keep_days:g} days"
