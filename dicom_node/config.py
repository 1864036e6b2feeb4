"""The node's configuration: ``config.yaml`` parsed once into typed, validated models.

Every section forbids unknown keys, so a typo is an error that names the key
rather than a setting silently ignored. Relative paths resolve against the
folder of the config file. :func:`load_config` raises :class:`ConfigError`
with one line per problem, each naming the dotted key path.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dicom_node.route.rules import Route

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, 16 chars


class ConfigError(ValueError):
    """The configuration file is missing or invalid; the message lists every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ae_title(v: str) -> str:
    v = v.strip()
    if not AE_TITLE.match(v):
        raise ValueError(f"{v!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return v


AETitle = Annotated[str, Field(min_length=1, max_length=16)]


class Peer(_Strict):
    """A calling application allowed to store to the node.

    ``host`` is an IP address or a CIDR network; omitted, any source address
    is accepted for that AE title. A PACS that stores from several AE titles
    gets one entry per title.
    """

    ae_title: AETitle
    host: str | None = None
    #: this peer sends a whole study per association (a PACS forwarding a study, as Orthanc
    #: does): a study it sent is complete once the association is released and
    #: ``completion.release_settle_seconds`` passed without more, not after the quiet timers
    complete_on_release: bool = False

    _check_ae = field_validator("ae_title")(_ae_title)

    @field_validator("host")
    @classmethod
    def _network(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address or CIDR network") from None
        return v

    def allows(self, ae_title: str, address: str) -> bool:
        if ae_title.strip() != self.ae_title:
            return False
        if self.host is None:
            return True
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return False


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not Path(value).is_file():
        raise ValueError(f"file {value} does not exist")
    return value


class _TLSBase(_Strict):
    #: oldest protocol accepted (BCP 195: TLS 1.2 or newer)
    minimum_version: Literal["1.2", "1.3"] = "1.2"


class ServerTLS(_TLSBase):
    """DICOM TLS on the node's port: its certificate and key, and the CA of its peers (PEM)."""

    certificate: Path
    private_key: Path
    #: CA certificate(s) that peers' client certificates must chain to
    ca_certificates: Path | None = None
    #: refuse the handshake of a peer without a valid client certificate
    require_client_certificate: bool = True

    _files = field_validator("certificate", "private_key", "ca_certificates")(_existing_file)

    @model_validator(mode="after")
    def _ca_when_required(self) -> ServerTLS:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError(
                "require_client_certificate needs ca_certificates (the CA that issues the "
                "peers' certificates); or set require_client_certificate: false"
            )
        return self


class ClientTLS(_TLSBase):
    """DICOM TLS to a destination: the CA its certificate chains to, optional client certificate."""

    ca_certificates: Path
    certificate: Path | None = None
    private_key: Path | None = None
    #: check that the destination's certificate names ``host``
    verify_hostname: bool = True

    _files = field_validator("certificate", "private_key", "ca_certificates")(_existing_file)

    @model_validator(mode="after")
    def _pair(self) -> ClientTLS:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("set both certificate and private_key, or neither")
        return self


class NodeSection(_Strict):
    ae_title: AETitle = "DICOM_NODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    #: associations at once, per receiver process
    max_associations: int = Field(16, ge=1)
    #: SCP processes sharing one listening socket; associations are threads under one GIL
    receiver_processes: int = Field(1, ge=1, le=64)
    peers: list[Peer] = Field(default_factory=list)
    #: largest PDU we accept, bytes (0 = unlimited); large PDUs cut per-PDU overhead
    maximum_pdu_size: int = Field(1_048_576, ge=0)
    #: seconds of silence after which an association is aborted (a stalled peer holds a thread)
    network_timeout: float = Field(60.0, gt=0)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    #: DICOM TLS on the port (read at start: a change needs a restart)
    tls: ServerTLS | None = None

    _check_ae = field_validator("ae_title")(_ae_title)

    def allows(self, ae_title: str, address: str) -> bool:
        """True if some peer entry allows this calling AE title from this address."""
        return self.peer(ae_title, address) is not None

    def peer(self, ae_title: str, address: str) -> Peer | None:
        """The first peer entry that allows this calling AE title from this address."""
        return next((peer for peer in self.peers if peer.allows(ae_title, address)), None)


class RetentionPolicy(_Strict):
    """When the node deletes a finished study's images and results (see dicom_node/retention.py)."""

    #: delete finished studies this many days after their last activity (null: keep until
    #: the disk runs low)
    keep_days: float | None = Field(7, gt=0)
    #: below min_free_disk_mb, delete finished studies, oldest first, until this much is free
    #: (null: min_free_disk_mb plus 10 %); false-y ``emergency`` switches that off
    emergency: bool = True
    emergency_free_mb: float | None = Field(None, ge=0)
    #: nothing younger than this is deleted (a copy being received again is left alone)
    settle_seconds: float = Field(300, ge=0)
    #: how often the retention check runs
    interval_seconds: float = Field(60, gt=0)


class StorageSection(_Strict):
    spool: Path = Path("var/spool")
    database_url: str = "sqlite:///var/dicom-node.db"
    #: below this much free space on the spool's disk, new objects are refused (0xA700)
    min_free_disk_mb: int = Field(1024, ge=0)
    #: fsync each received object before answering Success (turn off only for benchmarks)
    fsync: bool = True
    #: also fsync the folders a received object's names go in: only for a spool on a file
    #: system that does not commit a file's names with its data (ext4, XFS and btrfs do)
    fsync_folders: bool = False
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)

    @property
    def emergency_free_mb(self) -> float:
        """Free space the emergency cleanup restores (see :class:`RetentionPolicy`)."""
        target = self.retention.emergency_free_mb
        return self.min_free_disk_mb * 1.1 if target is None else max(target, self.min_free_disk_mb)


class CompletionSection(_Strict):
    series_quiet_seconds: float = Field(10, ge=0)
    study_quiet_seconds: float = Field(30, ge=0)
    force_after_seconds: float = Field(600, gt=0)
    #: after a ``complete_on_release`` peer released its association, wait this long for
    #: another association of the same study before the study is complete
    release_settle_seconds: float = Field(0.5, ge=0)
    #: after an MPPS step is COMPLETED, how long its listed instances may take to arrive before
    #: an ``mpps-incomplete`` event names the missing ones (the quiet timers then decide)
    mpps_timeout_seconds: float = Field(120, gt=0)
    #: how often the completion check runs when nothing wakes it (a safety net: receivers
    #: wake it when an association is released)
    poll_seconds: float = Field(1.0, gt=0)


class Destination(_Strict):
    #: destination kind (see dicom_node/dispatch/destinations.py); ``dicom`` is C-STORE
    kind: Literal["dicom"] = "dicom"
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    #: speak DICOM TLS to this destination
    tls: ClientTLS | None = None

    _check_ae = field_validator("ae_title")(_ae_title)


class RetryPolicy(_Strict):
    initial_seconds: float = Field(5, ge=0)
    multiplier: float = Field(2, ge=1)
    max_seconds: float = Field(900, ge=0)
    max_attempts: int = Field(10, ge=1)

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        return min(self.max_seconds, self.initial_seconds * self.multiplier ** max(0, attempts - 1))


class DispatchSection(_Strict):
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    poll_seconds: float = Field(1.0, gt=0)
    #: seconds to wait for a destination to answer
    timeout_seconds: float = Field(30, gt=0)


class RayResources(_Strict):
    """What one loaded copy of a pipeline's model needs on a Ray worker node.

    Ray places each replica on a node that has all of it: ``num_gpus``
    (fractional shares one card between models), ``num_cpus``, and custom
    ``resources`` a node was started with (``ray start --resources
    '{"gpu_host": 1}'``), to pin a model to a kind of host.
    """

    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    #: loaded copies of the model always kept warm; jobs go to the least busy one
    replicas: int = Field(1, ge=1, le=64)
    #: at most this many copies while busy (autoscaling bounds ``replicas``..``max_replicas``)
    max_replicas: int | None = Field(None, ge=1, le=64)
    #: jobs one copy takes at once (their inputs share forward passes) before another starts
    target_jobs: int = Field(2, ge=1)
    #: a copy above ``replicas`` that ran no job for this long is stopped
    idle_seconds: float = Field(300.0, gt=0)

    @field_validator("resources")
    @classmethod
    def _amounts(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if amount <= 0:
                raise ValueError(f"resource {name!r} needs an amount above 0, got {amount}")
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(f"set {name} with num_cpus / num_gpus, not in resources")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> RayResources:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas}), "
                "the copies always kept warm"
            )
        return self

    @property
    def most(self) -> int:
        """The upper bound on copies (``replicas`` when no ``max_replicas`` is set)."""
        return self.max_replicas or self.replicas

    def demand(self) -> dict[str, float]:
        """The resources of one replica, as Ray names them (zero amounts left out)."""
        wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {name: amount for name, amount in wanted.items() if amount > 0}


