"""Crops: the one place where native voxels become model input and predictions become native voxels.

A crop is ``size``^3 voxels at ``crop_spacing_mm`` isotropic, centred on a continuous kji point
of the native array and axis-aligned with it (the model sees the volume in its array
orientation, never resampled through the patient frame). Crop voxel ``c`` along axis ``a`` sits
at native index ``center[a] + (c - (size - 1) / 2) * crop_spacing_mm / spacing[a]``; voxel centres
are integers on both grids, as the model's point sampling expects.

Everything is resampled with ``torch.nn.functional.grid_sample`` (``align_corners=True`` on the
voxel-centre grids above): the image trilinearly with edge replication outside the volume, the
previous mask trilinearly with zeros outside, the crop's foreground probability back onto the
native voxels of the crop's footprint. Intensity normalisation (the checkpoint's
``IntensityPreset``) is applied to the resampled crop, after interpolation. Training uses
``extract_crop`` too, so the model is trained on exactly what inference feeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data.intensity import IntensityPreset

Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # half-open native (lo, hi)

# The object's mask enters the model as a foreground logit; a binary mask becomes +-this value
# (partial voxels in between), the scale a trained model's confident logits have.
MASK_PROMPT_LOGIT = 8.0


@dataclass(frozen=True)
class CropGeometry:
    """Where one crop lies on the native grid (all tuples in kji order)."""

    center: tuple[float, float, float]  # continuous native index of the crop's centre
    spacing: tuple[float, float, float]  # native mm per axis
    native_shape: tuple[int, int, int]
    size: int  # crop voxels per axis
    crop_spacing_mm: float

    @classmethod
    def around(cls, center, spacing, native_shape, size: int, crop_spacing_mm: float) -> "CropGeometry":
        """A crop centred on ``center`` (kept inside the volume)."""
        shape = tuple(int(n) for n in native_shape)
        clamped = tuple(float(min(max(c, 0.0), n - 1)) for c, n in zip(center, shape))
        return cls(clamped, tuple(float(s) for s in spacing), shape, int(size), float(crop_spacing_mm))

    @property
    def scale(self) -> np.ndarray:
        """Native voxels per crop voxel along each axis."""
        return self.crop_spacing_mm / np.asarray(self.spacing)

    @property
    def half_extent(self) -> np.ndarray:
        """Native distance (voxels) from the centre to the outermost crop voxel centres."""
        return (self.size - 1) / 2 * self.scale

    @property
    def key(self) -> tuple[float, float, float, float]:
        """Identity of the crop for caching its encoder features: centre and spacing."""
        return (*(round(c, 3) for c in self.center), round(self.crop_spacing_mm, 4))

    def to_crop(self, points_native: np.ndarray) -> np.ndarray:
        """Continuous native kji indices [N, 3] -> continuous crop kji indices [N, 3]."""
        points = np.atleast_2d(np.asarray(points_native, dtype=np.float64))
        return (points - np.asarray(self.center)) / self.scale + (self.size - 1) / 2

    def to_native_along(self, axis: int, crop_positions) -> np.ndarray:
        """Continuous crop indices along ``axis`` -> continuous native indices (``to_crop``'s
        inverse on one axis)."""
        crop = np.asarray(crop_positions, dtype=np.float64)
        return self.center[axis] + (crop - (self.size - 1) / 2) * self.scale[axis]

    def contains(self, points_native: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which points lie in the crop at least ``margin`` crop voxels from its faces."""
        crop = self.to_crop(points_native)
        return np.all((crop >= margin) & (crop <= self.size - 1 - margin), axis=1)

    def footprint(self) -> Box:
        """Native voxels whose centres the crop covers (the paste-back region), clamped to the volume."""
        center, half = np.asarray(self.center), self.half_extent
        lo = np.ceil(center - half - 1e-6).astype(int)
        hi = np.floor(center + half + 1e-6).astype(int) + 1
        return clamp_box(lo, hi, self.native_shape)

    def source_box(self) -> Box:
        """Native voxels trilinear sampling of the crop reads, clamped to the volume."""
        center, half = np.asarray(self.center), self.half_extent
        lo = np.floor(center - half).astype(int)
        hi = np.floor(center + half).astype(int) + 2
        return clamp_box(lo, hi, self.native_shape)

    def at_volume_edge(self, axis: int, direction: int) -> bool:
        """Whether the crop already reaches the volume's edge on face (axis, -1 | +1)."""
        lo, hi = self.footprint()
        return lo[axis] == 0 if direction < 0 else hi[axis] == self.native_shape[axis]

    def at_spacing(self, crop_spacing_mm: float) -> "CropGeometry":
        """The crop of the same centre and size at another spacing."""
        return CropGeometry.around(self.center, self.spacing, self.native_shape, self.size, crop_spacing_mm)

    def shifted(self, axis: int, direction: int) -> "CropGeometry":
        """The crop moved half its size across face (axis, -1 | +1)."""
        center = list(self.center)
        center[axis] += direction * self.size / 2 * self.scale[axis]
        return CropGeometry.around(center, self.spacing, self.native_shape, self.size, self.crop_spacing_mm)

    # -- resampling ---------------------------------------------------------------------------
    def sample(self, region: np.ndarray, outside: str = "border") -> torch.Tensor:
        """Trilinear samples of ``region`` (the native array cut to ``source_box()``) at the
        crop voxels -> float32 [size, size, size]. ``outside``: "border" replicates the edge,
        "zeros" reads zero outside the volume."""
        lo, hi = self.source_box()
        if region.shape != tuple(h - l for l, h in zip(lo, hi)):
            raise ValueError(f"region shape {region.shape} is not the source box {lo}..{hi}")
        positions = [self.to_native_along(axis, np.arange(self.size)) - lo[axis] for axis in range(3)]
        return _resample(torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32)), positions, outside)

    def paste(self, crop_values: torch.Tensor) -> tuple[Box, np.ndarray]:
        """Trilinear samples of crop values [size]^3 (e.g. foreground probability) at the native
        voxels of the footprint -> (footprint box, float32 array of the box's shape)."""
        lo, hi = self.footprint()
        positions = [(np.arange(lo[axis], hi[axis]) - self.center[axis]) / self.scale[axis] + (self.size - 1) / 2
                     for axis in range(3)]
        values = crop_values.detach().to("cpu", torch.float32).reshape((self.size,) * 3)
        return (lo, hi), _resample(values, positions, "border").numpy()


