"""The training run: model, optimiser, the paper's loss and schedule, refinement rounds,
validation through the engine, logs, checkpoints and resume.

Files in ``out_dir``::

    config.yaml        the resolved training config
    splits.json        the train / val / test split used
    train_log.csv      one row per log interval (and per validation)
    tensorboard/       the same numbers as TensorBoard scalars
    last.pt, best.pt   model checkpoints (``sam3d.model.checkpoint`` format); best by validation Dice
    state.pt           optimiser, schedule and step, for ``--resume``
    cache/             the cases as memory-mapped arrays
    feature_cache/     lite models: the training crops' frozen backbone features
"""

from __future__ import annotations

import csv
import math
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.clicks import next_click
from ..data.datasets import (dataset_identity, find_cases, make_splits, read_splits, resolve_target_label,
                             write_splits)
from ..data.intensity import PRESETS, IntensityPreset, compute_preset
from ..engine.crops import probability_to_logit
from ..engine.predictor import Predictor
from ..evaluate.simulation import evaluate_volumes
from ..model.checkpoint import (LoadedModel, build_from_sam, model_from_checkpoint, model_path, resolve_device,
                                save_checkpoint)
from ..model.sam3d import ImageFeatures, Sam3D, is_frozen_pretrained_tensor
from .config import TrainConfig
from .samples import CropSampler, cache_cases, collate
from .feature_cache import CachedFeatureSampler, build_feature_cache

LOG_COLUMNS = ("step", "epoch", "lr", "loss", "train_dice", "val_dice", "val_nsd", "elapsed_s",
               "samples_per_s", "peak_memory_mb")


@dataclass
class TrainResult:
    steps: int
    best_val_dice: float | None
    best_path: Path
    last_path: Path
    log_path: Path