class PipelineConfig(_Strict):
    card: Path
    device: str = "auto"
    #: where and how many copies run with ``engine.kind: ray`` (ignored by the local engine)
    ray: RayResources = Field(default_factory=RayResources)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"{v!r} is not a device: use auto, cpu, cuda or cuda:N")
        return v


class JobsSection(_Strict):
    """How jobs run, whatever the engine."""

    #: jobs running at once; their inputs share forward passes when they use the same model
    in_flight: int = Field(2, ge=1, le=256)
    #: runs of a job whose engine failed (worker killed, node lost, timeout, out of GPU
    #: memory) before it fails for good; a pipeline error fails it at once
    max_attempts: int = Field(3, ge=1)
    #: how long a forward pass waits for inputs of other jobs before it runs part-full
    batch_wait_ms: float = Field(20, ge=0, le=60_000)
    #: inputs per forward pass; null: the card's batch size on a CPU, chosen from the GPU's
    #: memory on a GPU
    batch_size: int | None = Field(None, ge=1)
    #: threads reading and preprocessing a job's files; null: 1 on a CPU (the model needs the
    #: cores), up to 4 on a GPU (decoding must keep the device busy)
    readers: int | None = Field(None, ge=1, le=64)


class RayEngineSettings(_Strict):
    """``engine.kind: ray``: inference on the replicas of a Ray cluster (README "Running on a cluster")."""

    kind: Literal["ray"]
    #: the head's GCS address, host:port (never exposed beyond the cluster's private network)
    address: str
    namespace: str = Field("dicom-node", min_length=1)
    #: file holding Ray's authentication token (RAY_AUTH_MODE=token); null: the
    #: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH environment variable must provide it
    token_file: Path | None = None
    #: seconds one job may take on a worker before it counts as a failed attempt
    call_timeout_seconds: float = Field(900, gt=0)
    #: a series travels to the worker in chunks of about this size, one call each: the node
    #: and the object store hold one chunk of a job at a time
    chunk_mb: float = Field(16, gt=0)
    #: seconds to wait for the head's port to answer when joining the cluster
    connect_timeout_seconds: float = Field(5, gt=0)

    _token = field_validator("token_file")(_existing_file)

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r} is not host:port of the Ray head (e.g. 10.0.0.5:6379)")
        return v


