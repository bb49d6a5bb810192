"""Intensity presets: a CT window plus foreground mean / std (z-scoring), or per-crop percentiles.

A "window" preset clips to fixed HU bounds and z-scores (the paper's CT recipe). A
"percentile" preset is modality-free (CT in HU, MRI in arbitrary units, either polarity): each
crop is clipped to its own ``clip_low`` / ``clip_high`` percentiles and scaled to [0, 1], the
input range LiteMedSAM was trained on. ``central_percentile`` takes those percentiles over the
crop's central part only (where a click or a box centres the crop), widened about their middle
and never wider than the whole crop's: a faint lesion in an organ keeps its contrast when the crop
also holds air and bone (docs/BENCHMARKS.md, "A central intensity window, trained").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class IntensityPreset:
    """kind "window": clip to [clip_low, clip_high] HU, then (x - mean) / std.
    kind "percentile": clip to the array's own clip_low / clip_high percentiles, scale to [0, 1];
    with ``central`` < 1 those of the array's central ``central`` fraction along each axis, the
    window widened ``widen`` times about its middle, within the whole array's percentiles."""

    name: str
    clip_low: float
    clip_high: float
    mean: float
    std: float
    kind: str = "window"
    central: float = 1.0
    widen: float = 1.0

    def apply(self, array: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
        """Return the normalised float32 array. ``window``: a percentile preset's clip bounds
        taken elsewhere (``percentile_window`` of another array) instead of ``array``'s own."""
        array = np.asarray(array, dtype=np.float32)
        if self.kind == "percentile":
            low, high = self.percentile_window(array) if window is None else (np.float32(v) for v in window)
            if not high > low:
                return np.zeros_like(array)
            return ((np.clip(array, low, high) - low) / (high - low)).astype(np.float32)
        clipped = np.clip(array, self.clip_low, self.clip_high)
        return (clipped - np.float32(self.mean)) / np.float32(self.std)

    def percentile_window(self, array: np.ndarray) -> tuple[np.float32, np.float32]:
        """The clip bounds of a percentile preset for ``array``."""
        low, high = (np.float32(v) for v in np.percentile(array, [self.clip_low, self.clip_high]))
        if self.central >= 1.0:
            return low, high
        sides = [max(1, round(n * self.central)) for n in array.shape]
        centre = tuple(slice((n - side) // 2, (n - side) // 2 + side) for n, side in zip(array.shape, sides))
        part_low, part_high = np.percentile(array[centre], [self.clip_low, self.clip_high])
        if not part_high > part_low:  # a constant centre says nothing about the window
            return low, high
        middle, half = (part_low + part_high) / 2, (part_high - part_low) / 2 * self.widen
        return np.float32(max(low, middle - half)), np.float32(min(high, middle + half))

    def in_window(self, value: float) -> bool:
        """Whether a raw intensity lies in the fixed window (always true for percentile presets)."""
        return self.kind == "percentile" or self.clip_low <= value <= self.clip_high

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "IntensityPreset":
        return cls(**values)


# The paper's four dataset presets (3DSAM-adapter released code) and a generic soft-tissue one.
PRESETS: dict[str, IntensityPreset] = {
    "kits21": IntensityPreset("kits21", -54.0, 247.0, 59.54, 55.46),
    "msd_pancreas": IntensityPreset("msd_pancreas", -39.0, 204.0, 68.45, 63.42),
    "lits": IntensityPreset("lits", -48.0, 163.0, 60.06, 40.20),
    "msd_colon": IntensityPreset("msd_colon", -57.0, 175.0, 65.18, 32.65),
    "soft_tissue": IntensityPreset("soft_tissue", -160.0, 240.0, 40.0, 80.0),
    "percentile": IntensityPreset("percentile", 0.5, 99.5, 0.0, 1.0, kind="percentile"),
    "central_percentile": IntensityPreset("central_percentile", 0.5, 99.5, 0.0, 1.0, kind="percentile",
                                          central=1 / 3, widen=2.0),
}

# Foreground voxels drawn per case when computing a preset, as nnU-Net does, so that the
# statistics of large training sets fit in memory; drawn with a fixed seed (reproducible).
_SAMPLES_PER_CASE = 100_000


def compute_preset(
    images: list[np.ndarray], labels: list[np.ndarray], name: str = "dataset"
) -> IntensityPreset:
    """A preset from a training set: the 0.5 / 99.5 percentiles of the foreground (label > 0)
    voxels as the clip window, and the mean / std of the clipped foreground voxels."""
    if len(images) != len(labels) or not images:
        raise ValueError(f"compute_preset needs matching, non-empty image and label lists "
                         f"(got {len(images)} images, {len(labels)} labels)")
    rng = np.random.default_rng(0)
    samples = []
    for number, (image, label) in enumerate(zip(images, labels)):
        if np.shape(image) != np.shape(label):
            raise ValueError(f"case {number}: image shape {np.shape(image)} != label shape {np.shape(label)}")
        foreground = np.asarray(image)[np.asarray(label) > 0].astype(np.float64)
        if foreground.size > _SAMPLES_PER_CASE:
            foreground = rng.choice(foreground, _SAMPLES_PER_CASE, replace=False)
        samples.append(foreground)
    voxels = np.concatenate(samples)
    if voxels.size == 0:
        raise ValueError("compute_preset: the labels hold no foreground voxels (label > 0)")
    clip_low, clip_high = np.percentile(voxels, [0.5, 99.5])
    clipped = np.clip(voxels, clip_low, clip_high)
    std = float(clipped.std())
    return IntensityPreset(
        name=name,
        clip_low=float(clip_low),
        clip_high=float(clip_high),
        mean=float(clipped.mean()),
        std=std if std > 0 else 1.0,
    )
