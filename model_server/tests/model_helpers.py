"""Random-weight test models for both suites (model_server/tests, Testing): the writer, and the
session fixtures ``tiny_model`` / ``tiny_box_model`` that each suite's conftest imports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def write_tiny_checkpoint(directory: Path, name: str, meta: dict | None = None, **overrides) -> Path:
    """A random-weight (seeded) `tiny` checkpoint named ``name`` (with ``meta``), config fields
    replaced by ``overrides``."""
    from sam3d.data.intensity import PRESETS
    from sam3d.model.checkpoint import save_checkpoint
    from sam3d.model.config import get_config
    from sam3d.model.sam3d import Sam3D

    torch.manual_seed(0)
    return save_checkpoint(directory / f"{name}.pt", Sam3D(get_config("tiny", **overrides)),
                           PRESETS["soft_tissue"], name, meta=meta)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight `tiny` checkpoint: for everything that does not need a trained model."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model"), "tiny-random")


@pytest.fixture(scope="session")
def tiny_box_model(tmp_path_factory) -> Path:
    """The same random `tiny` model with a box prompt (point labels 2 / 3 for box corners)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model"), "tiny-box", box_prompt=True)
