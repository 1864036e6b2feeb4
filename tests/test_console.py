"""The web console's rules, over HTTP against the real application and a real index.

Who may do what (anonymous, viewer, operator, admin), CSRF tokens on every change, the
sign-in rate limit, sessions that end, changes in the audit trail with their user, header
values shown as text. ``tests/test_console_browser.py`` drives the pages in Chromium against
a running node.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import text

from dicom_node.config import LiveConfig
from dicom_node.console import accounts
from dicom_node.console.app import OPEN_PATHS, make_app
from dicom_node.db import make_engine, migrate, session_factory, transaction, utcnow
from dicom_node.jobs.engine import LocalEngine
from dicom_node.jobs.tables import Job, JobState
from dicom_node.monitor import NodeView
from dicom_node.receive.index import ReceivedInstance, index_instance
from dicom_node.spool import Spool
from pipelines.common.phantoms import write_radiograph_study

from node import DEMO_CARD

PASSWORD = "correct horse battery"


@dataclass
class Console:
    app: Any
    engine: Any
    sessions: Any
    config_path: Path
    live: LiveConfig

    def client(self) -> TestClient:
        return TestClient(self.app, follow_redirects=False)

    def signed_in(self, name: str, password: str = PASSWORD) -> TestClient:
        client = self.client()
        answer = client.post("/login", data={"name": name, "password": password})
        assert answer.status_code == 303, answer.text
        return client

    def scalar(self, sql: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql)).scalar()


CONFIG = """\
node: {{ae_title: NODE, host: 127.0.0.1, port: 11112}}
storage: {{spool: spool, database_url: "{url}", min_free_disk_mb: 0}}
pipelines:
  generic: {{card: {card}, device: cpu}}
routes:
  - name: chest-xr
    match: {{Modality: [CR, DX], BodyPartExamined: CHEST}}
    pipeline: generic
    shadow: true
"""


@pytest.fixture
def console(tmp_path: Path, database_url: str) -> Iterator[Console]:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(url=database_url, card=DEMO_CARD))
    live = LiveConfig(path)
    engine = make_engine(database_url)
    migrate(engine)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        for name, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin")):
            accounts.add_user(session, name, role, PASSWORD, actor=None)
    view = NodeView(live, engine, Spool(live().storage.spool), lambda: (1, 1))
    models = LocalEngine(live)
    app = make_app(
        view,
        config_path=path,
        reload=live.reload,
        try_model=lambda name, spec, inputs: models.infer(0, name, spec, inputs),
    )
    yield Console(app, engine, sessions, path, live)
    models.close()
    engine.dispose()


def failed_job(console: Console) -> int:
    with transaction(console.sessions) as session:
        job = Job(
            study_instance_uid="1.2.3",
            generation=1,
            route="r",
            pipeline="p",
            series_uids=["1.2.3.4"],
            destinations=[],
            state=JobState.FAILED,
            attempts=2,
            error="boom",
            created_at=utcnow(),
        )
        session.add(job)
        session.flush()
        return job.id


def csrf_of(client: TestClient, page: str = "/work") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found, "no CSRF token on the page"
    return found.group(1)


def every_route(routes: list[Any]) -> Iterator[APIRoute]:
    """The application's routes, those of included routers too (FastAPI keeps those apart)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from every_route(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def test_every_url_but_the_open_ones_refuses_an_anonymous_request(console: Console) -> None:
    client = console.client()
    checked = 0
    for route in every_route(console.app.routes):
        if route.path.startswith(OPEN_PATHS):
            continue
        path = re.sub(r"{[^}]+}", "1", route.path)
        for method in route.methods:
            answer = client.request(method, path, headers={"accept": "application/json"})
            assert answer.status_code == 401, (method, path, answer.status_code)
            checked += 1
        # a browser is sent to the login page, and comes back after it
        if "GET" in route.methods:
            page = client.get(path, headers={"accept": "text/html"})
            assert page.status_code == 303 and page.headers["location"].startswith("/login?next=/")
    assert checked >= 18
    # the open ones answer without a session
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").text.count("dicom_node_index_up 1.0") == 1
    assert client.get("/login").status_code == 200
    assert client.get("/static/console.css").status_code == 200


