"""People's sessions: who logged in (a member, a coordinator, a clearing administrator), behind a
random token kept only as its SHA-256 digest, for a bearer header or an HTTP-only cookie.

Sessions live in the service's memory: a restart ends them all (everyone logs in again), and
nothing about them is written to the ledger. Failed logins are throttled per login and per
client address with ``limits``' moving window, so guessing is slow and says nothing."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

T = TypeVar("T")

SESSION_COOKIE = "timebank_session"
DEFAULT_LIFETIME = timedelta(hours=12)
# A failed login counts against the login tried and against the address it came from.
FAILURES_PER_LOGIN = "5/15minutes"
FAILURES_PER_ADDRESS = "30/15minutes"
MAX_SESSIONS = 100_000


@dataclass(frozen=True)
class Principal:
    """Who a session is: a role ("member", "coordinator", "admin") and that person's id."""

    role: str
    login: str
    name: str = ""


@dataclass(frozen=True)
class OpenedSession:
    token: str
    expires_at: datetime
    csrf: str


@dataclass
class _Session:
    principal: Principal
    expires: float  # monotonic
    csrf: str
    flash: str = ""  # what the next page shows once: the outcome of the form just sent


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Sessions:
    """Open sessions, by their token's digest; each ends at its expiry or at logout."""

    def __init__(
        self,
        lifetime: timedelta = DEFAULT_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._open: dict[bytes, _Session] = {}
        self._lock = threading.Lock()

    def open(self, principal: Principal) -> OpenedSession:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(16)
        now = self._clock()
        with self._lock:
            if len(self._open) >= MAX_SESSIONS:
                self._drop_expired(now)
            self._open[_digest(token)] = _Session(
                principal, now + self.lifetime.total_seconds(), csrf
            )
        return OpenedSession(token, datetime.now(UTC) + self.lifetime, csrf)

    def session_of(self, token: str) -> tuple[Principal, str] | None:
        """The principal and CSRF token of a live session, or None."""
        if not token:
            return None
        with self._lock:
            found = self._open.get(_digest(token))
            if found is None:
                return None
            if found.expires <= self._clock():
                del self._open[_digest(token)]
                return None
            return found.principal, found.csrf

    def principal_of(self, token: str) -> Principal | None:
        found = self.session_of(token)
        return found[0] if found else None

    def flash(self, token: str, message: str) -> None:
        """Keep ``message`` for the session's next page (after a form's redirect): it is shown
        once, and only to this session, never taken from the address."""
        with self._lock:
            found = self._open.get(_digest(token))
            if found is not None:
                found.flash = message

    def take_flash(self, token: str) -> str:
        with self._lock:
            found = self._open.get(_digest(token))
            if found is None:
                return ""
            message, found.flash = found.flash, ""
            return message

    def close(self, token: str) -> None:
        with self._lock:
            self._open.pop(_digest(token), None)

    def close_all_of(self, login: str) -> None:
        """End every session of ``login`` (its passphrase changed, or its access was revoked)."""
        with self._lock:
            for key in [k for k, s in self._open.items() if s.principal.login == login]:
                del self._open[key]

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, s in self._open.items() if s.expires <= now]:
            del self._open[key]


class LoginFailed(Exception):
    """The login or the secret is wrong (which one is never said)."""


class LoginThrottled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed attempts: try again in {retry_after} s")
        self.retry_after = retry_after


class LoginThrottle:
    """How many failed logins are allowed, per login and per client address, in a moving
    window. Only failures count: a member who logs in right is never slowed."""

    def __init__(
        self, per_login: str = FAILURES_PER_LOGIN, per_address: str = FAILURES_PER_ADDRESS
    ) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_login: RateLimitItem = parse(per_login)
        self._per_address: RateLimitItem = parse(per_address)

    def _keys(self, login: str, address: str) -> list[tuple[RateLimitItem, str]]:
        return [(self._per_login, f"login:{login.lower()}"), (self._per_address, f"ip:{address}")]

    def allowed(self, login: str, address: str) -> bool:
        return all(self._limiter.test(item, key) for item, key in self._keys(login, address))

    def failed(self, login: str, address: str) -> None:
        for item, key in self._keys(login, address):
            self._limiter.hit(item, key)

    def attempt(
        self,
        who: tuple[str, str],
        run: Callable[[], T],
        failures: tuple[type[Exception], ...] = (LoginFailed,),
    ) -> T:
        """``run`` (a login, a code tried), unless its login or address (``who``) has failed
        too often (LoginThrottled); a failure it raises is counted against both."""
        login, address = who
        if not self.allowed(login, address):
            raise LoginThrottled(self.retry_after(login, address))
        try:
            return run()
        except failures:
            self.failed(login, address)
            raise

    def retry_after(self, login: str, address: str) -> int:
        """Seconds until a blocked login may be tried again (at least 1)."""
        waits = [
            self._limiter.get_window_stats(item, key).reset_time - time.time()
            for item, key in self._keys(login, address)
            if not self._limiter.test(item, key)
        ]
        return max(1, int(max(waits, default=1)) + 1)
