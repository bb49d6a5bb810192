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


_ATOMIC_SAVE = """
import json, sys
from pathlib import Path
import slicer
from sam3d_web.app import _write_atomically
from SAM3DPromptLib.prompts import PromptError
out = Path(sys.argv[1])
scene = slicer.vtkMRMLScene()
points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
points.AddControlPoint(1.0, 2.0, 3.0)
path = out / "case.mrk.json"
_write_atomically(slicer.vtkMRMLMarkupsJsonStorageNode(), points, path, ".mrk.json")
saved = path.read_text()
assert len(json.loads(saved)["markups"][0]["controlPoints"]) == 1
assert sorted(p.name for p in out.iterdir()) == ["case.mrk.json"]
try:  # a node this writer cannot write: the error, and the earlier file as it was
    _write_atomically(slicer.vtkMRMLMarkupsJsonStorageNode(), scene.AddNewNodeByClass("vtkMRMLSegmentationNode"),
                      path, ".mrk.json")
except PromptError as error:
    assert "could not write" in str(error)
else:
    raise AssertionError("no error for a failed write")
assert path.read_text() == saved and sorted(p.name for p in out.iterdir()) == ["case.mrk.json"]
print("ok")
"""


@needs_web_env
def test_saved_files_appear_whole_or_not_at_all(tmp_path):
    """The web app writes a point list (and a segmentation) into a hidden sibling and renames it:
    the browser's download and `sam3d batch` never read a half-written file (a reader that waited
    for the file to exist once read it empty), and a failed write keeps the earlier file."""
    result = subprocess.run([str(WEB_PYTHON), "-c", _ATOMIC_SAVE, str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
