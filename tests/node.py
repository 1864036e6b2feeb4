"""Run the real node as a process for end-to-end tests: ``dicom-node serve`` with a temp config.

The node is started exactly as an admin would start it (console entry point,
``--config``), its log goes to a file the test can read, and it can be
stopped politely (SIGTERM) or killed (SIGKILL) to test recovery.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Self

import yaml
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine, text

from dicom_node.db import make_engine

from peers import Orthanc, free_port, port_is_open

NODE_AET = "DICOM_NODE"
TEST_AET = "TEST_SCU"
REPO = Path(__file__).resolve().parent.parent
DEMO_CARD = REPO / "models" / "generic-demo" / "card.yaml"
SHIPPED_CONFIG = REPO / "config.yaml"
#: names another folder of demo models to test (``bench.demo_spread`` sets it for each build)
TEST_MODELS_ENV = "DICOM_NODE_TEST_MODELS"


def demo_models_dir() -> Path:
    """Where the demo models under test are: ``$DICOM_NODE_TEST_MODELS``, else ``models/``."""
    chosen = os.environ.get(TEST_MODELS_ENV)
    return Path(chosen) if chosen else REPO / "models"


def _shipped_card(card: str) -> str:
    """A shipped card path (``models/<name>/card.yaml``) in :func:`demo_models_dir`."""
    relative = Path(card)
    if relative.parts[:1] == ("models",):
        return str(demo_models_dir().joinpath(*relative.parts[1:]))
    return str(REPO / relative)


def node_config(
    workdir: Path,
    database_url: str,
    *,
    port: int | None = None,
    destinations: dict[str, dict[str, Any]] | None = None,
    routes: list[dict[str, Any]] | None = None,
    peers: list[dict[str, Any]] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A node configuration with test-friendly timings (seconds, not minutes)."""
    config: dict[str, Any] = {
        "node": {
            "ae_title": NODE_AET,
            "host": "127.0.0.1",
            "port": port or free_port(),
            "receiver_processes": 2,
            "peers": peers
            if peers is not None
            else [
                {"ae_title": TEST_AET, "host": "127.0.0.1"},
                {"ae_title": "ORTHANC", "host": "127.0.0.1"},
            ],
        },
        "storage": {
            "spool": str(workdir / "spool"),
            "database_url": database_url,
            "min_free_disk_mb": 50,
        },
        "completion": {
            "series_quiet_seconds": 1,
            "study_quiet_seconds": 2,
            "force_after_seconds": 120,
            "poll_seconds": 0.5,
        },
        "destinations": destinations or {},
        "dispatch": {
            "retry": {"initial_seconds": 1, "multiplier": 2, "max_seconds": 4, "max_attempts": 5},
            "poll_seconds": 0.5,
            "timeout_seconds": 10,
        },
        "pipelines": {"generic": {"card": str(DEMO_CARD), "device": "cpu"}},
        "routes": routes
        if routes is not None
        else [{"name": "all", "fallback": True, "pipeline": "generic", "shadow": True}],
    }
    for key, value in sections.items():
        config[key] = value
    return config


def shipped_routes(*names: str) -> dict[str, Any]:
    """The named routes of the shipped ``config.yaml`` and the pipelines they use.

    For ``node_config(..., **shipped_routes("chest-xr"))``: a pipeline test
    then routes with the rule an admin gets, not a copy of it. Card paths are
    made absolute (the shipped ones are relative to the repository) and the
    device is the CPU. The routes keep their ``destinations``, so the test's
    config needs the shipped destination names (``pacs``).
    """
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    routes = {route["name"]: route for route in shipped["routes"]}
    missing = [name for name in names if name not in routes]
    if missing:
        raise KeyError(f"no route {missing} in {SHIPPED_CONFIG}; it has {list(routes)}")
    chosen = [routes[name] for name in names]
    pipelines = {
        route["pipeline"]: {
            "card": _shipped_card(shipped["pipelines"][route["pipeline"]]["card"]),
            "device": "cpu",
        }
        for route in chosen
    }
    return {"routes": chosen, "pipelines": pipelines}


