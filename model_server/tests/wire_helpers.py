"""Helpers of the tests that talk HTTP to the server directly (without the client)."""

from __future__ import annotations

import numpy as np

from sam3d.serve.wire import decode_mask_bits


def apply_mask_update(full: np.ndarray, update: dict) -> np.ndarray:
    """Write a mask-update reply (bbox + bits) into the full-volume mask ``full``."""
    lo, hi = update["bbox"]
    shape = tuple(h - l for l, h in zip(lo, hi))
    if min(shape) > 0:
        full[tuple(slice(l, h) for l, h in zip(lo, hi))] = decode_mask_bits(update["mask"], shape)
    return full
