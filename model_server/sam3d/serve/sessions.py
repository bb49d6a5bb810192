"""Sessions in memory: unguessable ids, a capacity and a memory budget (both reserved before an
upload is read), expiry after a time without requests, and eviction of the least recently used
idle session when a new one needs room."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from ..engine.session import Session
from .errors import MemoryBudgetExceeded, ServerAtCapacity, SessionExpired, SessionNotFound

# How many ids of expired or evicted sessions are remembered (to answer 410 rather than 404).
REMEMBERED_GONE = 10_000
MIB = 1 << 20


@dataclass
class _Entry:
    session: Session
    last_used: float
    reserved: int  # bytes the session may hold at most (its share of the memory budget)
    active: int = 0  # requests using the session now


class SessionStore:
    """Thread-safe map of session id -> engine Session with TTL, capacity and memory budget."""

    def __init__(self, max_sessions: int, ttl_s: float, max_memory: int, evict_idle_s: float,
                 clock=time.monotonic) -> None:
        self.max_sessions = int(max_sessions)
        self.ttl_s = float(ttl_s)
        self.max_memory = int(max_memory)
        self.evict_idle_s = float(evict_idle_s)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> why it is gone
        self._pending_sessions = 0
        self._pending_bytes = 0
        self._lock = threading.Lock()

    # -- admission ------------------------------------------------------------------------
    def reserve(self, nbytes: int) -> None:
        """Hold room for one more session of at most ``nbytes`` (before its upload is read),
        evicting least recently used idle sessions if needed; 503 / 507 when there is none."""
        with self._lock:
            self._purge()
            while not self._fits(nbytes) and self._evict_one():
                pass
            if len(self._entries) + self._pending_sessions >= self.max_sessions:
                raise ServerAtCapacity(f"the server holds {self.max_sessions} sessions, none idle for "
                                       f"{self.evict_idle_s:g} s")
            if self._reserved() + nbytes > self.max_memory:
                raise MemoryBudgetExceeded(
                    f"a session of this volume needs up to {nbytes / MIB:.1f} MiB; the server's budget is "
                    f"{self.max_memory / MIB:.1f} MiB, of which {self._reserved() / MIB:.1f} MiB are held "
                    "by sessions in use")
            self._pending_sessions += 1
            self._pending_bytes += nbytes

    def release(self, nbytes: int) -> None:
        """Give back a reservation whose upload failed."""
        with self._lock:
            self._pending_sessions -= 1
            self._pending_bytes -= nbytes

    def add(self, session: Session, reserved: int, keep: int) -> str:
        """Store a session in place of its reservation of ``reserved`` bytes (upload included),
        holding ``keep`` of them from now on; returns its new id."""
        with self._lock:
            self._pending_sessions -= 1
            self._pending_bytes -= reserved
            session_id = secrets.token_urlsafe(18)
            self._entries[session_id] = _Entry(session, self._clock(), keep)
            return session_id

    # -- use ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, session_id: str, touch: bool = True) -> Iterator[Session]:
        """The session for one request (404 unknown, 410 expired / evicted); it cannot expire or
        be evicted while in use, and its expiry clock restarts when the request ends (unless
        ``touch`` is False: the server's own idle work, which must not keep a session alive)."""
        with self._lock:
            self._purge()
            entry = self._entries.get(session_id)
            if entry is None:
                raise self._missing(session_id)
            entry.active += 1
        try:
            yield entry.session
        finally:
            with self._lock:
                entry.active -= 1
                if touch:
                    entry.last_used = self._clock()
                    if session_id in self._entries:
                        self._entries.move_to_end(session_id)

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._purge()
            if self._entries.pop(session_id, None) is None:
                raise self._missing(session_id)

    def expires_in(self, session_id: str) -> float:
        with self._lock:
            entry = self._entries.get(session_id)
            return 0.0 if entry is None else max(0.0, entry.last_used + self.ttl_s - self._clock())

    def memory(self) -> dict[str, int]:
        """Budget, bytes reserved by sessions (and uploads under way), bytes sessions hold now."""
        with self._lock:
            self._purge()
            entries = list(self._entries.values())
            reserved = self._reserved()
        return {"budget_bytes": self.max_memory, "reserved_bytes": reserved,
                "used_bytes": sum(e.session.memory_bytes() for e in entries)}

    def __len__(self) -> int:
        """The sessions held (expired ones included until the next purge)."""
        with self._lock:
            return len(self._entries)

    # -- housekeeping ---------------------------------------------------------------------
    def purge(self) -> None:
        """Drop expired sessions now (frees their memory without waiting for a request)."""
        with self._lock:
            self._purge()

    def _reserved(self) -> int:
        return sum(e.reserved for e in self._entries.values()) + self._pending_bytes

    def _fits(self, nbytes: int) -> bool:
        return (len(self._entries) + self._pending_sessions < self.max_sessions
                and self._reserved() + nbytes <= self.max_memory)

    def _evict_one(self) -> bool:
        now = self._clock()
        for session_id, entry in self._entries.items():  # least recently used first
            if entry.active == 0 and now - entry.last_used >= self.evict_idle_s:
                del self._entries[session_id]
                self._remember(session_id, f"session {session_id} was closed after {now - entry.last_used:.0f} s "
                                           "without requests to make room for another user")
                return True
        return False

    def _missing(self, session_id: str) -> Exception:
        if session_id in self._gone:
            return SessionExpired(self._gone[session_id])
        return SessionNotFound("no such session on this server" if len(session_id) > 64
                               else f"no session {session_id} on this server")

    def _remember(self, session_id: str, reason: str) -> None:
        self._gone[session_id] = reason
        while len(self._gone) > REMEMBERED_GONE:
            self._gone.popitem(last=False)

    def _purge(self) -> None:
        now = self._clock()
        for session_id in [s for s, e in self._entries.items() if e.active == 0 and now - e.last_used > self.ttl_s]:
            del self._entries[session_id]
            self._remember(session_id, f"session {session_id} expired after {self.ttl_s:g} s without requests")
