"""Training on cached backbone features (models with a frozen backbone: ``lite``).

The frozen encoder is the expensive part of a training step on a CPU (a 64^3 lite crop: 32
TinyViT slices, seconds) and its output never changes, so ``build_feature_cache`` draws
``count`` random crops once (``CropSampler.draw_crop``: the same crops, augmentation and engine
resampling as ordinary training), runs the backbone on each, and stores features, crop and
object map as ``crop_NNNNN.pt``. Building resumes: crops already on disk are kept, so a run can
be stopped and continued. On a CPU, with at least ``COMPILE_MIN_CROPS`` crops to encode, TinyViT
is compiled first (``LiteImageEncoder3D.compile_backbone``): 1.6x faster per crop on a 2-core
CPU, the same features up to fp32 rounding (docs/BENCHMARKS.md, "The training cache encoded by
compiled code"). ``CachedFeatureSampler`` then serves samples from the cache with a
fresh prompt (clicks, boxes) per sample.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..model.sam3d import Sam3D
from .config import TrainConfig
from .samples import CropSampler, prompt_sample

CACHE_VERSION = 1
# Crops to encode that pay for compiling TinyViT first: about 1 s saved per crop on a 2-core CPU
# against 5 s of compiling with torch's compile cache warm (`scripts/setup.sh` warms it), a minute
# or two cold.
COMPILE_MIN_CROPS = 64


def _crop_path(folder: Path, index: int) -> Path:
    return folder / f"crop_{index:05d}.pt"


def build_feature_cache(sampler: CropSampler, model: Sam3D, folder: str | Path, count: int,
                        progress: bool = True, compile_from: int = COMPILE_MIN_CROPS) -> Path:
    """Encode crops 0..count-1 (crop n is a pure function of the seed and n) into ``folder``;
    TinyViT compiled first where at least ``compile_from`` crops are missing, on a CPU."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = [n for n in range(count) if not _crop_path(folder, n).is_file()]
    model.eval()
    if len(missing) >= compile_from and next(model.parameters()).device.type == "cpu":
        _compile_backbone(model)
    for index in tqdm(missing, desc="encoding training crops", unit="crop", disable=not progress):
        rng = np.random.default_rng([sampler.config.seed, 1_000_003, index])
        image, objects = sampler.draw_crop(rng)
        with torch.inference_mode():
            features = model.backbone_features(image[None])[0]
        payload = {"version": CACHE_VERSION, "backbone": features.to(torch.float16).clone(),
                   "image": image.to(torch.float16).clone(),
                   "objects": torch.from_numpy(objects.astype(np.int16))}
        temporary = _crop_path(folder, index).with_suffix(".tmp")
        torch.save(payload, temporary)
        temporary.replace(_crop_path(folder, index))
    return folder


def _compile_backbone(model: Sam3D) -> None:
    """TinyViT compiled for the crops to encode; where it cannot be (no C++ compiler), a note on
    stderr (with or without progress bars) and the crops are encoded by TinyViT as built:
    compiling only saves time."""
    try:
        model.image_encoder.compile_backbone()
    except Exception as error:  # noqa: BLE001 - any compile failure leaves TinyViT as built
        tqdm.write(f"encoding training crops uncompiled: TinyViT could not be compiled ({type(error).__name__}: "
                   f"{str(error).strip()[:200]})", file=sys.stderr)


class CachedFeatureSampler(Dataset):
    """Sample ``n``: a cached crop (chosen by seed and n) with a freshly drawn prompt and target;
    returns what ``CropSampler`` returns plus ``backbone`` (float32 features)."""

    def __init__(self, folder: str | Path, count: int, config: TrainConfig, boxes: bool, length: int) -> None:
        self.paths = [_crop_path(Path(folder), n) for n in range(count)]
        absent = [p.name for p in self.paths if not p.is_file()]
        if absent:
            raise ValueError(f"the feature cache {folder} lacks {len(absent)} crops (e.g. {absent[0]}); build it first")
        self.config = config
        self.boxes = boxes
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, int(index)])
        crop = torch.load(self.paths[int(rng.integers(len(self.paths)))], weights_only=True)
        sample = prompt_sample(crop["objects"].numpy().astype(np.int64), rng, self.config, self.boxes)
        return {"image": crop["image"].float(), "backbone": crop["backbone"].float(), **sample}
