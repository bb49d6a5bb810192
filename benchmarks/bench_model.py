"""Model speed and memory: encoder forward (fused vs reference patch embedding), patch embedding
alone, and prompt encoder + decoder per click. Prints a Markdown table.

    python benchmarks/bench_model.py --variants small,vit_b --device cpu
    python benchmarks/bench_model.py --variants vit_b --device cuda --dtype bf16

Each measurement runs in a fresh child process so that peak memory belongs to that measurement
alone: on CUDA `torch.cuda.max_memory_allocated`, on the CPU the growth of the process's peak
resident set over its size just before one measured call (the kernel's peak is reset through
/proc/self/clear_refs, and glibc is told to map every large buffer on its own so that freed
tensors leave the resident set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def measure(args: argparse.Namespace) -> dict:
    """Run one (variant, part, path) measurement in this process."""
    from sam3d.model.config import get_config
    from sam3d.model.sam3d import Sam3D

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    config = get_config(args.variant, **({"crop_size": args.crop_size} if args.crop_size else {}))
    model = Sam3D(config, fused_patch_embed=args.path == "fused").to(device).eval()
    crop = config.crop_size
    image = torch.randn(1, 1, crop, crop, crop, device=device)
    points = torch.tensor([[[crop / 2, crop / 2, crop / 2]]], device=device)
    labels = torch.ones(1, 1, dtype=torch.long, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        if args.part == "patch_embed":
            run = lambda: model.image_encoder.patch_embed(image)  # noqa: E731
        elif args.part == "encoder":
            run = lambda: model.encode(image)  # noqa: E731
        else:
            features = model.encode(image)
            run = lambda: model.predict(features, points, labels)  # noqa: E731
        run()  # warm-up (kernels, allocator)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            reset_peak_rss()
            base = rss_bytes("VmRSS")
        run()
        sync()
        peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else rss_bytes("VmHWM")) - base
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
    return {"median_ms": statistics.median(times) * 1000, "peak_mb": max(peak, 0) / 2**20}


def child(variant: str, part: str, path: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", "--variants", variant, "--part", part, "--path", path,
               "--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats),
               "--crop-size", str(args.crop_size)]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1][:80]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="small,vit_b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default="patch_embed,encoder,click", help="which rows to measure")
    parser.add_argument("--crop-size", type=int, default=0, help="override the variants' crop size (dry runs)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", default="encoder", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="fused", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.variants
        print(json.dumps(measure(args)))
        return
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device_name}, dtype {args.dtype}, torch {torch.__version__}, median of {args.repeats}\n")
    print("| variant | part | patch embedding | median ms | peak MB |")
    print("|---|---|---|---|---|")
    for variant in args.variants.split(","):
        rows = [(part, path) for part, path in (("patch_embed", "fused"), ("patch_embed", "reference"),
                                                ("encoder", "fused"), ("encoder", "reference"), ("click", "fused"))
                if part in args.parts.split(",")]
        results = {}
        for part, path in rows:
            results[part, path] = result = child(variant, part, path, args)
            if "error" in result:
                print(f"| {variant} | {part} | {path} | failed: {result['error']} | |")
            else:
                print(f"| {variant} | {part} | {path} | {result['median_ms']:.1f} | {result['peak_mb']:.1f} |")
            sys.stdout.flush()
        fused, reference = results.get(("patch_embed", "fused"), {}), results.get(("patch_embed", "reference"), {})
        if "peak_mb" in fused and "peak_mb" in reference and fused["peak_mb"] > 0:
            print(f"| {variant} | patch_embed | reference / fused peak memory | "
                  f"{reference['median_ms'] / fused['median_ms']:.1f}x time | "
                  f"{reference['peak_mb'] / fused['peak_mb']:.1f}x memory |")


if __name__ == "__main__":
    main()
