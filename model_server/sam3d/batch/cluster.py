"""`sam3d batch --ray ADDRESS`: the cases of a run spread over the workers of a Ray cluster.

Each worker is a Ray actor holding one ``CaseWorker`` (its model loaded once) on the CPUs and
the GPU (or fraction of one) Ray gives it; it reads a case's inputs where the manifest's paths
resolve on its node and sends the result back (the ``.seg.nrrd`` bytes, the record), so only
the driver - this process - writes into the output folder. The driver gives every worker one
case at a time and writes each result as it comes.

Faults: when a worker's process dies (killed, out of memory), Ray starts it again (it loads its
model again, at most ``MAX_RESTARTS`` times per worker) and the case it was running goes back to
the queue, to run on the next free worker; a case whose worker died ``CASE_ATTEMPTS`` times is
recorded as failed. A case that fails for its own reasons (a bad file, a click outside the
image) fails inside the worker and is recorded once, as in-process. Ctrl-C stops the workers;
the cases finished until then are kept and ``--resume`` continues.

This module imports Ray; only ``--ray`` imports this module (Ray is an optional extra).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import ray

from .manifest import CaseSpec
from .runner import BatchError, CaseResult, CaseWorker
from .state import FAILED, CaseRecord

MAX_RESTARTS = 3  # restarts of one worker's process (each loads the model again)
CASE_ATTEMPTS = 3  # a case whose worker died this many times is recorded as failed
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # results are compressed .seg.nrrd files: small
ADDRESS_FORMS = "'local', 'auto' or 'ray://HOST:PORT'"


class RayError(BatchError):
    """The cluster cannot run the batch (unreachable, too small, every worker dead)."""


@dataclass
class RayOptions:
    address: str  # 'local' (start a runtime here), 'auto' (the running cluster) or 'ray://HOST:PORT'
    workers: int | None = None  # default: as many as the cluster's CPUs / GPUs hold
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def check(self) -> None:
        """Raises RayError for an address or a resource figure that cannot work."""
        if self.address not in ("local", "auto") and not self.address.startswith("ray://"):
            raise RayError(f"--ray {self.address!r}: give {ADDRESS_FORMS}")
        if self.workers is not None and self.workers < 1:
            raise RayError(f"--workers {self.workers}: give at least 1 worker")
        if self.cpus_per_worker <= 0:
            raise RayError(f"--cpus-per-worker {self.cpus_per_worker:g}: give a positive number of CPUs")
        if self.gpus_per_worker < 0 or (self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer()):
            raise RayError(f"--gpus-per-worker {self.gpus_per_worker:g}: give 0, a fraction of one GPU "
                           "(e.g. 0.25: four workers share a GPU) or a whole number of GPUs")


class _Worker:
    """The Ray actor: one ``CaseWorker`` in a worker process."""

    def __init__(self, make_worker: Callable[[], CaseWorker], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # its share of the node's CPUs (--cpus-per-worker)
        self.error = ""
        try:
            self.worker = make_worker()
        except Exception as error:  # reported by describe(): e.g. the checkpoint is not on this node
            self.error = str(error) or type(error).__name__

    def describe(self) -> dict:
        """Where the worker runs (the test kills it by its pid) and whether its model loaded."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "gpus": [str(g) for g in ray.get_gpu_ids()],
                "error": self.error, "note": "" if self.error else self.worker.segmenter.startup_note}

    def run(self, case: CaseSpec, inputs: str) -> CaseResult:
        return self.worker.run(case, inputs)


