"""`sam3d train CONFIG.yaml`: train a model as the config describes (see docs/TRAINING.md)."""

from __future__ import annotations

import argparse

import yaml

from ..errors import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML config (PEFT of vit_b from SAM, or the small variant)",
        description=__doc__)
    parser.add_argument("config", metavar="CONFIG.yaml",
                        help="training config: a YAML file or the name of a shipped one (e.g. default_small_phantoms)")
    parser.add_argument("--data", metavar="DIR", help="dataset folder (overrides data_dir)")
    parser.add_argument("--out", metavar="DIR", help="run folder (overrides out_dir)")
    parser.add_argument("--sam-checkpoint", metavar="PATH", help="SAM's sam_vit_b_01ec64.pth (overrides sam_checkpoint)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides device)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps in total (overrides max_steps)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (VALUE is YAML: --set lr=1e-4 --set model_overrides={crop_size: 32})")
    parser.add_argument("--resume", action="store_true", help="continue the run in the out folder from its state.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> dict:
    values = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--set {item!r}: write KEY=VALUE")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CLIError(f"--set {item!r}: VALUE is not YAML ({error})") from None
    for key, value in (("data_dir", args.data), ("out_dir", args.out), ("sam_checkpoint", args.sam_checkpoint),
                       ("device", args.device), ("max_steps", args.max_steps)):
        if value is not None:
            values[key] = value
    return values


def run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import Trainer

    try:
        config = load_config(args.config, overrides_from(args))
        trainer = Trainer(config, resume=args.resume, progress=not args.no_progress)
        result = trainer.run()
    except (ValueError, OSError) as error:
        raise CLIError(str(error)) from error
    best = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
    print(f"trained {result.steps} steps; best validation Dice {best}; best model {result.best_path}; "
          f"log {result.log_path}")
    return 0
