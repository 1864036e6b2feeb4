"""Shared fixtures: real DICOM peers and the node's index database.

The peers are real programs (Orthanc, DCMTK, PostgreSQL; see ``peers.py``).
A missing program makes the test FAIL with a hint to run
``scripts/install-system-deps``; nothing is skipped silently.

The index database is SQLite unless ``DICOM_NODE_TEST_DATABASE=postgresql``,
in which case every test gets a fresh database in one throwaway PostgreSQL
cluster per session (``scripts/run-tests`` runs the suite both ways).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from node import demo_models_dir
from peers import (
    LOOPBACK,
    NODE_AET,
    NODE_MODALITY,
    PACS_AET,
    Orthanc,
    PeerMissingError,
    PostgresCluster,
    StoreSCP,
    free_port,
)

DATABASE_ENV = "DICOM_NODE_TEST_DATABASE"
DATABASE_BACKENDS = ("sqlite", "postgresql")


def database_backend() -> str:
    """Return the index database the suite runs against: "sqlite" or "postgresql"."""
    return os.environ.get(DATABASE_ENV, "sqlite").strip().lower() or "sqlite"


def pytest_configure(config: pytest.Config) -> None:
    if database_backend() not in DATABASE_BACKENDS:
        raise pytest.UsageError(
            f"{DATABASE_ENV}={os.environ.get(DATABASE_ENV)!r}: expected one of {DATABASE_BACKENDS}"
        )


def pytest_report_header(config: pytest.Config) -> str:
    return f"dicom-node index database: {database_backend()} ({DATABASE_ENV})"


#: The modules that measure what the demo models learned: their tests that take a demo model
#: are marked ``demo_quality``, and ``bench.demo_spread`` runs them on builds from other CPUs.
_QUALITY_MODULES = {
    "test_cxr_model",
    "test_hip_model",
    "test_ich_model",
    "test_ctslice_model",
    "test_generic_pipeline",
    "test_viewer",  # the radiologist's view needs boxes and a hemorrhage found to show them
}
_DEMO_FIXTURES = {
    "demo_card",
    "ich_demo_card",
    "cxr_demo_card",
    "ct_contrast_demo_card",
    "ct_noncontrast_demo_card",
    "hip_demo_card",
}


def _mark_demo_quality(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is None or module.__name__.rpartition(".")[2] not in _QUALITY_MODULES:
            continue
        if set(getattr(item, "fixturenames", ())) & _DEMO_FIXTURES:
            item.add_marker(pytest.mark.demo_quality)


#: set to 1 to run every test on PostgreSQL, not only those that use the index database
ALL_TESTS_ENV = "DICOM_NODE_TEST_ALL"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On PostgreSQL, run the tests that use the index database (``database_url``).

    Tests marked ``pipeline`` (one model's path through the node to the PACS)
    or ``ray`` (the Ray engine on a real cluster) run on SQLite only: the
    database does nothing there that the node's own end-to-end tests do not
    already run on PostgreSQL.

    ``scripts/run-tests`` runs the suite on SQLite, then on PostgreSQL; a test
    that never touches the index (a pipeline, the preprocessing, a parser)
    would only repeat its SQLite result while doubling the CI time.
    """
    _mark_demo_quality(items)
    if database_backend() != "postgresql" or os.environ.get(ALL_TESTS_ENV) == "1":
        return
    keep, skip = [], []
    for item in items:
        uses_index = "database_url" in getattr(item, "fixturenames", ())
        only_sqlite = item.get_closest_marker("pipeline") or item.get_closest_marker("ray")
        (keep if uses_index and not only_sqlite else skip).append(item)
    if skip:
        config.hook.pytest_deselected(items=skip)
        items[:] = keep


@contextlib.contextmanager
def required_peer() -> Iterator[None]:
    """Turn a missing peer program into a test failure (never a skip)."""
    try:
        yield
    except PeerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


# ---------------------------------------------------------------------------
# DICOM peers
# ---------------------------------------------------------------------------


@pytest.fixture
def node_port() -> int:
    """A free port for the node's DICOM listener; ``pacs`` sends to it."""
    return free_port()


OrthancFactory = Callable[..., Orthanc]


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[OrthancFactory]:
    """Start real Orthanc servers; all are stopped when the test ends.

    Call it as ``orthanc_factory(aet="PACS", modalities={...}, plugins=[...],
    config={...}, start=True)``; every argument is optional and passed to
    :class:`peers.Orthanc`. Each server keeps its configuration, storage and
    log in ``tmp_path/orthanc-<n>-<aet>``.
    """
    created: list[Orthanc] = []

    def make(
        *,
        aet: str = PACS_AET,
        modalities: Mapping[str, Any] | None = None,
        plugins: Sequence[str | os.PathLike[str]] = (),
        config: Mapping[str, Any] | None = None,
        start: bool = True,
    ) -> Orthanc:
        workdir = tmp_path / f"orthanc-{len(created)}-{aet.lower()}"
        orthanc = Orthanc(workdir, aet=aet, modalities=modalities, plugins=plugins, config=config)
        created.append(orthanc)
        if start:
            with required_peer():
                orthanc.start()
        return orthanc

    yield make
    for orthanc in created:
        orthanc.kill()  # its storage is thrown away; a clean stop takes ~3.5 s


