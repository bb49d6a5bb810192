"""Shared fixtures of the package tests."""

from __future__ import annotations

import os
from collections import Counter
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a collection in which two tests share a node id: pytest-xdist (scripts/test.sh runs
    the suite on two workers) schedules by node id and would run only one of them, silently."""
    repeated = sorted(nodeid for nodeid, count in Counter(item.nodeid for item in items).items() if count > 1)
    if repeated:
        raise pytest.UsageError(f"{len(repeated)} node id(s) name more than one test, e.g. {repeated[0]!r}: "
                                "give each test its own id (pytest-xdist would run one of them)")
