"""Training data: cases cached as memory-mapped arrays, and seeded random training crops.

Crops are cut from the *native* volumes by the engine's ``extract_crop`` (the one trilinear
resampling to the model's spacing that inference uses), so training sees exactly what the model
is fed at inference time; no second resampling path exists. Each case is read once (SimpleITK
via ``sam3d.data``) and cached as ``.npy`` in the run folder, memory-mapped while training, so
datasets larger than memory work.

Sample ``n`` of a run is a pure function of (seed, n): a resumed run, or a run with several
loader workers, draws the same crops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.transforms import Compose, RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data.clicks import training_clicks
from ..data.datasets import Case, load_case
from ..data.intensity import IntensityPreset
from ..engine.crops import CropGeometry, extract_crop
from ..evaluate.simulation import label_objects
from ..model.config import BOX_FIRST_CORNER, BOX_SECOND_CORNER, ModelConfig
from .config import Augmentation, TrainConfig

CACHE_VERSION = 1
NEGATIVE_TRIES = 20  # random draws for a negative crop centre inside the intensity window


@dataclass
class CachedCase:
    """One case on its native grid: HU volume, target objects (0 = background, 1..n = connected
    components of the target label), and the voxels of the target."""

    case_id: str
    spacing: tuple[float, float, float]
    volume: np.ndarray
    objects: np.ndarray
    target_voxels: np.ndarray  # [M, 3] int32 kji

    @property
    def target(self) -> np.ndarray:
        return np.asarray(self.objects) > 0


def cache_cases(cases: Sequence[Case], target_label: int, cache_dir: str | Path,
                progress: bool = True) -> list[CachedCase]:
    """Read each case once into ``cache_dir/<case>/`` (reused when the source files are
    unchanged) and return the memory-mapped cases."""
    cache_dir = Path(cache_dir)
    cached = []
    for case in tqdm(cases, desc="caching cases", unit="case", disable=not progress):
        folder = cache_dir / case.case_id
        stamp = {"version": CACHE_VERSION, "target_label": int(target_label),
                 "image": _file_stamp(case.image_path), "label": _file_stamp(case.label_path)}
        info_path = folder / "case.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        if info.get("stamp") != stamp:
            image, target = load_case(case, target_label)
            if target is None:
                raise ValueError(f"case {case.case_id} has no label file; training needs labelled cases")
            objects, _ = label_objects(target)
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "volume.npy", image.array)
            np.save(folder / "objects.npy", objects.astype(np.uint16 if objects.max() < 65535 else np.int32))
            np.save(folder / "target_voxels.npy", np.argwhere(objects > 0).astype(np.int32))
            info = {"stamp": stamp, "spacing": list(image.spacing)}
            info_path.write_text(json.dumps(info))
        cached.append(CachedCase(
            case.case_id, tuple(info["spacing"]),
            np.load(folder / "volume.npy", mmap_mode="r"),
            np.load(folder / "objects.npy", mmap_mode="r"),
            np.load(folder / "target_voxels.npy", mmap_mode="r"),
        ))
    return cached


def _file_stamp(path: Path | None) -> list | None:
    if path is None:
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, int(stat.st_mtime)]


def augmentation_transform(augmentation: Augmentation) -> Compose:
    """The paper's crop augmentation as MONAI dictionary transforms on channel-first crops
    ("image", "objects"): flips on the three axes, rot90 in the allowed planes, intensity scale
    and shift (image only). Zoom happens in the crop resampling (see ``CropSampler``)."""
    keys = ["image", "objects"]
    transforms = [RandFlipd(keys, prob=augmentation.flip_prob, spatial_axis=axis) for axis in range(3)]
    transforms += [RandRotate90d(keys, prob=augmentation.rot90_prob, max_k=3, spatial_axes=tuple(plane))
                   for plane in augmentation.rot90_planes]
    transforms += [
        RandScaleIntensityd("image", factors=augmentation.intensity_scale, prob=augmentation.intensity_prob),
        RandShiftIntensityd("image", offsets=augmentation.intensity_shift, prob=augmentation.intensity_prob),
    ]
    return Compose(transforms)


class CropSampler(Dataset):
    """Sample ``n``: a random training crop with its prompt and target.

    - Crop centre: with probability ``positive_fraction`` a random target voxel (positive crop),
      else a random voxel outside the target whose intensity lies inside the preset's window
      (tissue rather than air). Crop spacing times a random zoom factor.
    - Augmentation (MONAI) on the crop and its object map, before any click is drawn.
    - Prompt: with probability ``paper_prompt_prob`` the paper's 10 target + 20 anywhere clicks
      (``training_clicks``), else one positive click on a random target voxel of the crop (one
      random negative click when the crop holds no target).
    - Target: the objects (connected components) that hold a positive click, so one click asks
      for one object, as it does at inference.

    Returns a dict of tensors: image [1, S, S, S] float, target [1, S, S, S] float (0 / 1),
    points [N, 3] float (crop kji), labels [N] long.
    """

    def __init__(self, cases: list[CachedCase], model_config: ModelConfig, preset: IntensityPreset,
                 config: TrainConfig, length: int) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = cases
        self.model_config = model_config
        self.preset = preset
        self.config = config
        self.length = length
        self.augment = augmentation_transform(config.augmentation)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, int(index)])
        image, objects = self.draw_crop(rng)
        return {"image": image, **prompt_sample(objects, rng, self.config, self.model_config.box_prompt)}

    def draw_crop(self, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
        """A random augmented crop: image [1, S, S, S] and its object map [S, S, S] (0 = none)."""
        case = self.cases[int(rng.integers(len(self.cases)))]
        positive = len(case.target_voxels) > 0 and rng.random() < self.config.positive_fraction
        centre = case.target_voxels[rng.integers(len(case.target_voxels))] if positive else self._negative_centre(case, rng)
        zoom = rng.uniform(*self.config.augmentation.zoom)
        size = self.model_config.crop_size
        geometry = CropGeometry.around(centre, case.spacing, case.volume.shape, size,
                                       self.model_config.crop_spacing_mm * zoom)
        image = extract_crop(case.volume, geometry, self.preset)[0]
        objects = self._object_crop(case, geometry)
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        augmented = self.augment({"image": image, "objects": objects[None]})
        image = torch.as_tensor(np.asarray(augmented["image"]), dtype=torch.float32).contiguous()
        return image, np.asarray(augmented["objects"])[0]

    def _negative_centre(self, case: CachedCase, rng: np.random.Generator) -> np.ndarray:
        shape = np.array(case.volume.shape)
        for _ in range(NEGATIVE_TRIES):
            voxel = rng.integers(0, shape)
            value = case.volume[tuple(voxel)]
            if not case.objects[tuple(voxel)] and self.preset.in_window(value):
                break
        return voxel

    def _object_crop(self, case: CachedCase, geometry: CropGeometry) -> np.ndarray:
        """The object map resampled into the crop: each object's mask sampled trilinearly by the
        engine and kept where it covers more than half a voxel."""
        lo, hi = geometry.source_box()
        region = np.asarray(case.objects[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        size = geometry.size
        objects = np.zeros((size,) * 3, dtype=np.int64)
        for number in np.unique(region):
            if number:
                inside = geometry.sample((region == number).astype(np.float32), outside="zeros").numpy() > 0.5
                objects[inside] = number
        return objects


def prompt_sample(objects: np.ndarray, rng: np.random.Generator, config: TrainConfig,
                  boxes: bool) -> dict[str, torch.Tensor]:
    """The prompt of one training sample on a crop's object map, and its target.

    Clicks: with probability ``paper_prompt_prob`` the paper's 10 target + 20 anywhere clicks
    (``training_clicks``), else one positive click: with probability ``centre_click_prob`` at the
    crop's centre where an object lies there (as the engine centres a first click's crop), else
    on a random target voxel (one random negative click when the crop holds no target); the
    target is the objects holding a positive click.
    With ``boxes`` (a box-capable model), a share ``box_prompt_prob`` of the samples on a crop
    with an object gets that object's box instead - its 3D box or, half the time, its 2D box on
    its largest slice (corners on one slice) - jittered by a few voxels, with a positive click
    inside half the time; the target is that object.
    """
    target = objects > 0
    if boxes and target.any() and rng.random() < config.box_prompt_prob:
        number = int(rng.choice(np.unique(objects[target])))
        mask = objects == number
        corners = _jittered_box(mask, rng)
        points, labels = corners, np.array([BOX_FIRST_CORNER, BOX_SECOND_CORNER])
        if rng.random() < 0.5:
            voxels = np.argwhere(mask)
            points = np.concatenate([points, voxels[rng.integers(len(voxels))][None].astype(np.float32)])
            labels = np.append(labels, 1)
        return _sample(points, labels, mask)
    if rng.random() < config.paper_prompt_prob:
        points, labels = training_clicks(target, rng)
    elif target.any():
        centred = _centre_object(objects) if config.centre_click_prob and rng.random() < config.centre_click_prob else 0
        if centred:
            centre = np.full((1, 3), (objects.shape[0] - 1) / 2, dtype=np.float32)
            return _sample(centre, np.ones(1, dtype=np.int64), objects == centred)
        voxels = np.argwhere(target)
        points, labels = voxels[rng.integers(len(voxels))][None].astype(np.float32), np.ones(1, dtype=np.int64)
    else:
        points, labels = rng.integers(0, objects.shape, size=(1, 3)).astype(np.float32), np.zeros(1, dtype=np.int64)
    clicked = np.unique(objects[tuple(points[labels == 1].astype(int).T)]) if (labels == 1).any() else []
    return _sample(points, labels, np.isin(objects, [o for o in clicked if o > 0]))


def _centre_object(objects: np.ndarray) -> int:
    """The object at the crop's centre ((S - 1) / 2 on each axis: the voxel there, or the 2^3
    voxels around it for an even S), by majority; 0 where none lies there."""
    low, high = (objects.shape[0] - 1) // 2, objects.shape[0] // 2 + 1
    around = objects[low:high, low:high, low:high]
    numbers, counts = np.unique(around[around > 0], return_counts=True)
    return int(numbers[np.argmax(counts)]) if len(numbers) else 0


def _jittered_box(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two corners [2, 3] (crop kji) of the object's box - 3D, or 2D on its largest k slice - each
    moved by up to 10 % of the box size plus one voxel, as a user's drawn box misses."""
    voxels = np.argwhere(mask)
    if rng.random() < 0.5:
        largest = int(np.argmax(mask.sum(axis=(1, 2))))
        voxels = voxels[voxels[:, 0] == largest]
    lo, hi = voxels.min(0).astype(np.float32), voxels.max(0).astype(np.float32)
    reach = 0.1 * (hi - lo) + 1.0
    lo = lo + rng.uniform(-1, 1, 3) * reach
    hi = hi + rng.uniform(-1, 1, 3) * reach
    if voxels[:, 0].min() == voxels[:, 0].max():
        lo[0] = hi[0] = voxels[0, 0]  # a 2D box stays on its slice
    upper = np.asarray(mask.shape, np.float32) - 1
    return np.clip(np.stack([np.minimum(lo, hi), np.maximum(lo, hi)]), 0, upper)


def _sample(points: np.ndarray, labels: np.ndarray, target: np.ndarray) -> dict[str, torch.Tensor]:
    return {"target": torch.from_numpy(target[None].astype(np.float32)),
            "points": torch.from_numpy(np.asarray(points, dtype=np.float32)),
            "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64))}


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples; prompts are padded to the longest with label -1 (ignored by the model)."""
    longest = max(len(s["labels"]) for s in samples)
    points = torch.zeros(len(samples), longest, 3)
    labels = torch.full((len(samples), longest), -1, dtype=torch.long)
    for row, sample in enumerate(samples):
        count = len(sample["labels"])
        points[row, :count], labels[row, :count] = sample["points"], sample["labels"]
    batch = {"image": torch.stack([s["image"] for s in samples]),
             "target": torch.stack([s["target"] for s in samples]), "points": points, "labels": labels}
    if "backbone" in samples[0]:
        batch["backbone"] = torch.stack([s["backbone"] for s in samples])
    return batch
