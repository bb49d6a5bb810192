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

**Idle work** (``run_idle``: the 2D windows a session's next correction will decode on) runs on
the main lane only while nothing else runs or waits there, one short step per call; a call that
arrives meanwhile queues on the main lane behind that step instead of going to the side lane.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

Result = TypeVar("Result")
SIDE_THREADS = 8  # calls served at once while the main lane is busy (each may wait on a model lock)
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
        self._idle = ThreadPoolExecutor(1, thread_name_prefix="sam3d-idle")  # hands idle steps to the main lane

    def run(self, call: Callable[..., Result], *args) -> Result:
        """``call(*args)`` on a lane; blocks until it returns (or raises what it raised)."""
        return self._on(None, call, args)

    def run_on_main(self, call: Callable[..., Result], *args) -> Result:
        """``call(*args)`` on the main lane (loading and warming up the model)."""
        return self._on("main", call, args)

    def run_idle(self, call: Callable[..., Result], *args) -> tuple[bool, Result | None]:
        """``call(*args)`` on the main lane if nothing else runs or waits there: (True, its
        result); else (False, None) without running it."""
        with self._lock:
            if self._main_calls:
                return False, None
            self._main_calls += 1
            self._idle_calls += 1
        try:
            return True, self._main.submit(call, *args).result()
        finally:
            with self._lock:
                self._main_calls -= 1
                self._idle_calls -= 1

    def run_in_idle_time(self, step: Callable[[], bool]) -> None:
        """From now on, in the background: ``step()`` on the main lane while it is idle
        (``run_idle``), again and again until it returns False or the main lane is wanted; a
        step that raises ends it (logged)."""
        def steps() -> None:
            try:
                while True:
                    ran, more = self.run_idle(step)
                    if not (ran and more):
                        return
            except RuntimeError as error:
                if "after shutdown" not in str(error):  # the lanes closed under it: nothing to do
                    log.exception("idle work failed")
            except Exception:
                log.exception("idle work failed")

        self._idle.submit(steps)

    def _on(self, lane: str | None, call: Callable[..., Result], args: tuple) -> Result:
        with self._lock:
            on_main = lane == "main" or self._main_calls == self._idle_calls  # idle work does not count
            self._main_calls += on_main
        try:
            return (self._main if on_main else self._side).submit(call, *args).result()
        finally:
            if on_main:
                with self._lock:
                    self._main_calls -= 1

    def shutdown(self) -> None:
        self._idle.shutdown(wait=False, cancel_futures=True)
        self._main.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)
