"""3D image encoder: SAM's ViT made volumetric as in 3DSAM-adapter.

Module and parameter names mirror SAM's ``ImageEncoderViT`` (``patch_embed.proj``,
``pos_embed``, ``blocks.N.attn.qkv`` ...) so SAM's checkpoint maps onto this encoder by name.
SAM's ``MLPBlock`` and ``get_rel_pos`` are reused as they are; attention, blocks and patch
embedding need a third axis that SAM's 2D classes do not have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import get_rel_pos
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, D, H, W] map (SAM ships only LayerNorm2d)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 4, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 4, 1, 2, 3)


def upsample_weights(factor: int, patch_size: int) -> torch.Tensor:
    """Matrix U [patch_size, patch_size/factor + 2] of trilinear (align_corners=False) x`factor`
    upsampling along one axis: output offset p inside one patch = sum_a U[p, a] * input[a],
    where a indexes the patch's input voxels on a 1-voxel replicate-padded axis."""
    stride = patch_size // factor
    weights = torch.zeros(patch_size, stride + 2, dtype=torch.float64)
    for p in range(patch_size):
        base, phase = divmod(p, factor)
        source = (phase + 0.5) / factor - 0.5  # in (-0.5, 0.5): position relative to voxel `base`
        centre = base + 1  # +1 for the padding voxel
        if source < 0:
            weights[p, centre - 1] += -source
            weights[p, centre] += 1 + source
        else:
            weights[p, centre] += 1 - source
            weights[p, centre + 1] += source
    return weights


class PatchEmbed3D(nn.Module):
    """SAM's 2D patch embedding on every (upsampled) slice, then a depth-wise slice convolution.

    ``fused=True`` computes the same linear map as one strided Conv3d on the original crop, its
    kernel composed at every forward pass from the three pieces (upsampling, ``proj``,
    ``slice_embed``), so the trainable slice convolution keeps learning.
    """

    def __init__(self, config: ModelConfig, fused: bool = True) -> None:
        super().__init__()
        self.factor = config.upsample_factor
        self.patch_size = config.patch_size
        self.in_chans = config.in_chans
        self.stride = config.token_stride
        self.fused = fused
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, config.patch_size, config.patch_size)
        self.slice_embed = nn.Conv3d(
            config.embed_dim, config.embed_dim, kernel_size=(config.patch_size, 1, 1),
            stride=(config.patch_size, 1, 1), groups=config.embed_dim,
        )
        self.register_buffer("upsample", upsample_weights(self.factor, self.patch_size).float(), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S, S] crop -> [B, T, T, T, E] tokens."""
        tokens = self._fused(image) if self.fused else self._reference(image)
        return tokens.permute(0, 2, 3, 4, 1)

    def composed_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel [E, 1, k, k, k] and bias [E] of the single Conv3d equal to the reference path."""
        u = self.upsample.to(self.proj.weight.dtype)
        in_plane = self.proj.weight.sum(dim=1)  # the single channel is repeated to in_chans
        in_plane = torch.einsum("eqr,qb,rc->ebc", in_plane, u, u)
        depth = torch.einsum("ep,pa->ea", self.slice_embed.weight[:, 0, :, 0, 0], u)
        kernel = depth[:, :, None, None] * in_plane[:, None, :, :]
        bias = self.proj.bias * self.slice_embed.weight.sum(dim=(1, 2, 3, 4)) + self.slice_embed.bias
        return kernel.unsqueeze(1), bias

    def _fused(self, image: torch.Tensor) -> torch.Tensor:
        kernel, bias = self.composed_kernel()
        padded = F.pad(image, (1, 1, 1, 1, 1, 1), mode="replicate")
        return F.conv3d(padded, kernel.to(image.dtype), bias.to(image.dtype), stride=self.stride)

    def _reference(self, image: torch.Tensor) -> torch.Tensor:
        """The method as published: x4 trilinear upsampling, 2D patch conv per slice, slice conv."""
        batch = image.shape[0]
        volume = F.interpolate(image.expand(-1, self.in_chans, -1, -1, -1), scale_factor=self.factor,
                               mode="trilinear", align_corners=False)
        depth = volume.shape[2]
        slices = volume.permute(0, 2, 1, 3, 4).reshape(batch * depth, self.in_chans, *volume.shape[3:])
        patches = self.proj(slices)  # [B*D', E, T, T]
        patches = patches.reshape(batch, depth, *patches.shape[1:]).permute(0, 2, 1, 3, 4)
        return self.slice_embed(patches)


def window_partition_3d(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, D, H, W, C] -> [B * nW, window^3, C]."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window, window, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window**3, c)


