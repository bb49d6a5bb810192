"""Ray is an optional extra: a batch without --ray never imports it, the default install does not
pull it, and the Slicer module does not use it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
from scipy import ndimage

import sam3d
from sam3d.data.clicks import centre_click
from sam3d.data.io import write_image
from sam3d.data.phantoms import TUMOR_LABEL, generate_case

REPO = Path(__file__).resolve().parents[2]


def test_a_batch_without_ray_does_not_import_it(tmp_path, tiny_model):
    image, label = generate_case(0, shape=(32, 64, 64))
    write_image(image, tmp_path / "case.nii.gz")
    components, _ = ndimage.label(label.array == TUMOR_LABEL)
    click = image.kji_to_ras([centre_click(components == 1, image.spacing)])[0]
    (tmp_path / "manifest.json").write_text(json.dumps(
        [{"id": "case", "image": "case.nii.gz", "prompts": [{"lesion": 1, "ras": click.tolist(), "label": "+"}]}]))
    script = ("import sys; from sam3d.cli import main; "
              f"code = main(['batch', 'manifest.json', '--out', 'out', '--model', {str(tiny_model)!r}, "
              "'--device', 'cpu', '--quiet']); "
              "print('exit', code, 'ray' in sys.modules, 'sam3d.batch.cluster' in sys.modules)")
    env = os.environ | {"PYTHONPATH": str(Path(sam3d.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.splitlines()[-1] == "exit 0 False False", done.stdout + done.stderr
    assert (tmp_path / "out" / "case.seg.nrrd").is_file()


def test_ray_is_an_optional_extra_installed_for_the_tests():
    project = tomllib.loads((REPO / "model_server" / "pyproject.toml").read_text())["project"]
    assert not any(requirement.lower().startswith("ray") for requirement in project["dependencies"])
    assert any(requirement.startswith("ray") for requirement in project["optional-dependencies"]["ray"])
    assert any(requirement.startswith("ray") for requirement in project["optional-dependencies"]["test"])


def test_the_slicer_module_does_not_import_ray():
    files = sorted((REPO / "SAM3DPrompt").rglob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "ray" for name in names), f"{path} imports {names}"