@pytest.fixture
def pacs(orthanc_factory: OrthancFactory, node_port: int) -> Orthanc:
    """A running Orthanc (AET ``PACS``) playing the hospital PACS.

    Its ``DicomModalities`` has one entry, ``"node"`` ->
    ``["DICOM_NODE", "127.0.0.1", node_port]``: configure the node to listen
    on ``node_port`` and ``pacs.store_to_modality("node", [...])`` sends to
    it. The node reaches the PACS at ``127.0.0.1:pacs.dicom_port``.
    """
    return orthanc_factory(
        aet=PACS_AET, modalities={NODE_MODALITY: [NODE_AET, LOOPBACK, node_port]}
    )


StoreSCPFactory = Callable[..., StoreSCP]


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[StoreSCPFactory]:
    """Start DCMTK ``storescp`` destinations; all are stopped when the test ends.

    Call it as ``storescp_factory(aet="STORESCP", port=None, extra_args=(),
    start=True)``; with ``start=False`` the port is reserved in the object but
    nothing listens until ``scp.start()`` (a destination that is down). Files
    land in ``scp.output_dir``; ``scp.received()`` lists them and
    ``scp.wait_for_files(n)`` waits for them.
    """
    created: list[StoreSCP] = []

    def make(
        *,
        aet: str = "STORESCP",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> StoreSCP:
        workdir = tmp_path / f"storescp-{len(created)}-{aet.lower()}"
        scp = StoreSCP(workdir, aet=aet, port=port, extra_args=extra_args)
        created.append(scp)
        if start:
            with required_peer():
                scp.start()
        return scp

    yield make
    for scp in created:
        scp.stop()


# ---------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster for the whole session.

    Shared by ``database_url``: a test may stop and start it, but one that
    kills it or leaves it down should use ``postgres_cluster_factory``.
    """
    with required_peer():
        cluster = PostgresCluster()
    try:
        with required_peer():
            cluster.start()
        yield cluster
    finally:
        cluster.close()


PostgresClusterFactory = Callable[..., PostgresCluster]


@pytest.fixture
def postgres_cluster_factory() -> Iterator[PostgresClusterFactory]:
    """Start private PostgreSQL clusters (for restart/crash tests); removed at teardown.

    Call it as ``postgres_cluster_factory(database="dicom_node", settings=None)``.
    """
    created: list[PostgresCluster] = []

    def make(
        *, database: str = "dicom_node", settings: Mapping[str, str] | None = None
    ) -> PostgresCluster:
        with required_peer():
            cluster = PostgresCluster(database=database, settings=settings)
            created.append(cluster)
            return cluster.start()

    yield make
    for cluster in created:
        cluster.close()


@pytest.fixture(name="database_backend")
def database_backend_fixture() -> str:
    """The index database of this run: "sqlite" or "postgresql"."""
    return database_backend()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of an empty index database for this test.

    SQLite (``sqlite:////.../index.sqlite3`` in ``tmp_path``) by default; with
    ``DICOM_NODE_TEST_DATABASE=postgresql`` a new database (``CREATE
    DATABASE``) in the session's cluster,
    ``postgresql+psycopg://postgres@127.0.0.1:PORT/test_<hex>``, dropped after
    the test.
    """
    if database_backend() != "postgresql":
        yield f"sqlite:///{tmp_path / 'index.sqlite3'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    if not cluster.is_running:  # an earlier test stopped it and did not restart it
        cluster.start()
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = cluster.create_database(name)
    yield url
    with contextlib.suppress(Exception):
        cluster.drop_database(name)


def _demo(name: str) -> Path:
    """A demo model's card, built once per checkout (``scripts/run-tests`` builds them before
    pytest); built here if missing, else verified (sha256) and reused. The builds are
    deterministic on one machine, so every run here tests the same weights; other machines
    build others, which is why the quality bars come from a measured spread (``bars.py``)."""
    from pipelines.card import CARD_FILE, CardError, load_card
    from pipelines.common import codepath
    from pipelines.demo import build_demo

    # the code path the demos were built under (scripts/run-tests exports it), else the one the
    # existing card records: a build under another path would train every demo again
    chosen = os.environ.get(codepath.ENV_VAR)
    if not chosen:
        with contextlib.suppress(CardError, KeyError, TypeError):
            recorded = load_card(demo_models_dir() / name / CARD_FILE, verify_weights=False)
            chosen = (recorded.provenance.code_path or {})["name"]
    (card,) = build_demo(
        demo_models_dir(), seed=0, progress=False, only=[name], code_path=chosen or None
    )
    return card


@pytest.fixture(scope="session")
def demo_card() -> Path:
    """The generic demo model (lesion classifier): ``models/generic-demo/card.yaml``."""
    return _demo("generic-demo")


@pytest.fixture(scope="session")
def ich_demo_card() -> Path:
    """The ``ich-demo`` model (seed 002 on synthetic head CT): ``models/ich-demo/card.yaml``."""
    return _demo("ich-demo")


@pytest.fixture(scope="session")
def cxr_demo_card() -> Path:
    """The ``cxr-demo`` detector (seed 001 on synthetic chest radiographs)."""
    return _demo("cxr-demo")


@pytest.fixture(scope="session")
def ct_contrast_demo_card() -> Path:
    """The ``ct-gb-contrast-demo`` slice classifier (seed 000, contrast-enhanced phantoms)."""
    return _demo("ct-gb-contrast-demo")


@pytest.fixture(scope="session")
def ct_noncontrast_demo_card() -> Path:
    """The ``ct-gb-noncontrast-demo`` slice classifier (seed 000, non-contrast phantoms)."""
    return _demo("ct-gb-noncontrast-demo")


@pytest.fixture(scope="session")
def hip_demo_card() -> Path:
    """The ``hip-demo`` model (seed 003: femoral-neck localiser + osteoporosis classifier)."""
    return _demo("hip-demo")
