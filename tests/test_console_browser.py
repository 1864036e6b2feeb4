"""The web console in Debian's Chromium against a running node, Orthanc as the PACS.

An operator signs in, sees the dashboard, finds the dead letter the PACS outage left on the
Work page and resends it with one click; the results reach Orthanc, and the audit trail
names the operator. A viewer sees the same page without the button. Screenshots go to
``test-artifacts/console/`` (the README's come from here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from pipelines.common.phantoms import write_radiograph_study

from node import TEST_AET, NodeProcess, node_config, shipped_routes
from peers import free_port, storescu
from viewer import launch_chromium

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
PASSWORD = "correct horse battery"


def test_an_operator_resends_a_dead_letter_from_the_page_and_it_reaches_orthanc(
    tmp_path: Path, database_url: str, orthanc_factory: Any, demo_card: Path
) -> None:
    pacs = orthanc_factory(aet="PACS", start=False)  # down: the delivery dies
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        destinations={"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}},
        routes=[{"name": "all", "fallback": True, "pipeline": "generic", "destinations": ["pacs"]}],
        monitoring={"host": "127.0.0.1", "port": free_port()},
    )
    config["dispatch"]["retry"] = {
        "initial_seconds": 0.2,
        "multiplier": 2,
        "max_seconds": 1,
        "max_attempts": 2,
    }
    image = write_radiograph_study(tmp_path / "in", seed=77, index=0, lesion=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with NodeProcess(workdir, config) as node:
        node.add_user("otto", "operator", PASSWORD)
        node.add_user("vera", "viewer", PASSWORD)
        sent = storescu(
            "127.0.0.1", node.port, [image.path], called_ae="DICOM_NODE", calling_ae=TEST_AET
        )
        assert sent.returncode == 0, sent.stderr
        node.wait_for("SELECT count(*) FROM deliveries WHERE state = 'dead'", 1, timeout=180)
        pacs.start()
        base = f"http://127.0.0.1:{config['monitoring']['port']}"
        with launch_chromium() as browser:
            viewer_page = browser.new_page(viewport={"width": 1280, "height": 900})
            sign_in(viewer_page, base, "vera")
            viewer_page.goto(f"{base}/work")
            assert viewer_page.locator("#dead tbody tr").count() == 1
            assert viewer_page.locator("#dead button").count() == 0  # a viewer cannot resend

            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/work")  # not signed in: to the login page, and back after it
            assert "/login" in page.url
            page.fill("input[name=name]", "otto")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/work")
            page.goto(f"{base}/")
            assert page.locator("#health").inner_text() == "healthy"
            assert page.locator("#series tbody tr").count() == 1
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            page.goto(f"{base}/work")
            page.screenshot(path=str(ARTIFACTS / "work.png"), full_page=True)
            page.locator("#dead button", has_text="Resend").click()
            page.wait_for_load_state()
            assert "queued again" in page.locator(".notice").inner_text()
            # the study, its job and results, opened in the browser
            study_uid = str(pydicom.dcmread(image.path, stop_before_pixels=True).StudyInstanceUID)
            page.goto(f"{base}/studies?uid={study_uid[:20]}")
            page.click(f"#studies a:has-text('{study_uid}')")
            assert page.locator("#completions tbody tr").count() == 1
            results = page.locator(".results a")
            assert results.count() == 2  # the SR and its heatmap
            page.locator(".results tr", has_text="SR").locator("a").click()
            assert page.locator("#findings tbody tr").count() >= 1
            assert "Lesion" in page.locator("#findings").inner_text()
            page.screenshot(path=str(ARTIFACTS / "result.png"), full_page=True)
            page.go_back()
            page.locator(".results tr", has_text="SC").locator("a").click()
            page.wait_for_function(  # the heatmap loaded and decoded in the browser
                "() => { const img = document.querySelector('img.heatmap');"
                " return img !== null && img.complete && img.naturalWidth > 0; }",
                timeout=30_000,
            )
        node.wait_for("SELECT count(*) FROM deliveries WHERE state = 'done'", 1, timeout=120)
        assert node.scalar("SELECT actor FROM events WHERE kind = 'resend'") == "otto"
    study = pydicom.dcmread(image.path, stop_before_pixels=True).StudyInstanceUID
    assert pacs.find_study(str(study)) is not None  # the results reached the PACS


def sign_in(page: Any, base: str, name: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_a_clinician_tries_the_hip_model_and_an_admins_bad_route_edit_is_refused(
    tmp_path: Path, database_url: str, hip_demo_card: Path
) -> None:
    """The seed-003 platform in the node: a hip radiograph on the Try page shows the result, the
    heatmap and, when positive, the DEXA advice. A route edit that does not validate is refused
    with the node's error, and the node keeps routing with the old rules."""
    from pipelines.hip.demo import HipDemoData
    from pipelines.hip.synth import write_hip_dataset

    shipped = shipped_routes("hip-xr")
    shipped["routes"] = [{**shipped["routes"][0], "destinations": [], "shadow": True}]
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        monitoring={"host": "127.0.0.1", "port": free_port()},
        **shipped,
    )
    demo = HipDemoData()
    hips = write_hip_dataset(
        tmp_path / "hips",
        patients=8,
        seed=2024,
        size=demo.phantom_size,
        years=demo.years,
        osteoporosis_fraction=1.0,
    )
    porotic = [image for image in hips.images if image.label == 1][:8]
    assert porotic
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with NodeProcess(workdir, config) as node:
        node.add_user("ada", "admin", PASSWORD)
        node.add_user("otto", "operator", PASSWORD)
        node.add_user("clara", "viewer", PASSWORD)
        base = f"http://127.0.0.1:{config['monitoring']['port']}"
        with launch_chromium() as browser:
            operator = browser.new_page()
            sign_in(operator, base, "otto")
            assert operator.goto(f"{base}/routes/edit").status == 403  # not an operator's

            admin = browser.new_page(viewport={"width": 1280, "height": 900})
            sign_in(admin, base, "ada")
            admin.goto(f"{base}/routes/edit")
            text = admin.locator("textarea[name=text]").input_value()
            admin.fill(
                "textarea[name=text]", text.replace("hip-osteoporosis", "hip-osteoporosys", 1)
            )
            admin.click("#editor button[type=submit]")
            error = admin.locator("#route-error").inner_text()
            assert "not saved" in error and "hip-osteoporosys" in error
            assert node.config_path.read_text() == text  # untouched
            # the node still routes with the old rules: a hip study gets its hip job
            sent = storescu(
                "127.0.0.1",
                node.port,
                [porotic[0].path],
                called_ae="DICOM_NODE",
                calling_ae=TEST_AET,
            )
            assert sent.returncode == 0, sent.stderr
            node.wait_for(
                "SELECT count(*) FROM jobs WHERE pipeline = 'hip-osteoporosis'", 1, timeout=60
            )

            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            sign_in(page, base, "clara")
            advised = None
            for image in porotic:
                page.goto(f"{base}/try")
                page.set_input_files("input[name=file]", str(image.path))
                page.select_option("select[name=pipeline]", "hip-osteoporosis")
                page.click("#try-form button[type=submit]")
                page.wait_for_selector("#try-result, #try-error")
                if page.locator("#try-error").count():
                    continue  # e.g. no femoral neck found: the page says so, in words
                assert page.locator("#try-findings tbody tr").count() >= 1
                assert page.locator("figure.heatmap img").count() >= 1
                assert "Not for diagnostic use" in page.locator(".disclaimer").inner_text()
                if page.locator("#advice").count():
                    advised = image
                    break
            assert advised is not None, "no osteoporotic phantom was called positive"
            advice = page.locator("#advice").inner_text()
            assert "Osteoporosis suspected" in advice and "DEXA" in advice
            page.screenshot(path=str(ARTIFACTS / "try-hip.png"), full_page=True)
            page.click("#advice a")
            assert page.locator("#questionnaire li").count() >= 8
        # tries are never indexed nor sent: only the study sent over DICOM is in the index
        assert node.scalar("SELECT count(*) FROM instances") == 1
