"""`sam3d average`: one model from the weighted average of trained checkpoints of one configuration.

Weight averaging ("model soups", Wortsman et al. 2022) of a model and its own fine-tuned
descendants keeps what each learned when they share a starting point: the bundled default is
five training stages in four such averages, each of a model and its fine-tuned descendant
(models/README.md). Only checkpoints of the same configuration, preset and trained tensors
average; anything else is refused with the difference named.

    sam3d average stage1.pt stage2.pt --weights 0.5,0.5 --out soup.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CLIError
from .checkpoint import CheckpointError, model_path, read_checkpoint, write_payload
from ..data.intensity import IntensityPreset
from .config import ModelConfig


def parse_weights(text: str | None, count: int) -> list[float]:
    """Comma-separated non-negative weights, one per checkpoint, normalised to sum 1 (default: equal)."""
    if text is None:
        return [1.0 / count] * count
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError as error:
        raise ValueError(f"--weights {text!r}: give numbers separated by commas, e.g. 0.5,0.5") from error
    if len(weights) != count:
        raise ValueError(f"--weights has {len(weights)} value(s) for {count} checkpoint(s); give one per checkpoint")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--weights {text!r}: weights must be >= 0 and not all 0")
    total = sum(weights)
    return [w / total for w in weights]


def _resolved(key: str, value):
    """A checkpoint's entry as compared: its model config and intensity preset with the defaults of
    fields added since it was written (an older checkpoint lacks them), anything else as stored."""
    kinds = {"config": ModelConfig, "preset": IntensityPreset}
    return kinds[key].from_dict(value).to_dict() if key in kinds and isinstance(value, dict) else value


def _check_compatible(first: dict, other: dict, path: str) -> None:
    """Refuse checkpoints that do not describe the same model with the same trained tensors."""
    for key in ("config", "preset", "trainable_only", "base"):
        if _resolved(key, first.get(key)) != _resolved(key, other.get(key)):
            raise CheckpointError(f"{path} has another {key} than the first checkpoint; only checkpoints of "
                                  f"one configuration (a model and its fine-tuned versions) average")
    names, other_names = set(first["state_dict"]), set(other["state_dict"])
    if names != other_names:
        differing = sorted(names ^ other_names)[:5]
        raise CheckpointError(f"{path} holds other tensors than the first checkpoint ({differing}); "
                              f"only checkpoints of one configuration average")
    for name, tensor in first["state_dict"].items():
        if tensor.shape != other["state_dict"][name].shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(other['state_dict'][name].shape)}, "
                                  f"the first checkpoint {tuple(tensor.shape)}")


def average_checkpoints(paths: list[str | Path], weights: list[float], name: str) -> dict:
    """The checkpoint dict whose floating-point tensors are the weighted mean of the given ones.

    Integer tensors (counters, index buffers) are taken from the first checkpoint. ``meta`` is the
    first checkpoint's, with ``averaged_from`` naming every source, its weight, step and name.
    """
    if len(paths) < 2:
        raise ValueError("give at least two checkpoints to average")
    payloads = [read_checkpoint(model_path(p)) for p in paths]
    first = payloads[0]
    for path, payload in zip(paths[1:], payloads[1:]):
        _check_compatible(first, payload, str(path))
    state = {}
    for tensor_name, tensor in first["state_dict"].items():
        if tensor.is_floating_point():
            mixed = sum(w * p["state_dict"][tensor_name].double() for w, p in zip(weights, payloads))
            state[tensor_name] = mixed.to(tensor.dtype).contiguous()
        else:
            state[tensor_name] = tensor.clone()
    sources = [{"path": str(path), "name": p.get("name"), "weight": w, "step": p.get("meta", {}).get("step")}
               for path, p, w in zip(paths, payloads, weights)]
    meta = {k: v for k, v in first.get("meta", {}).items() if k not in ("step", "val_dice", "val_clicks")}
    meta["averaged_from"] = sources
    return first | {"name": name, "state_dict": state, "meta": meta}


def run(args: argparse.Namespace) -> int:
    try:
        weights = parse_weights(args.weights, len(args.checkpoints))
        payload = average_checkpoints(args.checkpoints, weights, args.name or Path(args.out).stem)
    except (CheckpointError, ValueError) as error:
        raise CLIError(str(error)) from error
    write_payload(payload, args.out)
    print(json.dumps({"out": str(args.out), "name": payload["name"], "averaged_from": payload["meta"]["averaged_from"]}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("average", help="average trained checkpoints of one configuration",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", metavar="MODEL",
                        help="checkpoint paths or bundled model names, all of one configuration")
    parser.add_argument("--weights", help="one weight per checkpoint, comma-separated (default: equal); "
                                          "normalised to sum 1")
    parser.add_argument("--name", help="the averaged model's name (default: the output file's stem)")
    parser.add_argument("--out", required=True, help="the averaged checkpoint (.pt), written atomically")
    parser.set_defaults(func=run)
