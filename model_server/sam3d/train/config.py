"""Training configuration: one YAML file describes a whole run (model, data, recipe, output).

Every field has a default; a YAML file sets only what differs. Relative paths are taken from the
current directory, as any command-line path is. Unknown keys are an error, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.intensity import PRESETS
from ..model.config import CONFIGS, ModelConfig, get_config

SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class Augmentation:
    """Random transforms of a training crop (the paper's set; MONAI transforms on the crop)."""

    flip_prob: float = 0.5  # per axis, all three axes
    rot90_prob: float = 0.5
    # Planes (pairs of crop axes, kji) rot90 may turn: [[1, 2]] = in-plane only, for datasets
    # whose slices are much thicker than their pixels; all three planes for isotropic sets.
    rot90_planes: list[list[int]] = field(default_factory=lambda: [[1, 2]])
    # Random zoom: the crop spacing is multiplied by a factor drawn from this range, so the
    # engine's resampling zooms the crop in the same single trilinear interpolation.
    zoom: list[float] = field(default_factory=lambda: [0.85, 1.15])
    intensity_shift: float = 0.1  # in z-score units, as MONAI RandShiftIntensity offsets
    intensity_scale: float = 0.1  # MONAI RandScaleIntensity factors
    intensity_prob: float = 0.5


@dataclass
class TrainConfig:
    """A training run. See docs/TRAINING.md for what each field means in the recipe."""

    name: str = "sam3d-model"
    # -- model
    model: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {crop_size: 32}
    sam_checkpoint: str | None = None  # SAM's sam_vit_b_01ec64.pth; required for vit_b
    # Fine-tuning: start from a trained model of the same configuration (a bundled model's name
    # or a checkpoint path) instead of a fresh initialisation. Ignored on --resume.
    init_from: str | None = None
    # -- data
    data_dir: str = ""
    layout: str = "auto"
    target_label: str | int = "tumor"
    preset: str = "dataset"  # a built-in preset name, or "dataset" = computed from the train split
    splits_file: str | None = None  # a splits JSON (train / val / test); else made with split_seed
    split_seed: int = 0
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    # -- recipe
    epochs: int = 500
    steps_per_epoch: int | None = None  # None: training cases / batch size
    max_steps: int | None = None  # stop early after this many optimizer steps in total
    batch_size: int = 1
    lr: float = 4e-4
    weight_decay: float = 0.0
    final_lr_fraction: float = 0.01  # linear decay from lr to lr * this over all epochs
    warmup_steps: int = 0
    grad_clip: float = 1.0
    positive_fraction: float = 2 / 3  # crops centred on the target : elsewhere = 2 : 1
    # Prompts: the paper's 10 target + 20 anywhere clicks with this probability per sample,
    # otherwise one positive click (the evaluation's first click).
    paper_prompt_prob: float = 1.0
    # Of the one-click samples on a crop whose centre lies in an object, this share is clicked at
    # the crop's centre: the engine centres a first click's crop on the click, so the model then
    # trains on rim clicks placed as it meets them (docs/BENCHMARKS.md, "The crop's centre as a
    # cue"). 0: the click is a random target voxel wherever the crop lies.
    centre_click_prob: float = 0.0
    # Refinement training: with this probability per step, 1..refine_max_rounds correction
    # rounds run without gradient before the step (next click from the largest error region,
    # previous prediction fed back as mask prompt).
    refine_prob: float = 0.0
    refine_max_rounds: int = 3
    # Box prompts (box-capable models only): share of samples prompted with the object's box.
    box_prompt_prob: float = 0.0
    # Models with a frozen backbone (lite): encode this many random training crops once, keep
    # their backbone features in out_dir/feature_cache/, and train on those (0: encode every
    # step). Clicks, boxes and refinement rounds are still drawn afresh for every sample.
    feature_cache_crops: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    num_workers: int = 0
    # -- validation and output
    val_every: int = 500  # steps; also when checkpoints are written
    val_clicks: int = 1
    val_cases: int | None = None  # use only the first N val cases (speed)
    log_every: int = 10
    device: str = "auto"
    bf16: str | bool = "auto"  # autocast to bfloat16: auto = on CUDA
    activation_checkpointing: str | bool = "auto"  # auto = on CUDA
    threads: int | None = None  # torch intra-op threads on the CPU (None: torch's default)
    out_dir: str = "runs/sam3d-model"

    # ------------------------------------------------------------------------------------
    def model_config(self) -> ModelConfig:
        return get_config(self.model, **self.model_overrides)

    def validate(self) -> None:
        """Raise ValueError naming every field that cannot work."""
        problems = []
        if self.model not in CONFIGS:
            problems.append(f"model {self.model!r} is not one of {', '.join(CONFIGS)}")
        else:
            try:
                config = self.model_config()
            except (TypeError, ValueError) as error:
                problems.append(f"model_overrides: {error}")
            else:
                if config.sam_pos_grid and not self.sam_checkpoint:
                    problems.append(f"model {self.model!r} is trained from SAM's weights: set "
                                    f"sam_checkpoint to sam_vit_b_01ec64.pth (or pass --sam-checkpoint)")
                if config.adapter_placement == "inside" and self.feature_cache_crops:
                    problems.append("feature_cache_crops must be 0 with adapter_placement 'inside': TinyViT's "
                                    "output then depends on the adapters that train, so it cannot be cached")
        if self.feature_cache_crops < 0:
            problems.append("feature_cache_crops must be 0 or more")
        if not self.data_dir:
            problems.append("data_dir is empty: give the dataset folder (or pass --data)")
        if self.preset != "dataset" and self.preset not in PRESETS:
            problems.append(f"preset {self.preset!r} is neither 'dataset' nor one of {', '.join(PRESETS)}")
        if self.epochs < 1 or self.batch_size < 1:
            problems.append("epochs and batch_size must be at least 1")
        if self.max_steps is not None and self.max_steps < 0:
            problems.append("max_steps must be 0 or more")
        if not 0 < self.final_lr_fraction <= 1:
            problems.append("final_lr_fraction must be in (0, 1]")
        for name in ("positive_fraction", "paper_prompt_prob", "centre_click_prob", "refine_prob", "box_prompt_prob"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be a probability in [0, 1]")
        if self.refine_max_rounds < 1:
            problems.append("refine_max_rounds must be at least 1")
        if self.val_every < 1 or self.val_clicks < 1 or self.log_every < 1:
            problems.append("val_every, val_clicks and log_every must be at least 1")
        zoom = self.augmentation.zoom
        if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
            problems.append("augmentation.zoom must be [low, high] with 0 < low <= high")
        if any(sorted(plane) not in ([0, 1], [0, 2], [1, 2]) for plane in self.augmentation.rot90_planes):
            problems.append("augmentation.rot90_planes must hold pairs of distinct axes 0, 1, 2")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config key(s): {', '.join(unknown)}; "
                             f"known keys: {', '.join(sorted(known))}")
        augmentation = values.pop("augmentation", None) or {}
        aug_known = {f.name for f in dataclasses.fields(Augmentation)}
        bad = sorted(set(augmentation) - aug_known)
        if bad:
            raise ValueError(f"unknown augmentation key(s): {', '.join(bad)}; known: {', '.join(sorted(aug_known))}")
        config = cls(**values, augmentation=Augmentation(**augmentation))
        config.validate()
        return config


def resolve_config_path(spec: str | Path) -> Path:
    """A YAML path, or the name of a shipped config (``default_small_phantoms``)."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
    raise ValueError(f"training config {spec} does not exist; give a YAML file or a shipped config: {names}")


def load_config(spec: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML training config (path or shipped name) and apply ``overrides`` on top."""
    path = resolve_config_path(spec)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
    values.update(overrides or {})
    return TrainConfig.from_dict(values)