def test_each_role_sees_and_does_what_it_may(console: Console) -> None:
    job = failed_job(console)
    viewer = console.signed_in("vera")
    assert viewer.get("/").status_code == 200
    assert viewer.get("/work").status_code == 200 and "Retry" not in viewer.get("/work").text
    assert viewer.get("/audit").status_code == 200
    assert viewer.get("/status").json()["jobs"] == {"failed": 1}
    assert viewer.get("/users").status_code == 403
    refused = viewer.post(f"/work/jobs/{job}/retry", data={"csrf": csrf_of(viewer, "/")})
    assert refused.status_code == 403
    assert console.scalar(f"SELECT state FROM jobs WHERE id = {job}") == "failed"

    operator = console.signed_in("otto")
    assert operator.get("/users").status_code == 403
    done = operator.post(f"/work/jobs/{job}/retry", data={"csrf": csrf_of(operator)})
    assert done.status_code == 303 and "queued%20again" in done.headers["location"]
    assert console.scalar(f"SELECT state FROM jobs WHERE id = {job}") == "pending"
    assert console.scalar(f"SELECT attempts FROM jobs WHERE id = {job}") == 0
    # audited, with the user
    assert console.scalar("SELECT actor FROM events WHERE kind = 'job-requeued'") == "otto"
    assert "job-requeued" in operator.get("/audit?actor=otto").text

    admin = console.signed_in("ada")
    added = admin.post(
        "/users",
        data={
            "name": "nina",
            "role": "viewer",
            "password": PASSWORD,
            "csrf": csrf_of(admin, "/users"),
        },
    )
    assert added.status_code == 303
    console.signed_in("nina")
    short = admin.post(
        "/users",
        data={"name": "x", "role": "viewer", "password": "short", "csrf": csrf_of(admin, "/users")},
    )
    assert short.status_code == 400 and "at least 10 characters" in short.text
    assert (
        console.scalar("SELECT actor FROM events WHERE kind = 'user-added' ORDER BY id DESC")
        == "ada"
    )


def test_a_form_without_its_csrf_token_changes_nothing(console: Console) -> None:
    job = failed_job(console)
    operator = console.signed_in("otto")
    for data in ({}, {"csrf": "forged"}):
        answer = operator.post(f"/work/jobs/{job}/retry", data=data)
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    assert console.scalar(f"SELECT state FROM jobs WHERE id = {job}") == "failed"
    # another session's token is no good either
    other = console.signed_in("otto")
    answer = operator.post(f"/work/jobs/{job}/retry", data={"csrf": csrf_of(other)})
    assert answer.status_code == 403


def test_sign_in_is_refused_after_five_failures(console: Console) -> None:
    client = console.client()
    for _ in range(accounts.MAX_FAILURES):
        wrong = client.post("/login", data={"name": "ada", "password": "not the password"})
        assert wrong.status_code == 401 and "wrong" in wrong.text
    blocked = client.post("/login", data={"name": "ada", "password": PASSWORD})
    assert blocked.status_code == 429
    assert "session" not in blocked.headers.get("set-cookie", "")
    assert console.scalar("SELECT count(*) FROM events WHERE kind = 'sign-in-failed'") == 5
    # an unknown name fails the same way, without telling that the name is unknown
    unknown = client.post("/login", data={"name": "nobody", "password": PASSWORD})
    assert unknown.status_code == 401 and unknown.text.count("wrong") == 1


def test_sessions_end_on_sign_out_and_on_a_password_change(console: Console) -> None:
    viewer = console.signed_in("vera")
    cookie = viewer.cookies.get("dicom_node_session")
    assert cookie and viewer.get("/").status_code == 200
    out = viewer.post("/logout", data={"csrf": csrf_of(viewer, "/")})
    assert out.status_code == 303
    stale = console.client()
    stale.cookies.set("dicom_node_session", cookie)
    assert stale.get("/", headers={"accept": "text/html"}).status_code == 303

    again = console.signed_in("vera")
    with transaction(console.sessions) as session:
        accounts.set_password(session, "vera", "another good password", actor="ada")
    assert again.get("/status").status_code == 401
    # the token itself is not in the index, only its hash
    assert (
        console.scalar(f"SELECT count(*) FROM console_sessions WHERE token_hash = '{cookie}'") == 0
    )


def test_the_session_cookie_is_http_only_and_same_site(console: Console) -> None:
    answer = console.client().post("/login", data={"name": "vera", "password": PASSWORD})
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "content-security-policy" in answer.headers


def test_a_series_description_holding_a_script_is_shown_as_text(console: Console) -> None:
    item = ReceivedInstance(
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid="1.2.3.4",
        study_instance_uid="1.2.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        body_part_examined=None,
        series_description="<script>alert(1)</script>",
        path="instances/1.2.3/1.2.3.4/1.2.3.4.5.dcm",
        size=1,
        calling_ae_title="CT1",
        source_address=None,
        received_at=utcnow(),
        accession_number="ACC-42",
    )
    with transaction(console.sessions) as session:
        index_instance(session, item)
    viewer = console.signed_in("vera")
    page = viewer.get("/").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    # the study page shows it as text too; the study is found by its accession number and UIDs
    study = viewer.get("/studies/1.2.3").text
    assert "&lt;script&gt;" in study and "<script>alert" not in study
    assert 'href="/studies/1.2.3"' in viewer.get("/studies?accession=ACC-42").text
    assert 'href="/studies/1.2.3"' in viewer.get("/studies?uid=1.2.3.4.5").text  # a SOP UID
    assert 'href="/studies/1.2.3"' not in viewer.get("/studies?accession=ACC-43").text
    assert viewer.get("/studies?day=yesterday").text.count("is not a date") == 1


