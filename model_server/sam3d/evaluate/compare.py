"""`sam3d compare`: two `sam3d evaluate` reports of the same cases, click by click - each run's
mean, the mean difference (after - before) with its 95 % bootstrap interval, the cases that gain
or lose 0.01 or more, and the Wilcoxon signed-rank test of the differences.

    sam3d compare BEFORE AFTER [--metric dice|nsd] [--out comparison.json]

BEFORE and AFTER are the folders `sam3d evaluate --out` wrote (or their report.json). A
difference whose interval holds 0 is one these cases cannot tell from chance.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..data.io import atomic_write
from ..errors import CLIError
from .report import REPORT_JSON
from .statistics import CI_METHOD, FEWEST_FOR_A_TEST, SAME_WITHIN, PairedDifference, paired_difference

METRICS = ("dice", "nsd")
# what `sam3d evaluate` records of how a run was made: where two runs differ, the comparison says so
# (a difference in the model or an engine option is usually the point; one in the data, prompt or
# seed makes the runs answer different questions)
RUN_SETTINGS = ("model", "model_sha256", "data", "split", "target_label", "scope", "prompt", "box_margin_mm",
                "seed", "perturb_noise", "perturb_seed", "box_pathway", "click_pathway", "corrections",
                "slice_precision")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="two evaluation reports of the same cases, click by click, with 95 %% intervals",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", metavar="BEFORE", help="folder (or report.json) of the run compared against")
    parser.add_argument("after", metavar="AFTER", help="folder (or report.json) of the run to judge")
    parser.add_argument("--metric", default="dice", choices=METRICS, help="per-case figure compared (default dice)")
    parser.add_argument("--out", metavar="FILE", help="also write the comparison as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    before, after = read_report(args.before), read_report(args.after)
    first, second = per_case(before, args.metric, args.before), per_case(after, args.metric, args.after)
    rows = compare_cases(first, second)
    for setting in RUN_SETTINGS:
        if before.get(setting) != after.get(setting):
            print(f"note: the runs differ in {setting}: {before.get(setting)!r} -> {after.get(setting)!r}")
    clicks = {len(values) for values in (*first.values(), *second.values())}
    if len(clicks) > 1:
        print(f"note: the cases have {min(clicks)} to {max(clicks)} clicks; the first {len(rows)} are compared")
    print(f"{len(first)} cases, {args.metric} by click (after - before; 95 % CI of the mean difference; cases "
          f"that gain / lose {SAME_WITHIN:g} or more; Wilcoxon signed-rank p)")
    print(f"{'click':>5}  {'before':>7}  {'after':>7}  {'difference':>10}  {'95 % CI':>17}  {'gain/lose':>9}  p")
    for click, row in enumerate(rows, start=1):
        interval = "-" if row.low is None else f"{row.low:+8.4f}..{row.high:+.4f}"
        p_value = "-" if row.p_value is None else f"{row.p_value:.3g}"
        print(f"{click:>5}  {row.mean_before:7.4f}  {row.mean_after:7.4f}  {row.difference:+10.4f}  "
              f"{interval:>17}  {row.better:>4}/{row.worse:<4}  {p_value}")
    few = [click for click, row in enumerate(rows, start=1) if 0 < row.changed < FEWEST_FOR_A_TEST]
    if few:
        print(f"note: at click(s) {', '.join(map(str, few))} fewer than {FEWEST_FOR_A_TEST} cases changed: the "
              "signed-rank test cannot reach p < 0.05 there, and the interval rests on those few cases")
    if args.out:
        comparison = {"before": str(args.before), "after": str(args.after), "metric": args.metric,
                      "cases": len(first), "ci_method": CI_METHOD, "same_within": SAME_WITHIN,
                      "by_click": [row.to_dict() for row in rows]}
        try:
            atomic_write(Path(args.out), ".json",
                         lambda temp: temp.write_text(json.dumps(comparison, indent=2) + "\n"))
        except OSError as error:
            raise CLIError(f"cannot write --out {args.out} ({error}); give a file path in a writable folder") from error
        print(f"wrote {args.out}")
    return 0


def read_report(path: str | Path) -> dict:
    """A `sam3d evaluate` report from its folder or its report.json (CLIError saying what is wrong)."""
    path = Path(path)
    file = path / REPORT_JSON if path.is_dir() else path
    if not file.is_file():
        raise CLIError(f"no evaluation report at {path}: give the folder that `sam3d evaluate --out` wrote, "
                       f"or its {REPORT_JSON}")
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CLIError(f"{file} cannot be read as JSON ({error}); give a report that `sam3d evaluate` wrote") from error
    if not isinstance(report, dict) or not isinstance(report.get("per_case"), list) or not report["per_case"]:
        raise CLIError(f"{file} is not a `sam3d evaluate` report (no per-case results)")
    return report


def per_case(report: dict, metric: str, path: str | Path) -> dict[str, list[float]]:
    """case id -> the report's per-click ``metric`` values (CLIError naming ``path`` where the
    report holds anything but finite numbers there, or repeats a case)."""
    key = f"{metric}_by_click"
    values: dict[str, list[float]] = {}
    for case in report["per_case"]:
        figures = case.get(key) if isinstance(case, dict) else None
        if not isinstance(figures, list) or not figures or not all(_is_figure(v) for v in figures):
            raise CLIError(f"{path}: a case's {key} is not a list of finite numbers; give reports that "
                           "`sam3d evaluate` wrote")
        case_id = str(case.get("case_id"))
        if case_id in values:
            raise CLIError(f"{path}: case {case_id} appears twice")
        values[case_id] = [float(v) for v in figures]
    return values


def compare_cases(before: dict[str, list[float]], after: dict[str, list[float]]) -> list[PairedDifference]:
    """``paired_difference`` at each click every case of both runs reaches, the cases paired by id
    (CLIError where the runs do not hold the same cases)."""
    if before.keys() != after.keys():
        only_before, only_after = sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())
        raise CLIError(f"the reports hold different cases (only before: {_named(only_before)}; only after: "
                       f"{_named(only_after)}); compare two runs on the same data and split")
    clicks = min(len(values) for values in (*before.values(), *after.values()))
    order = sorted(before)
    return [paired_difference([before[case][click] for case in order], [after[case][click] for case in order])
            for click in range(clicks)]


def _is_figure(value: object) -> bool:
    """A finite number, as a Dice or NSD is (not a bool, NaN, infinity or an integer too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _named(cases: list[str]) -> str:
    """At most five case ids, and how many more."""
    if not cases:
        return "none"
    more = f" and {len(cases) - 5} more" if len(cases) > 5 else ""
    return ", ".join(cases[:5]) + more
