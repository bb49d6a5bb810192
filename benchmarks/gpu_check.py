"""The GPU validation in one run: the default model through the server, then vit_b's model, server
and training benchmarks, one table each.

    bash benchmarks/gpu_check.sh            # on the GPU machine (see that script)
    python benchmarks/gpu_check.py --tiny   # dry run on a CPU with tiny sizes

First the default (lite) model through the server (bench_server.py on a 512 x 512 x 61 volume:
the issue's first click <= 300 ms on a GPU, the next click, a 2D box and the corrections after it,
LiteMedSAM's 2D pathway on the GPU with the 3D model). Then it writes a SAM-format ViT-B
checkpoint from segment_anything's own constructor (random weights: the real
sam_vit_b_01ec64.pth cannot be downloaded here), builds vit_b from it, saves the
adapter checkpoint, then runs the project's benchmark scripts on that model:
bench_model.py (encoder fp32 / bf16, fused vs reference patch embedding, per-click time),
bench_server.py (upload, first and next click over HTTP on a 512 x 512 x 200 volume) and
bench_train.py (PEFT step time and peak memory with and without activation checkpointing).
Every table is printed and written to OUT/gpu_check.md; one failing step does not stop the rest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PARTS = ("default", "fp32", "bf16", "click", "server", "train")


def write_models(out: Path, crop_size: int) -> tuple[Path, Path]:
    """SAM-format checkpoint + the vit_b adapter checkpoint built from it."""
    from segment_anything import sam_model_registry

    from sam3d.data.intensity import PRESETS
    from sam3d.model.checkpoint import build_from_sam, save_checkpoint
    from sam3d.model.config import get_config

    torch.manual_seed(0)
    sam_path = out / "sam_vit_b_01ec64.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), sam_path)
    overrides = {"crop_size": crop_size} if crop_size else {}
    model, report = build_from_sam(get_config("vit_b", **overrides), sam_path)
    print(f"vit_b from SAM checkpoint: {report.counts()}")
    adapters = save_checkpoint(out / "vit_b_adapters.pt", model, PRESETS["kits21"], "vit_b-random-adapters",
                               trainable_only=True)
    return sam_path, adapters


def run_step(title: str, command: list[str], log, timeout: float) -> None:
    print(f"\n## {title}\n$ {' '.join(command)}", flush=True)
    log.write(f"\n## {title}\n\n`{' '.join(command)}`\n\n")
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        output = result.stdout + (f"\n(exit {result.returncode})\n{result.stderr[-2000:]}" if result.returncode else "")
    except subprocess.TimeoutExpired:
        output = f"(stopped after {timeout:.0f} s)"
    output += f"\n({time.perf_counter() - start:.0f} s)\n"
    print(output, flush=True)
    log.write(output)
    log.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: 32^3 crops, small volume, few repeats")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {', '.join(PARTS)} (default: all; a lease too short for all "
                             "runs the rest in another)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown --parts {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.tiny else "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    crop = 32 if args.tiny else 0
    sam_path, adapters = write_models(out, crop)
    python = sys.executable
    size = ["--crop-size", str(crop)] if crop else []
    steps = [  # (part, title, command)
        ("default", f"the default model through the server, {name}",
         [python, str(HERE / "bench_server.py"), "--model", "default", "--device", device, "--uploads", "1",
          "--shape", "61,256,256" if args.tiny else "61,512,512", "--repeats", "3" if args.tiny else "10"]),
        ("fp32", f"encoder and click, fp32, {name}", [python, str(HERE / "bench_model.py"), "--variants", "vit_b",
                                              "--device", device, "--repeats", "2" if args.tiny else "10", *size]),
        ("bf16", f"encoder and click, bf16, {name}", [python, str(HERE / "bench_model.py"), "--variants", "vit_b",
                                              "--device", device, "--dtype", "bf16",
                                              "--repeats", "2" if args.tiny else "10", *size]),
        ("click", f"prompt encoder + decoder per click, median of 50, {name}",
         [python, str(HERE / "bench_model.py"), "--variants", "vit_b", "--device", device, "--parts", "click",
          "--repeats", "5" if args.tiny else "50", *size]),
        ("server", f"server end to end, {name}", [python, str(HERE / "bench_server.py"), "--model", str(adapters),
                                        "--sam-checkpoint", str(sam_path), "--device", device,
                                        "--shape", "40,96,96" if args.tiny else "200,512,512",
                                        "--repeats", "3" if args.tiny else "20"]),
    ]
    for checkpointing in ("true", "false"):
        steps.append(("train", f"PEFT training step, activation checkpointing {checkpointing}, {name}",
                       [python, str(HERE / "bench_train.py"), "--variants", "vit_b", "--device", device,
                        "--sam-checkpoint", str(sam_path), "--checkpointing", checkpointing,
                        "--steps", "2" if args.tiny else "5", *(["--vit-b-crop", "32"] if args.tiny else [])]))
    with open(out / "gpu_check.md", "w") as log:
        log.write(f"# GPU check of vit_b on {name}, torch {torch.__version__}\n")
        for part, title, command in steps:
            if part in parts:
                run_step(title, command, log, timeout=120 if args.tiny else 240)
    print(f"wrote {out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
