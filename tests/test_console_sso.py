"""Single sign-on for the console against a real OpenID Connect provider on this machine.

The provider is ``oidc-provider-mock`` (Authlib's server side, run in a thread): it serves
discovery, keys, authorization, token and userinfo as a hospital's Keycloak would, for the
users a test names. The console's side is the code that runs in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from oidc_provider_mock import User, run_server_in_thread
from sqlalchemy import text

from dicom_node.config import LiveConfig
from dicom_node.console import accounts
from dicom_node.console.app import make_app
from dicom_node.console.sso import role_for
from dicom_node.db import make_engine, migrate, session_factory, transaction
from dicom_node.monitor import NodeView
from dicom_node.spool import Spool

# the provider's own Authlib server warns about its deprecated hooks: not this code's
pytestmark = pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")

ALICE = User(
    sub="alice-sub", claims={"preferred_username": "alice", "groups": ["staff", "ai-admins"]}
)
RAD = User(sub="rad-sub", claims={"preferred_username": "rad", "groups": ["radiologists"]})
VISITOR = User(sub="visitor-sub", claims={"preferred_username": "visitor", "groups": ["visitors"]})
CAROL = User(sub="carol-sub", claims={"preferred_username": "carol", "groups": ["ai-admins"]})


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with run_server_in_thread(user_claims=[ALICE, RAD, VISITOR, CAROL]) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture
def console(tmp_path: Path, database_url: str, provider: str) -> Iterator[tuple[Any, Any]]:
    secret = tmp_path / "oidc-secret"
    secret.write_text("s3cret\n")
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
storage: {{spool: spool, database_url: "{database_url}", min_free_disk_mb: 0}}
monitoring:
  oidc:
    issuer: {provider}
    client_id: dicom-node
    client_secret_file: {secret}
    label: Hospital SSO
    roles: {{admin: [ai-admins], viewer: [radiologists]}}
"""
    )
    live = LiveConfig(path)
    engine = make_engine(database_url)
    migrate(engine)
    view = NodeView(live, engine, Spool(live().storage.spool), lambda: (1, 1))
    yield make_app(view, config_path=path), engine
    engine.dispose()


def sign_in_at_provider(app: Any, sub: str) -> tuple[TestClient, Any]:
    """The browser's round trip: the console sends it to the provider, the user picks ``sub``
    on the provider's form, the provider sends it back with a code."""
    client = TestClient(app, follow_redirects=False)
    page = client.get("/login")
    assert 'href="/login/sso"' in page.text and "Sign in with Hospital SSO" in page.text
    to_provider = client.get("/login/sso")
    assert to_provider.status_code in (302, 303, 307), to_provider.text
    authorized = httpx.post(to_provider.headers["location"], data={"sub": sub})
    assert authorized.status_code == 302, authorized.text
    back = urlsplit(authorized.headers["location"])
    assert back.path == "/login/sso/callback" and "code=" in back.query
    return client, client.get(f"{back.path}?{back.query}")


def test_a_provider_user_signs_in_with_the_role_their_groups_grant(console: Any) -> None:
    app, engine = console
    client, answer = sign_in_at_provider(app, "alice-sub")
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    assert "dicom_node_session" in answer.headers["set-cookie"]
    assert client.get("/users").status_code == 200  # ai-admins: admin
    viewer, answer = sign_in_at_provider(app, "rad-sub")
    assert answer.status_code == 303
    assert viewer.get("/").status_code == 200 and viewer.get("/users").status_code == 403
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, role FROM console_users ORDER BY name")).all()
        events = conn.execute(
            text("SELECT actor FROM events WHERE kind = 'signed-in' ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows] == [("alice", "admin"), ("rad", "viewer")]
    assert [e[0] for e in events] == ["alice", "rad"]
    # the account has no password here: the local form cannot sign it in
    local = TestClient(app, follow_redirects=False).post(
        "/login", data={"name": "alice", "password": "!sso"}
    )
    assert local.status_code == 401


def test_a_provider_user_without_a_console_group_is_refused(console: Any) -> None:
    app, engine = console
    client, answer = sign_in_at_provider(app, "visitor-sub")
    assert answer.status_code == 403 and "no console role" in answer.text
    assert "dicom_node_session" not in answer.headers.get("set-cookie", "")
    assert client.get("/", headers={"accept": "text/html"}).status_code == 303  # still anonymous
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM console_users")).scalar() == 0


def test_the_provider_cannot_sign_in_a_local_account(console: Any) -> None:
    app, engine = console
    with transaction(session_factory(engine)) as session:
        accounts.add_user(session, "carol", "viewer", "correct horse battery", actor=None)
    _, answer = sign_in_at_provider(app, "carol-sub")
    assert answer.status_code == 403 and "a local account named" in answer.text


def test_the_highest_role_the_groups_grant_applies() -> None:
    from dicom_node.config import OidcSettings

    settings = OidcSettings(
        issuer="https://idp.example",
        client_id="x",
        client_secret_file=Path("/dev/null"),
        roles={"viewer": ["rad"], "operator": ["ops"], "admin": ["it"]},
    )
    assert role_for(settings, ["rad", "ops"]) == accounts.Role.OPERATOR
    assert role_for(settings, "it") == accounts.Role.ADMIN
    assert role_for(settings, ["other"]) is None and role_for(settings, None) is None


def test_a_missing_client_secret_file_is_a_configuration_error(
    tmp_path: Path, database_url: str, provider: str
) -> None:
    from dicom_node.config import ConfigError

    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
storage: {{spool: spool, database_url: "{database_url}"}}
monitoring:
  oidc: {{issuer: {provider}, client_id: x, client_secret_file: {tmp_path}/absent,
          roles: {{viewer: [g]}}}}
"""
    )
    live = LiveConfig(path)
    engine = make_engine(database_url)
    try:
        with pytest.raises(ConfigError, match="client_secret_file .*absent"):
            make_app(NodeView(live, engine, Spool(live().storage.spool), lambda: (1, 1)))
    finally:
        engine.dispose()
