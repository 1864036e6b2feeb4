"""The Ray engine: models warm on the worker nodes of a Ray cluster, jobs sent to them.

What runs where (README "Running on a cluster")::

    ray-driver process (this module)             Ray worker node(s)
    ├─ infer(job, spool paths) from the node     └─ ModelReplica actors, one per replica,
    ├─ reads the series from the spool              placed by the pipeline's ray: resources,
    │    └─ chunk by chunk, one call each ──────►   each holding one loaded model
    └─ hands the node what comes back ◄────────── findings + heatmap arrays

The node runs this engine in a child process of its own
(:mod:`dicom_node.jobs.driver`), so that Ray ending its driver after losing
the head does not end the node; ``check-config`` and the benchmarks use it
directly.

The SQL index stays the truth: Ray holds only work that can be done again.
A call that fails because of the cluster (the actor's process killed, its
node lost, a timeout, the GPU out of memory) raises
:class:`~dicom_node.jobs.engine.EngineFailure`, and the runner queues the
job again. Replicas are ordinary (not detached) actors owned by the node:
they restart after their process dies (``max_restarts=-1``) and go away
with the node. Each version of a card (its weights' sha256) gets its own
replicas; when a new version appears, the new jobs go to it and the old
replicas are stopped once idle. Between ``replicas`` and ``max_replicas``,
copies start while jobs run and stop when idle (:func:`wanted_replicas`).

Ray's token authentication is always on (``RAY_AUTH_MODE=token``): the token
comes from ``engine.token_file`` or the environment.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.config import Config, PipelineConfig, RayEngineSettings, RayResources
from dicom_node.jobs.engine import CardCache, EngineFailure, Inference, gpu_out_of_memory
from dicom_node.jobs.replica import IncompleteTransfer, Layout, ModelReplica, file_number
from pipelines.base import PipelineInputError, SeriesInput
from pipelines.card import ModelCard

log = logging.getLogger(__name__)

#: seconds the cluster's node list is reused before it is asked again
NODES_TTL = 2.0
#: seconds between two attempts to join a cluster that could not be joined
RECONNECT_SECONDS = 5.0
MIB = 1 << 20


def token_environment(settings: RayEngineSettings) -> dict[str, str]:
    """The environment that turns Ray's token authentication on, with the configured token.

    Raises
    ------
    EngineFailure
        If no token is configured (token authentication is not optional).
    """
    env = {"RAY_AUTH_MODE": "token"}
    if settings.token_file is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(settings.token_file)
    elif not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        raise EngineFailure(
            "engine.token_file: Ray's token authentication needs a token; set engine.token_file "
            "to a file holding the cluster's token (ray get-auth-token --generate), or "
            "RAY_AUTH_TOKEN in the node's environment"
        )
    return env


def hostable(demand: Mapping[str, float], nodes: Sequence[Mapping[str, Any]]) -> bool:
    """Whether some live node has (in total) every resource of ``demand``."""
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources") or {}
        if all(resources.get(name, 0.0) >= amount for name, amount in demand.items()):
            return True
    return False


def wanted_replicas(running: int, bounds: RayResources) -> int:
    """How many copies ``running`` jobs of a pipeline call for.

    One copy per ``target_jobs`` running jobs (as Ray Serve's
    ``target_ongoing_requests``), never fewer than ``replicas`` (kept warm)
    nor more than ``max_replicas``.
    """
    return max(bounds.replicas, min(bounds.most, math.ceil(running / bounds.target_jobs)))


@dataclass
class _Replica:
    handle: Any
    number: int
    busy: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    #: when a call to it failed for the cluster's reasons; None while it answers
    down_since: float | None = None
    #: started above ``replicas`` while busy: it takes jobs once loaded, and stops when idle
    extra: bool = False
    #: an extra replica that never answered (no node could place it, or its model failed)
    load_failed: bool = False
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class _Group:
    """The replicas of one version of one pipeline's card."""

    name: str
    sha256: str
    card: ModelCard
    replicas: list[_Replica]
    #: the card and weights in the object store: kept while the replicas may restart
    payload: Any = None

    @property
    def busy(self) -> int:
        return sum(r.busy for r in self.replicas)