class RayRunner:
    """A ``CaseRunner`` on Ray workers (see the module docstring)."""

    def __init__(self, options: RayOptions) -> None:
        options.check()
        self.options = options
        self.startup_seconds = 0.0  # until the first worker is ready (runtime, connection, model load)
        self.work_seconds = 0.0  # from then to the last result

    def results(self, jobs: list[tuple[CaseSpec, str]], make_worker: Callable[[], CaseWorker],
                logger: logging.Logger) -> Iterator[CaseResult]:
        if not jobs:
            return
        start = time.perf_counter()
        self._connect()
        actors = []
        try:
            count = self._worker_count(len(jobs), logger)
            worker_class = ray.remote(_Worker).options(
                num_cpus=self.options.cpus_per_worker, num_gpus=self.options.gpus_per_worker,
                max_restarts=MAX_RESTARTS, max_task_retries=0)
            threads = max(1, int(self.options.cpus_per_worker))
            actors = [worker_class.remote(make_worker, threads) for _ in range(count)]
            yield from self._dispatch(collections.deque(jobs), actors, logger, start)
            self.work_seconds = time.perf_counter() - start - self.startup_seconds
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            ray.shutdown()

    def _connect(self) -> None:
        options = self.options
        # Workers' output stays in Ray's logs (errors come back in the results), and Ray's own
        # messages below warnings stay off the progress bar; Ray Client (ray://) takes neither.
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if options.address == "local":
                wanted = (options.workers or 1) * options.cpus_per_worker
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)),
                         include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
            elif options.address == "auto":
                ray.init(address="auto", **quiet)
            else:
                ray.init(address=options.address)
        except (ConnectionError, RuntimeError, ValueError) as error:
            hint = ("start one with `ray start --head` on the head node, or use --ray local"
                    if options.address == "auto" else "check the address and that the cluster is up")
            raise RayError(f"--ray {options.address}: cannot connect to a Ray cluster ({error}); {hint}") from None

    def _worker_count(self, jobs: int, logger: logging.Logger) -> int:
        """--workers, or as many as the cluster's CPUs (and GPUs) hold; never more than the cases."""
        options = self.options
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        fit = math.floor(cpus / options.cpus_per_worker + 1e-9)
        if options.gpus_per_worker:
            fit = min(fit, math.floor(gpus / options.gpus_per_worker + 1e-9))
        count = options.workers or max(fit, 1)
        if count > fit:
            message = (f"{count} worker(s) of {options.cpus_per_worker:g} CPU(s) and {options.gpus_per_worker:g} "
                       f"GPU(s) do not fit in the cluster's {cpus:g} CPU(s) and {gpus:g} GPU(s)")
            if options.address == "local":
                raise RayError(f"{message} on this machine; lower --workers, --cpus-per-worker or --gpus-per-worker")
            logger.warning("%s now: the others start when the cluster grows", message)
        logger.info("ray %s (Ray %s): %d worker(s) of %g CPU(s), %g GPU(s); the cluster has %g CPU(s), %g GPU(s)",
                    options.address, ray.__version__, min(count, jobs), options.cpus_per_worker,
                    options.gpus_per_worker, cpus, gpus)
        return min(count, jobs)

    def _dispatch(self, queue: collections.deque, actors: list, logger: logging.Logger,
                  start: float) -> Iterator[CaseResult]:
        """One case at a time per ready worker; a worker becomes ready when its describe() call
        returns (at start, and after Ray restarted it)."""
        running: dict = {actor.describe.remote(): (n, None) for n, actor in enumerate(actors)}
        idle: list[int] = []  # ready workers with nothing to do (the queue was empty)
        deaths = collections.Counter()  # per case id
        alive = len(actors)

        def give_work(n: int) -> None:
            if queue:
                job = queue.popleft()
                running[actors[n].run.remote(*job)] = (n, job)
            else:
                idle.append(n)

        while queue or any(job is not None for _, job in running.values()):
            if not running:
                raise RayError("every Ray worker died (see batch.log); the finished cases are kept: fix the "
                               "cause and run again with --resume")
            [ref], _ = ray.wait(list(running), num_returns=1)
            n, job = running.pop(ref)
            name = f"worker {n + 1}"
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                if job is None:  # it did not come back: its restarts are used up
                    alive -= 1
                    logger.warning("%s is gone for good (%s); %d worker(s) left", name, _first_line(error), alive)
                    continue
                case, inputs = job
                deaths[case.case_id] += 1
                logger.warning("%s died while segmenting %s (attempt %d of %d): %s", name, case.case_id,
                               deaths[case.case_id], CASE_ATTEMPTS, _first_line(error))
                if deaths[case.case_id] < CASE_ATTEMPTS:
                    queue.appendleft(job)  # to the next free worker, while Ray restarts this one
                    if idle:
                        give_work(idle.pop(0))
                else:
                    yield CaseResult(CaseRecord(case.case_id, FAILED, inputs, error=(
                        f"the Ray worker segmenting the case died {CASE_ATTEMPTS} times (killed, out of memory?); "
                        "see batch.log")), worker=name)
                running[actors[n].describe.remote()] = (n, None)  # ready again once Ray restarted it
                continue
            if job is None:
                if value["error"]:
                    raise RayError(f"{name} on {value['host']} cannot segment: {value['error']}")
                if not self.startup_seconds:
                    self.startup_seconds = time.perf_counter() - start
                logger.info("%s ready: pid %d on %s, GPU(s) %s%s", name, value["pid"], value["host"],
                            ", ".join(value["gpus"]) or "none", f"; {value['note']}" if value["note"] else "")
                give_work(n)
                continue
            give_work(n)  # the worker goes on while the driver writes this result
            value.worker = name
            yield value


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__
