"""`sam3d evaluate`: the seeded click protocol on a dataset split; writes report.json / .csv / .png.

    sam3d evaluate --model default --data DIR --split test --clicks 5 --seed 0 --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time

from ..data.datasets import LAYOUTS
from ..engine.choices import BOX_PATHWAYS, CLICK_PATHWAYS, CORRECTIONS, SLICE_PRECISION_HELP, SLICE_PRECISIONS
from ..errors import CLIError

SPLITS = ("train", "val", "test", "all")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Dice / NSD of a model with the seeded 1-click protocol and an N-click refinement curve",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default' (the bundled lite model), 'small-phantoms' (the fast phantom-trained one) or a checkpoint path")
    parser.add_argument("--sam-checkpoint", metavar="PATH", help="SAM's sam_vit_b_01ec64.pth, for adapter checkpoints")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="dataset folder: MSD / nnU-Net, KiTS21, or image / label pairs in one folder "
                             "(<case>_image.nrrd beside <case>_label.nrrd)")
    parser.add_argument("--layout", default="auto", choices=LAYOUTS, help="dataset layout (default auto)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which cases (default test)")
    parser.add_argument("--splits", metavar="FILE", help="splits JSON (as `sam3d train` writes); default: made "
                        "with --split-seed, as training made them")
    parser.add_argument("--split-seed", type=int, metavar="S",
                        help="seed of the train / val / test split (default: the one the model was trained with, else 0)")
    parser.add_argument("--target-label", metavar="LABEL",
                        help="label name or value to segment (default: the label the model was trained on: "
                             "its value on its own training dataset, its name elsewhere; else 'tumor'). A name "
                             "matches in any case and spelling (tumour / tumor), and 'tumor' finds the one label "
                             "named as a tumour (MSD's 'cancer')")
    parser.add_argument("--clicks", type=int, default=1, metavar="N", help="clicks per case: 1 = the paper's protocol")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first clicks (default 0)")
    parser.add_argument("--scope", default="object", choices=("object", "label"),
                        help="score the clicked object (default) or the whole target label")
    parser.add_argument("--max-cases", type=int, metavar="N", help="evaluate only the first N cases of the split")
    parser.add_argument("--prompt", default="click", choices=("click", "box", "box3d"),
                        help="first prompt: click = a seeded random target voxel (the paper's protocol); box = "
                             "the object's 2D box on its largest slice; box3d = the object's 3D bounding box "
                             "(box-capable models); later clicks correct")
    parser.add_argument("--box-margin", type=float, default=0.0, metavar="MM",
                        help="grow the box prompt by MM millimetres on every side (a 2D box in its slice only), "
                             "as a user draws a box loosely around a lesion (default 0: the object's tight box)")
    parser.add_argument("--box-pathway", default="auto", choices=BOX_PATHWAYS,
                        help="who answers the box: 2d = LiteMedSAM's box pathway slice by slice, 3d = the 3D "
                             "model; auto (default) = 2d for LiteMedSAM-based models, else 3d")
    parser.add_argument("--click-pathway", default="3d", choices=CLICK_PATHWAYS,
                        help="who answers a first click: 3d (default, as the server does) = the 3D model; "
                             "search = the 2D box pathway from the box that fits the click's slice best, found "
                             "by a box search, then corrections as after a box (models whose boxes go to the "
                             "2D pathway); gated = the 3D model, replaced by the search's mask where that "
                             "holds the 3D mask whole or lies inside it")
    parser.add_argument("--corrections", default="auto", choices=CORRECTIONS,
                        help="how a correction click changes the mask: local = only the connected region around "
                             "the click; global = the model's whole new prediction; 2d = after a box answered by "
                             "the 2D pathway, the 2D pathway answers the clicks it can, the 3D model the others; "
                             "auto (default) = 2d after a box answered by the 2D pathway, else global")
    parser.add_argument("--slice-precision", default="auto", choices=SLICE_PRECISIONS, help=SLICE_PRECISION_HELP)
    parser.add_argument("--perturb-noise", type=float, default=0.0, metavar="FRACTION",
                        help="add seeded Gaussian noise of FRACTION times each volume's intensity range (its 0.5 / "
                             "99.5 percentiles) before segmenting, e.g. 0.002, to see how far the figures move under a "
                             "change no reader would see (default 0: none)")
    parser.add_argument("--perturb-seed", type=int, default=0, metavar="S",
                        help="seed of that noise (default 0); the clicks stay those of --seed")
    parser.add_argument("--baseline-2d", action="store_true",
                        help="add the 2D row: LiteMedSAM slice by slice from the same first prompt")
    parser.add_argument("--no-classical", action="store_true", help="skip the region-growing baseline row")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for report.json, report.csv, dice_by_click.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .report import build_report, write_report
    from .simulation import summarise

    if args.clicks < 1:
        raise CLIError(f"--clicks must be at least 1, got {args.clicks}")
    if not args.perturb_noise >= 0:
        raise CLIError(f"--perturb-noise is a fraction of the intensity range, 0 or more; got {args.perturb_noise}")
    if not args.box_margin >= 0:
        raise CLIError(f"--box-margin is millimetres around the box, 0 or more; got {args.box_margin}")
    if args.box_margin and args.prompt == "click":
        raise CLIError("--box-margin grows a box prompt; give --prompt box or box3d with it")
    predictor = _load_predictor(args)
    chosen, (target_label, target_name), split_seed = _choose_cases(args, predictor.loaded.meta)
    baseline_2d = _slice_baseline(predictor.slice_precision, predictor.device) if args.baseline_2d else None
    start = time.perf_counter()
    results = _evaluate_cases(args, predictor, chosen, target_label, baseline_2d)
    summary = summarise(results, args.clicks)
    if "classical" in summary:
        from .classical import METHOD

        summary["classical"]["method"] = METHOD
    info = _report_info(args, predictor, (target_label, target_name), split_seed, time.perf_counter() - start)
    paths = write_report(build_report(results, summary, info), args.out)
    _print_summary(summary, len(results), args.clicks)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _load_predictor(args: argparse.Namespace):
    """The model of --model (CLIError naming the problem when it cannot be loaded)."""
    from ..engine.predictor import Predictor
    from ..model.checkpoint import CheckpointError

    try:
        return Predictor.load(args.model, device=args.device, sam_checkpoint=args.sam_checkpoint,
                              box_pathway=args.box_pathway, slice_precision=args.slice_precision)
    except (CheckpointError, ValueError) as error:
        raise CLIError(str(error)) from error


def _trained_on(meta: dict, data_dir: str, layout: str) -> bool:
    """Whether DATA is the dataset the model was trained on (its dataset.json identity, as
    `sam3d train` records it); only then is the model's own train / val / test split remade."""
    from ..data.datasets import dataset_identity

    return meta.get("dataset", {}) == dataset_identity(data_dir, layout)