class LocalEngineSettings(_Strict):
    """``engine.kind: local`` (the default): inference in the node's own process."""

    kind: Literal["local"] = "local"


def _engine_shorthand(v: Any) -> Any:
    return {"kind": v} if isinstance(v, str) else v


EngineSection = Annotated[
    LocalEngineSettings | RayEngineSettings,
    Field(discriminator="kind"),
    BeforeValidator(_engine_shorthand),
]


class LoggingSection(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class OidcSettings(_Strict):
    """Single sign-on for the console: an OpenID Connect provider (Keycloak, Entra ID, ...).

    A user signs in at the provider; the console reads their name from
    ``name_claim`` and their groups (or roles) from ``roles_claim``, and gives
    them the highest console role whose groups they are in (``roles``). A user
    in none of them is refused. The client secret comes from a file, never
    from this configuration.
    """

    #: the provider's issuer URL (its ``/.well-known/openid-configuration`` is read at start)
    issuer: str = Field(pattern=r"^https?://")
    client_id: str = Field(min_length=1)
    client_secret_file: Path
    #: what the sign-in button says
    label: str = "single sign-on"
    name_claim: str = "preferred_username"
    roles_claim: str = "groups"
    #: console role → the provider's groups that grant it
    roles: dict[Literal["viewer", "operator", "admin"], list[str]] = Field(min_length=1)
    scope: str = "openid profile email"


class MonitoringSection(_Strict):
    """Where the web console listens, with the open ``/health`` and ``/metrics`` (Prometheus).

    Off unless ``port`` is set (the shipped config.yaml sets it). Read at start:
    a change needs a restart. ``/health`` and ``/metrics`` show counts and UIDs,
    never patient data, and need no login; every other page does
    (:mod:`dicom_node.console`). Bind it to the loopback or a management
    network, not to the modality network.
    """

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    #: the console roles shown a study's patient name and ID (each showing is audited);
    #: empty: nobody, UIDs and accession numbers only
    patient_data_roles: list[Literal["viewer", "operator", "admin"]] = Field(default_factory=list)
    #: single sign-on with an OpenID Connect provider, besides the local accounts (off: none)
    oidc: OidcSettings | None = None


class Config(_Strict):
    """The whole ``config.yaml``."""

    node: NodeSection = Field(default_factory=NodeSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    completion: CompletionSection = Field(default_factory=CompletionSection)
    destinations: dict[str, Destination] = Field(default_factory=dict)
    dispatch: DispatchSection = Field(default_factory=DispatchSection)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)
    jobs: JobsSection = Field(default_factory=JobsSection)
    engine: EngineSection = Field(default_factory=LocalEngineSettings)
    routes: list[Route] = Field(default_factory=list)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)

    #: the file this was read from; not part of the YAML
    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _references(self) -> Config:
        problems = []
        seen: set[str] = set()
        for i, route in enumerate(self.routes):
            where = f"routes.{i} ({route.name})"
            if route.name in seen:
                problems.append(f"{where}: duplicate route name")
            seen.add(route.name)
            if route.pipeline not in self.pipelines:
                problems.append(
                    f"{where}.pipeline: {route.pipeline!r} is not in pipelines "
                    f"(known: {', '.join(self.pipelines) or 'none'})"
                )
            for dest in route.destinations:
                if dest not in self.destinations:
                    problems.append(
                        f"{where}.destinations: {dest!r} is not in destinations "
                        f"(known: {', '.join(self.destinations) or 'none'})"
                    )
            if not route.shadow and not route.destinations:
                problems.append(f"{where}: needs destinations, or shadow: true")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _resolve(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative paths in the raw mapping absolute against ``base``."""
    storage = raw.get("storage")
    if isinstance(storage, dict):
        spool = storage.get("spool")
        if isinstance(spool, str) and not Path(spool).is_absolute():
            storage["spool"] = str(base / spool)
        url = storage.get("database_url")
        if (
            isinstance(url, str)
            and url.startswith("sqlite:///")
            and not url.startswith("sqlite:////")
        ):
            rel = url[len("sqlite:///") :]
            if rel and rel != ":memory:":
                storage["database_url"] = "sqlite:///" + str(base / rel)

    def absolute(section: Any, keys: tuple[str, ...]) -> None:
        if isinstance(section, dict):
            for key in keys:
                if isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
                    section[key] = str(base / section[key])

    tls_files = ("certificate", "private_key", "ca_certificates")
    node = raw.get("node")
    if isinstance(node, dict):
        absolute(node.get("tls"), tls_files)
    destinations = raw.get("destinations")
    if isinstance(destinations, dict):
        for dest in destinations.values():
            if isinstance(dest, dict):
                absolute(dest.get("tls"), tls_files)
    engine = raw.get("engine")
    if isinstance(engine, dict):
        absolute(engine, ("token_file",))
    pipes = raw.get("pipelines")
    if isinstance(pipes, dict):
        for spec in pipes.values():
            if isinstance(spec, dict) and isinstance(spec.get("card"), str):
                if not Path(spec["card"]).is_absolute():
                    spec["card"] = str(base / spec["card"])
    return raw


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the dotted key path."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Configuration reference')"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(text: str, base: Path, path: Path | None = None) -> Config:
    """Parse config YAML text; relative paths resolve against ``base``."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path or 'config'} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping of sections")
    try:
        return Config.model_validate({**_resolve(raw, base), "path": path})
    except ValidationError as exc:
        raise ConfigError(
            f"{path or 'config'} is invalid:\n{format_validation_error(exc)}"
        ) from None


