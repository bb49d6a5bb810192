"""Where the lite model's 3D adapters go: on top of the frozen TinyViT features (what `lite` does)
or inside TinyViT's attention stages (the paper's placement) - CPU cost of inference and of one
training step, measured on the same 64^3 crop in one run.

    python benchmarks/bench_lite_adapters.py [--repeats 3] [--threads 2]

"Inside" is built here only to be measured: after every attention block of stages 1-3 an
adapter (down-projection to half the channels, depthwise 3x3x3 convolution across neighbouring
slices, zero-initialised up-projection) is added, so training back-propagates through the frozen
blocks and no encoder output can be cached.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from sam3d.model.config import get_config
from sam3d.model.lite_encoder import SliceAdapter3D
from sam3d.model.sam3d import Sam3D


class InsideAdapter(nn.Module):
    """A TinyViT block followed by a 3D adapter over the [slices, H*W, C] tokens."""

    def __init__(self, block: nn.Module, slices: int) -> None:
        super().__init__()
        self.block, self.slices = block, slices
        self.adapter = SliceAdapter3D(block.dim, block.dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        n, length, channels = x.shape
        side = int(length ** 0.5)
        volume = x.view(n // self.slices, self.slices, side, side, channels).permute(0, 4, 1, 2, 3)
        return self.adapter(volume).permute(0, 2, 3, 4, 1).reshape(n, length, channels)


def place_inside(model: Sam3D) -> int:
    """Put adapters after every attention block of stages 1-3; return their parameter count."""
    slices = model.config.crop_size // model.image_encoder.slab
    added = 0
    for layer in model.image_encoder.backbone.layers[1:]:
        for index, block in enumerate(layer.blocks):
            wrapped = InsideAdapter(block, slices)
            layer.blocks[index] = wrapped
            added += sum(p.numel() for p in wrapped.adapter.parameters())
    return added


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

    inside = Sam3D(config)
    inside_trainable = place_inside(inside)
    for parameter in inside.image_encoder.backbone.parameters():
        parameter.requires_grad_(False)
    for name, parameter in inside.image_encoder.backbone.named_parameters():
        if ".adapter." in name:
            parameter.requires_grad_(True)

    def inside_step():
        features_2d = inside.image_encoder.backbone  # gradients must flow: run the slices without no_grad
        slabs = torch.nn.functional.avg_pool3d(crop, kernel_size=(2, 1, 1))
        slices = slabs.permute(0, 2, 1, 3, 4).reshape(-1, 1, config.crop_size, config.crop_size).expand(-1, 3, -1, -1)
        from sam3d.model.lite_encoder import tiny_vit_features

        maps = tiny_vit_features(features_2d, slices)
        volume = maps.view(1, -1, 256, maps.shape[-1], maps.shape[-1]).permute(0, 2, 1, 3, 4)
        features = inside.encode_from_backbone(volume, crop)
        loss = (inside.predict(features, points, labels) - target).square().mean()
        loss.backward()

    top.train(), inside.train()
    with torch.inference_mode():
        encode_top = timed(lambda: top.encode(crop), args.repeats)
    rows = [
        ("on top of frozen features (lite)", top_trainable, encode_top,
         timed(lambda: top_step(cached), args.repeats), timed(top_step, args.repeats)),
        ("inside attention stages 1-3", inside_trainable, None, timed(inside_step, args.repeats), None),
    ]
    print(f"threads {args.threads}, crop {config.crop_size}^3, median of {args.repeats}\n")
    print("| adapters | adapter parameters | encode (inference) s | train step, cached features s | "
          "train step, encoder run s |")
    print("|---|---|---|---|---|")
    for name, count, encode, step_cached, step_full in rows:
        print(f"| {name} | {count / 1e6:.2f} M | {'-' if encode is None else f'{encode:.2f}'} | "
              f"{'n/a (no cache possible)' if name.startswith('inside') else f'{step_cached:.2f}'} | "
              f"{step_cached if name.startswith('inside') else step_full:.2f} |")


if __name__ == "__main__":
    main()
