"""Fixtures of the Slicer-side suite: real `sam3d serve` processes on 127.0.0.1 (a free port).

- ``start_server(*args)``: a context manager that runs ``sam3d serve *args`` and yields its base
  URL. Without ``--model`` in ``args`` it uses the bundled ``small-phantoms`` model (fast on a
  CPU, trained on the phantoms these tests click on) when it exists, else a random-weight
  ``tiny`` checkpoint.
- ``server_url``: the base URL of a running server (one per test session and model). The model
  is ``small-phantoms`` unless the test parametrises it indirectly:
  ``@pytest.mark.parametrize("server_url", ["tiny"], indirect=True)`` ("tiny", a bundled model's
  name or a checkpoint path). A bundled model skips while its file is not there.
- ``tiny_model`` / ``tiny_box_model``: paths of the random-weight tiny checkpoint,
  without and with a box prompt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SAM3DPrompt"
# The package tests' helpers (server_helpers, model_helpers, dicom_helpers) serve this suite too.
PACKAGE_TESTS = REPO / "model_server" / "tests"
for folder in (MODULE_DIR, PACKAGE_TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from model_helpers import tiny_box_model, tiny_model  # noqa: E402,F401  (fixtures, shared with the package tests)


TEST_MODEL = "small-phantoms"


def _bundled_model_exists(name: str = TEST_MODEL) -> bool:
    from sam3d.model.checkpoint import BUNDLED_MODELS

    return name in BUNDLED_MODELS and BUNDLED_MODELS[name].is_file()


def _model_spec(name: str, tiny_model: Path) -> str:
    if name == "tiny":
        return str(tiny_model)
    from sam3d.model.checkpoint import BUNDLED_MODELS

    if name in BUNDLED_MODELS and not _bundled_model_exists(name):
        pytest.skip(f"the bundled model {name!r} ({BUNDLED_MODELS[name]}) is not there")
    return name


@pytest.fixture(scope="session")
def start_server(tiny_model):
    """``start_server(*args)`` -> context manager yielding the base URL of `sam3d serve *args`."""
    from server_helpers import running_server

    def start(*args: str, env: dict | None = None):
        if "--model" not in args:
            model = TEST_MODEL if _bundled_model_exists() else str(tiny_model)
            args = ("--model", model, *args)
        return running_server(*args, env=env)

    return start


@pytest.fixture(scope="session")
def server_url(request, start_server, tiny_model):
    """Base URL of a running server; the model is request.param when parametrised indirectly."""
    name = getattr(request, "param", TEST_MODEL if _bundled_model_exists() else "tiny")
    with start_server("--model", _model_spec(name, tiny_model), "--max-sessions", "64") as url:
        yield url
