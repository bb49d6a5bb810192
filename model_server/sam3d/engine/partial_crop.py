"""A crop encoded first on the slices near the object, and the rest later.

TinyViT encodes a crop slice by slice, and an object fills only some of its slices. Three first
answers read a crop encoded so: a small object's first click answered again on a finer crop
(``crop_scale``), the slices within ``MARGIN_MM`` of the first mask's extent; a rim click
answered again on a crop centred inside its lesion (``recentre``), the slices within
``MARGIN_MM`` of the lesion the image shows; and the 3D model's click at a box's centre
(``box_fit``), the slices within ``MARGIN_MM`` of the slices the box's object spans
(``box_fit.object_slices``). Slices are encoded in whole runs of the
encoder's chunk, and each slice beyond takes the features of the nearest slice encoded. The
crop's remaining slices are encoded afterwards: in idle time, or by the next interaction that
reads the crop. Every later answer reads the whole crop's features, so no mask depends on when
that happened. Measured in docs/BENCHMARKS.md ("A finer crop encoded near the object first",
"A box's crop encoded near its object first").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .crops import CropGeometry

MARGIN_MM = 6.0  # slices encoded first: those within this distance of the first mask's extent along k


def slabs_near(geometry: CropGeometry, k_range: tuple[int, int], slab_voxels: int, run: int) -> np.ndarray:
    """Indices of the crop's encoded slices (each ``slab_voxels`` crop voxels along k) whose
    centre lies within ``MARGIN_MM`` of native slices ``k_range`` (first, last), widened about
    their middle to whole runs of ``run`` slices: at least one run, at most all."""
    depth = geometry.size // slab_voxels
    crop_k = slab_voxels * np.arange(depth) + (slab_voxels - 1) / 2
    native_k = geometry.to_native_along(0, crop_k)
    margin = MARGIN_MM / geometry.spacing[0]
    near = np.flatnonzero((native_k >= k_range[0] - margin) & (native_k <= k_range[1] + margin))
    middle = (near[0] + near[-1] + 1) // 2 if len(near) else depth // 2
    count = min(depth, max(run, -(-len(near) // run) * run))
    start = int(np.clip(middle - count // 2, 0, depth - count))
    return np.arange(start, start + count)


@dataclass
class PartialCrop:
    """One crop's TinyViT features while only some of its slices are encoded."""

    geometry: CropGeometry
    image: torch.Tensor  # the crop's model input [1, 1, S, S, S]
    backbone: torch.Tensor  # [1, C, D, g, g]: encoded slices exact, the others their nearest encoded one's
    encoded: np.ndarray  # bool [D]: which slices are exact

    @classmethod
    def start(cls, geometry: CropGeometry, image: torch.Tensor, slabs: np.ndarray,
              features: torch.Tensor, depth: int) -> "PartialCrop":
        """The crop with contiguous slices ``slabs`` encoded (``features`` [1, C, len(slabs), g, g])."""
        nearest = np.clip(np.arange(depth), slabs[0], slabs[-1]) - slabs[0]
        encoded = np.zeros(depth, dtype=bool)
        encoded[slabs] = True
        return cls(geometry, image, features[:, :, torch.from_numpy(nearest)].contiguous(), encoded)

    def missing(self, most: int | None = None) -> np.ndarray:
        """Indices of slices not yet encoded (the first ``most`` of them)."""
        return np.flatnonzero(~self.encoded)[:most]

    def add(self, slabs: np.ndarray, features: torch.Tensor) -> None:
        """Slices ``slabs`` encoded: ``features`` [1, C, len(slabs), g, g]."""
        self.backbone[:, :, torch.from_numpy(slabs)] = features
        self.encoded[slabs] = True

    def exact_native_range(self, slab_voxels: int) -> tuple[float, float]:
        """The native slices (first, last, as k positions) the encoded slices cover: between them
        the crop's TinyViT features are exact, beyond them the nearest encoded slice's stand in.
        For the contiguous run ``start`` encodes (idle time's ``add`` may leave gaps).
        ``slab_voxels``: crop voxels per encoded slice."""
        encoded = np.flatnonzero(self.encoded)
        first, last = self.geometry.to_native_along(0, [encoded[0] * slab_voxels, (encoded[-1] + 1) * slab_voxels - 1])
        return float(first), float(last)

    @property
    def complete(self) -> bool:
        return bool(self.encoded.all())

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.backbone.nbytes