def load_config(path: str | Path) -> Config:
    """Read and validate ``config.yaml``.

    Raises
    ------
    ConfigError
        If the file cannot be read or any key is invalid.
    """
    path = Path(path).resolve()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(text, path.parent, path)


class LiveConfig:
    """The running configuration, reloaded when the file changes (or on request).

    An edit that does not validate is refused: the running configuration
    stays, and the reason is logged. Changes to the ``node`` and ``storage``
    sections need a restart (the listening socket and the database are
    already open); they are reported, the rest applies at once.
    """

    def __init__(self, path: str | Path) -> None:
        import logging
        import threading

        self.path = Path(path).resolve()
        self._log = logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._current = load_config(self.path)
        self._mtime = self._stat()
        #: called with (old, new) after a successful reload
        self.listeners: list[Any] = []

    def __call__(self) -> Config:
        return self._current

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def check(self) -> bool:
        """Reload if the file changed since the last look; return True if a new config applies."""
        if self._stat() == self._mtime:
            return False
        return self.reload()

    def reload(self) -> bool:
        """Reload now (SIGHUP); return True if the new configuration was applied."""
        with self._lock:
            self._mtime = self._stat()
            try:
                new = load_config(self.path)
            except ConfigError as exc:
                self._log.error("configuration reload refused, keeping the running one: %s", exc)
                for listener in self.listeners:
                    listener(self._current, None, str(exc))
                return False
            old = self._current
            if (
                old.node.model_copy(update={"peers": []})
                != new.node.model_copy(update={"peers": []})
                or old.storage != new.storage
                or old.monitoring != new.monitoring
                or old.engine != new.engine
                or old.jobs.in_flight != new.jobs.in_flight
            ):
                self._log.warning(
                    "node, storage, monitoring, engine or jobs.in_flight settings changed; they "
                    "apply after a restart "
                    "(peers, routes, destinations, pipelines and policies apply now)"
                )
            self._current = new
            self._log.info("configuration reloaded from %s (%d routes)", self.path, len(new.routes))
            for listener in self.listeners:
                listener(old, new, None)
            return True
