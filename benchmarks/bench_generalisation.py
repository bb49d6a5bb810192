"""Generalisation table: every model on every dataset, 1 / 5 clicks and a box, beside region
growing and LiteMedSAM slice by slice at the same first prompt - through `sam3d evaluate`.

    python benchmarks/bench_generalisation.py --out runs/generalisation \\
        --model lite=runs/lite/best.pt --model small-phantoms=default \\
        --data synth-test=data/synth:test --data phantoms=data/phantoms_eval:all \\
        --data real-mri=data/real_mri:all --clicks 5 --seed 0 [--pool NAME=DATA,DATA]

Each (model, data, prompt) runs `sam3d evaluate ... --out OUT/<model>/<data>/<prompt>` (reused
when its report.json exists, so an interrupted table resumes) and the table is printed as
Markdown for docs/BENCHMARKS.md, each Dice with its 95 % interval. `--pool NAME=DATA,DATA` adds a
table of those sets' cases taken as one sample, as the issue's bars over several sets are read.
`--jobs N` runs N evaluations at a time, each with one torch thread unless OMP_NUM_THREADS says
otherwise, and writes each one's output to OUT/<model>/<data>/<prompt>.log.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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
    """One `sam3d evaluate` row's report, run unless ``out`` already holds it. With ``--jobs`` above
    1 its output goes to ``out``.log and it runs with one torch thread unless OMP_NUM_THREADS is set."""
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
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if args.jobs == 1:
            subprocess.run(command, check=True, env=env)
        else:
            env.setdefault("OMP_NUM_THREADS", "1")
            out.parent.mkdir(parents=True, exist_ok=True)
            log = out.parent / f"{out.name}.log"
            with log.open("w") as stream:
                finished = subprocess.run(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
            if finished.returncode:
                raise SystemExit(f"sam3d evaluate failed (exit {finished.returncode}); its output: {log}")
    return json.loads(report.read_text())


def _cell(mean: float, interval) -> str:
    """A mean Dice with its 95 % interval ([low, high]); the mean alone where there is none."""
    return f"{mean:.3f}" if interval is None else f"{mean:.3f} ({interval[0]:.2f}-{interval[1]:.2f})"


def _with_interval(report: dict, click: int) -> str:
    """The report's mean Dice at ``click`` with its 95 % interval; reports resumed from before
    `sam3d evaluate` wrote intervals show the mean alone."""
    interval = report.get("dice_ci95_by_click", [None] * len(report["dice_by_click"]))[click]
    return _cell(report["dice_by_click"][click], interval)


def _pooled(rows: list, pools: list[tuple[str, str]], clicks: int) -> None:
    """Each pool's cases as one sample, per model and prompt: the mean Dice at the first and the
    last click with its 95 % interval (sam3d.evaluate.statistics), as a bar over several sets asks."""
    from sam3d.evaluate.statistics import mean_interval

    print(f"\n| model | pool (data) | cases | first prompt | Dice 1st (95 % CI) | Dice {clicks}th click (95 % CI) |")
    print("|---|---|---|---|---|---|")
    for pool, members in pools:
        names = members.split(",")
        for model_name, prompt in dict.fromkeys((m, p) for m, _, p, _ in rows):
            cases = [case["dice_by_click"] for m, d, p, report in rows if (m, p) == (model_name, prompt)
                     and d in names for case in report["per_case"]]
            if not cases:
                continue
            cells = []
            for click in (0, -1):
                values = [dice[click] for dice in cases]
                cells.append(_cell(sum(values) / len(values), mean_interval(values)))
            print(f"| {model_name} | {pool} ({members}) | {len(cases)} | {prompt} | {cells[0]} | {cells[1]} |")


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
    parser.add_argument("--pool", action="append", default=[], metavar="NAME=DATA,DATA",
                        help="also print these --data sets' cases as one sample (mean and 95 %% interval), "
                             "e.g. unseen=phantoms-99,phantoms-3131")
    parser.add_argument("--jobs", type=int, default=1,
                        help="evaluations run at a time (default 1); above 1 each gets one torch thread "
                             "unless OMP_NUM_THREADS is set, and its output goes to OUT/<model>/<data>/<prompt>.log")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: give 1 or more")
    known = {name for name, _ in _pairs(args.data, "data")}
    for pool, members in _pairs(args.pool, "pool"):
        if not set(members.split(",")) <= known:
            raise SystemExit(f"--pool {pool}: {members!r} names data not given with --data ({', '.join(sorted(known))})")
    planned = []  # (model name, data name, prompt, the row's run)
    for model_name, spec in _pairs(args.model, "model"):
        prompts = ["click", *args.box_prompts.split(",")] if _takes_boxes(spec) else ["click"]
        for data_name, where in _pairs(args.data, "data"):
            data, _, split = where.rpartition(":")
            planned += [(model_name, data_name, prompt,
                         functools.partial(run_one, spec, data, split, prompt, args,
                                           args.out / model_name / data_name / prompt)) for prompt in prompts]
    with ThreadPoolExecutor(max_workers=args.jobs) as executor:
        reports = list(executor.map(lambda row: row[3](), planned))
    rows = [(*row[:3], report) for row, report in zip(planned, reports)]
    print(f"\n| model | data | cases | first prompt | Dice 1st (95 % CI) | Dice {args.clicks}th click (95 % CI) | "
          f"NSD 1st | region growing (click) | LiteMedSAM 2D (same prompt) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name, data_name, prompt, report in rows:
        classical = report.get("classical", {}).get("mean_dice")
        flat = report.get("baseline_2d", {}).get("mean_dice")
        print(f"| {model_name} | {data_name} | {report['cases']} | {prompt} | {_with_interval(report, 0)} | "
              f"{_with_interval(report, -1)} | {report['nsd_by_click'][0]:.3f} | "
              f"{'-' if classical is None else f'{classical:.3f}'} | {'-' if flat is None else f'{flat:.3f}'} |")
    if args.pool:
        _pooled(rows, _pairs(args.pool, "pool"), args.clicks)


if __name__ == "__main__":
    main()
