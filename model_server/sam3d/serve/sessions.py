"""Sessions in memory: unguessable ids, a capacity, expiry after a time without requests."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..engine.session import Session
from .errors import ServerAtCapacity, SessionExpired, SessionNotFound

# How many expired ids are remembered (to answer 410 rather than 404).
REMEMBERED_EXPIRED = 10_000


@dataclass
class _Entry:
    session: Session
    last_used: float


class SessionStore:
    """Thread-safe map of session id -> engine Session with TTL and capacity."""

    def __init__(self, max_sessions: int, ttl_s: float, clock=time.monotonic) -> None:
        self.max_sessions = int(max_sessions)
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def check_capacity(self) -> None:
        """Raise ServerAtCapacity when no session can be added now (before reading an upload)."""
        with self._lock:
            self._purge()
            if len(self._entries) >= self.max_sessions:
                raise ServerAtCapacity(f"the server already holds {self.max_sessions} sessions")

    def add(self, session: Session) -> str:
        with self._lock:
            self._purge()
            if len(self._entries) >= self.max_sessions:
                raise ServerAtCapacity(f"the server already holds {self.max_sessions} sessions")
            session_id = secrets.token_urlsafe(18)
            self._entries[session_id] = _Entry(session, self._clock())
            return session_id

    def get(self, session_id: str) -> Session:
        """The session, its expiry clock restarted; 404 unknown, 410 expired."""
        with self._lock:
            self._purge()
            entry = self._entries.get(session_id)
            if entry is None:
                raise self._missing(session_id)
            entry.last_used = self._clock()
            return entry.session

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._purge()
            if self._entries.pop(session_id, None) is None:
                raise self._missing(session_id)

    def expires_in(self, session_id: str) -> float:
        with self._lock:
            entry = self._entries.get(session_id)
            return 0.0 if entry is None else max(0.0, entry.last_used + self.ttl_s - self._clock())

    def sessions(self) -> list[Session]:
        with self._lock:
            self._purge()
            return [entry.session for entry in self._entries.values()]

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._entries)

    def _missing(self, session_id: str) -> Exception:
        if session_id in self._expired:
            return SessionExpired(f"session {session_id} expired after {self.ttl_s:g} s without requests")
        return SessionNotFound(f"no session {session_id} on this server")

    def _purge(self) -> None:
        now = self._clock()
        for session_id in [s for s, e in self._entries.items() if now - e.last_used > self.ttl_s]:
            del self._entries[session_id]
            self._expired[session_id] = None
        while len(self._expired) > REMEMBERED_EXPIRED:
            self._expired.popitem(last=False)
