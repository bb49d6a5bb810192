"""Start `sam3d serve` (or another server process) as a child on a free loopback port: the
harness of both test trees (model_server/tests, Testing), the benchmarks and the figure scripts.
It lives beside the tests, not in the package: nothing the package runs needs it
(docs/DEVELOPING.md, "Test helpers")."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_sam3d(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m sam3d *args`` to its end in a child process, as a user runs the command
    (this environment plus ``env``; torch at its default threads, not the test process's one);
    its output captured as text."""
    return subprocess.run([sys.executable, "-m", "sam3d", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def running_server(*args: str, env: dict[str, str] | None = None, startup_timeout: float = 120.0,
                   python: str = sys.executable, ca_bundle: str | None = None,
                   output: Path | None = None) -> Iterator[str]:
    """Run ``sam3d serve --host 127.0.0.1 --port <free> *args`` until the block ends; yields
    its base URL (https when ``args`` hold --ssl-certfile; ``ca_bundle`` then verifies it) once
    ``/v1/health`` answers; its output goes to ``output`` when given. Raises RuntimeError with
    the server's output if it exits or does not come up in time."""
    port = free_port()
    command = [python, "-m", "sam3d", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", *args]
    url = f"{'https' if '--ssl-certfile' in args else 'http'}://127.0.0.1:{port}"
    with running_process(command, url + "/v1/health", env={**os.environ, **(env or {})},
                         startup_timeout=startup_timeout, verify=ca_bundle or True, output=output):
        yield url


@contextlib.contextmanager
def running_process(command: list[str], probe_url: str, env: dict[str, str], startup_timeout: float = 120.0,
                    verify: str | bool = True, poll_seconds: float = 0.1,
                    output: Path | None = None) -> Iterator[None]:
    """Run ``command`` until the block ends, entered once ``probe_url`` answers 2xx; terminated
    (killed after 10 s) on the way out; its output goes to ``output`` when given. Raises
    RuntimeError with the process's output if it exits or does not answer within
    ``startup_timeout`` seconds."""
    with (open(output, "w+") if output else tempfile.TemporaryFile(mode="w+")) as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}:\n{log.read()}")
                try:
                    if requests.get(probe_url, timeout=1, verify=verify).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"`{' '.join(command)}` did not answer within {startup_timeout} s:\n{log.read()}")
                time.sleep(poll_seconds)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
