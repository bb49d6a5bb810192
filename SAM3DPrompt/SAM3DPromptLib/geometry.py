"""RAS millimetres <-> continuous voxel indices of a volume (numpy only).

A click placed in Slicer is a point in world RAS. To reach the voxel it was placed on it goes
(1) from world into the volume's own frame through the inverse of the volume's parent
transform (``world_to_local``), then (2) through the volume's ``RASToIJK`` matrix. The result
is reordered to (k, j, i), the axis order of ``slicer.util.arrayFromVolume`` and of the wire
protocol. Voxel centres are integer indices. See docs/PROTOCOL.md, "Index space".
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _as_points(points: Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"expected points of shape [N, 3], got {np.shape(points)}")
    return array


def _as_matrix(matrix: Optional[np.ndarray]) -> np.ndarray:
    if matrix is None:
        return np.eye(4)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"expected a 4x4 homogeneous matrix, got shape {matrix.shape}")
    return matrix


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    out = homogeneous @ matrix.T
    return out[:, :3] / out[:, 3:4]


def ras_to_kji(points_ras: Sequence[Sequence[float]], ras_to_ijk: np.ndarray,
               world_to_local: Optional[np.ndarray] = None) -> np.ndarray:
    """Continuous (k, j, i) indices of world RAS points.

    ``ras_to_ijk`` is the volume's ``GetRASToIJKMatrix`` (its own frame);
    ``world_to_local`` is the inverse of the volume's parent transform to world (None: the
    volume is not transformed). Returns float64 ``[N, 3]``.
    """
    local = _apply(_as_matrix(world_to_local), _as_points(points_ras))
    ijk = _apply(_as_matrix(ras_to_ijk), local)
    return ijk[:, ::-1].copy()


def kji_to_ras(points_kji: Sequence[Sequence[float]], ijk_to_ras: np.ndarray,
               local_to_world: Optional[np.ndarray] = None) -> np.ndarray:
    """World RAS of continuous (k, j, i) indices: the inverse of :func:`ras_to_kji`."""
    ijk = _as_points(points_kji)[:, ::-1]
    local = _apply(_as_matrix(ijk_to_ras), ijk)
    return _apply(_as_matrix(local_to_world), local)

