"""Random-weight test models (a module, not conftest, so that test files can import it)."""

from __future__ import annotations

from pathlib import Path

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
