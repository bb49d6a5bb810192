"""The server's memory budget: what a session may hold at most, what the process holds now."""

from __future__ import annotations

import math
import os
import resource
import sys

import numpy as np
import torch

from ..engine.predictor import Predictor
from ..engine.slice_pathway import WINDOW_PX, WINDOWS_KEPT
from ..model.lite_encoder import BACKBONE_CHANNELS, BACKBONE_STRIDE

FALLBACK_BUDGET = 4 << 30  # when the machine does not say how much memory is free


def default_budget() -> int:
    """Half of the memory the machine has available now (4 GiB when it cannot tell)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return FALLBACK_BUDGET


def resident_bytes() -> int:
    """The server process's resident memory now (peak where the system has no current figure)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def feature_bytes(predictor: Predictor) -> int:
    """Bytes one crop's cached encoder features take (measured with one encoder run)."""
    features = predictor.encode(torch.zeros((1, 1) + (predictor.crop_size,) * 3))
    return features.nbytes


def slice_window_bytes(predictor: Predictor) -> int:
    """Bytes a session's kept 2D pathway windows (``SliceEmbeddings``) take at most: none where
    boxes go to the 3D model."""
    if predictor.box_pathway != "2d":
        return 0
    return WINDOWS_KEPT * BACKBONE_CHANNELS * (WINDOW_PX // BACKBONE_STRIDE) ** 2 * 4  # float32 embeddings


def stored_itemsize(dtype: str) -> int:
    """Bytes per voxel of a volume as the server stores it (float64 is kept as float32)."""
    return 4 if dtype == "float64" else np.dtype(dtype).itemsize


def session_ceiling(shape, dtype: str, max_undo_bytes: int, cache_crops: int, crop_bytes: int,
                    window_bytes: int = 0) -> int:
    """The most a session of this volume can hold: volume, mask, undo history, feature cache and
    the 2D pathway's kept windows (``window_bytes``, ``slice_window_bytes``)."""
    voxels = math.prod(shape)
    return voxels * stored_itemsize(dtype) + voxels + max_undo_bytes + cache_crops * crop_bytes + window_bytes
