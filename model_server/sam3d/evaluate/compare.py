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
from pathlib import Path

from ..data.io import atomic_write
from ..errors import CLIError
from .report import REPORT_JSON
from .statistics import CI_METHOD, SAME_WITHIN, paired_difference

METRICS = ("dice", "nsd")
# settings that make two runs answer different questions; a comparison across them is allowed
# (a click run against a box run on the same cases) but said
PROTOCOL_SETTINGS = ("data", "split", "target_label", "scope", "prompt", "box_margin_mm", "seed",
                     "perturb_noise")


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
    rows = compare_reports(before, after, args.metric)
    for setting in PROTOCOL_SETTINGS:
        if before.get(setting) != after.get(setting):
            print(f"note: the runs differ in {setting}: {before.get(setting)!r} -> {after.get(setting)!r}")
    cases = len(before["per_case"])
    print(f"{cases} cases, {args.metric} by click (after - before; 95 % CI of the mean difference; cases that "
          f"gain / lose {SAME_WITHIN:g} or more; Wilcoxon signed-rank p)")
    print(f"{'click':>5}  {'before':>7}  {'after':>7}  {'difference':>10}  {'95 % CI':>17}  {'gain/lose':>9}  p")
    for click, row in enumerate(rows, start=1):
        p_value = "-" if row.p_value is None else f"{row.p_value:.3g}"
        print(f"{click:>5}  {row.mean_a:7.4f}  {row.mean_b:7.4f}  {row.difference:+10.4f}  "
              f"{row.low:+8.4f}..{row.high:+.4f}  {row.better:>4}/{row.worse:<4}  {p_value}")
    if args.out:
        comparison = {"before": str(args.before), "after": str(args.after), "metric": args.metric,
                      "cases": cases, "ci_method": CI_METHOD, "same_within": SAME_WITHIN,
                      "by_click": [row.to_dict() for row in rows]}
        atomic_write(Path(args.out), ".json", lambda temp: temp.write_text(json.dumps(comparison, indent=2) + "\n"))
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CLIError(f"{file} cannot be read as JSON ({error}); give a report that `sam3d evaluate` wrote") from error
    if not isinstance(report, dict) or not isinstance(report.get("per_case"), list) or not report["per_case"]:
        raise CLIError(f"{file} is not a `sam3d evaluate` report (no per-case results)")
    return report


def compare_reports(before: dict, after: dict, metric: str = "dice") -> list:
    """``paired_difference`` of ``metric`` at each click both reports reach, the cases paired by
    id (CLIError where the reports do not hold the same cases)."""
    key = f"{metric}_by_click"
    first, second = _by_case(before, key), _by_case(after, key)
    if first.keys() != second.keys():
        only_before, only_after = sorted(first.keys() - second.keys()), sorted(second.keys() - first.keys())
        raise CLIError(f"the reports hold different cases (only before: {_named(only_before)}; only after: "
                       f"{_named(only_after)}); compare two runs on the same data and split")
    clicks = min(len(values) for values in (*first.values(), *second.values()))
    order = sorted(first)
    return [paired_difference([first[case][click] for case in order], [second[case][click] for case in order])
            for click in range(clicks)]


def _by_case(report: dict, key: str) -> dict[str, list[float]]:
    """case id -> the report's per-click values under ``key``."""
    try:
        values = {str(case["case_id"]): [float(v) for v in case[key]] for case in report["per_case"]}
    except (KeyError, TypeError, ValueError) as error:
        raise CLIError(f"a report's per-case results lack {key} ({error}); give reports that `sam3d evaluate` "
                       "wrote") from error
    if len(values) != len(report["per_case"]) or not all(values.values()):
        raise CLIError(f"a report repeats a case id or has a case without {key}")
    return values


def _named(cases: list[str]) -> str:
    """At most five case ids, and how many more."""
    if not cases:
        return "none"
    more = f" and {len(cases) - 5} more" if len(cases) > 5 else ""
    return ", ".join(cases[:5]) + more