def _model_target(meta: dict, trained_on: bool) -> str | int:
    """The label the model was trained to segment, for a run without --target-label: its value
    on its own dataset (``trained_on``: DATA is it, ``_trained_on``); elsewhere its name (as
    training was given it), since one value means different labels in different datasets (the
    synthetic set's 1 is "tumor", the phantoms' 1 is "organ")."""
    if trained_on and "target_label" in meta:
        return meta["target_label"]
    return meta.get("train_config", {}).get("target_label", "tumor")


def _choose_cases(args: argparse.Namespace, meta: dict) -> tuple[list, tuple[int, str | None], int | None]:
    """The labelled cases of --split (at most --max-cases), the target label's value and the
    dataset's name for it, and the split's seed. On the model's own training dataset the split
    is remade as its training made it (unless --splits is given); on any other dataset it is the
    default split (seed 0, 70/10/20)."""
    from ..data.datasets import DEFAULT_SPLIT_FRACTIONS, find_cases, find_target_label, make_splits, read_splits

    try:
        cases = find_cases(args.data, args.layout)
        trained_on = _trained_on(meta, args.data, args.layout)  # read once: it scans the folder where no dataset.json names it
        target = args.target_label if args.target_label is not None else _model_target(meta, trained_on)
        target_label, target_name = find_target_label(args.data, target, args.layout)
        if target_name is not None and target_name != target:
            print(f"sam3d evaluate: label {target!r} read as the dataset's {target_name!r} (value {target_label})",
                  file=sys.stderr)
        if args.split == "all":
            chosen, split_seed = cases, None
        else:
            if args.splits:
                splits = read_splits(args.splits)
            else:
                own = meta if trained_on else {}  # another dataset: the default split
                seed = args.split_seed if args.split_seed is not None else own.get("split_seed", 0)
                fractions = own.get("train_config", {}).get("split_fractions", DEFAULT_SPLIT_FRACTIONS)
                splits = make_splits(cases, seed, fractions)
            split_seed = splits.get("seed")
            wanted = set(splits[args.split])
            chosen = [c for c in cases if c.case_id in wanted]
    except ValueError as error:
        raise CLIError(str(error)) from error
    chosen = [c for c in chosen if c.label_path is not None][: args.max_cases]
    if not chosen:
        raise CLIError(f"the {args.split} split of {args.data} holds no labelled cases")
    return chosen, (target_label, target_name), split_seed


