"""Real DICOM and database peers for the test-suite.

Everything here drives real programs: Orthanc plays the PACS, the DCMTK
tools (``echoscu``, ``storescu``, ``storescp``) play modalities and simple
destinations, and a throwaway PostgreSQL cluster plays the index database.
They are installed by ``scripts/install-system-deps``; when one is missing,
the helpers raise :class:`PeerMissingError` saying so.

Every helper talks to ``127.0.0.1``, on ports picked by :func:`free_port`.
PostgreSQL listens on 127.0.0.1 only; Orthanc 1.10 and storescp 3.6.7 have no
option to choose their listening address and bind all interfaces (Orthanc's
REST API still refuses non-local clients: ``RemoteAccessAllowed`` is false).
The helpers never print DICOM attributes, so no patient data ends up in test
logs (Orthanc's own log is de-identified: ``DeidentifyLogs``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "DICOMWEB_PLUGIN",
    "LOOPBACK",
    "NODE_AET",
    "NODE_MODALITY",
    "PACS_AET",
    "Orthanc",
    "OrthancError",
    "PeerError",
    "PeerMissingError",
    "PostgresCluster",
    "StoreSCP",
    "dcmtk_env",
    "echoscu",
    "free_port",
    "port_is_open",
    "pydicom_sample",
    "require_binary",
    "storescu",
    "storescu_profile",
    "testdata_file",
    "wait_for",
    "wait_for_port",
]

LOOPBACK = "127.0.0.1"
"""The only address the peers are reached on."""

PACS_AET = "PACS"
"""AE title of the Orthanc that plays the hospital PACS."""

NODE_AET = "DICOM_NODE"
"""AE title the node under test uses in the peers' configurations."""

NODE_MODALITY = "node"
"""Name of the node's entry in Orthanc's ``DicomModalities``."""

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
"""Debian's build of the Orthanc DICOMweb plugin (package ``orthanc-dicomweb``)."""

INSTALL_HINT = "run scripts/install-system-deps (installs dcmtk, orthanc, dicom3tools, postgresql)"

T = TypeVar("T")


class PeerError(RuntimeError):
    """A peer program failed to start, stop or answer."""


class PeerMissingError(PeerError):
    """A peer program is not installed on this machine."""


# ---------------------------------------------------------------------------
# Generic helpers
# ---------------------------------------------------------------------------


_HANDED_OUT: set[int] = set()
"""Ports :func:`free_port` already returned in this process."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    A port is never handed out twice in one test process: a fixture that picks
    a port and binds it later (``node_port``, given to Orthanc's modality list
    before the node starts) would otherwise share it with the next peer the
    kernel hands the same free port to (seen in CI: node and Orthanc's HTTP).

    Returns
    -------
    int
        A port the kernel handed out for ``127.0.0.1:0``. Another process may
        take it before the caller binds it; the peers here retry on a clash.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def port_is_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``.

    Parameters
    ----------
    port : int
        TCP port.
    host : str, optional
        Address to connect to, 127.0.0.1 by default.
    timeout : float, optional
        Seconds to wait for the connection.

    Returns
    -------
    bool
        True when a connection could be opened.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy.

    Parameters
    ----------
    predicate : callable
        Called without arguments; exceptions count as "not yet".
    timeout : float, optional
        Seconds to keep trying.
    interval : float, optional
        Seconds between tries.
    message : str, optional
        What is awaited, for the error message.

    Returns
    -------
    T
        The first truthy value ``predicate`` returned.

    Raises
    ------
    TimeoutError
        When ``timeout`` passed without a truthy value; the last exception
        raised by ``predicate``, if any, is chained.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # any failure means "not yet"
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for {message}"
            ) from last_error
        time.sleep(interval)


def wait_for_port(port: int, timeout: float = 30.0, host: str = LOOPBACK) -> None:
    """Wait until ``host:port`` accepts TCP connections.

    Parameters
    ----------
    port : int
        TCP port.
    timeout : float, optional
        Seconds to wait.
    host : str, optional
        Address, 127.0.0.1 by default.

    Raises
    ------
    TimeoutError
        When nothing listens within ``timeout``.
    """
    wait_for(
        lambda: port_is_open(port, host), timeout, 0.05, f"{host}:{port} to accept connections"
    )


def require_binary(name: str, extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> str:
    """Find an installed program.

    Parameters
    ----------
    name : str
        Program name, e.g. ``"storescu"``.
    extra_dirs : iterable of path-like, optional
        Directories searched after ``PATH`` (e.g. ``/usr/sbin`` for Orthanc).

    Returns
    -------
    str
        Absolute path of the program.

    Raises
    ------
    PeerMissingError
        When the program is not installed.
    """
    found = shutil.which(name)
    if found is None:
        for directory in extra_dirs:
            candidate = Path(directory, name)
            if os.access(candidate, os.X_OK):
                found = str(candidate)
                break
    if found is None:
        raise PeerMissingError(f"{name!r} is not installed: {INSTALL_HINT}")
    return found


def dcmtk_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment for DCMTK tools.

    DCMTK >= 3.6.2 leaves Nagle's algorithm on unless ``TCP_NODELAY`` is set,
    which makes every small PDU wait ~40 ms on loopback.

    Parameters
    ----------
    base : mapping, optional
        Environment to start from; ``os.environ`` by default.

    Returns
    -------
    dict
        A copy of ``base`` with ``TCP_NODELAY=1``.
    """
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    return env


