"""The threads the server's engine work runs on: two fixed lanes instead of FastAPI's pool.

Why: torch's CPU thread pool (GNU OpenMP) keeps one team of threads per calling thread, and
once two threads have run parallel torch work every parallel region gets slower. Measured on a
2-core machine with the default model (next click in the same crop, median of 6): 93 ms when one
thread only ever runs torch, 150 ms when the same call runs on a second thread (FastAPI runs
each request on any thread of its pool), and the first thread slows down too (133 ms). So:

- the **main lane** - one thread with torch's full thread count - runs the model's loading and
  warm-up and every engine call while it is free;
- the **side lane** - ``SIDE_THREADS`` threads with one torch thread each - takes the calls that
  arrive while the main lane is busy (another user's encoder run), so a click does not wait
  seconds behind it. Single-threaded torch starts no OpenMP team, so the main lane keeps its
  speed.

The predictor's own locks still decide what may run at once (one encoder run at a time).

**Idle work** (``run_in_idle_time``: the 2D windows a session's next correction will decode on)
runs on the main lane only while nothing else runs or waits there, and only once no engine call
has ended for ``IDLE_AFTER_S``, one short step at a time; a call that arrives meanwhile queues on
the main lane behind that step instead of going to the side lane. Work the lane was wanted for,
or whose session or encoder was busy, is not dropped: it goes on once the lane is free again
(newest session's work first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable, TypeVar

import torch

from ..engine.predictor import IdleStep

Result = TypeVar("Result")
SIDE_THREADS = 8  # calls served at once while the main lane is busy (each may wait on a model lock)
BUSY_RETRY_S = 1.0  # idle work that found something busy is retried after an engine call ends, or after this
# idle work starts once the main lane has been free this long: a client clicking back to back
# (the next request within this time) never waits behind an idle step
IDLE_AFTER_S = 0.25
log = logging.getLogger("sam3d.serve")


class EngineLanes:
    """Run blocking engine calls on the main lane (``threads`` torch threads) when it is free,
    else on the side lane (one torch thread per call)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._main = ThreadPoolExecutor(1, thread_name_prefix="sam3d-engine",
                                        initializer=torch.set_num_threads, initargs=(self.threads,))
        self._side = ThreadPoolExecutor(SIDE_THREADS, thread_name_prefix="sam3d-engine-side",
                                        initializer=torch.set_num_threads, initargs=(1,))
        self._lock = threading.Lock()
        self._main_calls = 0  # running or queued on the main lane
        self._idle_calls = 0  # of those, idle work (at most one)
        self._changed = threading.Condition(self._lock)  # an engine call ended, idle work came, or shutdown
        self._idle_work: OrderedDict[Hashable, Callable[[], IdleStep]] = OrderedDict()  # newest last
        self._idle_busy = False  # the last idle step found something busy: wait for an engine call to end
        self._closed = False
        self._last_call_end = 0.0  # time.monotonic() when the last engine call (not idle work) ended
        self._idle = threading.Thread(target=self._run_idle_work, name="sam3d-idle", daemon=True)
        self._idle.start()

    def run(self, call: Callable[..., Result], *args) -> Result:
        """``call(*args)`` on a lane; blocks until it returns (or raises what it raised)."""
        return self._on(None, call, args)

    def run_on_main(self, call: Callable[..., Result], *args) -> Result:
        """``call(*args)`` on the main lane (loading and warming up the model)."""
        return self._on("main", call, args)

    def run_in_idle_time(self, key: Hashable, step: Callable[[], IdleStep]) -> None:
        """From now on, in the background: ``step()`` on the main lane whenever nothing else runs
        or waits there, again and again until it returns ``IdleStep.DONE`` (or raises: logged).
        ``IdleStep.BUSY`` tries it again after the next engine call ends. A later call with the
        same ``key`` (a session) replaces this work; the newest key's work goes first."""
        with self._changed:
            self._idle_work[key] = step
            self._idle_work.move_to_end(key)
            self._idle_busy = False
            self._changed.notify_all()

    @property
    def idle_work(self) -> int:
        """Keys with idle work still to do."""
        with self._lock:
            return len(self._idle_work)

    def _run_idle_work(self) -> None:
        """The idle thread: hands one step at a time to the main lane while it is free."""
        while True:
            with self._changed:
                while not self._closed:
                    if not self._idle_work or self._main_calls or self._idle_busy:
                        if not self._changed.wait(BUSY_RETRY_S if self._idle_busy else None):
                            self._idle_busy = False  # nothing ended in time: look again
                        continue
                    quiet_for = time.monotonic() - self._last_call_end
                    if quiet_for >= IDLE_AFTER_S:
                        break
                    self._changed.wait(IDLE_AFTER_S - quiet_for)
                if self._closed:
                    return
                key, step = next(reversed(self._idle_work.items()))
                self._main_calls += 1
                self._idle_calls += 1
            outcome = IdleStep.DONE
            try:
                outcome = self._main.submit(step).result()
            except RuntimeError as error:
                if "after shutdown" not in str(error):  # the lanes closed under it: nothing to do
                    log.exception("idle work failed")
            except Exception:
                log.exception("idle work failed")
            with self._changed:
                self._main_calls -= 1
                self._idle_calls -= 1
                if outcome is IdleStep.BUSY:
                    self._idle_busy = True
                elif outcome is IdleStep.DONE and self._idle_work.get(key) is step:
                    del self._idle_work[key]
                self._changed.notify_all()

    def _on(self, lane: str | None, call: Callable[..., Result], args: tuple) -> Result:
        with self._lock:
            on_main = lane == "main" or self._main_calls == self._idle_calls  # idle work does not count
            self._main_calls += on_main
        try:
            return (self._main if on_main else self._side).submit(call, *args).result()
        finally:
            with self._changed:
                self._main_calls -= on_main
                self._last_call_end = time.monotonic()
                self._idle_busy = False  # what idle work waited for may be free now
                self._changed.notify_all()

    def shutdown(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._main.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)