def extract_crop(volume: np.ndarray, geometry: CropGeometry, preset: IntensityPreset,
                 window_spacing_mm: float | None = None) -> torch.Tensor:
    """Model input for one crop: float32 [1, 1, S, S, S], resampled then normalised by ``preset``.
    ``window_spacing_mm``: a percentile preset's window is taken from the crop of that spacing
    around the same centre (the neighbourhood the model was trained on) rather than from this
    one, so that a finer crop shows the object at the contrast the model knows."""
    crop = _sample_image(volume, geometry)
    window = None
    if preset.kind == "percentile" and window_spacing_mm not in (None, geometry.crop_spacing_mm):
        window = preset.percentile_window(_sample_image(volume, geometry.at_spacing(window_spacing_mm)))
    return torch.from_numpy(preset.apply(crop, window))[None, None]


def _sample_image(volume: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """The crop's raw intensities (edge replication outside the volume)."""
    (lo, hi) = geometry.source_box()
    region = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return geometry.sample(region, outside="border").numpy()


def paste_back(geometry: CropGeometry, probability: torch.Tensor) -> tuple[Box, np.ndarray]:
    """A crop's foreground probability [S, S, S] on the native voxels of its footprint."""
    return geometry.paste(probability)


def mask_prompt(geometry: CropGeometry, mask_region: np.ndarray) -> torch.Tensor:
    """The object's native mask (cut to ``geometry.source_box()``) as the model's mask prompt:
    a foreground logit [1, 1, S, S, S]."""
    fraction = geometry.sample(mask_region, outside="zeros")
    return probability_to_logit(fraction)[None, None]


def probability_to_logit(probability: torch.Tensor) -> torch.Tensor:
    """Foreground probability -> logit, saturating at +-MASK_PROMPT_LOGIT."""
    limit = 1.0 / (1.0 + math.exp(MASK_PROMPT_LOGIT))
    return torch.logit(probability.clamp(limit, 1.0 - limit))


def touched_faces(foreground: torch.Tensor) -> list[tuple[int, int]]:
    """Faces (axis, -1 | +1) of a crop whose outermost slice holds foreground."""
    faces = []
    for axis in range(3):
        if foreground.select(axis, 0).any():
            faces.append((axis, -1))
        if foreground.select(axis, foreground.shape[axis] - 1).any():
            faces.append((axis, +1))
    return faces


def tight_box(mask: np.ndarray) -> Box | None:
    """Half-open box of the true voxels, None when there are none."""
    if not mask.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]) + 1)
    return tuple(lo), tuple(hi)


