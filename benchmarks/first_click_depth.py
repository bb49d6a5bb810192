"""Where the first click lands and what it gets: each case's first click (from a `sam3d evaluate`
report) read against its lesion - the click's depth (its distance to the lesion's edge, in mm,
over the deepest voxel's) - and the mean first-click Dice of clicks on the rim (the outer
RIM_DEPTH of the depth) and deeper, per set. With --model, also the 3D model's own answer to the
same click (one crop, no engine rule; Dice against the lesion inside the crop) with the crop
centred where the engine centres it, at the click, and centred instead at the lesion's deepest
voxel or at a random voxel of it (seeded), as training crops are: how much the model leans on the
crop's centre (docs/BENCHMARKS.md, "The crop's centre as a cue"). Prints a Markdown table.

    python benchmarks/first_click_depth.py --run dev21=runs/eval_dev21/report.json:data/phantoms_dev21 \
        --run synth93=runs/eval_synth93/report.json:data/synth93 [--model default]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from sam3d.data.clicks import label_objects
from sam3d.data.datasets import find_cases, load_case, resolve_target_label

RIM_DEPTH = 1 / 3  # a click in the lesion's outer third
CENTRES = ("click", "deepest", "random")


def clicked_object(mask: np.ndarray, voxel: tuple[int, ...]) -> np.ndarray:
    """The connected lesion holding ``voxel`` (empty where the voxel lies in none)."""
    objects, _ = label_objects(mask)
    return (objects == objects[voxel]) if objects[voxel] else np.zeros_like(mask, dtype=bool)


def crop_dice(predictor, volume: np.ndarray, spacing, lesion: np.ndarray, click: np.ndarray,
              centre: np.ndarray) -> float:
    """The 3D model's answer to ``click`` on one crop centred at ``centre``: Dice against the
    lesion inside the crop (NaN where the crop does not hold the click)."""
    from sam3d.engine.crops import CropGeometry, extract_crop

    config = predictor.config
    geometry = CropGeometry.around(centre, spacing, volume.shape, config.crop_size, config.crop_spacing_mm)
    if not geometry.contains(click[None])[0]:
        return float("nan")
    probability = predictor.predict(predictor.encode(extract_crop(volume, geometry, predictor.preset)),
                                    geometry.to_crop(click[None]), np.ones(1), None)
    lo, hi = geometry.source_box()
    region = lesion[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    truth = geometry.sample(region, outside="zeros").numpy() > 0.5
    answer = probability.numpy() > 0.5
    return float(2 * (answer & truth).sum() / max(1, answer.sum() + truth.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=REPORT:DATA",
                        help="a set's name, its `sam3d evaluate` report.json and its dataset folder")
    parser.add_argument("--model", help="also the model's own answer with the crop centred three ways")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    predictor = None
    if args.model:
        import torch

        from sam3d.engine.predictor import Predictor

        torch.set_num_threads(args.threads)
        predictor = Predictor.load(args.model, device="cpu")
    columns = ["first click (protocol)"] + ([f"model, crop centred at {c}" for c in CENTRES] if predictor else [])
    print("| set | clicks | cases | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 3) + "|")
    for run in args.run:
        name, rest = run.split("=", 1)
        report_path, data = rest.rsplit(":", 1)
        report = json.loads(Path(report_path).read_text())
        cases = {case.case_id: case for case in find_cases(data)}
        target = resolve_target_label(data, report.get("target_label", "tumor"))
        rows = []  # (depth, protocol Dice, model Dice per centre...)
        for row in report["per_case"]:
            image, mask = load_case(cases[row["case_id"]], target)
            click = np.asarray(row["clicks"][0]["point_kji"], dtype=float)
            lesion = clicked_object(mask, tuple(int(round(v)) for v in click))
            if not lesion.any():
                continue
            depth = ndimage.distance_transform_edt(lesion, sampling=image.spacing)
            values = [depth[tuple(int(round(v)) for v in click)] / depth.max(), row["dice_by_click"][0]]
            if predictor is not None:
                voxels = np.argwhere(lesion)
                random_voxel = voxels[np.random.default_rng(0).integers(len(voxels))].astype(float)
                deepest = np.asarray(np.unravel_index(np.argmax(depth), depth.shape), dtype=float)
                for centre in (click, deepest, random_voxel):
                    values.append(crop_dice(predictor, image.array, image.spacing, lesion, click, centre))
            rows.append(values)
        table = np.asarray(rows, dtype=float)
        rim = table[:, 0] < RIM_DEPTH
        for label, chosen in (("on the rim (depth < 1/3)", rim), ("deeper", ~rim), ("all", np.ones(len(table), bool))):
            cells = " | ".join(f"{v:.3f}" for v in np.nanmean(table[chosen, 1:], axis=0)) if chosen.any() else "-"
            print(f"| {name} | {label} | {int(chosen.sum())} | {cells} |")


if __name__ == "__main__":
    main()
