"""Shared fixtures of the package tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from model_helpers import write_tiny_checkpoint

# Two cores are shared by everything on the test machine; one intra-op thread keeps the
# suite's run time predictable.
torch.set_num_threads(int(os.environ.get("SAM3D_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def sam_vit_b_checkpoint(tmp_path_factory) -> Path:
    """A file in the format of SAM's sam_vit_b_01ec64.pth, written from segment_anything's own
    model constructor (random weights: the real file cannot be downloaded here)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight `tiny` checkpoint: for everything that does not need a trained model."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model"), "tiny-random")


@pytest.fixture(scope="session")
def tiny_box_model(tmp_path_factory) -> Path:
    """The same random `tiny` model with a box prompt (point labels 2 / 3 for box corners)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model"), "tiny-box", box_prompt=True)
