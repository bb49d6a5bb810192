"""CT intensity presets: HU clip window plus foreground mean / std used for z-scoring."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class IntensityPreset:
    """Clip to [clip_low, clip_high] HU, then (x - mean) / std."""

    name: str
    clip_low: float
    clip_high: float
    mean: float
    std: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Return the normalised float32 array."""
        clipped = np.clip(array.astype(np.float32), self.clip_low, self.clip_high)
        return (clipped - np.float32(self.mean)) / np.float32(self.std)

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
}
