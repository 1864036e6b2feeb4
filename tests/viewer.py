"""The OHIF viewer as the radiologist's workstation: served on 127.0.0.1, reading from a real Orthanc.

OHIF's prebuilt ``dist/`` (``scripts/fetch-viewer``) is served by
:class:`ViewerServer` together with an ``app-config.js`` whose DICOMweb data
source is ``/dicom-web`` on the same origin; the server forwards that path
to Orthanc's DICOMweb plugin. One origin means no CORS to configure, as a
hospital's reverse proxy would do it.

The browser is Debian's ``chromium`` driven by Playwright (no browser
download): see :func:`launch_chromium`.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from peers import LOOPBACK

ROOT = Path(__file__).resolve().parent.parent
OHIF_VERSION = "3.13.2"
CHROMIUM = Path("/usr/bin/chromium")
#: Chromium switches for a quiet, offline, headless run on a machine without a GPU.
CHROMIUM_ARGS = (
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--no-sandbox",
    # cornerstone3D renders with WebGL: SwiftShader provides it in software
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)

#: The proxied DICOMweb root, relative to the viewer's origin.
DICOMWEB_PATH = "/dicom-web"


def ohif_dist() -> Path:
    """The OHIF ``dist/`` folder: ``$OHIF_DIST`` or the one ``scripts/fetch-viewer`` unpacked.

    Raises
    ------
    FileNotFoundError
        When neither exists, saying which command fetches it.
    """
    dist = Path(os.environ.get("OHIF_DIST") or ROOT / ".cache" / f"ohif-{OHIF_VERSION}" / "dist")
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"no OHIF viewer at {dist}: run scripts/fetch-viewer")
    return dist


def app_config(origin: str) -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source, the PACS behind ``/dicom-web``.

    QIDO-RS and WADO-RS go to the same proxied root; ``staticWado`` is off
    (Orthanc answers real queries) and thumbnails are rendered by OHIF from
    the pixel data, not fetched from ``/rendered``.
    """
    root = origin + DICOMWEB_PATH
    config: dict[str, Any] = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "pacs",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "pacs",
                "configuration": {
                    "friendlyName": "Orthanc (the PACS)",
                    "name": "orthanc",
                    "wadoUriRoot": f"{origin}/wado",
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: _ViewerHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        return

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = urlsplit(self.path).path
        if path.startswith((DICOMWEB_PATH + "/", "/wado")):
            self._proxy()
        elif path == "/app-config.js":
            origin = f"http://{self.headers.get('Host', self.server.host)}"
            self._send(200, app_config(origin).encode(), "application/javascript")
        else:
            self._static(path)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _static(self, path: str) -> None:
        dist = self.server.dist
        file = (dist / path.lstrip("/")).resolve()
        if not file.is_relative_to(dist) or not file.is_file():
            file = dist / "index.html"  # a single-page app: every route is index.html
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".wasm":
            content_type = "application/wasm"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(file.stat().st_size))
        self.end_headers()
        with open(file, "rb") as fh:
            shutil.copyfileobj(fh, self.wfile)

    def _proxy(self) -> None:
        connection = http.client.HTTPConnection(LOOPBACK, self.server.pacs_port, timeout=60)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "user-agent")
        }
        try:
            connection.request("GET", self.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except OSError as exc:
            self._send(502, f"PACS unreachable: {exc}".encode(), "text/plain")
            return
        finally:
            connection.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ViewerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, pacs_port: int) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.dist = dist.resolve()
        self.pacs_port = pacs_port
        self.host = f"{LOOPBACK}:{self.server_address[1]}"


class ViewerServer:
    """OHIF on ``http://127.0.0.1:PORT/`` with ``/dicom-web`` forwarded to an Orthanc.

    Parameters
    ----------
    pacs_http_port : int
        The HTTP port of the Orthanc whose DICOMweb plugin answers.
    dist : Path, optional
        OHIF's ``dist/`` (default :func:`ohif_dist`).
    """

    def __init__(self, pacs_http_port: int, dist: Path | None = None) -> None:
        self._server = _ViewerHTTPServer(dist or ohif_dist(), pacs_http_port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._server.host}"

    def viewer_url(self, study_uid: str, mode: str = "viewer") -> str:
        """The URL that opens one study in an OHIF mode (``viewer`` is the basic viewer)."""
        return f"{self.url}/{mode}?StudyInstanceUIDs={study_uid}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """A headless Debian chromium under Playwright; yields the browser.

    Raises
    ------
    FileNotFoundError
        When ``/usr/bin/chromium`` is missing (``scripts/install-system-deps`` installs it).
    """
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} missing: run scripts/install-system-deps")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield browser
        finally:
            browser.close()
