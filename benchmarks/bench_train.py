"""Training speed and memory: the real training step (`Trainer.train_step`: encode, prompt
encoder + decoder, MONAI DiceCE, backward, gradient clipping, AdamW) on random crops, for each
variant as its recipe trains it (vit_b: parameter-efficient, SAM's weights frozen; small: all
weights). Prints a Markdown table.

    python benchmarks/bench_train.py --variants small,vit_b --device cpu --vit-b-crop 32
    python benchmarks/bench_train.py --variants small,vit_b --device cuda

On CUDA the default is the recipe's: bf16 autocast and activation checkpointing; vit_b at its
128^3 crop. Each measurement runs in a fresh child process so that its peak memory is its own:
on CUDA `torch.cuda.max_memory_allocated`, on the CPU the process's peak resident set
(`ru_maxrss`). Without --sam-checkpoint, vit_b starts from a SAM-format checkpoint written by
`segment_anything` with random weights (same shapes, so the same speed and memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def random_batch(crop: int, batch: int, points: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch shaped as `sam3d.train.samples.collate` makes it: a blob target and clicks on it."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 1, crop, crop, crop, generator=generator)
    axis = torch.arange(crop) - crop / 2
    k, j, i = torch.meshgrid(axis, axis, axis, indexing="ij")
    blob = (k**2 + j**2 + i**2 < (crop / 5) ** 2).float()
    target = blob.expand(batch, 1, crop, crop, crop).contiguous()
    centre = torch.full((batch, points, 3), crop / 2)
    return {"image": image + 2 * target, "target": target,
            "points": centre + torch.randn(batch, points, 3, generator=generator),
            "labels": torch.ones(batch, points, dtype=torch.long)}


def measure(args: argparse.Namespace) -> dict:
    """One variant in this process: warm-up steps, then timed steps."""
    from sam3d.data.intensity import PRESETS
    from sam3d.train.config import TrainConfig
    from sam3d.train.trainer import Trainer

    torch.set_num_threads(args.threads) if args.threads else None
    overrides = {"crop_size": args.crop} if args.crop else {}
    with tempfile.TemporaryDirectory() as scratch:
        sam_checkpoint = args.sam_checkpoint
        if args.variant == "vit_b" and not sam_checkpoint:
            from segment_anything import sam_model_registry

            sam_checkpoint = os.path.join(scratch, "sam_vit_b_01ec64.pth")
            torch.save(sam_model_registry["vit_b"]().state_dict(), sam_checkpoint)
        config = TrainConfig(name=f"bench-{args.variant}", model=args.variant, model_overrides=overrides,
                             sam_checkpoint=sam_checkpoint, data_dir="unused", batch_size=args.batch,
                             refine_prob=args.refine_prob, device=args.device,
                             bf16=args.bf16, activation_checkpointing=args.checkpointing,
                             out_dir=os.path.join(scratch, "run"))
        trainer = Trainer(config, progress=False)
        trainer.preset = PRESETS["soft_tissue"]
        trainer.build_model(total_steps=1000)
        crop = trainer.model_config.crop_size
        batch = random_batch(crop, args.batch, args.points)
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        losses = []
        for step in range(args.warmup):
            losses.append(trainer.train_step(batch, step)[0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for step in range(args.warmup, args.warmup + args.steps):
            losses.append(trainer.train_step(batch, step)[0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / args.steps
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            memory_kind = "GPU max allocated"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            memory_kind = "CPU peak RSS"
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
    return {
        "variant": args.variant, "crop": crop, "batch": args.batch, "device": str(device),
        "bf16": trainer.bf16, "activation_checkpointing": trainer.checkpointing,
        "refine_prob": args.refine_prob, "seconds_per_step": seconds,
        "samples_per_s": args.batch / seconds, "peak_memory_gib": peak / 2**30, "memory_kind": memory_kind,
        "trainable_params_m": trainable / 1e6, "total_params_m": total / 1e6,
        "loss_first": losses[0], "loss_last": losses[-1],
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="small,vit_b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=0, help="default: the recipe's (small 2, vit_b 1)")
    parser.add_argument("--vit-b-crop", type=int, default=0, help="vit_b crop size (default: 128, the paper's)")
    parser.add_argument("--small-crop", type=int, default=0, help="small crop size (default: its config's)")
    parser.add_argument("--points", type=int, default=30, help="clicks per sample (the paper's 10 + 20)")
    parser.add_argument("--refine-prob", type=float, default=0.0, help="share of steps with refinement rounds")
    parser.add_argument("--bf16", default="auto", help="auto (on CUDA), true, false")
    parser.add_argument("--checkpointing", default="auto", help="activation checkpointing: auto (on CUDA), true, false")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--sam-checkpoint", default=None)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("bf16", "checkpointing"):
        value = getattr(args, name)
        setattr(args, name, value if value == "auto" else value.lower() in ("1", "true", "yes"))

    if args.child:
        args.variant = args.child
        args.crop = args.vit_b_crop if args.variant == "vit_b" else args.small_crop
        args.batch = args.batch or (1 if args.variant == "vit_b" else 2)
        print(json.dumps(measure(args)))
        return 0

    rows = []
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, "--child", variant] + [
            a for a in sys.argv[1:] if a != "--json"]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode:
            print(completed.stderr, file=sys.stderr)
            return completed.returncode
        rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"Training step on {device_name(args.device)}, torch {torch.__version__}\n")
    print("| variant | crop | batch | trainable / total params | bf16 | act. ckpt | s / step | samples / s | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['crop']}^3 | {r['batch']} | {r['trainable_params_m']:.1f} M / "
              f"{r['total_params_m']:.1f} M | {r['bf16']} | {r['activation_checkpointing']} | "
              f"{r['seconds_per_step']:.3f} | {r['samples_per_s']:.2f} | {r['peak_memory_gib']:.2f} GiB "
              f"({r['memory_kind']}) |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model_server"))
    sys.exit(main())