def pydicom_sample(name: str) -> Path:
    """Return one of the DICOM files bundled with pydicom.

    ``pydicom.data.get_testdata_file`` tries to download files it does not
    bundle (three retries, ~20 s) and returns None offline; this helper never
    downloads and fails at once instead.

    Parameters
    ----------
    name : str
        File name in pydicom's ``data/test_files``, e.g. ``"CT_small.dcm"``.

    Returns
    -------
    Path
        Path of the bundled file.

    Raises
    ------
    FileNotFoundError
        When pydicom does not bundle the file.
    """
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if not isinstance(found, str):
        raise FileNotFoundError(f"{name!r} is not bundled with pydicom (it would be downloaded)")
    return Path(found)


# The name pydicom's own helper has; kept for callers that use it. Not a test,
# although pytest would otherwise collect it from any test module importing it.
testdata_file = pydicom_sample
pydicom_sample.__test__ = False  # type: ignore[attr-defined]


def _tail(path: Path, lines: int = 40) -> str:
    """Return the last lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Stop a child with SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# Peers still running when the interpreter exits (a crashed or interrupted
# session) are stopped here, so that no Orthanc or postmaster outlives pytest.
_running: set[Orthanc | StoreSCP | PostgresCluster] = set()


@atexit.register
def _stop_leftovers() -> None:
    for peer in list(_running):
        with contextlib.suppress(Exception):
            if isinstance(peer, PostgresCluster):
                peer.close()  # also removes its directory outside pytest's tmp
            else:
                peer.kill()


# ---------------------------------------------------------------------------
# Orthanc
# ---------------------------------------------------------------------------


class OrthancError(PeerError):
    """Orthanc's REST API answered with an HTTP error.

    Parameters
    ----------
    method, path : str
        The request.
    status : int
        HTTP status code (0 when Orthanc could not be reached).
    body : str
        Start of the response body (Orthanc's error description).
    """

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"Orthanc {method} {path} -> HTTP {status}: {body[:500]}")
        self.method = method
        self.path = path
        self.status = status
        self.body = body


ModalitySpec = Sequence[str | int] | Mapping[str, Any]
"""An Orthanc ``DicomModalities`` value: ``[AET, host, port]`` or a dict."""


class _Peer:
    """A peer program run for a test: ``with peer:`` starts it and ends it, whatever happens."""

    is_running: bool

    def start(self) -> Self:
        raise NotImplementedError

    def _end(self) -> None:
        """What leaving ``with`` does (stop; a database cluster also removes its files)."""
        raise NotImplementedError

    def _where(self) -> str:
        """Its name and ports, for ``repr``."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self._where()} {state}>"


class Orthanc(_Peer):
    """A real Orthanc 1.10 server on 127.0.0.1 with its own storage.

    The server is configured by a JSON file written into ``workdir``; its
    SQLite index and storage area live in ``workdir/storage`` and survive
    :meth:`stop`/:meth:`start`, so an outage can be simulated by stopping the
    server and starting it again on the same ports.

    Parameters
    ----------
    workdir : path-like
        Directory for the configuration, storage and log (created if needed).
    aet : str, optional
        Orthanc's own AE title (``DicomAet``).
    modalities : mapping, optional
        ``DicomModalities``: name -> ``[AET, host, port]`` (or Orthanc's dict
        form), e.g. ``{"node": ["DICOM_NODE", "127.0.0.1", 11112]}``.
    plugins : sequence of path-like, optional
        Shared libraries to load, e.g. :data:`DICOMWEB_PLUGIN`. No plugin is
        loaded by default (Debian's own configuration loads them all).
    config : mapping, optional
        Extra configuration keys, applied last (they win).
    dicom_port, http_port : int, optional
        Ports to listen on; free ones are chosen by default.

    Notes
    -----
    Orthanc 1.10 has no option to choose the listening address: both the
    DICOM and the HTTP port are bound on all interfaces. ``RemoteAccessAllowed``
    is false, so the REST API answers only clients on the loopback interface,
    and every helper here talks to 127.0.0.1.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        aet: str = PACS_AET,
        modalities: Mapping[str, ModalitySpec] | None = None,
        plugins: Sequence[str | os.PathLike[str]] = (),
        config: Mapping[str, Any] | None = None,
        dicom_port: int | None = None,
        http_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.plugins = [str(Path(p)) for p in plugins]
        self.extra_config = dict(config or {})
        self._ports_chosen = dicom_port is not None or http_port is not None
        self.dicom_port = dicom_port if dicom_port is not None else free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the REST API, ``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def pid(self) -> int:
        """The Orthanc process (benchmarks read its CPU time)."""
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def is_running(self) -> bool:
        """Whether the Orthanc process is alive."""
        return self._process is not None and self._process.poll() is None

    def configuration(self) -> dict[str, Any]:
        """Return the configuration written for Orthanc.

        Returns
        -------
        dict
            The JSON document Orthanc is started with.
        """
        config: dict[str, Any] = {
            "Name": f"dicom-node-test-{self.aet}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": self.modalities,
            "DicomModalitiesInDatabase": False,
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 10,
            "StableAge": 1,
            "SaveJobs": False,
            "HttpThreadsCount": 16,
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "DeidentifyLogs": True,
            "Plugins": self.plugins,
        }
        if any("DicomWeb" in Path(p).name for p in self.plugins):
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        config.update(self.extra_config)
        return config

    def start(self, timeout: float = 30.0) -> Self:
        """Start Orthanc and wait until its REST API answers.

        A restart after :meth:`stop` reuses the ports and the storage.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the REST API.

        Returns
        -------
        Orthanc
            ``self``.

        Raises
        ------
        PeerMissingError
            When Orthanc is not installed.
        PeerError
            When Orthanc exits or does not answer in time.
        """
        if self.is_running:
            return self
        binary = require_binary("Orthanc", ["/usr/sbin"])
        attempts = 1 if (self._ports_chosen or self._started_once) else 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(binary, timeout)
                break
            except PeerError:
                if attempt == attempts or not self._port_clash():
                    raise
                # Another process took a port between free_port() and bind().
                self.dicom_port, self.http_port = free_port(), free_port()
        self._started_once = True
        _running.add(self)
        return self

    def _start_once(self, binary: str, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.configuration(), indent=2))
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "--no-jobs", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=dcmtk_env(),  # Orthanc is DCMTK inside: Nagle off, or every response waits
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise PeerError(
                    f"Orthanc exited with status {self._process.returncode} during startup;"
                    f" log {self.log_path}:\n{_tail(self.log_path)}"
                )
            with contextlib.suppress(OrthancError):
                self.get("/system", timeout=2)
                return
            if time.monotonic() >= deadline:
                _terminate(self._process, 5)
                raise PeerError(
                    f"Orthanc did not answer on {self.url} within {timeout:g}s;"
                    f" log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _port_clash(self) -> bool:
        # e.g. "The TCP port of the DICOM server is privileged or already in use"
        return "already in use" in _tail(self.log_path, 20).lower()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Orthanc gracefully (SIGTERM), killing it after ``timeout``.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for a clean shutdown.
        """
        if self._process is not None:
            _terminate(self._process, timeout)
        _running.discard(self)

    def kill(self) -> None:
        """Kill Orthanc at once (SIGKILL), as in a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        _running.discard(self)

    def _end(self) -> None:
        self.stop()

    def _where(self) -> str:
        return f"{self.aet} dicom={self.dicom_port} http={self.http_port}"

    # -- REST plumbing -----------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        content_type: str | None = None,
        timeout: float = 60.0,
    ) -> bytes:
        """Send one REST request and return the raw response body.

        Parameters
        ----------
        method : str
            HTTP method.
        path : str
            Path below the base URL, starting with ``/``.
        body : bytes, str, dict or list, optional
            Request body; dicts and lists are sent as JSON.
        content_type : str, optional
            Content type; guessed from ``body`` by default.
        timeout : float, optional
            Seconds to wait for the answer.

        Returns
        -------
        bytes
            The response body.

        Raises
        ------
        OrthancError
            On an HTTP error, or when Orthanc cannot be reached (status 0).
        """
        data: bytes | None
        if body is None or isinstance(body, bytes):
            data = body
            content_type = content_type or "application/octet-stream"
        elif isinstance(body, str):
            data = body.encode()
            content_type = content_type or "text/plain"
        else:
            data = json.dumps(body).encode()
            content_type = content_type or "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None and content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OrthancError(method, path, exc.code, detail) from None
        except (urllib.error.URLError, OSError) as exc:
            raise OrthancError(method, path, 0, str(exc)) from None

    def get(self, path: str, *, timeout: float = 60.0) -> Any:
        """GET ``path`` and decode the JSON answer."""
        return json.loads(self.request("GET", path, timeout=timeout))

    def post(self, path: str, body: Any = None, *, timeout: float = 60.0) -> Any:
        """POST ``body`` (JSON for dicts/lists) to ``path`` and decode the JSON answer."""
        answer = self.request("POST", path, body, timeout=timeout)
        return json.loads(answer) if answer.strip() else None

    def put(self, path: str, body: Any = None, *, timeout: float = 60.0) -> Any:
        """PUT ``body`` to ``path`` and decode the JSON answer, if any."""
        answer = self.request("PUT", path, body, timeout=timeout)
        return json.loads(answer) if answer.strip() else None

    def delete(self, path: str, *, timeout: float = 60.0) -> None:
        """DELETE ``path``."""
        self.request("DELETE", path, timeout=timeout)

    # -- REST helpers ------------------------------------------------------

    def system(self) -> dict[str, Any]:
        """Return ``GET /system`` (version, AET, ports)."""
        return dict(self.get("/system"))

    def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Store a DICOM file through the REST API (not over DICOM).

        Parameters
        ----------
        path : path-like
            DICOM Part 10 file.

        Returns
        -------
        dict
            Orthanc's answer: ``ID``, ``ParentStudy``, ``Status`` ("Success"
            or "AlreadyStored"), ...
        """
        answer = self.request(
            "POST", "/instances", Path(path).read_bytes(), content_type="application/dicom"
        )
        return dict(json.loads(answer))

    def studies(self) -> list[str]:
        """Return the Orthanc ids of all studies."""
        return list(self.get("/studies"))

    def instances(self) -> list[str]:
        """Return the Orthanc ids of all instances."""
        return list(self.get("/instances"))

    def study(self, study_id: str) -> dict[str, Any]:
        """Return ``GET /studies/{id}`` (main tags, series ids)."""
        return dict(self.get(f"/studies/{study_id}"))

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        """Return the series of a study, each as ``GET /series/{id}`` would.

        Parameters
        ----------
        study_id : str
            Orthanc id of the study.

        Returns
        -------
        list of dict
            One dict per series (``ID``, ``MainDicomTags``, ``Instances``, ...).
        """
        return list(self.get(f"/studies/{study_id}/series"))

    def series_instances(self, series_id: str) -> list[dict[str, Any]]:
        """Return the instances of a series, each as ``GET /instances/{id}`` would.

        Parameters
        ----------
        series_id : str
            Orthanc id of the series.

        Returns
        -------
        list of dict
            One dict per instance (``ID``, ``MainDicomTags``, ...).
        """
        return list(self.get(f"/series/{series_id}/instances"))

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """Return all instances of a study (``GET /studies/{id}/instances``)."""
        return list(self.get(f"/studies/{study_id}/instances"))

    def lookup(self, uid: str) -> list[dict[str, str]]:
        """Find resources by DICOM UID or id (``POST /tools/lookup``).

        Parameters
        ----------
        uid : str
            A Study/Series/SOP Instance UID, or a Patient ID.

        Returns
        -------
        list of dict
            Matches, each with ``ID``, ``Path`` and ``Type`` ("Study", ...).
        """
        return list(self.post("/tools/lookup", uid))

    def _find(self, uid: str, kind: str) -> str | None:
        for match in self.lookup(uid):
            if match.get("Type") == kind:
                return str(match["ID"])
        return None

    def find_study(self, study_instance_uid: str) -> str | None:
        """Return the Orthanc id of a study by Study Instance UID, or None."""
        return self._find(study_instance_uid, "Study")

    def find_series(self, series_instance_uid: str) -> str | None:
        """Return the Orthanc id of a series by Series Instance UID, or None."""
        return self._find(series_instance_uid, "Series")

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Return the Orthanc id of an instance by SOP Instance UID, or None."""
        return self._find(sop_instance_uid, "Instance")

    def instance_file(self, instance_id: str) -> bytes:
        """Return the stored DICOM file of an instance, byte for byte."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """Return ``GET /instances/{id}/simplified-tags`` (keyword -> value)."""
        return dict(self.get(f"/instances/{instance_id}/simplified-tags"))

    def instance_metadata(self, instance_id: str, name: str) -> str:
        """Return one metadata item, e.g. ``TransferSyntax`` or ``RemoteAET``.

        Parameters
        ----------
        instance_id : str
            Orthanc id of the instance.
        name : str
            Metadata name: ``TransferSyntax``, ``RemoteAET``, ``CalledAET``,
            ``RemoteIP``, ``Origin``, ``ReceptionDate``, ...

        Returns
        -------
        str
            The value.
        """
        return self.request("GET", f"/instances/{instance_id}/metadata/{name}").decode()

    def store_to_modality(
        self, modality: str, resources: Sequence[str], *, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Send resources to a modality over DICOM C-STORE and wait for it.

        Parameters
        ----------
        modality : str
            Name of the entry in ``DicomModalities`` (e.g. ``"node"``).
        resources : sequence of str
            Orthanc ids of patients, studies, series or instances.
        timeout : float, optional
            Seconds to wait for the synchronous job.

        Returns
        -------
        dict
            Orthanc's job summary (``InstancesCount``, ``FailedInstancesCount``,
            ``RemoteAet``, ...).

        Raises
        ------
        OrthancError
            When the association or a C-STORE failed (HTTP 500).
        """
        body = {"Resources": list(resources), "Synchronous": True}
        return dict(self.post(f"/modalities/{modality}/store", body, timeout=timeout))

    def echo_modality(self, modality: str, *, timeout: float = 30.0) -> bool:
        """C-ECHO a modality from Orthanc.

        Parameters
        ----------
        modality : str
            Name of the entry in ``DicomModalities``.
        timeout : float, optional
            Seconds to wait.

        Returns
        -------
        bool
            True when the echo succeeded.
        """
        try:
            self.request("POST", f"/modalities/{modality}/echo", {}, timeout=timeout)
        except OrthancError as exc:
            if exc.status == 0:
                raise
            return False
        return True

    def set_modality(self, name: str, aet: str, port: int, host: str = LOOPBACK) -> None:
        """Add or change a ``DicomModalities`` entry while Orthanc runs.

        The change is also kept for later restarts.

        Parameters
        ----------
        name : str
            Entry name (e.g. ``"node"``).
        aet : str
            The modality's AE title.
        port : int
            Its DICOM port.
        host : str, optional
            Its address, 127.0.0.1 by default.
        """
        self.put(f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})
        self.modalities[name] = [aet, host, port]

    def delete_all(self) -> None:
        """Delete every patient (and so every study) stored in Orthanc."""
        for patient in self.get("/patients"):
            self.delete(f"/patients/{patient}")

    def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 30.0, message: str = "condition"
    ) -> T:
        """Poll ``predicate`` until it is truthy; see :func:`wait_for`."""
        return wait_for(predicate, timeout, 0.1, message)

    def wait_for_study(
        self, study_instance_uid: str, instances: int | None = None, timeout: float = 30.0
    ) -> str:
        """Wait until a study is stored, optionally with ``instances`` instances.

        Parameters
        ----------
        study_instance_uid : str
            Study Instance UID.
        instances : int, optional
            Number of instances to wait for (at least).
        timeout : float, optional
            Seconds to wait.

        Returns
        -------
        str
            Orthanc id of the study.
        """

        def ready() -> str | None:
            study_id = self.find_study(study_instance_uid)
            if study_id is None:
                return None
            if instances is not None and len(self.study_instances(study_id)) < instances:
                return None
            return study_id

        return wait_for(ready, timeout, 0.1, "the study to arrive in Orthanc")


