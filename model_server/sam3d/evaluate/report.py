"""The evaluation report: report.json, report.csv and dice_by_click.png in one folder."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .simulation import CaseResult

REPORT_JSON, REPORT_CSV, REPORT_PNG = "report.json", "report.csv", "dice_by_click.png"


def build_report(results: list[CaseResult], summary: dict, info: dict) -> dict:
    """The report dict: ``info`` (model, data, protocol settings), the summary, per-case rows."""
    return {**info, **summary, "per_case": [r.to_dict() for r in results]}


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Write report.json, report.csv (one row per method, case and click, plus the mean rows)
    and dice_by_click.png; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / REPORT_JSON
    temporary = out_dir / f".{REPORT_JSON}.tmp"
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, json_path)
    return [json_path, _write_csv(report, out_dir / REPORT_CSV), _plot(report, out_dir / REPORT_PNG)]


BASELINE_2D = "litemedsam_2d_slice_by_slice"
# the model's mean rows carry the 95 % intervals of their means; the other rows leave them empty
CSV_COLUMNS = ["method", "case_id", "click", "dice", "nsd",
               "dice_ci95_low", "dice_ci95_high", "nsd_ci95_low", "nsd_ci95_high"]


def _write_csv(report: dict, path: Path) -> Path:
    model = report.get("model", "model")
    classical = report.get("classical", {}).get("method", "classical")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)

        def write(cells: list) -> None:
            writer.writerow(cells + [""] * (len(CSV_COLUMNS) - len(cells)))

        for number, (dice, nsd, dice_interval, nsd_interval) in enumerate(
                zip(report["dice_by_click"], report["nsd_by_click"], report["dice_ci95_by_click"],
                    report["nsd_ci95_by_click"]), start=1):
            write([model, "mean", number, f"{dice:.6f}", f"{nsd:.6f}", *_cells(dice_interval), *_cells(nsd_interval)])
        if "classical" in report:
            write([classical, "mean", 1, f"{report['classical']['mean_dice']:.6f}",
                   f"{report['classical']['mean_nsd']:.6f}"])
        if "baseline_2d" in report:
            write([BASELINE_2D, "mean", 1, f"{report['baseline_2d']['mean_dice']:.6f}",
                   f"{report['baseline_2d']['mean_nsd']:.6f}"])
        for case in report["per_case"]:
            for number, (dice, nsd) in enumerate(zip(case["dice_by_click"], case["nsd_by_click"]), start=1):
                write([model, case["case_id"], number, f"{dice:.6f}", f"{nsd:.6f}"])
            if case.get("classical_dice") is not None:
                write([classical, case["case_id"], 1, f"{case['classical_dice']:.6f}",
                       f"{case['classical_nsd']:.6f}"])
            if case.get("baseline_2d_dice") is not None:
                write([BASELINE_2D, case["case_id"], 1, f"{case['baseline_2d_dice']:.6f}",
                       f"{case['baseline_2d_nsd']:.6f}"])
    return path


def _cells(interval: list[float] | None) -> list[str]:
    """An interval's two CSV cells; empty where there is none (a single case)."""
    return ["", ""] if interval is None else [f"{end:.6f}" for end in interval]


def _plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    clicks = list(range(1, len(report["dice_by_click"]) + 1))
    figure, axes = plt.subplots(figsize=(5.5, 4), dpi=120)
    for case in report["per_case"]:
        axes.plot(clicks, case["dice_by_click"], color="tab:blue", alpha=0.15, linewidth=0.8)
    axes.plot(clicks, report["dice_by_click"], "o-", color="tab:blue", linewidth=2,
              label=f"{report.get('model', 'model')} (mean of {report['cases']} cases)")
    if None not in report["dice_ci95_by_click"]:  # a single case has no interval
        low, high = zip(*report["dice_ci95_by_click"])
        axes.fill_between(clicks, low, high, color="tab:blue", alpha=0.2, linewidth=0,
                          label="95 % CI of the mean (bootstrap)")
    if "classical" in report:
        axes.plot([1], [report["classical"]["mean_dice"]], "s", color="tab:red", markersize=8,
                  label="classical: region growing at click 1")
    axes.set_xlabel("clicks")
    axes.set_ylabel("Dice")
    axes.set_ylim(0, 1)
    axes.set_xticks(clicks)
    axes.grid(alpha=0.3)
    axes.set_title(f"Dice by click ({report.get('split', '')} split, seed {report.get('seed', '')})")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