def box_slices(box: Box, origin=(0, 0, 0)) -> tuple[slice, ...]:
    """The slices that cut ``box`` out of an array whose first voxel lies at ``origin``."""
    return tuple(slice(lo - o, hi - o) for lo, hi, o in zip(box[0], box[1], origin))


def voxels_within(corners) -> Box:
    """The voxels a box of kji ``corners`` (two opposite corners, continuous, any order) holds:
    from the ceiling of its low corner to the floor of its high one, on every axis."""
    corners = np.asarray(corners, dtype=float)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return (tuple(int(v) for v in np.ceil(lo - 1e-6)), tuple(int(v) + 1 for v in np.floor(hi + 1e-6)))


def clamp_box(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int, int]) -> Box:
    """The box from ``lo`` to ``hi`` (kji, half-open) clipped to an array of ``shape``, never empty."""
    lo = np.clip(lo, 0, np.asarray(shape) - 1)
    hi = np.maximum(np.minimum(hi, shape), lo + 1)
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def _resample(source: torch.Tensor, positions: list[np.ndarray], outside: str) -> torch.Tensor:
    """Trilinear samples of [D, H, W] on the separable grid k x j x i given as voxel positions
    per axis -> [len(k), len(j), len(i)]. ``outside``: "border" replicates the edge, "zeros" reads
    zero beyond it; a one-voxel axis is read at its voxel. What ``F.grid_sample`` computes on
    such a grid (align_corners=True), but trilinear weights factor by axis, so the same sum is
    three small matrix products: a third to a fifth of grid_sample's time on the crops here
    (docs/BENCHMARKS.md, "Resampling as matrix products")."""
    rows_k, rows_j, rows_i = (_linear_weights(position, length, outside).to(source.dtype)
                              for position, length in zip(positions, source.shape))
    values = rows_j @ (source @ rows_i.T)  # [D, j, i]
    return (rows_k @ values.reshape(values.shape[0], -1)).reshape(rows_k.shape[0], *values.shape[1:])


def _linear_weights(position: np.ndarray, length: int, outside: str) -> torch.Tensor:
    """[len(position), length] linear-interpolation weights along one axis of ``length`` voxels
    (see ``_resample`` for ``outside``)."""
    position = np.zeros(len(position)) if length == 1 else np.asarray(position, dtype=np.float64)
    if outside == "border":
        position = np.clip(position, 0, length - 1)
    below = np.floor(position)
    fraction = position - below
    below = below.astype(np.int64)
    weights = np.zeros((len(position), length))
    rows = np.arange(len(position))
    for tap, weight in ((below, 1 - fraction), (below + 1, fraction)):
        inside = (tap >= 0) & (tap < length)
        weights[rows[inside], tap[inside]] += weight[inside]
    return torch.from_numpy(weights)
