"""Start `sam3d serve` as a child process on a free loopback port (tests, benchmarks, scripts)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import requests


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(*args: str, env: dict[str, str] | None = None, startup_timeout: float = 120.0,
                   python: str = sys.executable, ca_bundle: str | None = None) -> Iterator[str]:
    """Run ``sam3d serve --host 127.0.0.1 --port <free> *args`` until the block ends; yields
    its base URL (https when ``args`` hold --ssl-certfile; ``ca_bundle`` then verifies it) once
    ``/v1/health`` answers. Raises RuntimeError with the server's output if it exits or does not
    come up in time."""
    port = free_port()
    command = [python, "-m", "sam3d", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", *args]
    url = f"{'https' if '--ssl-certfile' in args else 'http'}://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}:\n{log.read()}")
                try:
                    if requests.get(url + "/v1/health", timeout=1, verify=ca_bundle or True).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"`{' '.join(command)}` did not answer within {startup_timeout} s:\n{log.read()}")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
