"""The whole 3D SAM: image encoder, prompt encoder, multi-layer aggregation decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .image_encoder import ImageEncoder3D
from .lite_encoder import BACKBONE_PREFIX, LiteImageEncoder3D
from .prompt_encoder import PromptEncoder3D


@dataclass
class ImageFeatures:
    """What the encoder computes once per crop and the engine caches.

    Only the last feature map depends on the prompts (the prompt encoder updates it); the
    decoder's work on the other levels and on the image, up to and including their share of the
    fusion convolution, is done once here (``static_fusion``), so a click runs only the prompt
    encoder, the last level's decoder branch and the head.
    """

    last_level: torch.Tensor  # [B, neck_dim, T, T, T]
    static_fusion: torch.Tensor  # prompt-independent part of the fusion conv [B, decoder_dim, 2T, 2T, 2T]

    def to(self, device: torch.device | str) -> "ImageFeatures":
        return ImageFeatures(self.last_level.to(device), self.static_fusion.to(device))

    def detach(self) -> "ImageFeatures":
        return ImageFeatures(self.last_level.detach(), self.static_fusion.detach())

    @property
    def nbytes(self) -> int:
        """Memory the cached features hold."""
        return self.last_level.nbytes + self.static_fusion.nbytes


def conv_in_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
                         nn.InstanceNorm3d(out_channels), nn.ReLU(inplace=True))


class AggregationDecoder(nn.Module):
    """Per level two conv-IN-ReLU and x2 upsampling; concatenation with the low-res image;
    conv-IN-ReLU; conv to classes; upsampling to the crop size.

    The fusion convolution over the concatenation [level maps..., image] is linear, so it is
    computed as the sum of a prompt-independent part (all levels but the last, and the image)
    and the last level's part - the same numbers, split so the first part can be cached.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.crop_size = config.crop_size
        self.levels = nn.ModuleList(
            nn.Sequential(conv_in_relu(config.neck_dim, dim), conv_in_relu(dim, dim))
            for _ in config.neck_blocks
        )
        self.fuse = conv_in_relu(dim * len(config.neck_blocks) + 1, dim)
        self.head = nn.Conv3d(dim, config.num_classes, kernel_size=1)
        last = len(config.neck_blocks) - 1
        self.last_channels = slice(last * dim, (last + 1) * dim)  # the last level's input channels

    def _level_map(self, index: int, level: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.levels[index](level), scale_factor=2, mode="trilinear", align_corners=False)

    def static_fusion(self, levels: list[torch.Tensor], image_low: torch.Tensor) -> torch.Tensor:
        """Fusion-conv share (bias included) of every level but the last, and of the image."""
        maps = [self._level_map(index, level) for index, level in enumerate(levels[:-1])]
        weight = self.fuse[0].weight
        static_weight = torch.cat([weight[:, :self.last_channels.start], weight[:, self.last_channels.stop:]], 1)
        inputs = torch.cat([*maps, image_low.to(maps[0].dtype if maps else image_low.dtype)], dim=1)
        return F.conv3d(inputs, static_weight, self.fuse[0].bias, padding=1)

    def forward(self, static_fusion: torch.Tensor, last_level: torch.Tensor) -> torch.Tensor:
        last_map = self._level_map(len(self.levels) - 1, last_level)
        fused = static_fusion + F.conv3d(last_map, self.fuse[0].weight[:, self.last_channels], padding=1)
        logits = self.head(self.fuse[2](self.fuse[1](fused)))
        return F.interpolate(logits, size=(self.crop_size,) * 3, mode="trilinear", align_corners=False)


