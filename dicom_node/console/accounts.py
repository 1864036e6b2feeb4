"""Console accounts, roles, sessions and the login rate limit.

Passwords are hashed with argon2id (``argon2-cffi``, its default parameters);
a session is a random token in an HTTP-only cookie, of which the index keeps
only the SHA-256, so a copy of the database signs nobody in. Each session
carries its own CSRF token, which every state-changing form must send back.
A session ends after :data:`IDLE_MINUTES` without a request, or
:data:`MAX_HOURS` after sign-in, whichever comes first.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dicom_node.console.tables import ConsoleSession, ConsoleUser
from dicom_node.db import utcnow
from dicom_node.events import record

#: a session ends after this many minutes without a request
IDLE_MINUTES = 30
#: and at the latest this many hours after sign-in
MAX_HOURS = 12
#: failed sign-ins per account and address within the window before sign-in is refused
MAX_FAILURES = 5
FAILURE_WINDOW_SECONDS = 300.0
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()


class Role(enum.StrEnum):
    """What a console user may do; each role may do what the ones before it may."""

    #: read every page
    VIEWER = "viewer"
    #: and retry failed jobs, resend deliveries
    OPERATOR = "operator"
    #: and manage users (and, later, edit routes)
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


class AccountError(ValueError):
    """An account cannot be created or changed as asked (the message says why)."""


@dataclass(frozen=True)
class SignedIn:
    """The user behind a request's session."""

    name: str
    role: Role
    csrf_token: str


def add_user(session: Session, name: str, role: str, password: str, *, actor: str | None) -> None:
    """Create an account; raises :class:`AccountError` for a taken name, an unknown role, a
    short password."""
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise AccountError("a user name is 1 to 64 printable characters")
    try:
        role = Role(role)
    except ValueError:
        raise AccountError(
            f"role {role!r} is not one of {', '.join(r.value for r in Role)}"
        ) from None
    _check_password(password)
    if session.scalar(select(ConsoleUser.id).where(ConsoleUser.name == name)) is not None:
        raise AccountError(f"user {name!r} exists already")
    session.add(
        ConsoleUser(
            name=name, role=role.value, password_hash=_hasher.hash(password), created_at=utcnow()
        )
    )
    record(session, "console", "user-added", name, f"role {role.value}", actor=actor)


def set_password(session: Session, name: str, password: str, *, actor: str | None) -> None:
    """Change a password; every session of that user ends."""
    user = _user(session, name)
    _check_password(password)
    user.password_hash = _hasher.hash(password)
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    record(session, "console", "password-changed", name, None, actor=actor)


def remove_user(session: Session, name: str, *, actor: str | None) -> None:
    """Delete an account and its sessions."""
    user = _user(session, name)
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    session.delete(user)
    record(session, "console", "user-removed", name, None, actor=actor)


def list_users(session: Session) -> list[tuple[str, Role]]:
    """Every account's name and role, by name."""
    rows = session.execute(select(ConsoleUser.name, ConsoleUser.role).order_by(ConsoleUser.name))
    return [(name, Role(role)) for name, role in rows]


def sign_in(session: Session, name: str, password: str) -> str | None:
    """A new session's token for the right password, else None (the same for an unknown name)."""
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.name == name.strip()))
    if user is None:
        _hasher.hash(password)  # about as slow as a wrong password: names do not leak by timing
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    record(session, "console", "signed-in", user.name, None, actor=user.name)
    return start_session(session, user)


def start_session(session: Session, user: ConsoleUser) -> str:
    """A new session for ``user``; returns the token for its cookie."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        ConsoleSession(
            token_hash=_digest(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
        )
    )
    return token


#: the password hash of an account that signs in only through the identity provider
SSO_ONLY = "!sso"


def sso_user(session: Session, name: str, role: Role) -> ConsoleUser:
    """The account of a user the identity provider vouched for, created or given the role
    the provider's groups grant now; it has no password here."""
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))
    if user is not None and user.password_hash != SSO_ONLY:
        raise AccountError(
            f"a local account named {name!r} exists: the identity provider cannot sign it in "
            "(remove the local account, or have the provider send another name)"
        )
    if user is None:
        user = ConsoleUser(name=name, role=role.value, password_hash=SSO_ONLY, created_at=utcnow())
        session.add(user)
        session.flush()
        record(session, "console", "user-added", name, f"role {role.value}, single sign-on")
    elif user.role != role.value:
        record(session, "console", "role-changed", name, f"{user.role} -> {role.value} (groups)")
        user.role = role.value
    record(session, "console", "signed-in", name, "single sign-on", actor=name)
    return user


def signed_in(session: Session, token: str | None) -> SignedIn | None:
    """The user of a session token, or None when it is unknown or expired (and then removed)."""
    if not token:
        return None
    row = session.get(ConsoleSession, _digest(token))
    if row is None:
        return None
    now = utcnow()
    if now - row.last_seen_at > timedelta(minutes=IDLE_MINUTES) or now - row.created_at > timedelta(
        hours=MAX_HOURS
    ):
        session.delete(row)
        return None
    user = session.get(ConsoleUser, row.user_id)
    if user is None:
        return None
    row.last_seen_at = now
    return SignedIn(user.name, Role(user.role), row.csrf_token)


def sign_out(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == _digest(token)))


def csrf_matches(user: SignedIn, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(user.csrf_token, sent)


class LoginLimiter:
    """Refuses sign-in for an (account, address) pair after :data:`MAX_FAILURES` failures
    within :data:`FAILURE_WINDOW_SECONDS` (kept in the console's process; a restart forgets)."""

    def __init__(
        self, max_failures: int = MAX_FAILURES, window: float = FAILURE_WINDOW_SECONDS
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, name: str, address: str) -> bool:
        with self._lock:
            return len(self._recent((name.strip(), address))) >= self.max_failures

    def failed(self, name: str, address: str) -> None:
        with self._lock:
            key = (name.strip(), address)
            self._recent(key).append(time.monotonic())
            if len(self._failures) > 10_000:  # a spray of names: forget the oldest entries
                for stale in list(self._failures)[:5_000]:
                    del self._failures[stale]

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and time.monotonic() - times[0] > self.window:
            times.popleft()
        return times


def _user(session: Session, name: str) -> ConsoleUser:
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))
    if user is None:
        raise AccountError(f"no user {name!r}")
    return user


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
