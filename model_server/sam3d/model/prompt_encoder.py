"""Prompt encoder ("visual sampler") with labelled clicks, 3D Fourier positions and a mask prompt.

The reference samples the last feature map at each click and lets the image tokens attend to
learnable global queries plus those point tokens. Here each point token also carries a learned
positive / negative label embedding and a 3D Fourier encoding of its position (both used), and
the previous prediction enters as a dense mask prompt added to the feature map, as SAM does in 2D.
The two-way attention itself is the blocks of SAM's ``TwoWayTransformer`` (its final point-to-image
attention, which updates only the point tokens, is not run).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn

from .config import ModelConfig
from .image_encoder import LayerNorm3d


class FourierPositionEncoding3D(nn.Module):
    """Random-frequency Fourier features of 3D positions in [0, 1]^3 (SAM's 2D scheme, in 3D)."""

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("frequencies", scale * torch.randn(3, channels // 2))

    def encode(self, unit_coords: torch.Tensor) -> torch.Tensor:
        """[..., 3] coordinates in [0, 1] (kji order) -> [..., channels]."""
        projected = 2 * math.pi * ((2 * unit_coords - 1) @ self.frequencies)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, size: int) -> torch.Tensor:
        """Encoding of every token centre of a size^3 grid: [channels, size, size, size]."""
        centres = (torch.arange(size, device=self.frequencies.device, dtype=torch.float32) + 0.5) / size
        coords = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), dim=-1)
        return self.encode(coords).permute(3, 0, 1, 2)


def sample_at_points(feature_map: torch.Tensor, points: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Trilinear sample of [B, C, T, T, T] at crop-voxel points [B, N, 3] (kji) -> [B, N, C]."""
    unit = (points + 0.5) / crop_size  # voxel centres -> (0, 1), as align_corners=False expects
    grid = (unit * 2 - 1).flip(-1)  # grid_sample wants (x, y, z) = (i, j, k)
    sampled = F.grid_sample(feature_map, grid[:, :, None, None, :].to(feature_map.dtype),
                            mode="bilinear", align_corners=False)
    return sampled[:, :, :, 0, 0].transpose(1, 2)


class MaskPromptEncoder(nn.Module):
    """Previous foreground logit [B, 1, S, S, S] -> dense embedding [B, C, T, T, T]."""

    def __init__(self, config: ModelConfig, hidden: int = 16) -> None:
        super().__init__()
        stages = int(math.log2(config.token_stride))
        layers: list[nn.Module] = []
        channels = 1
        for stage in range(stages):
            out = hidden if stage == stages - 1 else max(hidden // 4, 4)
            layers += [nn.Conv3d(channels, out, kernel_size=2, stride=2), LayerNorm3d(out), nn.GELU()]
            channels = out
        layers.append(nn.Conv3d(channels, config.neck_dim, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, mask_logits: torch.Tensor) -> torch.Tensor:
        return self.layers(mask_logits)


class PromptEncoder3D(nn.Module):
    """Updates the last feature map with the clicks and the mask prompt."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.neck_dim
        self.crop_size = config.crop_size
        self.token_grid = config.token_grid
        self.position = FourierPositionEncoding3D(dim)
        # 0 negative, 1 positive; with box prompts also 2 / 3, the box's two opposite corners
        self.label_embed = nn.Embedding(config.point_label_count, dim)
        self.not_a_point = nn.Parameter(torch.zeros(dim))
        self.queries = nn.Parameter(torch.randn(config.num_queries, dim) * 0.02)
        self.mask_encoder = MaskPromptEncoder(config)
        self.no_mask = nn.Parameter(torch.zeros(dim))
        self.transformer = TwoWayTransformer(
            depth=config.prompt_depth, embedding_dim=dim, num_heads=config.prompt_heads,
            mlp_dim=config.prompt_mlp_dim, attention_downsample_rate=2,
        )

    def point_tokens(self, feature_map: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, N, C]: sampled feature + Fourier position + label embedding (padding: -1)."""
        is_point = (labels >= 0)[..., None]
        features = sample_at_points(feature_map, points, self.crop_size)
        position = self.position.encode((points + 0.5) / self.crop_size)
        label = self.label_embed(labels.clamp(min=0))
        return torch.where(is_point, features + position + label, self.not_a_point.expand_as(features))

    def forward(self, feature_map: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                mask_prompt: torch.Tensor | None) -> torch.Tensor:
        batch, channels, t = feature_map.shape[0], feature_map.shape[1], self.token_grid
        if mask_prompt is None:
            dense = self.no_mask.view(1, -1, 1, 1, 1)
        else:
            dense = self.mask_encoder(mask_prompt.to(feature_map.dtype))
        image = feature_map + dense
        tokens = torch.cat([self.queries.expand(batch, -1, -1),
                            self.point_tokens(feature_map, points, labels)], dim=1)
        image_tokens = image.reshape(batch, channels, -1).transpose(1, 2)  # [B, T^3, C]
        image_pe = self.position.grid(t).to(image.dtype).reshape(1, channels, -1).transpose(1, 2)
        # SAM's TwoWayTransformer.forward without its last step: that final attention from the
        # point tokens to the image updates only the point tokens, and this encoder returns the
        # image tokens - the same numbers, about a tenth less time per click (docs/BENCHMARKS.md).
        queries, keys = tokens, image_tokens
        for layer in self.transformer.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=image_pe)
        return keys.transpose(1, 2).reshape(batch, channels, t, t, t)