def _slice_baseline(precision: str, device):
    """The 2D row's model: LiteMedSAM slice by slice (--baseline-2d), in the engine's precision,
    on its device."""
    from ..engine.slice_pathway import LiteMedSAM2D

    return LiteMedSAM2D(precision=precision, device=device)


def _evaluate_cases(args: argparse.Namespace, predictor, chosen: list, target_label: int, baseline_2d) -> list:
    """Each case's result under the click protocol; cases without the target label are skipped."""
    from tqdm import tqdm

    from ..data.datasets import load_case
    from .simulation import evaluate_case, perturbed

    results = []
    with tqdm(chosen, desc=f"evaluate {args.split}", unit="case") as bar:
        for case in bar:
            try:
                image, mask = load_case(case, target_label)
                if not mask.any():
                    bar.write(f"skipping {case.case_id}: no voxel with label {target_label}")
                    continue
                volume = perturbed(image.array, args.perturb_noise, args.perturb_seed, case.case_id)
                result = evaluate_case(predictor, case.case_id, volume, image.spacing, mask, args.clicks,
                                       args.seed, args.scope, classical=not args.no_classical,
                                       prompt=args.prompt, baseline_2d=baseline_2d,
                                       corrections=args.corrections, click_pathway=args.click_pathway,
                                       box_margin_mm=args.box_margin)
            except ValueError as error:
                raise CLIError(f"case {case.case_id}: {error}") from error
            results.append(result)
            bar.set_postfix(dice=f"{result.dice_by_click[0]:.3f}")
    if not results:
        raise CLIError(f"no case of the {args.split} split holds label {target_label}")
    return results


def _report_info(args: argparse.Namespace, predictor, target: tuple[int, str | None], split_seed: int | None,
                 seconds: float) -> dict:
    """The report's "info": what was evaluated, how, and on what; ``target``: the label's value and
    the dataset's name for it."""
    return {
        "model": predictor.name,
        "model_spec": str(args.model),
        "model_config": predictor.config.name,
        "model_sha256": predictor.loaded.sha256,  # which trained weights: a name can be retrained
        "crop_size": predictor.config.crop_size,
        "crop_spacing_mm": predictor.config.crop_spacing_mm,
        "data": str(args.data),
        "split": args.split,
        "split_seed": split_seed,
        "target_label": target[0],
        "target_label_name": target[1],
        "scope": args.scope,
        "prompt": args.prompt,
        "box_margin_mm": args.box_margin if args.prompt != "click" else None,
        "box_pathway": predictor.box_pathway,
        "slice_precision": predictor.slice_precision,
        "corrections": args.corrections,
        "click_pathway": args.click_pathway,
        "seed": args.seed,
        "perturb_noise": args.perturb_noise,
        "perturb_seed": args.perturb_seed if args.perturb_noise else None,
        "protocol": "click 1: a random target voxel (seeded per case); clicks 2..N: centre of the largest "
                    "error region; engine crop + paste-back on the native grid, threshold 0.5",
        "device": str(predictor.device),
        "seconds": round(seconds, 2),
    }


def _print_summary(summary: dict, cases: int, clicks: int) -> None:
    print(f"{cases} cases, {clicks} click(s): mean Dice {summary['mean_dice']:.4f}"
          f"{_interval(summary['dice_ci95_by_click'][0])}, mean NSD {summary['mean_nsd']:.4f} (1 click)")
    if clicks > 1:
        print("Dice by click: " + ", ".join(f"{d:.4f}" for d in summary["dice_by_click"]))
        print(f"mean Dice at click {clicks}: {summary['dice_by_click'][-1]:.4f}"
              f"{_interval(summary['dice_ci95_by_click'][-1])}")
    if "classical" in summary:
        print(f"classical (region growing, 1 click): Dice {summary['classical']['mean_dice']:.4f}, "
              f"NSD {summary['classical']['mean_nsd']:.4f}")
    if "baseline_2d" in summary:
        print(f"2D baseline (LiteMedSAM slice by slice, same first prompt): Dice "
              f"{summary['baseline_2d']['mean_dice']:.4f}, NSD {summary['baseline_2d']['mean_nsd']:.4f}")


def _interval(interval: list[float] | None) -> str:
    """" (95 % CI low-high)", or nothing where there is no interval (a single case)."""
    return "" if interval is None else f" (95 % CI {interval[0]:.3f}-{interval[1]:.3f})"
