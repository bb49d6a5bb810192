"""`sam3d web` without a browser: the launcher, the access-key rule, missing images."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from web_fixtures import WEB_PYTHON

needs_web_env = pytest.mark.skipif(not WEB_PYTHON.is_file(),
                                   reason=f"the web environment {WEB_PYTHON} is missing (bash scripts/setup.sh)")


def _sam3d(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam3d", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_missing_web_environment_is_a_clear_error(tmp_path):
    result = _sam3d("web", "image.nrrd", env={"SAM3D_WEB_PYTHON": str(tmp_path / "none" / "python")})
    assert result.returncode == 2
    assert "the web environment is missing" in result.stderr and "scripts/setup.sh" in result.stderr


@needs_web_env
def test_launcher_hands_every_option_to_the_app():
    result = _sam3d("web", "--help")
    assert result.returncode == 0, result.stderr
    assert "--api-key-file" in result.stdout and "--access-key-file" in result.stdout


@needs_web_env
def test_refuses_network_address_without_access_key(tmp_path):
    result = _sam3d("web", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "without an access key" in result.stderr and "--access-key-file" in result.stderr
    empty = tmp_path / "key"
    empty.write_text("\n")
    result = _sam3d("web", "--host", "0.0.0.0", "--access-key-file", str(empty))
    assert result.returncode == 2 and "is empty" in result.stderr


@needs_web_env
def test_missing_image_is_named(tmp_path):
    result = _sam3d("web", str(tmp_path / "absent.nrrd"))
    assert result.returncode == 2 and "absent.nrrd" in result.stderr
