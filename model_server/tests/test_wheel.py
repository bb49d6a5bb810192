"""`sam3d` from its wheel alone: the wheel is built, installed into a fresh venv outside the
checkout, and its own `sam3d segment --server` and `sam3d batch --server` run against a real
server started from the project's venv.

The fresh venv gets the wheel without dependencies, and sees the project venv's site-packages
through PYTHONPATH for third-party packages only (docs/DEVELOPING.md, "The wheel test", says
why: a full install downloads the ~2.5 GB CUDA build of torch). PYTHONPATH entries are not
site directories, so the project's editable install of sam3d (a .pth hook) stays invisible; the
test checks that sam3d and its client come from the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sam3d.data.io import Volume, write_image
from sam3d.data.markups import write_markups
from sam3d.data.segio import read_segmentation
from server_helpers import running_server

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = PACKAGE_ROOT.parent
SHAPE = (16, 40, 40)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv (outside the checkout) holding only the built wheel; returns its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    assert CHECKOUT not in root.parents
    source = root / "source"  # a clean copy: setuptools leaves build/ and *.egg-info beside the sources
    shutil.copytree(PACKAGE_ROOT, source, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(source), "-w", str(root / "dist")], check=True, cwd=root, env=wheel_env())
    [wheel] = (root / "dist").glob("sam3dprompt_server-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"sam3d/client/client.py", "sam3d/client/wire.py", "sam3d/models/default.pt"} <= set(names)
    assert not any(name.startswith(("tests/", "SAM3DPrompt")) for name in names)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(root / "venv")], check=True)
    bin_dir = root / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, cwd=root, env=wheel_env())
    return bin_dir


def wheel_env() -> dict[str, str]:
    """The environment of the wheel's commands: third-party packages from the project venv only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_wheel(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "sam3d"), *args], cwd=cwd, env=wheel_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A small volume with a bright blob and a click on it (RAS)."""
    folder = tmp_path_factory.mktemp("case")
    array = np.random.default_rng(0).normal(0, 20, SHAPE)
    array[5:11, 12:28, 12:28] += 90
    volume = Volume(array.astype(np.int16), spacing=(2.5, 0.9, 0.9), origin=(-20.0, 15.0, 40.0))
    write_image(volume, folder / "image.nii.gz")
    click = volume.kji_to_ras([[8.0, 20.0, 20.0]])
    write_markups(folder / "image.mrk.json", click, np.array([1]))
    return folder / "image.nii.gz", click[0]


def test_the_wheels_sam3d_comes_from_the_wheel(wheel_venv, tmp_path):
    code = "import sam3d, sam3d.client.client as c, sys; print(sam3d.__file__); print(c.__file__)"
    result = subprocess.run([str(wheel_venv / "python"), "-c", code], cwd=tmp_path, env=wheel_env(),
                            capture_output=True, text=True, check=True)
    files = [Path(line) for line in result.stdout.split()]
    assert all(wheel_venv.parent in f.parents for f in files), files
    assert run_wheel(wheel_venv, tmp_path, "--version").stdout.strip().startswith("sam3d ")


def test_segment_and_batch_through_a_server_from_the_wheel_alone(wheel_venv, image, tiny_model, tmp_path):
    path, click = image
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"id": "case", "image": str(path), "prompts": str(path.with_suffix("").with_suffix(".mrk.json"))}]))
    with running_server("--model", str(tiny_model)) as url:
        segment = run_wheel(wheel_venv, tmp_path, "segment", str(path), "--point=" + ",".join(map(str, click)),
                            "--out", "one.seg.nrrd", "--server", url)
        assert segment.returncode == 0, segment.stdout + segment.stderr
        batch = run_wheel(wheel_venv, tmp_path, "batch", str(manifest), "--out", "out", "--server", url, "--quiet")
        assert batch.returncode == 0, batch.stdout + batch.stderr
    (one,), _ = read_segmentation(tmp_path / "one.seg.nrrd")
    (lesion,), _ = read_segmentation(tmp_path / "out" / "case.seg.nrrd")
    assert one.mask.any() and np.array_equal(one.mask, lesion.mask)