def window_unpartition_3d(windows: torch.Tensor, window: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`window_partition_3d` for a [B, D, H, W, C] shape."""
    b, d, h, w, c = shape
    x = windows.view(b, d // window, h // window, w // window, window, window, window, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


def shifted_window_mask(grid: int, window: int, shift: int) -> torch.Tensor:
    """Swin attention mask [nW, N, N]: 0 within the same pre-shift region, -inf across."""
    regions = torch.zeros(1, grid, grid, grid, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for sd in bounds:
        for sh in bounds:
            for sw in bounds:
                regions[:, sd, sh, sw, :] = label
                label += 1
    ids = window_partition_3d(regions, window).squeeze(-1)  # [nW, N]
    same = ids[:, :, None] == ids[:, None, :]
    return torch.zeros(same.shape).masked_fill(~same, float("-inf"))


class Attention3D(nn.Module):
    """Multi-head attention inside 3D windows with decomposed 3D relative positions.

    ``rel_pos_h`` / ``rel_pos_w`` come from SAM (resized to 2*window-1); ``rel_pos_d`` is new.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        length = 2 * window - 1
        self.rel_pos_d = nn.Parameter(torch.zeros(length, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(length, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(length, head_dim))

    def relative_position_bias(self, q: torch.Tensor) -> torch.Tensor:
        """Bias [B', N, N] from unscaled queries q [B', N, head_dim] (SAM's decomposition, in 3D)."""
        w = self.window
        r_q = q.reshape(q.shape[0], w, w, w, q.shape[-1])
        rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, get_rel_pos(w, w, self.rel_pos_d))
        rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, get_rel_pos(w, w, self.rel_pos_h))
        rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, get_rel_pos(w, w, self.rel_pos_w))
        bias = (rel_d[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :])
        return bias.reshape(q.shape[0], w**3, w**3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B*nW, N, C]; mask [nW, N, N] (shifted windows) or None."""
        windows, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B', heads, N, hd]
        bias = self.relative_position_bias(q.reshape(windows * self.num_heads, tokens, -1))
        bias = bias.view(windows, self.num_heads, tokens, tokens)
        if mask is not None:
            bias = (bias.view(-1, mask.shape[0], self.num_heads, tokens, tokens)
                    + mask[None, :, None].to(bias.dtype)).view(windows, self.num_heads, tokens, tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, -1))


class SpatialAdapter(nn.Module):
    """Linear down, ReLU, depth-wise 3x3x3 Conv3d on the token grid, ReLU, Linear up, residual."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)  # starts as the identity: SAM's features are kept at step 0
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.down(x)).permute(0, 4, 1, 2, 3)
        h = F.relu(self.conv(h)).permute(0, 2, 3, 4, 1)
        return x + self.up(h)


class Block3D(nn.Module):
    """SAM's transformer block with 3D (shifted) window attention and a spatial adapter."""

    def __init__(self, config: ModelConfig, shift: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window = config.window_size
        self.shift = shift
        self.adapter = SpatialAdapter(dim, config.adapter_dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention3D(dim, config.num_heads, config.window_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * config.mlp_ratio), act=nn.GELU)
        mask = shifted_window_mask(config.token_grid, self.window, shift) if shift else None
        self.register_buffer("shift_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter(x)
        shortcut = x
        x = self.norm1(x)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        windows = self.attn(window_partition_3d(x, self.window), self.shift_mask)
        x = window_unpartition_3d(windows, self.window, x.shape)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Neck3D(nn.Module):
    """Conv 1x1x1 E->C (no bias), LayerNorm3d, Conv 3x3x3 C->C (no bias), LayerNorm3d."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv3d(dim, out_dim, kernel_size=1, bias=False), LayerNorm3d(out_dim),
            nn.Conv3d(out_dim, out_dim, kernel_size=3, padding=1, bias=False), LayerNorm3d(out_dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens.permute(0, 4, 1, 2, 3))


class ImageEncoder3D(nn.Module):
    """Crop [B, 1, S, S, S] -> one [B, neck_dim, T, T, T] map per entry of ``neck_blocks``."""

    def __init__(self, config: ModelConfig, fused_patch_embed: bool = True) -> None:
        super().__init__()
        config.validate()
        self.config = config
        grid = config.token_grid
        self.patch_embed = PatchEmbed3D(config, fused=fused_patch_embed)
        # In-plane absolute position: SAM's 64x64 table average-pooled to the token grid when
        # loaded from SAM (see checkpoint.py), learned directly for variants trained from scratch.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))
        self.depth_embed = nn.Parameter(torch.zeros(1, grid, 1, 1, config.embed_dim))
        half = config.window_size // 2
        self.blocks = nn.ModuleList(
            Block3D(config, shift=half if index % 2 else 0) for index in range(config.depth)
        )
        self.necks = nn.ModuleList(Neck3D(config.embed_dim, config.neck_dim) for _ in config.neck_blocks)
        self.activation_checkpointing = False

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(image)
        x = x + self.pos_embed[:, None] + self.depth_embed
        levels: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if self.activation_checkpointing and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            for level, neck_block in enumerate(self.config.neck_blocks):
                if neck_block == index:
                    levels.append(self.necks[level](x))
        return levels
