"""Runs the Logic's jobs on a worker thread, one at a time, in the order asked.

The Widget calls :meth:`InteractionQueue.pump` from a timer on the main thread: it finishes a
completed job there (MRML is only touched on the main thread) and starts the next one.
Clicks placed while a prediction runs wait in the queue and go out together in the next
request, so none is lost and the segment catches up in one step. Qt-free, so pytest can
drive it exactly as the Widget does. Batch work runs on a queue of its own (``batch.BatchRun``),
so clicks never wait behind it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Optional, Tuple

from .logic import Job, PromptLogic
from .prompts import Click

# on_done(name, result, error): called on the main thread after each finished operation.
DoneCallback = Callable[[str, Any, Optional[BaseException]], None]


class InteractionQueue:
    """Serial queue of clicks and operations in front of one :class:`PromptLogic`."""

    def __init__(self, logic: Optional[PromptLogic], on_done: DoneCallback,
                 on_work: Optional[Callable[[], None]] = None):
        self.logic = logic  # needed for clicks only
        self._on_done = on_done
        self._on_work = on_work  # called whenever work is queued (the Widget starts its timer)
        # Entries: ("clicks", [Click]) or (name, prepare) where prepare() -> Job or None.
        self._pending: Deque[Tuple[str, Any]] = deque()
        self._running: Optional[Job] = None
        self._thread: Optional[threading.Thread] = None
        self._started_at = 0.0

    # -- asking ------------------------------------------------------------------------------
    def add_click(self, click: Click) -> None:
        """Queue one click; consecutive queued clicks are sent together."""
        if self._pending and self._pending[-1][0] == "clicks":
            self._pending[-1][1].append(click)
        else:
            self._pending.append(("clicks", [click]))
        self._woken()

    def add(self, name: str, prepare: Callable[[], Optional[Job]]) -> None:
        """Queue an operation: ``prepare()`` runs on the main thread when its turn comes and
        returns the Job to run on the worker, or None when it needed no network."""
        self._pending.append((name, prepare))
        self._woken()

    def _woken(self) -> None:
        if self._on_work is not None:
            self._on_work()

    # -- state -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def busy_seconds(self) -> float:
        """How long the running job has been running (0 when idle)."""
        return time.monotonic() - self._started_at if self._running is not None else 0.0

    @property
    def queued_clicks(self) -> int:
        return sum(len(entry[1]) for entry in self._pending if entry[0] == "clicks")

    @property
    def idle(self) -> bool:
        return self._running is None and not self._pending

    # -- main-thread pump --------------------------------------------------------------------
    def pump(self) -> None:
        """Finish a completed job and start the next one; never blocks."""
        if self._running is not None:
            if self._thread is not None and self._thread.is_alive():
                return
            job, self._running, self._thread = self._running, None, None
            self._finish(job.name, job.finish)
        while self._running is None and self._pending:
            name, payload = self._pending.popleft()
            try:
                if name == "clicks":
                    job = self.logic.prepare_clicks(payload)
                else:
                    job = payload()
            except Exception as error:  # a prompt the logic refuses: report, go on
                if name == "clicks":
                    for click in payload:
                        self.logic.remove_click(click)
                self._on_done(name, None, error)
                continue
            if job is None:
                self._on_done(name, None, None)
                continue
            self._running = job
            self._started_at = time.monotonic()
            self._thread = threading.Thread(target=job.run, name=f"SAM3D {name}", daemon=True)
            self._thread.start()

    def _finish(self, name: str, finish: Callable[[], Any]) -> None:
        try:
            result = finish()
        except Exception as error:
            self._on_done(name, None, error)
        else:
            self._on_done(name, result, None)

    def discard(self) -> None:
        """Forget the queued work and the result of the running job (e.g. the scene is
        closing); the running network call ends on its own and its result is dropped. The
        abandoned call keeps the Logic's client: the Logic gets a new one."""
        self._pending.clear()
        if self._running is not None and self.logic is not None:
            self.logic.renew_client()
        self._running = None
        self._thread = None

    def drop_pending(self) -> None:
        """Forget the queued work; the running job still finishes (e.g. a cancelled batch)."""
        self._pending.clear()

    def wait_until_idle(self, timeout: float = 60.0, poll_s: float = 0.01) -> None:
        """Pump until everything queued is done (for scripts and tests; the Widget uses a timer)."""
        deadline = time.monotonic() + timeout
        while not self.idle:
            if time.monotonic() > deadline:
                raise TimeoutError(f"requests still running after {timeout:g} s")
            self.pump()
            time.sleep(poll_s)