# ---------------------------------------------------------------------------
# DCMTK
# ---------------------------------------------------------------------------


def echoscu(
    host: str,
    port: int,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "ECHOSCU",
    *,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``echoscu`` (C-ECHO) against a peer.

    Parameters
    ----------
    host : str
        Peer address.
    port : int
        Peer DICOM port.
    called_ae : str, optional
        AE title to call.
    calling_ae : str, optional
        Our AE title.
    timeout : float, optional
        Seconds before the process is killed (``subprocess.TimeoutExpired``).

    Returns
    -------
    subprocess.CompletedProcess
        ``returncode`` 0 on success; ``stdout``/``stderr`` hold DCMTK's log.
    """
    connect = str(max(1, int(timeout)))
    args = [require_binary("echoscu"), "-v", "-to", connect, "-ta", connect, "-td", connect]
    args += ["-aet", calling_ae, "-aec", called_ae, host, str(port)]
    return subprocess.run(
        args, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout, check=False
    )


# Options of storescu that choose the proposed transfer syntaxes; when the
# caller passes one of them, no association profile is generated.
_STORESCU_PROPOSAL_OPTIONS = re.compile(r"^(-x[a-z0-9=]|--propose-|-xf$|--config-file$|-R$)")

_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def _dicom_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


def storescu_profile(
    files: Iterable[str | os.PathLike[str]], target: Path
) -> tuple[Path, str] | None:
    """Write a storescu association profile that sends files as they are.

    DCMTK's ``storescu`` proposes only uncompressed transfer syntaxes unless
    told otherwise (``-x*`` picks at most one compressed syntax), and then
    fails on compressed files it cannot decompress. This profile proposes,
    for each SOP class in ``files``, one presentation context per transfer
    syntax found, plus one with the uncompressed syntaxes.

    Parameters
    ----------
    files : iterable of path-like
        DICOM files (directories are scanned recursively).
    target : Path
        Where to write the configuration file.

    Returns
    -------
    tuple of (Path, str) or None
        The configuration file and the profile name, for ``-xf FILE PROFILE``;
        None when no file is readable DICOM (storescu then reports it).

    Raises
    ------
    ValueError
        When more than 128 presentation contexts would be needed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    pairs: dict[str, set[str]] = {}
    for path in _dicom_files(Path(f) for f in files):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (InvalidDicomError, OSError):
            continue  # storescu itself reports files it cannot read
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID", ""))
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if sop_class:
            pairs.setdefault(sop_class, set()).add(syntax)

    if not pairs:
        return None
    syntaxes = sorted({ts for found in pairs.values() for ts in found if ts} - set(_UNCOMPRESSED))
    names = {ts: f"TS{i}" for i, ts in enumerate(syntaxes, 1)}
    lines = ["[[TransferSyntaxes]]", "[Uncompressed]"]
    lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(_UNCOMPRESSED, 1)]
    for ts, name in names.items():
        lines += [f"[{name}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    contexts: list[str] = []
    for sop_class in sorted(pairs):
        contexts += [f"{sop_class}\\{names[ts]}" for ts in sorted(pairs[sop_class]) if ts in names]
        contexts.append(f"{sop_class}\\Uncompressed")
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts needed; DICOM allows 128")
    lines += [f"PresentationContext{i} = {pc}" for i, pc in enumerate(contexts, 1)]
    lines += ["[[Profiles]]", "[Send]", "PresentationContexts = Contexts", ""]
    target.write_text("\n".join(lines))
    return target, "Send"


def storescu(
    host: str,
    port: int,
    files_or_dirs: Sequence[str | os.PathLike[str]],
    called_ae: str = "ANY-SCP",
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    *,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Send DICOM files with DCMTK ``storescu`` in one association.

    Each file goes in its own transfer syntax: unless ``extra_args`` choose
    the proposal themselves (``-x*``, ``-xf``, ``-R``), an association
    profile is generated by :func:`storescu_profile`. Directories are scanned
    recursively (``+sd +r``).

    Parameters
    ----------
    host : str
        Peer address.
    port : int
        Peer DICOM port.
    files_or_dirs : sequence of path-like
        Files and directories to send.
    called_ae : str, optional
        AE title to call.
    calling_ae : str, optional
        Our AE title.
    extra_args : sequence of str, optional
        More storescu options, e.g. ``["-nh"]`` (do not halt on a failed
        store) or ``["--abort"]``.
    timeout : float, optional
        Seconds before the process is killed (``subprocess.TimeoutExpired``).

    Returns
    -------
    subprocess.CompletedProcess
        ``returncode`` 0 when every C-STORE succeeded (DCMTK 3.6.7 exits 1
        on a refused association or a failed store); ``stdout``/``stderr``
        hold DCMTK's log (``-v``).
    """
    paths = [Path(p) for p in files_or_dirs]
    if not paths:
        raise ValueError("storescu needs at least one file or directory")
    args = [require_binary("storescu"), "-v", "-aet", calling_ae, "-aec", called_ae]
    args += ["-to", "10", "-ta", "30", "-td", "60"]
    if any(p.is_dir() for p in paths):
        args += ["+sd", "+r"]
    with tempfile.TemporaryDirectory(prefix="storescu-") as scratch:
        if not any(_STORESCU_PROPOSAL_OPTIONS.match(a) for a in extra_args):
            profile = storescu_profile(paths, Path(scratch, "storescu.cfg"))
            if profile is not None:
                args += ["-xf", str(profile[0]), profile[1]]
        args += [*extra_args, host, str(port), *map(str, paths)]
        return subprocess.run(
            args, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout, check=False
        )


class StoreSCP(_Peer):
    """DCMTK ``storescp`` on a free port, writing what it receives to a folder.

    It accepts every storage SOP class (``-pm``) in every transfer syntax
    (``+xa``) and keeps each object in the transfer syntax it arrived in.
    Files are named ``<modality>.<SOP Instance UID>.dcm``; the name of each
    file is appended to ``received.log`` (outside the output folder) once the
    file is completely written, which :meth:`received` reads.

    Parameters
    ----------
    workdir : path-like
        Directory for ``received/``, ``received.log`` and ``storescp.log``.
    aet : str, optional
        AE title of the SCP.
    port : int, optional
        Port to listen on; a free one by default.
    extra_args : sequence of str, optional
        More storescp options, e.g. ``["--fork"]`` for parallel associations,
        ``["--refuse"]`` or ``["--sleep-during", "5"]`` for failure tests.

    Notes
    -----
    storescp 3.6.7 cannot choose its listening address; it binds all
    interfaces.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        aet: str = "STORESCP",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self.output_dir = self.workdir / "received"
        self.received_log = self.workdir / "received.log"
        self.log_path = self.workdir / "storescp.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def is_running(self) -> bool:
        """Whether the storescp process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The storescp process (benchmarks read its CPU time)."""
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self, timeout: float = 15.0) -> Self:
        """Start storescp and wait until it accepts connections.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait.

        Returns
        -------
        StoreSCP
            ``self``.
        """
        if self.is_running:
            return self
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.received_log.touch()
        on_reception = f"echo #f >> {shlex.quote(str(self.received_log))}"
        args = [require_binary("storescp"), "-v", "-aet", self.aet, "-od", str(self.output_dir)]
        args += ["+xa", "-pm", "-dhl", "-fe", ".dcm", "-xcr", on_reception, "-xs"]
        args += [*self.extra_args, str(self.port)]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dcmtk_env(),
            )
        process = self._process

        def listening() -> bool:
            if process.poll() is not None:
                raise PeerError(f"storescp exited: {_tail(self.log_path)}")
            return port_is_open(self.port)

        try:
            wait_for(listening, timeout, 0.05, f"storescp on port {self.port}")
        except (PeerError, TimeoutError):
            _terminate(process, 5)
            raise PeerError(f"storescp did not start; log:\n{_tail(self.log_path)}") from None
        _running.add(self)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop storescp (SIGTERM, then SIGKILL after ``timeout``)."""
        if self._process is not None:
            _terminate(self._process, timeout)
        _running.discard(self)

    def kill(self) -> None:
        """Kill storescp at once."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        _running.discard(self)

    def received(self) -> list[Path]:
        """Return the files completely received so far, in arrival order."""
        names = self.received_log.read_text().split() if self.received_log.exists() else []
        return [self.output_dir / name for name in dict.fromkeys(names)]

    def wait_for_files(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Wait until at least ``count`` files were received.

        Parameters
        ----------
        count : int
            Number of distinct files to wait for.
        timeout : float, optional
            Seconds to wait.

        Returns
        -------
        list of Path
            The received files.
        """

        def enough() -> list[Path] | None:
            files = self.received()
            return files if len(files) >= count else None

        return wait_for(enough, timeout, 0.05, f"{count} file(s) at storescp")

    def _end(self) -> None:
        self.stop()

    def _where(self) -> str:
        return f"{self.aet} port={self.port}"


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_bindir() -> Path:
    """Return the directory holding ``initdb`` and ``pg_ctl``.

    ``$PG_BINDIR`` wins; then ``initdb`` on ``PATH``; then the newest
    ``/usr/lib/postgresql/*/bin`` (Debian does not put them on ``PATH``).

    Raises
    ------
    PeerMissingError
        When PostgreSQL's server binaries are not installed.
    """
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    on_path = shutil.which("initdb")
    if on_path:  # may be a symlink into /usr/lib/postgresql/N/bin
        candidates.append(Path(on_path).resolve().parent)

    def version(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/", path)
        return int(match.group(1)) if match else 0

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version)[::-1]
    ]
    for directory in candidates:
        if os.access(directory / "initdb", os.X_OK) and os.access(directory / "pg_ctl", os.X_OK):
            return directory
    raise PeerMissingError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _children(pid: int) -> list[int]:
    """Return the ids of the direct children of ``pid`` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


class PostgresCluster(_Peer):
    """A throwaway PostgreSQL cluster on 127.0.0.1 with trust authentication.

    ``initdb`` runs on the first :meth:`start`. The cluster listens on
    127.0.0.1 only, with its Unix socket in its own directory, and runs with
    ``fsync=off`` (fast; committed data still survives :meth:`kill`, since
    the OS itself does not crash, and ``synchronous_commit`` stays on so that
    nothing acknowledged is lost). When the tests run as root,
    PostgreSQL's programs run as the ``postgres`` OS user (``runuser``), and
    the cluster directory is owned by it.

    Parameters
    ----------
    parent : path-like, optional
        Where the cluster's temporary directory is made; the system temporary
        directory by default. As root it must be traversable by ``postgres``
        (pytest's ``tmp_path`` is not: it is under a 0700 folder of root's).
    database : str, optional
        Name of the database created at initialisation, the one :attr:`url`
        points to.
    port : int, optional
        Port to listen on; a free one by default.
    settings : mapping, optional
        More ``postgresql.conf`` settings, e.g. ``{"max_connections": "50"}``.

    Attributes
    ----------
    url : str
        SQLAlchemy URL of :attr:`database`,
        ``postgresql+psycopg://postgres@127.0.0.1:PORT/DATABASE``.
    """

    user = "postgres"
    host = LOOPBACK

    def __init__(
        self,
        parent: str | os.PathLike[str] | None = None,
        *,
        database: str = "dicom_node",
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if not _IDENTIFIER.match(database):
            raise ValueError(f"unsupported database name {database!r}")
        self.database = database
        self.port = port if port is not None else free_port()
        self.settings = dict(settings or {})
        self.bindir = postgres_bindir()
        self.base_dir = Path(tempfile.mkdtemp(prefix="dicom-node-pg-", dir=parent))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir
        self.log_path = self.base_dir / "postgresql.log"
        self._as_root = os.geteuid() == 0
        self._process: subprocess.Popen[bytes] | None = None
        if self._as_root:
            shutil.chown(self.base_dir, self.user, self.user)

    # -- helpers -----------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """Return the SQLAlchemy URL of ``database`` in this cluster."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def conninfo(self, database: str | None = None) -> str:
        """Return a libpq connection string (for psycopg or psql)."""
        db = database or self.database
        return f"host={self.host} port={self.port} user={self.user} dbname={db} connect_timeout=5"

    def _command(self, program: str, *args: str) -> list[str]:
        """Command line running a PostgreSQL program, as ``postgres`` when we are root."""
        command = [str(self.bindir / program), *args]
        if self._as_root:
            runuser = require_binary("runuser", ["/usr/sbin", "/sbin"])
            command = [runuser, "-u", self.user, "--", *command]
        return command

    def _run(
        self, program: str, *args: str, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._command(program, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base_dir,
            check=False,
        )
        if result.returncode != 0:
            raise PeerError(
                f"{program} failed with status {result.returncode}:\n{result.stdout}{result.stderr}"
                f"\nserver log:\n{_tail(self.log_path)}"
            )
        return result

    def postmaster_pid(self) -> int | None:
        """Return the postmaster's process id while it runs, else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    @property
    def is_running(self) -> bool:
        """Whether the postmaster is alive."""
        return self.postmaster_pid() is not None

    # -- lifecycle ---------------------------------------------------------

    def initdb(self) -> None:
        """Create the cluster (no-op when it exists)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            # The OS never crashes under a test, so skipping fsync loses nothing;
            # synchronous_commit stays on: a killed server must keep what it
            # acknowledged, or crash tests would see committed rows vanish.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "logging_collector": "off",
            **self.settings,
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# dicom-node test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self, timeout: float = 60.0) -> Self:
        """Initialise (first time) and start the server; wait until it accepts connections.

        The postmaster runs in the foreground as a child of this process (via
        ``runuser`` as root), not daemonised by ``pg_ctl``: after :meth:`kill`
        it is reaped at once, so a restart does not trip over a zombie named
        in ``postmaster.pid`` (an init that reaps orphans late would leave one).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait.

        Returns
        -------
        PostgresCluster
            ``self``.

        Raises
        ------
        PeerError
            When the server exits or does not accept connections in time.
        """
        if self.is_running:
            return self
        first = not (self.data_dir / "PG_VERSION").exists()
        self.initdb()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command("postgres", "-D", str(self.data_dir)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's to handle
            )
        process = self._process

        def accepting() -> bool:
            if process.poll() is not None:
                raise PeerError(f"postgres exited with status {process.returncode}")
            self.execute("SELECT 1")
            return True

        try:
            wait_for(accepting, timeout, 0.05, f"PostgreSQL on port {self.port}")
        except (PeerError, TimeoutError):
            self.kill()
            raise PeerError(f"PostgreSQL did not start; log:\n{_tail(self.log_path)}") from None
        _running.add(self)
        if first:
            self.create_database(self.database)
        return self

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server cleanly (``pg_ctl stop -m fast``: clients are disconnected).

        Parameters
        ----------
        mode : {"smart", "fast", "immediate"}, optional
            pg_ctl's shutdown mode.
        timeout : float, optional
            Seconds to wait.
        """
        if self.is_running:
            self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            )
        if self._process is not None:
            self._process.wait(timeout)
        _running.discard(self)

    def kill(self, timeout: float = 30.0) -> None:
        """Kill the postmaster with SIGKILL, as in a crash, and wait for its backends to go.

        The next :meth:`start` runs crash recovery.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the processes to exit.
        """
        pid = self.postmaster_pid()
        if pid is not None:
            children = _children(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            # Backends notice their postmaster's death and exit; a zombie has
            # already released its sockets and shared memory.
            wait_for(
                lambda: not any(_pid_alive(p) for p in children),
                timeout,
                0.05,
                "PostgreSQL backends to exit",
            )
        if self._process is not None:
            if self._process.poll() is None and pid is None:
                self._process.kill()  # started but never wrote postmaster.pid
            self._process.wait(timeout)  # runuser reaps the postmaster, then exits
        _running.discard(self)

    def restart(self) -> Self:
        """Stop (fast) and start again."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server (killing it if need be) and delete the cluster."""
        try:
            self.stop(mode="immediate", timeout=30)
        except PeerError:
            self.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _end(self) -> None:
        self.close()

    def _where(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- databases ---------------------------------------------------------

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one SQL statement in autocommit mode and return its rows.

        Parameters
        ----------
        sql : str
            The statement.
        database : str, optional
            Database to connect to; ``postgres`` by default.

        Returns
        -------
        list of tuple
            Result rows (empty for statements without a result).
        """
        import psycopg

        with psycopg.connect(self.conninfo(database), autocommit=True) as conn:
            cursor = conn.execute(sql.encode())
            return list(cursor.fetchall()) if cursor.description else []

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL.

        Parameters
        ----------
        name : str
            Lower-case identifier (letters, digits, underscores).

        Returns
        -------
        str
            ``postgresql+psycopg://postgres@127.0.0.1:PORT/NAME``.
        """
        if not _IDENTIFIER.match(name):
            raise ValueError(f"unsupported database name {name!r}")
        self.execute(f"CREATE DATABASE {name}")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients (``WITH (FORCE)``)."""
        if not _IDENTIFIER.match(name):
            raise ValueError(f"unsupported database name {name!r}")
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
