"""Shared fixtures of the package tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from model_helpers import tiny_box_model, tiny_model  # noqa: F401  (fixtures, shared with Testing/)

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