def pacs_node_config(
    workdir: Path,
    database_url: str,
    pacs: Orthanc,
    *routes: str,
    port: int | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A node that routes with the shipped ``routes`` (by name) and sends results to ``pacs``.

    The PACS may also store to the node (it forwards the studies), as may the tests' own SCU.
    """
    return node_config(
        workdir,
        database_url,
        port=port,
        destinations={"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}},
        peers=[
            {"ae_title": TEST_AET, "host": "127.0.0.1"},
            {"ae_title": pacs.aet, "host": "127.0.0.1"},
        ],
        **shipped_routes(*routes),
        **sections,
    )


class NodeProcess:
    """``dicom-node serve`` in a subprocess.

    Parameters
    ----------
    workdir : Path
        Holds ``config.yaml``, ``node.log`` and (by :func:`node_config`) the spool.
    config : dict
        The configuration to write.
    """

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.yaml"
        self.log_path = self.workdir / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        #: (SSL context, server host name) for :meth:`echo` when the node listens with TLS
        self.tls_args: tuple[Any, str | None] | None = None
        self.write_config(config)

    # --- configuration ----------------------------------------------------------------

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def port(self) -> int:
        return int(self.config["node"]["port"])

    @property
    def database_url(self) -> str:
        return str(self.config["storage"]["database_url"])

    # --- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 60.0, env: dict[str, str] | None = None) -> Self:
        """Start ``dicom-node serve`` and wait until it answers C-ECHO (``env``: extra variables)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this node is already running: stop() or kill() it first")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"node exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.echo():
                return self
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()  # a node that never answered must not outlive the test
        raise TimeoutError(f"node did not answer C-ECHO within {timeout} s:\n{tail}")

    def echo(self, calling_ae: str = TEST_AET) -> bool:
        if not port_is_open(self.port):
            return False
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 2
        assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AET, tls_args=self.tls_args)
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return getattr(status, "Status", None) == 0

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then wait (SIGKILL after ``timeout``)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash or power loss would (receivers die with the main process)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        # receivers get SIGKILL through PR_SET_PDEATHSIG; wait until the port is free again
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.echo():
            time.sleep(0.1)

    def hup(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def __enter__(self) -> Self:
        """Start the node, unless :meth:`start` already did (``with node.start():``)."""
        if self.process is not None and self.process.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inspection -------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def engine(self) -> Engine:
        return make_engine(self.database_url)

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params).all())
        finally:
            engine.dispose()

    def scalar(self, sql: str, **params: Any) -> Any:
        rows = self.query(sql, **params)
        return rows[0][0] if rows else None

    def get(
        self, path: str, *, opener: urllib.request.OpenerDirector | None = None
    ) -> tuple[int, bytes]:
        """GET ``path`` from the node's console (``opener``: signed in, from :meth:`sign_in`):
        (HTTP status, body), errors included."""
        url = f"http://127.0.0.1:{self.config['monitoring']['port']}{path}"
        try:
            with (opener or urllib.request.build_opener()).open(url, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def add_user(self, name: str, role: str, password: str = "correct horse battery") -> None:
        """A console account, made as an admin would (``dicom-node users add``)."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dicom_node",
                "users",
                "add",
                name,
                "--role",
                role,
                "--password-stdin",
                "--config",
                str(self.config_path),
            ],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    def sign_in(
        self, name: str, password: str = "correct horse battery"
    ) -> urllib.request.OpenerDirector:
        """An opener holding a console session of ``name`` (see :meth:`get`)."""
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        form = urllib.parse.urlencode({"name": name, "password": password}).encode()
        url = f"http://127.0.0.1:{self.config['monitoring']['port']}/login"
        with opener.open(url, data=form, timeout=30) as answer:
            assert answer.status == 200, answer.status  # the dashboard, after the redirect
        return opener

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``dicom-node ARGS --config <this node's config>``."""
        return subprocess.run(
            [sys.executable, "-m", "dicom_node", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_for(self, sql: str, expected: Any, timeout: float = 60.0, **params: Any) -> Any:
        """Poll ``sql`` until its first value equals ``expected``; return it."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.scalar(sql, **params)
            except Exception:  # noqa: BLE001 - the schema may not exist for a moment at start
                value = None
            if value == expected:
                return value
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"node exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            time.sleep(0.25)
        raise TimeoutError(
            f"{sql!r} was {value!r}, expected {expected!r} after {timeout} s:\n{self.log_tail()}"
        )


def results_for_a_secret_patient(
    pacs: Orthanc,
    tmp_path: Path,
    database_url: str,
    node_port: int,
    source: Path,
    route: str,
    secret: str,
    *,
    at_least: int = 3,
) -> tuple[dict[str, list[Any]], str]:
    """Send ``source`` as a patient named ``secret`` from the PACS through a node routing with
    the shipped ``route``, and wait for ``at_least`` objects in its study (image, SR, SC).

    Returns the study's objects by Modality, read back from the PACS, and the node's
    log: a test asserts the results name the patient and the log never does.
    """
    import io

    import pydicom

    ds = pydicom.dcmread(source)
    ds.PatientID = secret
    ds.PatientName = f"SECRET^{secret}"
    ds.save_as(tmp_path / "secret.dcm")
    workdir = tmp_path / "node"
    config = pacs_node_config(workdir, database_url, pacs, route, port=node_port)
    with NodeProcess(workdir, config) as node:
        pacs.upload(tmp_path / "secret.dcm")
        study_id = pacs.find_study(str(ds.StudyInstanceUID))
        assert study_id is not None
        summary = pacs.store_to_modality("node", [study_id])
        assert summary.get("FailedInstancesCount", 0) == 0
        pacs.wait_for(
            lambda: len(pacs.study_instances(study_id)) >= at_least,
            timeout=180,
            message=f"SR and SC back in the study\n{node.log_tail()}",
        )
    objects: dict[str, list[Any]] = {}
    for item in pacs.study_instances(study_id):
        found = pydicom.dcmread(io.BytesIO(pacs.instance_file(item["ID"])))
        objects.setdefault(str(found.Modality), []).append(found)
    return objects, node.log_path.read_text()
