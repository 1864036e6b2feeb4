"""Study completion: decide when a study has finished arriving, then hand it on for routing.

DICOM has no "end of study" message, so completeness is a policy
(``completion:`` in config.yaml):

* a **series** is quiet when nothing arrived for it for ``series_quiet_seconds``;
* a **study** is complete when every series with new instances is quiet and
  nothing arrived for the study for ``study_quiet_seconds``;
* it is **forced** complete ``force_after_seconds`` after its first new
  instance arrived, even if instances still trickle in;
* it is complete on **release** when every new instance came in an
  association that a ``complete_on_release`` peer (``node.peers``) released at
  least ``release_settle_seconds`` ago, and nothing arrived since: a PACS
  forwarding a study sends it in one association. The receivers wake this
  stage when they record a release, so such a study is handed on within the
  settle time, not after the quiet timers.

* it is complete by **MPPS** as soon as a Modality Performed Procedure Step
  of the study is COMPLETED (none still IN PROGRESS), every new instance is
  listed by such a step and every listed instance has arrived; when some
  never do, ``mpps_timeout_seconds`` after the step an ``mpps-incomplete``
  event names them and the quiet timers take over.

A route with ``require: {wait: true}`` holds a study that looks complete
(by any signal but the force deadline) until the series it requires have
arrived: the ``completion-held`` event says which.

``Completion.reason`` (and the ``study-complete`` event) says which signal
completed a study: ``mpps``, ``released``, ``quiet`` or ``forced``.

Each hand-over is a :class:`~dicom_node.complete.tables.Completion` row with a
generation number and the highest instance id it covered. Instances that
arrive after a study completed are *new* instances of a new generation: when
that generation completes, the series that received them are routed again and
produce new jobs (with new result UIDs). A resent copy of an instance already
covered (same SOP Instance UID) is not new and starts nothing.

The completion row and the jobs it creates are written in one transaction,
so a crash either leaves the study pending (and it completes again after a
restart) or fully handed on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.complete.tables import Completion
from dicom_node.config import CompletionSection, Config
from dicom_node.db import transaction, utcnow
from dicom_node.events import record
from dicom_node.faults import crash_point
from dicom_node.receive import index
from dicom_node.receive.tables import Instance

log = logging.getLogger(__name__)

#: called inside the completion's transaction to route the study and create jobs
OnComplete = Callable[[Session, Completion, Config], None]
#: why a study that looks complete should wait (its routes require series not yet here), or None
Hold = Callable[[Session, str, Sequence[str], Config], str | None]


class CompletionStage:
    """Polls the index for studies whose new instances have gone quiet.

    Parameters
    ----------
    config : callable returning Config
        The live configuration.
    sessions : sessionmaker
        The index.
    on_complete : callable
        Routes the completed study and creates its jobs (same transaction).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        sessions: sessionmaker[Session],
        on_complete: OnComplete,
        hold: Hold | None = None,
    ) -> None:
        self._config = config
        self.sessions = sessions
        self.on_complete = on_complete
        self.hold = hold
        #: studies whose completion waits for required series (said once each)
        self._held: set[str] = set()
        #: every instance with an id at or below this is covered by some completion
        self._floor = 0
        #: study -> the MPPS steps whose missing instances were reported (until it completes)
        self._reported: dict[str, tuple[str, ...]] = {}

    def poll(self, now: datetime | None = None) -> list[Completion]:
        """Complete every study that is due; return the new completion rows."""
        now = now or utcnow()
        config = self._config()
        done: list[Completion] = []
        with transaction(self.sessions) as session:
            pending = self._pending(session)
            if not pending:
                self._advance_floor(session, now)
                return []
        for study_uid, (mark, generation, first_at, last_id) in pending.items():
            with transaction(self.sessions) as session:
                completion = self._decide(
                    session, study_uid, mark, generation, first_at, last_id, now, config
                )
                if completion is None:
                    continue
                session.add(completion)
                session.flush()
                record(
                    session,
                    "complete",
                    "study-complete",
                    study_uid,
                    f"generation {completion.generation}, {len(completion.series_uids)} series, "
                    f"{completion.reason}",
                )
                self.on_complete(session, completion, config)
                crash_point("completion-before-commit")
            log.info(
                "study %s complete (generation %d, %d series, %s)",
                study_uid,
                completion.generation,
                len(completion.series_uids),
                completion.reason,
            )
            done.append(completion)
        return done

    def _pending(self, session: Session) -> dict[str, tuple[int, int, datetime, int]]:
        """Studies with instances above their watermark: uid → (mark, generation, first, last id)."""
        marks = (
            select(
                Completion.study_instance_uid.label("study"),
                func.max(Completion.through_instance_id).label("mark"),
                func.max(Completion.generation).label("generation"),
            )
            .group_by(Completion.study_instance_uid)
            .subquery()
        )
        mark = func.coalesce(marks.c.mark, 0)
        rows = session.execute(
            select(
                Instance.study_instance_uid,
                func.max(mark),
                func.max(func.coalesce(marks.c.generation, 0)),
                func.min(Instance.received_at),
                func.max(Instance.id),
            )
            .outerjoin(marks, marks.c.study == Instance.study_instance_uid)
            .where(Instance.id > self._floor, Instance.id > mark)
            .group_by(Instance.study_instance_uid)
        ).all()
        return {study: (m, g, first, last) for study, m, g, first, last in rows}

    def _advance_floor(self, session: Session, now: datetime) -> None:
        # Only instances older than a margin: on PostgreSQL a lower id can commit after a higher one.
        floor = session.scalar(
            select(func.max(Instance.id)).where(Instance.received_at < now - timedelta(seconds=10))
        )
        if floor:
            self._floor = max(self._floor, floor)

    def _decide(
        self,
        session: Session,
        study_uid: str,
        mark: int,
        generation: int,
        first_at: datetime,
        last_id: int,
        now: datetime,
        config: Config,
    ) -> Completion | None:
        policy = config.completion
        new_series = (
            select(Instance.series_instance_uid)
            .where(
                Instance.study_instance_uid == study_uid,
                Instance.id > mark,
                Instance.id <= last_id,
            )
            .distinct()
        )
        # last activity counts every instance of the series, old ones resent too
        series = session.execute(
            select(Instance.series_instance_uid, func.max(Instance.received_at))
            .where(Instance.series_instance_uid.in_(new_series))
            .group_by(Instance.series_instance_uid)
        ).all()
        study_last = session.scalar(
            select(func.max(Instance.received_at)).where(Instance.study_instance_uid == study_uid)
        )
        if not series or study_last is None:
            return None
        series_quiet = now - timedelta(seconds=policy.series_quiet_seconds)
        study_quiet = now - timedelta(seconds=policy.study_quiet_seconds)
        settled = now - timedelta(seconds=policy.release_settle_seconds)
        past_deadline = first_at <= now - timedelta(seconds=policy.force_after_seconds)
        steps = index.steps_verdict(session, study_uid, after_id=mark, through_id=last_id)
        if steps.complete:
            reason = "mpps"
        elif study_last <= settled and index.all_released(
            session, study_uid, after_id=mark, through_id=last_id, released_before=settled
        ):
            reason = "released"
        elif study_last <= study_quiet and all(at <= series_quiet for _, at in series):
            reason = "quiet"
        elif past_deadline:
            reason = "forced"
        else:
            self._report_missing(session, study_uid, steps, now, policy)
            return None
        if steps.missing and reason != "mpps":
            self._report_missing(session, study_uid, steps, now, policy, anyway=True)
        if reason != "forced" and self.hold is not None:
            why = self.hold(session, study_uid, [uid for uid, _ in series], config)
            if why is not None and past_deadline:
                reason = "forced"  # the deadline ends the wait for required series
            elif why is not None:
                if study_uid not in self._held:
                    self._held.add(study_uid)
                    log.info("study %s looks complete (%s) but %s", study_uid, reason, why)
                    record(session, "complete", "completion-held", study_uid, why[:500])
                return None
        self._held.discard(study_uid)
        self._reported.pop(study_uid, None)
        return Completion(
            study_instance_uid=study_uid,
            generation=generation + 1,
            through_instance_id=last_id,
            series_uids=sorted(uid for uid, _ in series),
            reason=reason,
            completed_at=now,
        )

    def _report_missing(
        self,
        session: Session,
        study_uid: str,
        steps: index.StepsVerdict,
        now: datetime,
        policy: CompletionSection,
        *,
        anyway: bool = False,
    ) -> None:
        """Say once which instances a COMPLETED MPPS listed that never arrived.

        After ``mpps_timeout_seconds`` (or when the timers complete the study
        first); the study is then left to the quiet timers.
        """
        if not steps.missing or steps.completed_at is None:
            return
        late = steps.completed_at <= now - timedelta(seconds=policy.mpps_timeout_seconds)
        if self._reported.get(study_uid) == tuple(steps.steps) or not (late or anyway):
            return
        self._reported[study_uid] = tuple(steps.steps)
        shown = ", ".join(steps.missing[:5]) + (" …" if len(steps.missing) > 5 else "")
        detail = (
            f"MPPS {', '.join(steps.steps)} completed but {len(steps.missing)} listed "
            f"instance(s) did not arrive: {shown}; the quiet timers complete the study"
        )
        log.warning("study %s: %s", study_uid, detail)
        record(session, "complete", "mpps-incomplete", study_uid, detail)


def completion_marks(session: Session) -> dict[str, int]:
    """Each completed study's watermark: the highest instance id its completions covered."""
    rows = session.execute(
        select(Completion.study_instance_uid, func.max(Completion.through_instance_id)).group_by(
            Completion.study_instance_uid
        )
    ).all()
    return {uid: int(mark) for uid, mark in rows if mark is not None}


def completion_counts(session: Session) -> dict[str, int]:
    """How many study completions each signal made (``mpps``, ``released``, ``quiet``,
    ``forced``)."""
    rows = session.execute(
        select(Completion.reason, func.count()).group_by(Completion.reason)
    ).all()
    return {reason: int(count) for reason, count in rows}


def completions_of(session: Session, study_uid: str) -> list[Completion]:
    """A study's completions (its generations), oldest first."""
    return list(
        session.scalars(
            select(Completion)
            .where(Completion.study_instance_uid == study_uid)
            .order_by(Completion.generation)
        )
    )
