"""Where the lite model's 3D adapters go: on top of the frozen TinyViT features (what `lite` does)
or inside TinyViT's attention stages (the paper's placement) - CPU cost of inference and of one
training step, measured on the same 64^3 crop in one run.

    python benchmarks/bench_lite_adapters.py [--repeats 3] [--threads 2]

"Inside" is the model's ``adapter_placement: inside`` (sam3d/model/lite_encoder.py): besides the
adapters on top, one after every attention block of stages 1-3 (down-projection to half the
channels, depthwise 3x3x3 convolution across neighbouring slices, zero-initialised
up-projection), so training back-propagates through the frozen blocks and no encoder output can
be cached.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sam3d.model.config import get_config
from sam3d.model.sam3d import Sam3D


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_config("lite")
    crop = torch.rand(1, 1, *(config.crop_size,) * 3)
    points, labels = torch.tensor([[[32.0, 32.0, 32.0]]]), torch.tensor([[1]])
    target = torch.zeros(1, 2, *(config.crop_size,) * 3)

    top = Sam3D(config)
    top_trainable = sum(p.numel() for p in top.image_encoder.adapters.parameters())
    cached = top.backbone_features(crop)

    def top_step(backbone=None):
        features = top.encode_from_backbone(backbone if backbone is not None else top.backbone_features(crop), crop)
        loss = (top.predict(features, points, labels) - target).square().mean()
        loss.backward()

    inside = Sam3D(get_config("lite", adapter_placement="inside"))
    inside_trainable = top_trainable + sum(p.numel() for p in inside.image_encoder.inside_adapters.parameters())

    def inside_step():
        loss = (inside(crop, points, labels) - target).square().mean()
        loss.backward()

    top.train(), inside.train()
    with torch.inference_mode():
        encode_top = timed(lambda: top.encode(crop), args.repeats)
        encode_inside = timed(lambda: inside.encode(crop), args.repeats)
    rows = [
        ("on top of frozen features (lite)", top_trainable, encode_top,
         timed(lambda: top_step(cached), args.repeats), timed(top_step, args.repeats)),
        ("inside attention stages 1-3 (and on top)", inside_trainable, encode_inside, timed(inside_step, args.repeats), None),
    ]
    print(f"threads {args.threads}, crop {config.crop_size}^3, median of {args.repeats}\n")
    print("| adapters | adapter parameters | encode (inference) s | train step, cached features s | "
          "train step, encoder run s |")
    print("|---|---|---|---|---|")
    for name, count, encode, step_cached, step_full in rows:
        print(f"| {name} | {count / 1e6:.2f} M | {encode:.2f} | "
              f"{'n/a (no cache possible)' if name.startswith('inside') else f'{step_cached:.2f}'} | "
              f"{step_cached if name.startswith('inside') else step_full:.2f} |")


if __name__ == "__main__":
    main()
