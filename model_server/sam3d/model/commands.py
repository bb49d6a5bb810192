"""`sam3d info`: sizes and geometry of a model variant (optionally built from SAM's checkpoint)."""

from __future__ import annotations

import argparse
import json

from ..data.io import file_sha256
from ..errors import CLIError
from .checkpoint import CheckpointError, build_from_sam, model_from_checkpoint, model_path
from .config import CONFIGS, ModelConfig, get_config
from .sam3d import Sam3D

PARTS = {  # report key -> parameter-name prefix
    "adapter_params": ".adapter",  # vit blocks' ".adapter." and the lite encoder's ".adapters."
    "backbone_params": "image_encoder.backbone.",  # lite: LiteMedSAM's frozen TinyViT
    "neck_params": "image_encoder.necks.",
    "prompt_encoder_params": "prompt_encoder.",
    "decoder_params": "decoder.",
}


def describe(model: Sam3D) -> dict:
    """Parameter counts and geometry of a model."""
    config: ModelConfig = model.config
    named = list(model.named_parameters())
    info = {
        "config": config.name,
        "total_params": sum(p.numel() for _, p in named),
        "trainable_params": sum(p.numel() for _, p in named if p.requires_grad),
        "token_grid": [config.token_grid] * 3,
        "crop_size": [config.crop_size] * 3,
        "crop_spacing_mm": config.crop_spacing_mm,
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "window_size": config.window_size,
        "neck_blocks": [b + 1 for b in config.neck_blocks],  # 1-based, as the paper counts blocks
        "backbone": config.backbone,
        "box_prompt": config.box_prompt,
    }
    for key, prefix in PARTS.items():
        info[key] = sum(p.numel() for n, p in named if prefix in n or n.startswith(prefix))
    return info


def run(args: argparse.Namespace) -> int:
    try:
        if args.model:
            path = model_path(args.model)
            model, payload = model_from_checkpoint(path, args.sam_checkpoint)
            if payload["trainable_only"]:
                model.freeze_as_method()
            info = describe(model) | {"model": payload["name"], "preset": payload["preset"], "sha256": file_sha256(path)}
        elif args.sam_checkpoint:
            model, report = build_from_sam(args.config, args.sam_checkpoint)
            info = describe(model) | report.counts()
        else:
            model = Sam3D(get_config(args.config))
            if model.config.sam_pos_grid:
                model.freeze_as_method()
            info = describe(model)
    except (CheckpointError, ValueError) as error:
        raise CLIError(str(error)) from error
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value:,}" if isinstance(value, int) else f"{key:<{width}}  {value}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="sizes and geometry of a model variant",
                                   description=__doc__)
    parser.add_argument("--config", default="vit_b", choices=sorted(CONFIGS), help="model variant")
    parser.add_argument("--sam-checkpoint", help="SAM's sam_vit_b_01ec64.pth: build vit_b from it "
                                                 "and report loaded / resized / initialised tensors")
    parser.add_argument("--model", help="a SAM3DPrompt checkpoint or bundled model name (default, "
                                        "small-phantoms) to describe instead of --config")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)
