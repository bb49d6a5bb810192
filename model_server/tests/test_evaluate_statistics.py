"""How sure a mean over cases is: the bootstrap intervals of `sam3d evaluate` and `sam3d compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam3d.cli import main
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


def test_data_that_cannot_vary_gives_its_mean_and_no_data_is_refused():
    assert mean_interval([0.7]) == (0.7, 0.7)
    assert mean_interval([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))
    low, high = mean_interval([0.0, 0.0, 0.0, 1.0])  # BCa's hard case: still a finite interval
    assert 0.0 <= low <= 0.25 <= high <= 1.0
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])


def test_a_paired_difference_counts_gains_and_losses_and_tests_them():
    before = np.linspace(0.3, 0.9, 12)
    same = paired_difference(before, before)
    assert (same.difference, same.low, same.high, same.better, same.worse, same.p_value) == (0, 0, 0, 0, 0, None)
    lifted = paired_difference(before, before + 0.05)
    assert lifted.difference == pytest.approx(0.05) and lifted.better == 12 and lifted.worse == 0
    assert lifted.low == pytest.approx(0.05) and lifted.p_value < 0.001  # all twelve gain
    after = before.copy()
    after[:3] += [0.2, 0.3, 0.005]  # two gain, one stays within SAME_WITHIN
    after[3] -= 0.1  # one loses
    mixed = paired_difference(before, after)
    assert (mixed.better, mixed.worse) == (2, 1) and 0.005 < SAME_WITHIN
    assert mixed.low < 0 < mixed.high and mixed.p_value > 0.05  # four cases moved: chance can do that
    assert mixed.difference == pytest.approx((0.2 + 0.3 + 0.005 - 0.1) / 12)
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


def test_compare_is_listed_and_explains_itself(capsys):
    for argv in (["--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit) as exit_status:
            main(argv)
        assert exit_status.value.code == 0
    printed = capsys.readouterr().out
    assert "compare two evaluation reports case by case, with 95 % intervals" in printed
    assert "BEFORE and AFTER are the folders" in printed