def test_users_are_managed_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f'storage: {{spool: spool, database_url: "sqlite:///{tmp_path}/index.db"}}\n')

    def run(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dicom_node", "users", *args, "--config", str(config)],
            input=password,
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = run("add", "ada", "--role", "admin", "--password-stdin", password=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert run("list").stdout == "ada\tadmin\n"
    taken = run("add", "ada", "--role", "viewer", "--password-stdin", password=PASSWORD + "\n")
    assert taken.returncode == 2 and "exists already" in taken.stderr
    assert run("remove", "ada").returncode == 0
    assert run("list").stdout == ""


def test_an_invalid_route_edit_is_refused_and_the_running_rules_stay(console: Console) -> None:
    before = console.config_path.read_text()
    assert console.signed_in("otto").get("/routes/edit").status_code == 403  # operators read only
    admin = console.signed_in("ada")
    editor = admin.get("/routes/edit")
    assert editor.status_code == 200 and "chest-xr" in editor.text
    token = csrf_of(admin, "/routes/edit")
    broken = before.replace("BodyPartExamined", "BodyPartExamind").replace(
        "pipeline: generic", "pipeline: nowhere"
    )
    refused = admin.post("/routes/edit", data={"text": broken, "csrf": token})
    assert refused.status_code == 400
    assert "not saved" in refused.text and "nowhere" in refused.text  # the node's error, naming it
    assert console.config_path.read_text() == before
    assert [r.pipeline for r in console.live().routes] == ["generic"]

    edited = before.replace("name: chest-xr", "name: chest-radiographs")
    saved = admin.post("/routes/edit", data={"text": edited, "csrf": token})
    assert saved.status_code == 303 and saved.headers["location"] == "/routes?saved=1"
    assert console.config_path.read_text() == edited
    assert [r.name for r in console.live().routes] == ["chest-radiographs"]  # reloaded at once
    assert "chest-radiographs" in admin.get("/routes").text
    assert console.scalar("SELECT actor FROM events WHERE kind = 'edited'") == "ada"
    assert "+  - name: chest-radiographs" in console.scalar(
        "SELECT detail FROM events WHERE kind = 'edited'"
    )


def test_the_dry_run_explains_an_uploaded_file(console: Console, tmp_path: Path) -> None:
    image = write_radiograph_study(tmp_path / "in", seed=3, index=0, lesion=False)
    viewer = console.signed_in("vera")
    token = csrf_of(viewer, "/routes")
    with image.path.open("rb") as f:
        answer = viewer.post(
            "/routes/explain", data={"csrf": token}, files={"file": ("chest.dcm", f)}
        )
    assert answer.status_code == 200
    assert "chest-xr" in answer.text and "MATCH" in answer.text.upper()
    assert str(tmp_path) not in answer.text
    garbage = viewer.post(
        "/routes/explain", data={"csrf": token}, files={"file": ("x.dcm", b"not dicom")}
    )
    assert garbage.status_code == 200 and "Traceback" not in garbage.text


def test_the_models_page_shows_the_card_its_provenance_and_metrics(console: Console) -> None:
    page = console.signed_in("vera").get("/models")
    assert page.status_code == 200
    assert "generic-demo" in page.text
    assert "Trained on synthetic data" in page.text and "Not for clinical use" in page.text
    assert re.search(r"\d\.\d{3} <span class=\"ci\">\(\d\.\d{3}–\d\.\d{3}\)", page.text)
    cards = console.signed_in("vera").get("/models.json").json()
    assert cards[0]["card"]["provenance"]["synthetic"] is True
    # plots are served from the card's folder only
    assert (
        console.signed_in("vera").get("/models/generic/plots/../../etc/passwd.png").status_code
        == 404
    )


def test_try_a_model_on_a_dicom_file_and_on_a_png(console: Console, tmp_path: Path) -> None:
    import io
    import tempfile

    import numpy as np
    import pydicom
    from PIL import Image

    image = write_radiograph_study(tmp_path / "in", seed=9, index=0, lesion=True)
    user = console.signed_in("vera")
    token = csrf_of(user, "/try")
    with image.path.open("rb") as f:  # the routes choose: chest-xr, the generic model
        page = user.post("/try", data={"csrf": token}, files={"file": ("chest.dcm", f)})
    assert page.status_code == 200, page.text
    assert "route chest-xr" in page.text and "generic-demo" in page.text
    assert "Not for diagnostic use" in page.text
    assert re.search(r"Lesion <small>\(lesion\)</small></td><td class=\"num\">\d+\.\d %", page.text)
    assert page.text.count('src="data:image/png;base64,') >= 1  # the heatmap, as the PACS gets it
    assert '<span class="ci">' in page.text  # the card's validation with its CIs
    assert "osteoporosis suspected" not in page.text.lower()

    pixels = pydicom.dcmread(image.path).pixel_array.astype(float)
    gray = (255 * (pixels - pixels.min()) / np.ptp(pixels)).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(gray).save(png, format="PNG")
    page = user.post(
        "/try",
        data={"csrf": token, "pipeline": "generic"},
        files={"file": ("chest.png", png.getvalue(), "image/png")},
    )
    assert page.status_code == 200 and "chosen: generic" in page.text
    assert 'id="try-findings"' in page.text

    refused = user.post(
        "/try",
        data={"csrf": token},
        files={"file": ("chest.png", png.getvalue(), "image/png")},
    )
    assert refused.status_code == 400 and "choose a pipeline" in refused.text
    garbage = user.post("/try", data={"csrf": token}, files={"file": ("x.bin", b"\x00" * 300)})
    assert garbage.status_code == 400
    assert (
        "neither a DICOM file nor a PNG or JPEG" in garbage.text and "Traceback" not in garbage.text
    )
    # nothing was stored or queued, and the uploads are gone
    assert console.scalar("SELECT count(*) FROM instances") == 0
    assert console.scalar("SELECT count(*) FROM jobs") == 0
    assert not list(Path(tempfile.gettempdir()).glob("dicom-node-try-*"))
    assert console.scalar("SELECT count(*) FROM events WHERE kind = 'tried'") == 2


def test_the_dashboard_charts_count_each_hour_from_the_index(console: Console) -> None:
    from datetime import timedelta

    from dicom_node.console.charts import HOURS, hourly

    now = utcnow()
    with transaction(console.sessions) as session:
        cases = ((5.5, 30.0, True), (5.4, 90.0, True), (0.5, None, False))
        for number, (hours_ago, took, started) in enumerate(cases):
            created = now - timedelta(hours=hours_ago)
            session.add(
                Job(
                    study_instance_uid=f"1.2.3.{number}",
                    generation=1,
                    route="r",
                    pipeline="p",
                    series_uids=[],
                    destinations=[],
                    state=JobState.DONE if took else JobState.PENDING,
                    attempts=1,
                    created_at=created,
                    started_at=created + timedelta(seconds=5) if started else None,
                    finished_at=created + timedelta(seconds=took) if took else None,
                )
            )
    with console.sessions() as session:
        studies, finished, latency, depth = hourly(session, now)
    assert len(finished.bars) == HOURS
    values = [v for _, v in finished.bars]
    assert values[HOURS - 6] == 2 and sum(values) == 2  # both finished 5-6 hours ago
    assert [v for _, v in latency.bars][HOURS - 6] == 60.0  # (30 + 90) / 2
    assert [v for _, v in depth.bars][-1] == 1  # the pending one waits at the last hour's end
    assert sum(v for _, v in depth.bars) == 1
    page = console.signed_in("vera").get("/").text
    assert page.count("<svg") == 4 and "Jobs waiting at the hour" in page


def test_patient_names_are_shown_only_to_the_roles_the_config_names(
    console: Console, tmp_path: Path
) -> None:
    import pydicom

    from dicom_node.receive.check import read_header
    from dicom_node.receive.indexer import identify, received_instance
    from dicom_node.receive.scp import HEADER_TAGS

    image = write_radiograph_study(tmp_path / "in", seed=4, index=7, lesion=False)
    ds = pydicom.dcmread(image.path)
    spool = Spool(console.live().storage.spool)
    identity = identify(read_header(image.path, ds.file_meta.TransferSyntaxUID, HEADER_TAGS))
    item = received_instance(
        identity,
        spool=spool,
        syntax=str(ds.file_meta.TransferSyntaxUID),
        size=image.path.stat().st_size,
        calling_ae_title="CR1",
        source_address=None,
        received_at=utcnow(),
        association=None,
    )
    spool.write(item.path, image.path.read_bytes())
    with transaction(console.sessions) as session:
        index_instance(session, item)
    page = f"/studies/{ds.StudyInstanceUID}"
    name = str(ds.PatientName)
    assert name not in console.signed_in("ada").get(page).text  # nobody, by default
    console.config_path.write_text(
        console.config_path.read_text() + "monitoring: {patient_data_roles: [admin]}\n"
    )
    assert console.live.reload()
    assert name not in console.signed_in("vera").get(page).text
    shown = console.signed_in("ada").get(page).text
    assert name in shown and str(ds.PatientID) in shown
    assert console.scalar("SELECT actor FROM events WHERE kind = 'patient-data-shown'") == "ada"