class RayEngine:
    """Runs jobs on replicas in a Ray cluster (see the module)."""

    kind = "ray"

    def __init__(self, settings: RayEngineSettings, config: Callable[[], Config]) -> None:
        self.settings = settings
        self._config = config
        self.card = CardCache()
        self._lock = threading.RLock()
        self._groups: dict[str, _Group] = {}
        self._retired: list[_Group] = []
        self._connected = False
        self._connect_error: str | None = None
        self._last_try = 0.0
        self._nodes: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._actor_class: Any = None

    # -- the cluster ----------------------------------------------------------------------

    def connect(self) -> None:
        """Join the cluster as a driver (once); raises :class:`EngineFailure` when it cannot."""
        with self._lock:
            if self._connected:
                return
            since = time.monotonic() - self._last_try
            if self._connect_error is not None and since < RECONNECT_SECONDS:
                raise EngineFailure(self._connect_error)
            self._last_try = time.monotonic()
            # before ray is imported: it reads RAY_AUTH_MODE once, at import
            os.environ.update(token_environment(self.settings))
            host, _, port = self.settings.address.rpartition(":")
            try:  # ray.init waits forever for a head that is not there; ask the port first
                socket.create_connection(
                    (host, int(port)), timeout=self.settings.connect_timeout_seconds
                ).close()
            except OSError as exc:
                self._connect_error = (
                    f"engine.address: the Ray head at {self.settings.address} cannot be "
                    f"reached: {exc.strerror or exc}"
                )
                raise EngineFailure(self._connect_error) from exc
            import ray

            try:
                ray.init(
                    address=self.settings.address,
                    namespace=self.settings.namespace,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    include_dashboard=False,
                )
            except Exception as exc:  # noqa: BLE001 - reported as the engine's state
                self._connect_error = (
                    f"engine.address: cannot join the Ray cluster at {self.settings.address}: "
                    f"{type(exc).__name__}: {_first_line(exc)}"
                )
                raise EngineFailure(self._connect_error) from exc
            self._connected = True
            self._connect_error = None
            self._actor_class = ray.remote(ModelReplica)
            threading.Thread(target=self._watch, name="ray-watch", daemon=True).start()
            log.info(
                "joined the Ray cluster at %s (namespace %s)",
                self.settings.address,
                self.settings.namespace,
            )

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes (``ray.nodes()``), asked at most every :data:`NODES_TTL` seconds."""
        self.connect()
        import ray

        at, nodes = self._nodes
        if time.monotonic() - at > NODES_TTL:
            nodes = ray.nodes()  # type: ignore[no-untyped-call]
            self._nodes = (time.monotonic(), nodes)
        return nodes

    def unavailable(self, pipelines: Mapping[str, PipelineConfig]) -> dict[str, str]:
        try:
            nodes = self.nodes()
        except Exception as exc:  # noqa: BLE001 - every pipeline waits for the cluster
            why = str(exc) if isinstance(exc, EngineFailure) else f"cluster not answering: {exc}"
            return dict.fromkeys(pipelines, why)
        alive = sum(1 for n in nodes if n.get("Alive"))
        waiting = {
            name: f"no live Ray node has {spec.ray.demand()} ({alive} live node(s))"
            for name, spec in pipelines.items()
            if not hostable(spec.ray.demand(), nodes)
        }
        now = time.monotonic()
        with self._lock:
            for name, group in self._groups.items():
                downs = [r.down_since for r in group.replicas if r.down_since is not None]
                if name in pipelines and name not in waiting and len(downs) == len(group.replicas):
                    waiting[name] = (
                        f"its replica(s) failed {now - min(downs):.0f} s ago and are restarting"
                    )
        return waiting

    def health(self) -> dict[str, Any]:
        """Joined or not, live nodes, and where each current replica runs."""
        alive = sum(1 for n in self._nodes[1] if n.get("Alive")) if self._connected else 0
        with self._lock:
            replicas = {g.name: [r.info for r in g.replicas] for g in self._groups.values()}
        return {
            "ok": self._connected,
            "kind": self.kind,
            "address": self.settings.address,
            "nodes_alive": alive,
            "replicas": replicas,
        }

    # -- replicas -------------------------------------------------------------------------

    def _group(self, name: str, spec: PipelineConfig) -> _Group:
        """The replicas of the pipeline's current card version, started when first needed."""
        card = self.card(spec.card)
        with self._lock:
            group = self._groups.get(name)
            if group is not None and group.sha256 == card.weights.sha256 and group.replicas:
                return group
            if group is not None:
                self._retired.append(group)
                log.info("pipeline %s: new card version; old replicas stop once idle", name)
            payload = self._payload(spec, card)
            replicas = [self._start(spec, payload, n) for n in range(spec.ray.replicas)]
            log.info(
                "pipeline %s: starting %d replica(s) of %s %s (sha256 %s…) with %s",
                name,
                len(replicas),
                card.name,
                card.version,
                card.weights.sha256[:12],
                spec.ray.demand(),
            )
            group = _Group(name, card.weights.sha256, card, replicas, payload)
            self._groups[name] = group
            self._reap()
            return group

    def _payload(self, spec: PipelineConfig, card: ModelCard) -> Any:
        """The card and its weights, put once into the object store for the replicas to load."""
        self.connect()
        import ray

        weights = Path(card.weights.file)
        if weights.is_absolute() or ".." in weights.parts:
            raise RuntimeError(
                f"card {spec.card}: weights.file {card.weights.file!r} must lie in the card's "
                "folder to be sent to Ray workers"
            )
        files = [(spec.card.name, spec.card), (weights.as_posix(), card.weights_path)]
        return ray.put([(relative, Path(path).read_bytes()) for relative, path in files])

    def _start(self, spec: PipelineConfig, payload: Any, number: int) -> _Replica:
        """Start one replica actor (Ray places it on a node with its resources)."""
        jobs = self._config().jobs
        resources = spec.ray
        handle = self._actor_class.options(
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            resources=dict(resources.resources),
            max_concurrency=jobs.in_flight + 1,
            max_restarts=-1,
            max_task_retries=0,
        ).remote(payload, spec.card.name, spec.device, jobs)
        return _Replica(handle, number)

    def _scale_up(self, name: str, spec: PipelineConfig, group: _Group) -> None:
        """Start one more replica when the running jobs call for it (within ``max_replicas``).

        The new replica takes jobs once it has loaded its model; until then
        they go to the replicas that have.
        """
        with self._lock:
            wanted = wanted_replicas(group.busy, spec.ray)
            if wanted <= len(group.replicas) or self._groups.get(name) is not group:
                return
            number = max(r.number for r in group.replicas) + 1
            replica = self._start(spec, group.payload, number)
            replica.extra = True
            group.replicas.append(replica)
            log.info(
                "pipeline %s: %d job(s) running; starting replica %d (%d of at most %d)",
                name,
                group.busy,
                number,
                len(group.replicas),
                spec.ray.most,
            )

        def load() -> None:
            try:
                self._describe(name, replica)
                replica.last_used = time.monotonic()  # idle from when it can take jobs
            except Exception as exc:  # noqa: BLE001 - it stays out of the jobs' way
                log.error("pipeline %s: replica %d did not start: %s", name, number, exc)
                replica.load_failed = True  # stopped after idle_seconds, like an idle one

        threading.Thread(target=load, name="ray-scale", daemon=True).start()

    def _scale_down(self) -> None:
        """Stop replicas above ``replicas`` that ran no job for ``idle_seconds``."""

        pipelines = self._config().pipelines
        now = time.monotonic()
        with self._lock:
            for name, group in self._groups.items():
                spec = pipelines.get(name)
                idle_seconds = spec.ray.idle_seconds if spec else 0.0
                for replica in [r for r in group.replicas if r.extra and not r.busy]:
                    # one that is loading, or down and being revived, is not idle
                    settled = bool(replica.info) or replica.load_failed
                    if not settled or replica.down_since is not None:
                        continue
                    if now - replica.last_used >= idle_seconds:
                        _kill(name, replica)
                        group.replicas.remove(replica)
                        log.info(
                            "pipeline %s: stopped replica %d, idle for %.0f s (%d left)",
                            name,
                            replica.number,
                            now - replica.last_used,
                            len(group.replicas),
                        )

    def _watch(self) -> None:
        """The engine's housekeeping while joined: idle replicas stop."""
        while self._connected:
            time.sleep(1.0)
            try:
                self._scale_down()
            except Exception as exc:  # noqa: BLE001 - tried again in a second
                log.warning("replica housekeeping failed: %s", exc)

    def _reap(self) -> None:
        """Stop the replicas of retired card versions that have no job left."""

        for group in [g for g in self._retired if not g.busy]:
            for replica in group.replicas:
                _kill(group.name, replica)
            self._retired.remove(group)
            log.info(
                "pipeline %s: stopped the replicas of sha256 %s…", group.name, group.sha256[:12]
            )

    def preload(self, pipelines: Mapping[str, PipelineConfig]) -> dict[str, str]:
        """Start every pipeline's replicas in the background (the node serves meanwhile)."""

        def warm() -> None:
            for name, spec in pipelines.items():
                try:
                    group = self._group(name, spec)
                    for replica in group.replicas:
                        self._describe(name, replica)
                except Exception as exc:  # noqa: BLE001 - logged; its jobs retry or wait
                    log.error("pipeline %s: replicas not ready: %s", name, exc)

        threading.Thread(target=warm, name="ray-warm", daemon=True).start()
        return {}

    def _describe(self, name: str, replica: _Replica) -> None:
        import ray

        replica.info = ray.get(
            replica.handle.describe.remote(), timeout=self.settings.call_timeout_seconds
        )
        _log_where(name, replica, "ready")

    # -- jobs -----------------------------------------------------------------------------

    def _send(self, replica: _Replica, transfer: str, inputs: Sequence[SeriesInput]) -> Layout:
        """Send a job's files to ``replica`` in chunks of about ``chunk_mb``, one call each.

        Each chunk is in the object store only while its call runs, and the
        node holds one chunk in memory: the cost is bounded by the chunk, not
        the series.
        """
        import ray

        limit = self.settings.chunk_mb * MIB
        timeout = self.settings.call_timeout_seconds
        sent = 0
        chunk: list[bytes] = []
        size = 0
        for path in (path for s in inputs for path in s.files):
            data = path.read_bytes()
            if chunk and size + len(data) > limit:
                sent = ray.get(
                    replica.handle.receive.remote(transfer, sent, chunk), timeout=timeout
                )
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk or not sent:
            ray.get(replica.handle.receive.remote(transfer, sent, chunk), timeout=timeout)
        return [(s.series_instance_uid, len(s.files)) for s in inputs]

    def infer(
        self, job_id: int, name: str, spec: PipelineConfig, inputs: Sequence[SeriesInput]
    ) -> Inference:
        self.connect()
        import ray
        from ray import exceptions as rx

        try:
            group = self._group(name, spec)
        except rx.RayError as exc:
            raise EngineFailure(f"cannot start replicas: {_first_line(exc)}") from exc
        with self._lock:
            usable = [r for r in group.replicas if not r.extra or r.info]
            up = [r for r in usable if r.down_since is None] or usable
            replica = min(up, key=lambda r: r.busy)
            replica.busy += 1
        self._scale_up(name, spec, group)
        try:
            if not replica.info:
                self._describe(name, replica)
            call = None
            try:
                transfer = f"{job_id}.{secrets.token_hex(4)}"  # this attempt's own files
                layout = self._send(replica, transfer, inputs)
                call = replica.handle.infer.remote(transfer, layout)
                result, stats = ray.get(call, timeout=self.settings.call_timeout_seconds)
            except rx.GetTimeoutError as exc:
                if call is not None:
                    ray.cancel(call)
                raise EngineFailure(
                    f"no answer from replica {replica.number} of {name} within "
                    f"engine.call_timeout_seconds ({self.settings.call_timeout_seconds:g} s)"
                ) from exc
            except rx.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, PipelineInputError):
                    raise PipelineInputError(str(cause)) from None
                if gpu_out_of_memory(cause):
                    raise EngineFailure(f"out of GPU memory: {_first_line(cause)}") from exc
                if isinstance(cause, IncompleteTransfer):
                    raise EngineFailure(f"replica {replica.number} of {name}: {cause}") from exc
                raise RuntimeError(f"{type(cause).__name__}: {_first_line(cause)}") from None
            except rx.RayError as exc:  # the actor died, its node was lost, an object was lost
                self._down(name, group, replica)
                raise EngineFailure(
                    f"replica {replica.number} of {name} lost: {type(exc).__name__}: "
                    f"{_first_line(exc)}"
                ) from exc
        finally:
            with self._lock:
                replica.busy -= 1
                replica.last_used = time.monotonic()
                self._reap()
        files = [path for s in inputs for path in s.files]
        result.heatmaps = [_relocated(h, files) for h in result.heatmaps]
        where = (
            f"ray replica {replica.number} of {name} on {replica.info.get('host', '?')} "
            f"{replica.info.get('device', '')}".rstrip()
        )
        return Inference(result, group.card, stats, where)

    def _down(self, name: str, group: _Group, replica: _Replica) -> None:
        """A call to ``replica`` failed: its pipeline's jobs wait until it answers again.

        Ray restarts a replica whose process died (``max_restarts``); a thread
        asks it where it runs until it answers, and the jobs go on then (on
        its new process). A replica Ray gave up on is dropped with its group,
        and the next job starts new ones.
        """
        with self._lock:
            if replica.down_since is not None:
                return
            replica.down_since = time.monotonic()
        threading.Thread(
            target=self._revive, args=(name, group, replica), name="ray-revive", daemon=True
        ).start()

    def _revive(self, name: str, group: _Group, replica: _Replica) -> None:
        import ray
        from ray import exceptions as rx

        while self._connected and self._groups.get(name) is group:
            try:
                replica.info = ray.get(replica.handle.describe.remote(), timeout=10)
            except rx.GetTimeoutError:
                continue  # restarting: loading its model, or waiting for a node to host it
            except rx.ActorDiedError as exc:
                with self._lock:
                    if replica not in group.replicas:
                        return  # stopped on purpose (scaled down)
                    log.error(
                        "pipeline %s: replica %d cannot restart: %s", name, replica.number, exc
                    )
                    if self._groups.get(name) is group:
                        # new replicas for the next job; the others stop once idle
                        del self._groups[name]
                        self._retired.append(group)
                        self._reap()
                return
            except rx.RayError:
                time.sleep(1.0)  # unavailable for a moment while Ray restarts it
                continue
            replica.down_since = None
            _log_where(name, replica, "answers again")
            return

    def close(self) -> None:
        with self._lock:
            if not self._connected:
                return
            import ray

            self._groups.clear()
            self._retired.clear()
            ray.shutdown()
            self._connected = False


def _kill(name: str, replica: _Replica) -> None:
    """Stop a replica's actor; one already dead (or a cluster gone) is only logged."""
    import ray

    try:
        ray.kill(replica.handle)
    except Exception as exc:  # noqa: BLE001 - dead already, or the cluster is gone
        log.warning("pipeline %s: replica %d: %s", name, replica.number, exc)


def _log_where(name: str, replica: _Replica, what: str) -> None:
    """One log line naming where a replica runs (the tests read its pid from it)."""
    info = replica.info
    log.info(
        "pipeline %s: replica %d %s on %s pid %s, %s, batch %s",
        name,
        replica.number,
        what,
        info.get("host"),
        info.get("pid"),
        info.get("device"),
        info.get("batch_size"),
    )


def _relocated(heatmap: Any, files: Sequence[Path]) -> Any:
    import dataclasses

    return dataclasses.replace(heatmap, source=files[file_number(heatmap.source)])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