class Trainer:
    """One training run described by a ``TrainConfig``."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        config.validate()
        self.config = config
        self.progress = progress
        self.out_dir = Path(config.out_dir)
        self.state_path = self.out_dir / "state.pt"
        if resume and not self.state_path.is_file():
            raise ValueError(f"nothing to resume: {self.state_path} does not exist")
        if not resume and self.state_path.is_file():
            raise ValueError(f"{self.out_dir} already holds a run (state.pt); pass --resume to continue it "
                             f"or choose another out_dir")
        self.resume = resume
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        on_cuda = self.device.type == "cuda"
        self.bf16 = on_cuda if config.bf16 == "auto" else bool(config.bf16)
        self.checkpointing = on_cuda if config.activation_checkpointing == "auto" else bool(config.activation_checkpointing)
        self.model_config = config.model_config()

    # -- setup ----------------------------------------------------------------------------
    def _prepare_data(self) -> None:
        config = self.config
        cases = find_cases(config.data_dir, config.layout)
        self.target_label = resolve_target_label(config.data_dir, config.target_label, config.layout)
        if config.splits_file:
            splits = read_splits(config.splits_file)
        else:
            splits = make_splits(cases, config.split_seed, config.split_fractions)
        known = {c.case_id for c in cases}
        missing = [i for name in ("train", "val") for i in splits[name] if i not in known]
        if missing:
            raise ValueError(f"the splits name cases that are not in {config.data_dir}: {', '.join(missing[:5])}")
        if not splits["train"]:
            raise ValueError("the train split is empty; add cases or change split_fractions")
        self.splits = splits
        write_splits(self.out_dir / "splits.json", splits)
        by_id = {c.case_id: c for c in cases}
        cache = self.out_dir / "cache"
        self.train_cases = cache_cases([by_id[i] for i in splits["train"]], self.target_label, cache, self.progress)
        val_ids = splits["val"][: config.val_cases] if config.val_cases else splits["val"]
        self.val_cases = cache_cases([by_id[i] for i in val_ids], self.target_label, cache, self.progress)
        if config.preset == "dataset":
            self.preset = compute_preset([c.volume for c in self.train_cases], [c.target for c in self.train_cases],
                                         name=f"{config.name}-dataset")
        else:
            self.preset = PRESETS[config.preset]

    def build_model(self, total_steps: int) -> None:
        """The model (vit_b: SAM's weights, frozen as the method freezes), its optimiser over the
        trainable tensors, the schedule over ``total_steps`` and the loss."""
        torch.manual_seed(self.config.seed)
        if self.model_config.sam_pos_grid:
            self.model, _ = build_from_sam(self.model_config, self.config.sam_checkpoint)
            self.trainable_only = True
        else:
            self.model = Sam3D(self.model_config)
            self.trainable_only = self.model_config.backbone == "lite_medsam"  # LiteMedSAM stays in its package
        self.model.to(self.device)
        self.model.set_activation_checkpointing(self.checkpointing)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.total_steps = total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True,
                                  lambda_dice=1.0, lambda_ce=1.0)

    def _total_steps(self) -> int:
        """Steps of the schedule: epochs x steps per epoch (an epoch = one pass over the
        training cases at the batch size, unless steps_per_epoch is given)."""
        config = self.config
        per_epoch = config.steps_per_epoch or max(1, math.ceil(len(self.train_cases) / config.batch_size))
        return config.epochs * per_epoch

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up (optional), then the paper's linear decay to final_lr_fraction."""
        warmup = self.config.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return 1.0 - (1.0 - self.config.final_lr_fraction) * progress

    # -- the step -------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> tuple[float, float]:
        """One optimiser step on a collated batch; returns (loss, Dice of the batch's targets)."""
        self.model.train()
        image = batch["image"].to(self.device)
        target = batch["target"].to(self.device)
        points, labels = batch["points"].to(self.device), batch["labels"].to(self.device)
        rng = np.random.default_rng([self.config.seed, step, 1])
        rounds = int(rng.integers(1, self.config.refine_max_rounds + 1)) if rng.random() < self.config.refine_prob else 0
        with self._autocast():
            if "backbone" in batch:
                features = self.model.encode_from_backbone(batch["backbone"].to(self.device), image)
            else:
                features = self.model.encode(image)
            points, labels, mask = self._refinement_rounds(features, points, labels, target, rounds)
            logits = self.model.predict(features, points, labels, mask)
        loss = self.loss_fn(logits.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            predicted = logits[:, 1] > logits[:, 0]
            truth = target[:, 0] > 0.5
            overlap = (predicted & truth).sum().item()
            total = predicted.sum().item() + truth.sum().item()
        return float(loss.item()), (2.0 * overlap / total if total else 1.0)

    def _refinement_rounds(self, features: ImageFeatures, points: torch.Tensor, labels: torch.Tensor,
                           target: torch.Tensor, rounds: int):
        """Simulated correction rounds without gradient: predict, add each sample's next click
        (largest error region), feed the prediction back as mask prompt. Returns the prompts
        of the step: points, labels and mask prompt (None without rounds)."""
        if not rounds:
            return points, labels, None
        detached = features.detach()
        truth = target[:, 0].cpu().numpy() > 0.5
        mask = None
        with torch.no_grad():
            for _ in range(rounds):
                logits = self.model.predict(detached, points, labels, mask)
                predicted = (logits[:, 1] > logits[:, 0]).cpu().numpy()
                new_points = torch.zeros(len(points), 1, 3)
                new_labels = torch.full((len(points), 1), -1, dtype=torch.long)
                for row in range(len(points)):
                    correction = next_click(predicted[row], truth[row])
                    if correction is not None:
                        new_points[row, 0] = torch.from_numpy(correction[0])
                        new_labels[row, 0] = correction[1]
                points = torch.cat([points, new_points.to(points.device)], dim=1)
                labels = torch.cat([labels, new_labels.to(labels.device)], dim=1)
                # the engine feeds the previous *mask* back (a saturated logit), so training does too
                mask = probability_to_logit(torch.from_numpy(predicted).float())[:, None].to(self.device)
        return points, labels, mask

    # -- validation and files -------------------------------------------------------------
    def validate(self) -> tuple[float, float] | None:
        """Mean Dice and NSD on the val cases with the evaluation protocol (through the engine),
        after ``val_clicks`` clicks; None without val cases."""
        if not self.val_cases:
            return None
        self.model.eval()
        predictor = Predictor(LoadedModel(self.model, self.model_config, self.preset, self.config.name, self.device))
        volumes = [(c.case_id, np.asarray(c.volume), c.spacing, c.target) for c in self.val_cases]
        _, summary = evaluate_volumes(predictor, volumes, self.config.val_clicks, seed=self.config.seed, classical=False)
        self.model.train()
        return summary["dice_by_click"][-1], summary["nsd_by_click"][-1]

    def _meta(self, step: int, val_dice: float | None) -> dict:
        return {
            "trained_with": "sam3d train",
            "train_config": self.config.to_dict(),
            "dataset": dataset_identity(self.config.data_dir, self.config.layout),
            "target_label": self.target_label,
            "splits": {"seed": self.splits.get("seed"), **{n: len(self.splits[n]) for n in ("train", "val", "test")}},
            "split_seed": self.splits.get("seed"),
            "step": step,
            "val_dice": val_dice,
            "val_clicks": self.config.val_clicks,
        }

    def _save(self, step: int, val_dice: float | None, best: float | None) -> None:
        save_checkpoint(self.out_dir / "last.pt", self.model, self.preset, self.config.name,
                        trainable_only=self.trainable_only, meta=self._meta(step, val_dice))
        state = self.model.state_dict()
        if self.trainable_only:
            state = {n: t for n, t in state.items() if not is_frozen_pretrained_tensor(n)}
        payload = {"step": step, "best_val_dice": best, "model": state,
                   "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "preset": self.preset.to_dict(), "model_config": self.model_config.to_dict(),
                   "elapsed_s": self.elapsed}
        temporary = self.state_path.with_suffix(".tmp")
        torch.save(payload, temporary)
        temporary.replace(self.state_path)

    def _initialise_from(self, spec: str) -> None:
        """Start from a trained model's weights (fine-tuning); its configuration must be the run's,
        except that a model with adapters on top may start one with adapters inside as well (those
        start at zero, so step 0 is the source model)."""
        source, payload = model_from_checkpoint(model_path(spec), self.config.sam_checkpoint)
        compared, wanted = source.config.to_dict(), self.model_config.to_dict()
        adds_inside = compared["adapter_placement"] == "top" and wanted["adapter_placement"] == "inside"
        if adds_inside:
            compared["adapter_placement"] = "inside"  # the run's inside adapters start at zero
        if compared != wanted:
            raise ValueError(f"init_from {spec!r} is a {payload['config'].get('name')!r} model with another "
                             f"configuration than this run's {self.config.model!r}: fine-tune with its own model "
                             f"and model_overrides (only adapter_placement may go from 'top' to 'inside')")
        missing, _ = self.model.load_state_dict(source.state_dict(), strict=not adds_inside)
        if [name for name in missing if not name.startswith("image_encoder.inside_adapters.")]:
            raise ValueError(f"init_from {spec!r} lacks tensors of this run's model: {missing[:3]}")

    def _restore(self) -> tuple[int, float | None]:
        payload = torch.load(self.state_path, map_location=self.device, weights_only=True)
        if payload["model_config"] != self.model_config.to_dict():
            raise ValueError(f"{self.state_path} was trained with another model configuration; "
                             f"resume with the config that started it")
        missing, unexpected = self.model.load_state_dict(payload["model"], strict=False)
        if unexpected or [n for n in missing if not (self.trainable_only and is_frozen_pretrained_tensor(n))]:
            raise ValueError(f"{self.state_path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.preset = IntensityPreset.from_dict(payload["preset"])  # the run keeps its first preset
        self.elapsed = payload.get("elapsed_s", 0.0)
        return int(payload["step"]), payload["best_val_dice"]

    # -- the run --------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        self._prepare_data()
        self.build_model(self._total_steps())
        self.elapsed = 0.0
        if self.resume:
            start_step, best = self._restore()
        else:
            start_step, best = 0, None
            if config.init_from:
                self._initialise_from(config.init_from)
        last_step = self.total_steps if config.max_steps is None else min(self.total_steps, config.max_steps)
        log_path = self.out_dir / "train_log.csv"
        sampler = self._sampler(length=last_step * config.batch_size)
        loader = DataLoader(sampler, batch_size=config.batch_size, collate_fn=collate, num_workers=config.num_workers,
                            sampler=range(start_step * config.batch_size, last_step * config.batch_size),
                            worker_init_fn=_one_thread, persistent_workers=False)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        new_log = not (self.resume and log_path.is_file())
        if not new_log:
            _truncate_log(log_path, start_step)
        per_epoch = self.total_steps // config.epochs
        window: list[tuple[float, float]] = []
        started = time.perf_counter() - self.elapsed
        interval_start, interval_steps = time.perf_counter(), 0
        with open(log_path, "w" if new_log else "a", newline="") as log_file, \
                tqdm(total=last_step, initial=start_step, desc=f"train {config.name}", unit="step",
                     disable=not self.progress) as bar:
            log = csv.DictWriter(log_file, fieldnames=LOG_COLUMNS)
            if new_log:
                log.writeheader()
            step = start_step
            for batch in loader:
                loss, dice = self.train_step(batch, step)
                step += 1
                interval_steps += 1
                window.append((loss, dice))
                bar.update(1)
                validate = step % config.val_every == 0 or step == last_step
                if step % config.log_every == 0 or validate:
                    seconds = time.perf_counter() - interval_start
                    row = {"step": step, "epoch": round(step / per_epoch, 3), "lr": self.scheduler.get_last_lr()[0],
                           "loss": float(np.mean([w[0] for w in window])),
                           "train_dice": float(np.mean([w[1] for w in window])),
                           "samples_per_s": interval_steps * config.batch_size / max(seconds, 1e-9),
                           "peak_memory_mb": self._peak_memory_mb()}
                    window, interval_start, interval_steps = [], time.perf_counter(), 0
                    if validate:
                        scores = self.validate()
                        if scores is not None:
                            row["val_dice"], row["val_nsd"] = scores
                    self.elapsed = time.perf_counter() - started
                    row["elapsed_s"] = self.elapsed
                    log.writerow({k: _round(v) for k, v in row.items()})
                    log_file.flush()
                    for key in ("loss", "train_dice", "lr", "val_dice", "val_nsd", "samples_per_s"):
                        if key in row:
                            writer.add_scalar(key, row[key], step)
                    bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "train_dice", "val_dice") if k in row})
                    if validate:
                        val_dice = row.get("val_dice")
                        improved = val_dice is None or best is None or val_dice > best
                        if improved:
                            best = val_dice if val_dice is not None else best
                            save_checkpoint(self.out_dir / "best.pt", self.model, self.preset, config.name,
                                            trainable_only=self.trainable_only, meta=self._meta(step, val_dice))
                        self._save(step, val_dice, best)
        writer.close()
        if start_step >= last_step and not (self.out_dir / "best.pt").is_file():
            raise ValueError(f"the run in {self.out_dir} had already reached step {start_step}; nothing to do")
        return TrainResult(max(start_step, last_step), best, self.out_dir / "best.pt", self.out_dir / "last.pt", log_path)

    def _sampler(self, length: int):
        """Training samples: crops cut every step, or cached backbone features of lite models."""
        crops = CropSampler(self.train_cases, self.model_config, self.preset, self.config, length=length)
        if not (self.config.feature_cache_crops and self.model.has_frozen_backbone):
            return crops
        folder = build_feature_cache(crops, self.model, self.out_dir / "feature_cache",
                                     self.config.feature_cache_crops, self.progress)
        return CachedFeatureSampler(folder, self.config.feature_cache_crops, self.config,
                                    self.model_config.box_prompt, length)

    def _peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the saved state (a run stopped between two checkpoints)."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
    with open(path, "w", newline="") as handle:
        log = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        log.writeheader()
        log.writerows(rows)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def _round(value):
    return round(value, 6) if isinstance(value, float) else value
