"""Generalisation table: every model on every dataset, 1 / 5 clicks and a box, beside region
growing and LiteMedSAM slice by slice at the same first prompt - through `sam3d evaluate`.

    python benchmarks/bench_generalisation.py --out runs/generalisation \\
        --model lite=runs/lite/best.pt --model small-phantoms=default \\
        --data synth-test=data/synth:test --data phantoms=data/phantoms_eval:all \\
        --data real-mri=data/real_mri:all --clicks 5 --seed 0

Each (model, data, prompt) runs `sam3d evaluate ... --out OUT/<model>/<data>/<prompt>` (reused
when its report.json exists, so an interrupted table resumes) and the table is printed as
Markdown for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            raise SystemExit(f"--{what} {value!r}: give NAME=VALUE")
        pairs.append((name, rest))
    return pairs


def _takes_boxes(model: str) -> bool:
    code = ("import sys; from sam3d.model.checkpoint import load_model; "
            "print(load_model(sys.argv[1], device='cpu').config.box_prompt)")
    out = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, check=True)
    return out.stdout.strip().endswith("True")


def run_one(model: str, data: str, split: str, prompt: str, args, out: Path) -> dict:
    report = out / "report.json"
    if not report.is_file():
        command = [sys.executable, "-m", "sam3d", "evaluate", "--model", model, "--data", data, "--split", split,
                   "--target-label", "tumor", "--clicks", str(args.clicks), "--seed", str(args.seed),
                   "--prompt", prompt, "--out", str(out)]
        if args.max_cases:
            command += ["--max-cases", str(args.max_cases)]
        if args.baseline_2d:
            command.append("--baseline-2d")
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(report.read_text())


def _with_interval(report: dict, click: int) -> str:
    """The mean Dice at ``click`` with its 95 % interval; reports resumed from before `sam3d
    evaluate` wrote intervals show the mean alone."""
    mean = f"{report['dice_by_click'][click]:.3f}"
    if "dice_ci95_by_click" not in report:
        return mean
    low, high = report["dice_ci95_by_click"][click]
    return f"{mean} ({low:.2f}-{high:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=SPEC")
    parser.add_argument("--data", action="append", required=True, metavar="NAME=DIR:SPLIT")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-cases", type=int)
    parser.add_argument("--baseline-2d", action="store_true", help="add LiteMedSAM slice by slice")
    parser.add_argument("--box-prompts", default="box",
                        help="the box prompts of box-capable models, comma-separated: box (2D box on the "
                             "largest slice), box3d (3D bounding box); default box")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for model_name, spec in _pairs(args.model, "model"):
        prompts = ["click", *args.box_prompts.split(",")] if _takes_boxes(spec) else ["click"]
        for data_name, where in _pairs(args.data, "data"):
            data, _, split = where.rpartition(":")
            for prompt in prompts:
                report = run_one(spec, data, split, prompt, args, args.out / model_name / data_name / prompt)
                rows.append((model_name, data_name, prompt, report))
    print(f"\n| model | data | cases | first prompt | Dice 1st (95 % CI) | Dice {args.clicks}th click (95 % CI) | "
          f"NSD 1st | region growing (click) | LiteMedSAM 2D (same prompt) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name, data_name, prompt, report in rows:
        classical = report.get("classical", {}).get("mean_dice")
        flat = report.get("baseline_2d", {}).get("mean_dice")
        print(f"| {model_name} | {data_name} | {report['cases']} | {prompt} | {_with_interval(report, 0)} | "
              f"{_with_interval(report, -1)} | {report['nsd_by_click'][0]:.3f} | "
              f"{'-' if classical is None else f'{classical:.3f}'} | {'-' if flat is None else f'{flat:.3f}'} |")


if __name__ == "__main__":
    main()
