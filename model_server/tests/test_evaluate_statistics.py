"""How sure a mean over cases is: the bootstrap intervals of `sam3d evaluate` and `sam3d compare`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sam3d.cli import main
from sam3d.evaluate.report import build_report, write_report
from sam3d.evaluate.simulation import CaseResult, summarise
from sam3d.evaluate.statistics import SAME_WITHIN, mean_interval, paired_difference


def test_the_interval_holds_the_mean_narrows_with_more_cases_and_is_reproducible():
    dice = np.array([0.12, 0.91, 0.55, 0.74, 0.81, 0.95, 0.23, 0.62, 0.66, 0.90, 0.93, 0.34])
    low, high = mean_interval(dice)
    assert low < dice.mean() < high and 0.2 < high - low < 0.4  # 12 cases of widely spread Dice
    assert mean_interval(dice) == (low, high)  # seeded: the same data, the same interval
    more_low, more_high = mean_interval(np.tile(dice, 4))  # the same spread over 48 cases
    assert more_high - more_low < 0.6 * (high - low)
    sample = np.random.default_rng(3).normal(0.5, 0.1, 400)
    low, high = mean_interval(sample)  # about the normal interval, mean +- 1.96 sd / sqrt(n)
    assert (high - low) / 2 == pytest.approx(1.96 * sample.std(ddof=1) / 20, rel=0.15)


def test_one_case_has_no_interval_data_that_cannot_vary_gives_its_mean_and_bad_data_is_refused():
    assert mean_interval([0.7]) is None
    assert mean_interval([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))
    rng = np.random.default_rng(0)  # small samples with ties, as Dice of a few cases are: always an interval
    for size in (2, 3, 4, 5, 6) * 20:
        values = rng.choice([0.0, 0.25, 0.5, 0.9, 1.0], size)
        interval = mean_interval(values)
        assert np.isfinite(interval).all() and interval[0] <= values.mean() <= interval[1]
    for bad in ([], [0.5, float("nan")], [0.5, float("inf")]):
        with pytest.raises(ValueError, match="finite per-case values"):
            mean_interval(bad)


def test_a_paired_difference_counts_gains_and_losses_and_tests_them():
    before = np.linspace(0.3, 0.9, 12)
    same = paired_difference(before, before)
    assert (same.difference, same.low, same.high, same.better, same.worse, same.p_value) == (0, 0, 0, 0, 0, None)
    lifted = paired_difference(before, before + 0.05)
    assert lifted.difference == pytest.approx(0.05) and lifted.better == 12 and lifted.worse == 0
    assert lifted.low == pytest.approx(0.05) and lifted.p_value < 0.001  # all twelve gain
    assert lifted.changed == 12 and same.changed == 0
    after = before.copy()
    after[:3] += [0.2, 0.3, SAME_WITHIN / 2]  # two gain, one stays within SAME_WITHIN
    after[3] -= 0.1  # one loses
    mixed = paired_difference(before, after)
    assert (mixed.better, mixed.worse, mixed.changed) == (2, 1, 4)
    assert mixed.low < 0 < mixed.high and mixed.p_value > 0.05  # four cases moved: chance can do that
    assert mixed.difference == pytest.approx((0.2 + 0.3 + SAME_WITHIN / 2 - 0.1) / 12)
    alone = paired_difference([0.5], [0.9])  # one case: a difference, no interval
    assert alone.difference == pytest.approx(0.4) and alone.low is None and alone.high is None
    with pytest.raises(ValueError, match="one value per case"):
        paired_difference([0.1, 0.2], [0.1])


def _report(path, dice_by_case: dict, seed: int = 0):
    """A report as `sam3d evaluate` writes it, with the fields `sam3d compare` reads."""
    path.mkdir()
    cases = [{"case_id": case, "dice_by_click": dice, "nsd_by_click": dice} for case, dice in dice_by_case.items()]
    (path / "report.json").write_text(json.dumps({"data": "d", "prompt": "click", "seed": seed, "per_case": cases}))
    return path


def test_compare_pairs_cases_by_id_and_says_what_it_cannot_compare(tmp_path, capsys):
    before = _report(tmp_path / "before", {f"case_{n}": [0.5 + 0.02 * n, 0.8] for n in range(10)})
    after = _report(tmp_path / "after", {f"case_{n}": [0.6 + 0.02 * n, 0.8] for n in reversed(range(10))})
    assert main(["compare", str(before), str(after), "--out", str(tmp_path / "out" / "c.json")]) == 0
    rows = json.loads((tmp_path / "out" / "c.json").read_text())["by_click"]
    assert rows[0]["difference"] == pytest.approx(0.1) and rows[0]["better"] == 10  # paired by id, not order
    assert rows[1]["difference"] == 0 and rows[1]["p_value"] is None
    assert "+0.1000" in capsys.readouterr().out

    other = _report(tmp_path / "other", {f"case_{n}": [0.5, 0.8] for n in range(1, 12)})
    assert main(["compare", str(before), str(other)]) == 2
    error = capsys.readouterr().err
    assert "different cases" in error and "only before: case_0" in error and "case_10, case_11" in error
    assert main(["compare", str(before), str(tmp_path / "nothing")]) == 2
    assert "no evaluation report" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main(["compare", str(before), str(tmp_path / "broken.json")]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[1, 2]")
    assert main(["compare", str(before), str(tmp_path / "list.json")]) == 2
    assert "not a `sam3d evaluate` report" in capsys.readouterr().err
    (tmp_path / "digits.json").write_text('{"per_case": [{"case_id": "case_0", "dice_by_click": [1' + "0" * 5000 + "]}]}")
    assert main(["compare", str(before), str(tmp_path / "digits.json")]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err
    for name, figures in (("nan", "[NaN, 0.8]"), ("true", "[true, 0.8]"), ("text", '["0.5", 0.8]'),
                          ("huge", "[1" + "0" * 400 + ", 0.8]"), ("empty", "[]")):
        cases = ", ".join(f'{{"case_id": "case_{n}", "dice_by_click": {figures if n == 3 else "[0.5, 0.8]"}}}'
                          for n in range(10))
        (tmp_path / f"{name}.json").write_text(f'{{"per_case": [{cases}]}}')
        assert main(["compare", str(before), str(tmp_path / f"{name}.json")]) == 2, name
        assert f"{name}.json: a case's dice_by_click is not a list of finite numbers" in capsys.readouterr().err
    twice = _report(tmp_path / "twice", {"case_0": [0.5, 0.8]})
    report = json.loads((twice / "report.json").read_text())
    report["per_case"] *= 2
    (twice / "report.json").write_text(json.dumps(report))
    assert main(["compare", str(twice), str(before)]) == 2
    assert "case case_0 appears twice" in capsys.readouterr().err
    assert main(["compare", str(before), str(after), "--metric", "nsd", "--out", str(before)]) == 2  # a folder
    assert "cannot write --out" in capsys.readouterr().err


def test_compare_says_where_the_runs_differ_and_how_many_clicks_it_compares(tmp_path, capsys):
    before = _report(tmp_path / "before", {f"case_{n}": [0.5, 0.6, 0.7] for n in range(6)})
    after = _report(tmp_path / "after", {f"case_{n}": [0.5 + 0.05 * n] for n in range(6)}, seed=3)
    assert main(["compare", str(before), str(after)]) == 0
    printed = capsys.readouterr().out
    assert "note: the runs differ in seed: 0 -> 3" in printed
    assert "note: the cases have 1 to 3 clicks; the first 1 are compared" in printed
    assert "6 cases" in printed and "+0.1250" in printed and " 5/0 " in printed
    assert "fewer than 6 cases changed" in printed  # five changed: no test can tell them from chance
    assert main(["compare", str(before), str(before)]) == 0  # nothing changed: nothing to warn of
    assert "fewer than" not in capsys.readouterr().out


def test_compare_is_listed_and_explains_itself(capsys):
    for argv in (["--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit) as exit_status:
            main(argv)
        assert exit_status.value.code == 0
    printed = capsys.readouterr().out
    assert "compare two evaluation reports case by case, with 95 % intervals" in printed
    assert "BEFORE and AFTER are the folders" in printed


def test_a_report_of_one_case_has_no_interval_and_still_writes_its_files(tmp_path):
    result = CaseResult("case_0", [0.5, 0.7], [0.6, 0.8], [{"point_kji": [1, 2, 3], "label": 1}], 100)
    summary = summarise([result], 2)
    assert summary["dice_ci95_by_click"] == [None, None] and summary["nsd_ci95_by_click"] == [None, None]
    paths = write_report(build_report([result], summary, {"model": "m"}), tmp_path)
    with open(paths[1]) as handle:
        means = [row for row in csv.DictReader(handle) if row["case_id"] == "mean"]
    assert [row["dice"] for row in means] == ["0.500000", "0.700000"]
    assert all(row["dice_ci95_low"] == row["nsd_ci95_high"] == "" for row in means)
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
