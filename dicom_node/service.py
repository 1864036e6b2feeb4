"""``dicom-node serve``: wire the stages together and keep them running.

Process layout::

    main process (worker)                      receiver processes (node.receiver_processes)
    ├─ completion poll   (APScheduler)         └─ Storage SCP on the main's listening socket:
    ├─ job runner        (jobs.in_flight threads) C-ECHO, C-STORE → spool + receipt; indexer
    │    └─ engine: models in this process, or replicas on a Ray cluster
    ├─ dispatcher        (APScheduler)
    ├─ retention         (APScheduler)
    ├─ console           (HTTP: /health, /metrics open; the web console signed in)
    └─ config watcher, receiver supervisor

Receiving runs in its own processes so that inference (which holds the GIL
in places) never slows the SCP down, and several receivers scale with
parallel associations. Receivers die with the main process (``PR_SET_PDEATHSIG``)
so a ``kill -9`` leaves no orphan holding the port. Everything a stage needs
to resume lives in the database and the spool: on start the node migrates
the schema, removes partial spool writes, indexes what a crash left with a
receipt but no index row, and queues again the jobs and deliveries a crash
cut off.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.complete.completion import CompletionStage
from dicom_node.config import Config, ConfigError, LiveConfig
from dicom_node.console.server import ConsoleServer
from dicom_node.db import make_engine, migrate, session_factory, transaction
from dicom_node.dispatch import outbox
from dicom_node.dispatch.dispatcher import Dispatcher
from dicom_node.events import record
from dicom_node.faults import MAIN_PID_ENV
from dicom_node.jobs import queue
from dicom_node.jobs.engine import Engine, LocalEngine
from dicom_node.jobs.runner import JobRunner
from dicom_node.monitor import NodeView
from dicom_node.receive.indexer import recover
from dicom_node.receive.process import CONFIG_CHECK_SECONDS, receiver_main
from dicom_node.receive.scp import listening_socket
from dicom_node.retention import Retention
from dicom_node.route.router import Router
from dicom_node.spool import Spool
from dicom_node.wakeup import StageLoop

log = logging.getLogger(__name__)


def make_engine_for(config: LiveConfig) -> Engine:
    """The inference engine ``engine.kind`` names (read at start)."""
    settings = config().engine
    if settings.kind == "ray":
        from dicom_node.jobs.driver import RayDriver

        return RayDriver(settings, config)
    return LocalEngine(config)


class Node:
    """The running node (main process)."""

    def __init__(self, config_path: str | Path) -> None:
        self.live = LiveConfig(config_path)
        config = self.live()
        self.engine = make_engine(config.storage.database_url)
        self.sessions = session_factory(self.engine)
        self.spool = Spool(
            config.storage.spool,
            fsync=config.storage.fsync,
            fsync_folders=config.storage.fsync_folders,
        )
        router = Router(self.spool)
        self.completion = CompletionStage(self.live, self.sessions, router, hold=router.hold)
        self.runner = JobRunner(self.live, self.sessions, self.spool, make_engine_for(self.live))
        self.dispatcher = Dispatcher(self.live, self.sessions, self.spool)
        # completion and dispatch run when woken (stage hand-overs), and on their poll timers
        self.completing = StageLoop(
            "completion", self._complete, lambda: self.live().completion.poll_seconds
        )
        self.dispatching = StageLoop(
            "dispatch", self.dispatcher.process_due, lambda: self.live().dispatch.poll_seconds
        )
        self.runner.on_done = self.dispatching.wake
        self.retention = Retention(self.live, self.sessions, self.spool)
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self.receivers: list[multiprocessing.process.BaseProcess] = []
        self._listener: socket.socket | None = None
        self.monitoring = ConsoleServer(
            NodeView(
                self.live,
                self.engine,
                self.spool,
                self._receiver_count,
                self.runner.inference_health,
            ),
            config_path=self.live.path,
            reload=self._reload_all,
            wake_jobs=self.runner.wake,
            wake_dispatch=self.dispatching.wake,
            try_model=lambda name, spec, inputs: self.runner.engine.infer(0, name, spec, inputs),
        )
        self._stop = threading.Event()
        self.live.listeners.append(self._on_reload)

    @property
    def config(self) -> Config:
        return self.live()

    def _on_reload(self, old: Config, new: Config | None, error: str | None) -> None:
        with transaction(self.sessions) as session:
            if new is None:
                record(session, "config", "reload-refused", str(self.live.path), error)
            else:
                record(
                    session, "config", "reloaded", str(self.live.path), f"{len(new.routes)} routes"
                )

    def prepare(self) -> None:
        """Migrate the index and recover what a crash interrupted."""
        migrate(self.engine)
        removed = self.spool.clean_tmp()
        if removed:
            log.warning("removed %d partial spool writes left by a stop", removed)
        for folder in sorted(self.spool.unindexed.glob("*")):  # every receiver's, past and present
            recover(self.spool, self.engine, folder)
        queue.recover(self.sessions)
        outbox.recover(self.sessions)
        self._check_pipelines()

    def _check_pipelines(self) -> None:
        """Load every configured pipeline once so a bad card is reported at start, not at the first study.

        Pipelines whose card is still being built are left for later.
        """
        waiting = self.runner.models_waiting()
        ready = {n: spec for n, spec in self.config.pipelines.items() if n not in waiting}
        for name, error in self.runner.engine.preload(ready).items():
            log.error("pipeline %s cannot be loaded: %s (its jobs will fail)", name, error)

    def start_receivers(self) -> None:
        os.environ[MAIN_PID_ENV] = str(os.getpid())  # for crash points in the receivers
        node = self.config.node
        # one listening socket for every receiver, opened here: associations spread by load
        # (SharedSocketServer), and a receiver restarted after a crash listens at once
        try:
            self._listener = listening_socket(node.host, node.port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for DICOM on {node.host}:{node.port}: {exc.strerror}; is another "
                "node (or PACS) on that port? Set node.port to a free one"
            ) from exc
        ctx = multiprocessing.get_context("spawn")
        for number in range(self.config.node.receiver_processes):
            self.receivers.append(self._spawn(ctx, number))

    def _spawn(
        self, ctx: multiprocessing.context.SpawnContext, number: int
    ) -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(
            target=receiver_main,
            args=(str(self.live.path), number, os.getpid(), self._listener),
            name=f"receiver-{number}",
            daemon=True,
        )
        proc.start()
        return proc

    def _receiver_count(self) -> tuple[int, int]:
        """(alive, configured) receiver processes; the supervisor restarts a dead one within a second."""
        receivers = list(self.receivers)
        return sum(proc.is_alive() for proc in receivers), self.config.node.receiver_processes

    def start_monitoring(self) -> None:
        monitoring = self.config.monitoring
        if monitoring.port is None:
            return
        try:
            self.monitoring.start(monitoring.host, monitoring.port)
        except OSError as exc:
            raise ConfigError(
                f"monitoring cannot listen on {monitoring.host}:{monitoring.port}: {exc.strerror}; "
                "set monitoring.port to a free port, or remove it to turn monitoring off"
            ) from exc

    def start_scheduler(self) -> None:
        self.completing.start()
        self.dispatching.start()
        self.scheduler.add_job(
            self.live.check, "interval", seconds=CONFIG_CHECK_SECONDS, id="config"
        )
        self.scheduler.add_job(
            self.retention.run,
            "interval",
            seconds=self.config.storage.retention.interval_seconds,
            id="retention",
        )
        self.scheduler.start()

    def _complete(self) -> None:
        if self.completion.poll():
            self.runner.wake()  # the new jobs start now, not at the runner's next look

    def _signalled(self) -> None:
        """A receiver recorded a completion signal (SIGUSR1): look now (a COMPLETED MPPS) and
        once a released association has settled."""
        self.completing.wake()
        self.completing.wake(after=self.config.completion.release_settle_seconds + 0.02)

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT."""
        self.prepare()
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_all())
        signal.signal(signal.SIGUSR1, lambda *_: self._signalled())
        self.start_monitoring()
        self.start_receivers()
        self.runner.start()
        self.start_scheduler()
        log.info(
            "dicom-node serving as %s on %s:%d with %d receiver processes",
            self.config.node.ae_title,
            self.config.node.host,
            self.config.node.port,
            len(self.receivers),
        )
        ctx = multiprocessing.get_context("spawn")
        while not self._stop.wait(1.0):
            for i, proc in enumerate(self.receivers):
                if not proc.is_alive():
                    log.error("receiver-%d exited with %s; starting it again", i, proc.exitcode)
                    self.receivers[i] = self._spawn(ctx, i)
        self.shutdown()

    def _reload_all(self) -> None:
        self.live.reload()
        for proc in self.receivers:
            if proc.pid:
                os.kill(proc.pid, signal.SIGHUP)

    def shutdown(self) -> None:
        log.info("stopping")
        self.monitoring.stop()
        for proc in self.receivers:
            proc.terminate()
        self.scheduler.shutdown(wait=True)
        self.completing.stop()
        self.runner.stop()
        self.dispatching.stop()
        deadline = time.monotonic() + 10
        for proc in self.receivers:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        if self._listener is not None:
            self._listener.close()
        self.engine.dispose()
