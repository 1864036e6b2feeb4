"""The dispatcher: works through due deliveries, one association per delivery."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Config
from dicom_node.dispatch import outbox
from dicom_node.dispatch.destinations import SendError, sender_for
from dicom_node.jobs import queue
from dicom_node.spool import Spool

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self, config: Callable[[], Config], sessions: sessionmaker[Session], spool: Spool
    ) -> None:
        self._config = config
        self.sessions = sessions
        self.spool = spool

    def process_due(self) -> int:
        """Attempt every delivery that is due now; return how many were attempted."""
        attempted = 0
        while (delivery := outbox.claim_due(self.sessions)) is not None:
            attempted += 1
            config = self._config()
            destination = config.destinations.get(delivery.destination)
            try:
                if destination is None:
                    raise SendError(
                        f"destination {delivery.destination!r} is no longer in config.yaml"
                    )
                with self.sessions() as session:
                    paths = queue.result_paths(session, delivery.job_id)
                files = [self.spool.absolute(p) for p in paths]
                if not files:
                    raise SendError(f"job {delivery.job_id} has no results to send")
                sender = sender_for(destination.kind)
                sender(
                    destination,
                    files,
                    calling_ae=config.node.ae_title,
                    timeout=config.dispatch.timeout_seconds,
                )
            except (SendError, OSError) as exc:
                outbox.failed(self.sessions, delivery, str(exc), config.dispatch.retry)
                continue
            except Exception as exc:  # noqa: BLE001 - an unexpected error is a failed attempt too
                log.exception("delivery %d failed unexpectedly", delivery.id)
                outbox.failed(
                    self.sessions, delivery, f"{type(exc).__name__}: {exc}", config.dispatch.retry
                )
                continue
            outbox.succeeded(self.sessions, delivery.id)
            log.info(
                "delivery %d: job %d results stored at %s (attempt %d)",
                delivery.id,
                delivery.job_id,
                delivery.destination,
                delivery.attempts,
            )
        return attempted