class Sam3D(nn.Module):
    """Click-prompted 3D segmentation of one crop (see docs/DEVELOPING.md for tensor layouts)."""

    def __init__(self, config: ModelConfig, fused_patch_embed: bool = True) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if config.backbone == "lite_medsam":
            self.image_encoder = LiteImageEncoder3D(config)
        else:
            self.image_encoder = ImageEncoder3D(config, fused_patch_embed)
        self.prompt_encoder = PromptEncoder3D(config)
        self.decoder = AggregationDecoder(config)

    def encode(self, image: torch.Tensor) -> ImageFeatures:
        """The expensive half: [B, 1, S, S, S] normalised crop -> cached features."""
        expected = (1,) + (self.config.crop_size,) * 3
        if image.dim() != 5 or tuple(image.shape[1:]) != expected:
            raise ValueError(f"image must be [B, {', '.join(map(str, expected))}], got {list(image.shape)}")
        return self._features(self.image_encoder(image), image)

    @property
    def has_frozen_backbone(self) -> bool:
        """Whether the encoder starts with a frozen stage whose output training may cache (lite
        models whose adapters all sit on top of TinyViT)."""
        return isinstance(self.image_encoder, LiteImageEncoder3D) and not self.image_encoder.inside

    def backbone_features(self, image: torch.Tensor, slabs: Sequence[int] | None = None) -> torch.Tensor:
        """TinyViT's per-slice features, the first stage of ``encode`` (lite models only; frozen and
        cacheable where ``has_frozen_backbone``); ``slabs``: the encoded slices of these indices only."""
        return self.image_encoder.backbone_features(image, slabs)

    def encode_from_backbone(self, backbone_features: torch.Tensor, image: torch.Tensor) -> ImageFeatures:
        """``encode`` from cached backbone features and the crop they came from."""
        return self._features(self.image_encoder.adapt(backbone_features), image)

    def _features(self, levels: list[torch.Tensor], image: torch.Tensor) -> ImageFeatures:
        low = F.avg_pool3d(image, kernel_size=self.config.token_stride // 2)
        return ImageFeatures(levels[-1], self.decoder.static_fusion(levels, low))

    def predict(self, features: ImageFeatures, points: torch.Tensor, labels: torch.Tensor,
                mask_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """The per-click half: logits [B, 2, S, S, S] from cached features and prompts."""
        if points.dim() != 3 or points.shape[-1] != 3 or labels.shape != points.shape[:2]:
            raise ValueError(f"points must be [B, N, 3] and labels [B, N], got {list(points.shape)} "
                             f"and {list(labels.shape)}")
        last = features.last_level
        last = self.prompt_encoder(last, points.to(last.dtype), labels.long(), mask_prompt)
        return self.decoder(features.static_fusion, last)

    def forward(self, image: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                mask_prompt: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict(self.encode(image), points, labels, mask_prompt)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute encoder blocks in the backward pass (training memory for compute)."""
        self.image_encoder.activation_checkpointing = enabled

    def freeze_as_method(self) -> None:
        """Freeze exactly what 3DSAM-adapter freezes (the SAM weights it reuses).

        Frozen: 2D patch projection, absolute position embedding, attention qkv / proj, MLPs,
        rel_pos_h / rel_pos_w. Everything else (adapters, LayerNorms, depth and slice embeddings,
        rel_pos_d, necks, prompt encoder, decoder) trains.
        """
        for name, parameter in self.named_parameters():
            parameter.requires_grad = not is_frozen_pretrained_tensor(name)


FROZEN_SUFFIXES = (".attn.qkv.weight", ".attn.qkv.bias", ".attn.proj.weight", ".attn.proj.bias",
                   ".attn.rel_pos_h", ".attn.rel_pos_w", ".mlp.lin1.weight", ".mlp.lin1.bias",
                   ".mlp.lin2.weight", ".mlp.lin2.bias")
FROZEN_NAMES = ("image_encoder.patch_embed.proj.weight", "image_encoder.patch_embed.proj.bias",
                "image_encoder.pos_embed")


def is_frozen_pretrained_tensor(name: str) -> bool:
    """Whether a parameter name is pretrained and frozen: SAM's reused tensors (vit_b) or
    LiteMedSAM's TinyViT (lite). Checkpoints of such models store everything else."""
    return name.startswith(BACKBONE_PREFIX) or is_frozen_sam_tensor(name)


def is_frozen_sam_tensor(name: str) -> bool:
    """Whether a parameter name is one of the SAM tensors the method keeps frozen."""
    return name in FROZEN_NAMES or (name.startswith("image_encoder.blocks.") and name.endswith(FROZEN_SUFFIXES))
