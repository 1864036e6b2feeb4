"""The Ray driver in a process of its own: losing the cluster's head never takes the node down.

Ray ends a driver process that has lost the head's GCS for
``gcs_rpc_server_reconnect_timeout_s`` (60 s by default): "The program will
terminate". Were the node itself the driver, a head lost for a minute would
stop the node's receivers, completion and dispatch with it. So the node
runs the :class:`~dicom_node.jobs.ray_engine.RayEngine` in a child process
and talks to it through a pipe::

    node process                              ray-driver process (a Ray driver)
    ├─ runner threads ── infer(job, paths) ──► RayEngine: reads the spool files,
    │                 ◄── findings, heatmaps ──   streams them to the replicas
    └─ /health, claims ─ unavailable() ───────►  (answers with a bound)

Only spool paths go in (the child reads the files on the same machine) and
what the node needs to build results comes back. When the child exits (the
head lost, or anything else), its calls in flight fail as
:class:`~dicom_node.jobs.engine.EngineFailure` (the runner queues those jobs
again), the pipelines wait as pending with the reason on ``/health``, and a
new child starts and joins the cluster as soon as its head answers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from dicom_node.config import LiveConfig, PipelineConfig, RayEngineSettings
from dicom_node.jobs.engine import EngineFailure, Inference
from dicom_node.logs import setup_logging
from pipelines.base import PipelineInputError, SeriesInput

log = logging.getLogger(__name__)

#: seconds between two starts of the driver process
RESTART_SECONDS = 5.0
#: a driver that has answered nothing for this long while asked is stopped and started again
STUCK_SECONDS = 180.0
#: what the node may ask of the driver
CALLS = frozenset({"infer", "unavailable", "preload", "health"})
#: how often the driver looks for an edited config file
CONFIG_CHECK_SECONDS = 2.0


class _Child:
    """One driver process, the pipe to it, and its calls awaiting an answer."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.calls: dict[int, Future[Any]] = {}
        self.lock = threading.Lock()
        self.exited: str | None = None
        #: set by :meth:`read` once the process is reaped; only that thread waits for it, as
        #: two threads reaping one child race (the loser's waitpid finds no child and reads
        #: "still running")
        self.gone = threading.Event()

    def send(self, call_id: int, method: str, args: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        with self.lock:
            if self.exited is not None:
                raise EngineFailure(self.exited)
            self.calls[call_id] = future
            try:
                self.conn.send((call_id, method, args))
            except OSError as exc:
                del self.calls[call_id]
                raise EngineFailure(f"the Ray driver process cannot be reached: {exc}") from exc
        return future

    def read(self, on_exit: Any) -> None:
        """Hand each answer to its call; when the pipe ends, fail every call left."""
        while True:
            try:
                call_id, ok, value = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # noqa: BLE001 - an answer the node cannot read: start afresh
                log.exception("unreadable answer from the Ray driver process; stopping it")
                self.process.kill()
                break
            with self.lock:
                future = self.calls.pop(call_id, None)
            if future is not None:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        self.process.join(5)
        if self.process.is_alive():  # its pipe ended but it lives on: it must not linger
            self.process.kill()
            self.process.join(5)
        reason = (
            f"the Ray driver process (pid {self.process.pid}) exited with code "
            f"{self.process.exitcode}: the cluster's head lost, or see the log above"
        )
        with self.lock:
            self.exited = reason
            calls, self.calls = self.calls, {}
        for future in calls.values():
            future.set_exception(EngineFailure(reason))
        self.conn.close()
        self.gone.set()
        on_exit(self, reason)


class RayDriver:
    """The Ray engine, run in a child process of the node (see the module)."""

    kind = "ray"

    def __init__(self, settings: RayEngineSettings, config: LiveConfig) -> None:
        self.settings = settings
        self._config = config
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._started_at = -RESTART_SECONDS
        self._answered_at = time.monotonic()
        self._reason = "the Ray driver process has not started yet"
        self._next_id = 0
        self._shared: dict[str, Future[Any]] = {}
        self._preloaded: dict[str, PipelineConfig] | None = None
        self._closed = False

    # -- the child process ------------------------------------------------------------------

    def _current(self) -> _Child:
        """The live driver process, started (again) when there is none."""
        with self._lock:
            child = self._child
            if child is not None and child.exited is None:
                return child
            if self._closed:
                raise EngineFailure("the engine is closed")
            if time.monotonic() - self._started_at < RESTART_SECONDS:
                raise EngineFailure(self._reason)
            self._started_at = time.monotonic()
            self._answered_at = time.monotonic()
            ctx = multiprocessing.get_context("spawn")
            ours, theirs = ctx.Pipe()
            process = ctx.Process(
                target=driver_main,
                args=(str(self._config.path), theirs, os.getpid()),
                name="ray-driver",
                daemon=True,
            )
            process.start()
            theirs.close()  # the child's end: the pipe ends when the child does
            child = self._child = _Child(process, ours)
            threading.Thread(
                target=child.read, args=(self._exited,), name="ray-driver-reader", daemon=True
            ).start()
            log.info("started the Ray driver process (pid %s)", process.pid)
        if self._preloaded is not None:  # a new driver warms what the last one had
            self._warm(child, self._preloaded, self._short_timeout)
        return child

    def _warm(
        self, child: _Child, pipelines: dict[str, PipelineConfig], timeout: float
    ) -> dict[str, str]:
        """Have the driver start every pipeline's replicas; the ones that failed, with why."""
        try:
            failed: dict[str, str] = self._call_on(child, "preload", (pipelines,), timeout)
        except EngineFailure as exc:
            log.error("Ray replicas not started yet: %s (they start with the first job)", exc)
            return {}
        return failed

    def _exited(self, child: _Child, reason: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._reason = reason
        log.error("%s; its jobs are queued again and a new driver starts", reason)

    @property
    def _short_timeout(self) -> float:
        return self.settings.connect_timeout_seconds + 5.0

    def _call_on(
        self, child: _Child, method: str, args: tuple[Any, ...], timeout: float | None
    ) -> Any:
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
        future = child.send(call_id, method, args)
        try:
            value = future.result(timeout)
        except FutureTimeout:
            with child.lock:
                child.calls.pop(call_id, None)
            self._stuck(child)
            raise EngineFailure(
                f"the Ray driver process did not answer {method} within {timeout} s"
            ) from None
        self._answered_at = time.monotonic()
        return value

    def _call(self, method: str, *args: Any, timeout: float | None) -> Any:
        return self._call_on(self._current(), method, args, timeout)

    def _call_shared(self, method: str, *args: Any) -> Any:
        """Ask once for all callers at a time (``/health`` and claims ask the same)."""
        child = self._current()
        key = f"{method}{sorted(args[0]) if args else ''}"
        with self._lock:
            future = self._shared.get(key)
            if future is None or future.done():
                future = Future()
                self._shared[key] = future
                mine = True
            else:
                mine = False
        if mine:
            try:
                future.set_result(self._call_on(child, method, args, self._short_timeout))
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                future.set_exception(exc)
        try:
            return future.result(self._short_timeout + 1.0)
        except FutureTimeout:
            raise EngineFailure(f"the Ray driver process did not answer {method}") from None

    def _stuck(self, child: _Child) -> None:
        """Stop a driver that has answered nothing for :data:`STUCK_SECONDS`."""
        silent = time.monotonic() - self._answered_at
        if silent > STUCK_SECONDS and child.process.is_alive():
            log.error("the Ray driver process answered nothing for %.0f s; stopping it", silent)
            child.process.kill()

    # -- the Engine interface ---------------------------------------------------------------

    def infer(
        self, job_id: int, name: str, spec: PipelineConfig, inputs: Sequence[SeriesInput]
    ) -> Inference:
        # no bound here: the driver bounds each of its Ray calls by call_timeout_seconds, and
        # a driver that stops answering is stopped (_stuck), which fails this call
        result: Inference = self._call("infer", job_id, name, spec, inputs, timeout=None)
        return result

    def unavailable(self, pipelines: Mapping[str, PipelineConfig]) -> dict[str, str]:
        try:
            answer: dict[str, str] = self._call_shared("unavailable", dict(pipelines))
        except EngineFailure as exc:
            return dict.fromkeys(pipelines, str(exc))
        return answer

    def preload(self, pipelines: Mapping[str, PipelineConfig]) -> dict[str, str]:
        try:
            failed = self._warm(self._current(), dict(pipelines), 30.0)
        except EngineFailure as exc:  # no driver now (restarting): it warms them when it starts
            log.error("Ray replicas not started yet: %s (they start with the first job)", exc)
            failed = {}
        self._preloaded = dict(pipelines)
        return failed

    def health(self) -> dict[str, Any]:
        base = {"kind": self.kind, "address": self.settings.address}
        try:
            health: dict[str, Any] = self._call_shared("health")
        except EngineFailure as exc:
            return {**base, "ok": False, "driver": str(exc)}
        child = self._child
        return {**health, "driver_pid": child.process.pid if child else None}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child = self._child
        if child is None or child.exited is not None:
            return
        try:
            child.send(0, "close", ()).result(15.0)
        except (EngineFailure, FutureTimeout):
            pass
        # the reader thread reaps the process when its pipe ends: closed means gone
        if not child.gone.wait(5):
            log.warning("the Ray driver did not stop when asked; killing it")
            child.process.kill()
            child.gone.wait(10)


# -- the child's side ---------------------------------------------------------------------


def driver_main(config_path: str, conn: Connection, parent: int) -> None:
    """Entry point of the driver process: answer the node's calls until it says close."""
    # Not PR_SET_PDEATHSIG: Linux sends it when the *thread* that started this process ends,
    # and a new driver may be started from a short-lived thread (an HTTP request's). The
    # node's death ends the pipe (EOF below), and a watch on the parent backs that up.
    if os.getppid() != parent:
        os._exit(1)
    # the node decides when this process stops (close, or its own death)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    live = LiveConfig(config_path)
    setup_logging(live().logging.level, process="ray-driver")
    from dicom_node.jobs.ray_engine import RayEngine

    settings = live().engine
    assert isinstance(settings, RayEngineSettings)
    engine = RayEngine(settings, live)
    send_lock = threading.Lock()

    def answer(call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            reply = (call_id, True, getattr(engine, method)(*args))
        except Exception as exc:  # noqa: BLE001 - the node re-raises it
            reply = (call_id, False, _portable(exc))
        with send_lock:
            try:
                conn.send(reply)
            except (OSError, EOFError):
                return  # the node is gone
            except Exception as exc:  # noqa: BLE001 - an answer that cannot be pickled
                conn.send((call_id, False, EngineFailure(f"unsendable answer: {exc}")))

    def watch() -> None:
        while True:
            time.sleep(CONFIG_CHECK_SECONDS)
            if os.getppid() != parent:
                os._exit(1)
            live.check()

    threading.Thread(target=watch, name="watch", daemon=True).start()
    while True:
        try:
            call_id, method, args = conn.recv()
        except (EOFError, OSError):
            break
        if method == "close":
            engine.close()
            with send_lock:
                conn.send((call_id, True, None))
            break
        if method not in CALLS:
            with send_lock:
                conn.send((call_id, False, EngineFailure(f"unknown call {method!r}")))
            continue
        threading.Thread(
            target=answer, args=(call_id, method, args), name=f"call-{method}", daemon=True
        ).start()
    os._exit(0)  # Ray's own threads must not keep a closed driver alive


def _portable(exc: Exception) -> Exception:
    """The error as the node can unpickle it without importing Ray or a module of the driver."""
    if isinstance(exc, EngineFailure | PipelineInputError):
        return type(exc)(str(exc))
    if type(exc).__module__ == "builtins":
        return exc
    return RuntimeError(f"{type(exc).__name__}: {exc}")
