"""Where the first click lands and what it gets: each case's first click (from a `sam3d evaluate`
report) read against its lesion - the click's depth (its distance to the lesion's edge, in mm,
over the deepest voxel's) - and the mean first-click Dice of clicks on the rim (the outer
RIM_DEPTH of the depth) and deeper, per set. Prints a Markdown table.

    python benchmarks/first_click_depth.py --run dev21=runs/eval_dev21/report.json:data/phantoms_dev21 \
        --run synth93=runs/eval_synth93/report.json:data/synth93
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


def click_depth(mask: np.ndarray, spacing: tuple[float, ...], point: list[float]) -> float:
    """The clicked object's distance to its edge at ``point`` (kji) over its deepest voxel's."""
    objects, _ = label_objects(mask)
    voxel = tuple(int(round(v)) for v in point)
    number = objects[voxel]
    if number == 0:
        return float("nan")
    depth = ndimage.distance_transform_edt(objects == number, sampling=spacing)
    return float(depth[voxel] / depth.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=REPORT:DATA",
                        help="a set's name, its `sam3d evaluate` report.json and its dataset folder")
    args = parser.parse_args()
    print("| set | cases | rim clicks (depth < 1/3) | first click, rim | first click, deeper | first click, all |")
    print("|---|---|---|---|---|---|")
    for run in args.run:
        name, rest = run.split("=", 1)
        report_path, data = rest.rsplit(":", 1)
        report = json.loads(Path(report_path).read_text())
        cases = {case.case_id: case for case in find_cases(data)}
        target = resolve_target_label(data, report.get("target_label", "tumor"))
        rim, deep = [], []
        for row in report["per_case"]:
            image, mask = load_case(cases[row["case_id"]], target)
            depth = click_depth(mask, image.spacing, row["clicks"][0]["point_kji"])
            (rim if depth < RIM_DEPTH else deep).append(row["dice_by_click"][0])
        mean = lambda values: f"{np.mean(values):.3f}" if values else "-"  # noqa: E731
        print(f"| {name} | {len(rim) + len(deep)} | {len(rim)} | {mean(rim)} | {mean(deep)} | {mean(rim + deep)} |")


if __name__ == "__main__":
    main()
