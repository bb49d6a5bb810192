"""The threads the server's engine work runs on: two fixed lanes instead of FastAPI's pool.

Why: torch's CPU thread pool (GNU OpenMP) keeps one team of threads per calling thread, and
once two threads have run parallel torch work every parallel region gets slower. Measured on a
2-core machine with the default model (next click in the same crop, median of 6): 93 ms when one
thread only ever runs torch, 150 ms when the same call runs on a second thread (FastAPI runs
each request on any thread of its pool), and the first thread slows down too (133 ms). So:

- the **main lane** - one thread with torch's full thread count - runs the model's loading and
  warm-up and every engine call while it is free;
- the **side lane** - one thread with one torch thread - takes a call that arrives while the
  main lane is busy (another user's encoder run), so a click does not wait seconds behind it.
  A single-threaded team adds no OpenMP threads, so the main lane keeps its speed.

The predictor's own locks still decide what may run at once (one encoder run at a time).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

Result = TypeVar("Result")


class EngineLanes:
    """Run blocking engine calls on the main lane (``threads`` torch threads) when it is free,
    else on the side lane (one torch thread), whichever has fewer calls waiting."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._main = ThreadPoolExecutor(1, thread_name_prefix="sam3d-engine",
                                        initializer=torch.set_num_threads, initargs=(self.threads,))
        self._side = ThreadPoolExecutor(1, thread_name_prefix="sam3d-engine-side",
                                        initializer=torch.set_num_threads, initargs=(1,))
        self._lock = threading.Lock()
        self._waiting = {"main": 0, "side": 0}

    def run(self, call: Callable[..., Result], *args) -> Result:
        """``call(*args)`` on a lane; blocks until it returns (or raises what it raised)."""
        return self._on(None, call, args)

    def run_on_main(self, call: Callable[..., Result], *args) -> Result:
        """``call(*args)`` on the main lane (loading and warming up the model)."""
        return self._on("main", call, args)

    def _on(self, lane: str | None, call: Callable[..., Result], args: tuple) -> Result:
        with self._lock:
            if lane is None:
                lane = "main" if self._waiting["main"] <= self._waiting["side"] else "side"
            self._waiting[lane] += 1
        try:
            return (self._main if lane == "main" else self._side).submit(call, *args).result()
        finally:
            with self._lock:
                self._waiting[lane] -= 1

    def shutdown(self) -> None:
        self._main.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)
