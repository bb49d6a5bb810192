"""How fast a lite training run encodes its feature cache, with TinyViT as built and compiled
(`build_feature_cache`, whose `compile_from` decides), and how far the two caches' features lie
apart. Each round builds the same crops (domain-randomised synthetic cases) into a fresh folder
both ways, in alternating order; a fresh model each time, so the compiled one pays its compile
inside the round (reported apart). Prints a Markdown table.

    python benchmarks/bench_feature_cache.py --crops 12 --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sam3d.data.datasets import find_cases
from sam3d.data.intensity import PRESETS
from sam3d.data.phantoms import write_dataset
from sam3d.model.sam3d import Sam3D
from sam3d.train.config import TrainConfig
from sam3d.train.feature_cache import build_feature_cache
from sam3d.train.samples import CropSampler, cache_cases


def build(sampler: CropSampler, config, folder: Path, crops: int, compiled: bool) -> tuple[float, float, Path]:
    """(seconds compiling, seconds per crop encoding, folder) of one cache build."""
    model = Sam3D(config)
    start = time.perf_counter()
    if compiled:
        model.image_encoder.compile_backbone()
    compiling = time.perf_counter() - start
    start = time.perf_counter()
    build_feature_cache(sampler, model, folder, crops, progress=False, compile_from=crops + 1)
    return compiling, (time.perf_counter() - start) / crops, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", type=int, default=4, help="synthetic cases the crops are drawn from")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = write_dataset(scratch / "synth", cases=args.cases, seed=3, design="synth")
        train = TrainConfig(name="bench-cache", model="lite", data_dir=str(data), out_dir=str(scratch / "run"),
                            preset="percentile", target_label="tumor")
        config = train.model_config()
        cases = cache_cases(find_cases(data), 1, scratch / "cases", progress=False)
        sampler = CropSampler(cases, config, PRESETS["percentile"], train, length=args.crops)
        seconds: dict[bool, list[float]] = {False: [], True: []}
        compile_seconds, largest_difference = [], 0.0
        for round_ in range(args.rounds):
            folders = {}
            for compiled in ((False, True) if round_ % 2 == 0 else (True, False)):
                compiling, per_crop, folders[compiled] = build(sampler, config, scratch / f"r{round_}-{compiled}",
                                                               args.crops, compiled)
                seconds[compiled].append(per_crop)
                if compiled:
                    compile_seconds.append(compiling)
            for n in range(args.crops):
                a, b = (torch.load(folders[c] / f"crop_{n:05d}.pt", weights_only=True)["backbone"].float()
                        for c in (False, True))
                largest_difference = max(largest_difference, float((a - b).abs().max()))
    eager, compiled = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"| TinyViT | s per crop, median of {args.rounds} rounds x {args.crops} crops | compile s | ratio |")
    print("|---|---|---|---|")
    print(f"| as built | {eager:.2f} | - | 1.00 |")
    print(f"| compiled | {compiled:.2f} | {statistics.median(compile_seconds):.1f} | {eager / compiled:.2f} |")
    print(f"\nlargest difference between the two caches' features (fp16 storage): {largest_difference:.2e}; "
          f"threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
