"""How sure a mean over cases is: bootstrap confidence intervals of a run's mean Dice / NSD, and
a paired comparison of two runs on the same cases (``sam3d compare``).

A set of 12-24 cases gives a mean whose 95 % interval is often 0.1 wide; two engines compared on
it differ by a few hundredths. The interval says which differences the data can tell apart.
scipy.stats does the resampling (BCa bootstrap) and the signed-rank test; this module only
handles the cases it refuses (one case, or every value equal).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # the same data always gives the same interval
CI_METHOD = (f"BCa bootstrap of the mean over cases (scipy.stats.bootstrap, {BOOTSTRAP_RESAMPLES} resamples, "
             f"seed {BOOTSTRAP_SEED})")
SAME_WITHIN = 0.01  # a case whose Dice moves less than this counts as unchanged in a comparison


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """The ``CI_LEVEL`` bootstrap interval (BCa) of the mean of per-case ``values``; the mean
    itself at both ends where the data cannot vary (one case, or all values equal)."""
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        raise ValueError("no values to take a confidence interval of")
    if data.size < 2 or np.ptp(data) == 0:
        mean = float(data.mean())
        return mean, mean
    for method in ("BCa", "percentile"):  # BCa is undefined on some small samples (NaN): percentile then
        with warnings.catch_warnings():
            # scipy warns (DegenerateDataWarning, a RuntimeWarning) where it returns NaN: handled here
            warnings.simplefilter("ignore", RuntimeWarning)
            interval = stats.bootstrap((data,), np.mean, confidence_level=CI_LEVEL, n_resamples=BOOTSTRAP_RESAMPLES,
                                       method=method, random_state=BOOTSTRAP_SEED).confidence_interval
        if np.isfinite(interval.low) and np.isfinite(interval.high):
            break
    return float(interval.low), float(interval.high)


def intervals_by_click(per_case: np.ndarray) -> list[list[float]]:
    """``mean_interval`` of each column of a cases x clicks array, as [[low, high], ...]."""
    return [list(mean_interval(per_case[:, click])) for click in range(per_case.shape[1])]


@dataclass
class PairedDifference:
    """Run B against run A on the same cases, at one click."""

    mean_a: float
    mean_b: float
    difference: float  # mean of B - A over cases
    low: float  # CI_LEVEL bootstrap interval of that mean difference
    high: float
    better: int  # cases where B exceeds A by SAME_WITHIN or more
    worse: int
    p_value: float | None  # Wilcoxon signed-rank test of B - A; None where no case differs

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """B - A, case by case (``a`` and ``b`` in the same case order): the mean difference with its
    bootstrap interval, the cases that gain or lose ``SAME_WITHIN`` or more, and the signed-rank
    test's p value."""
    first = np.asarray(a, dtype=np.float64).ravel()
    second = np.asarray(b, dtype=np.float64).ravel()
    if first.shape != second.shape:
        raise ValueError(f"paired runs need one value per case in each: {first.size} against {second.size}")
    differences = second - first
    low, high = mean_interval(differences)
    p_value = float(stats.wilcoxon(differences).pvalue) if np.any(differences != 0) else None
    return PairedDifference(mean_a=float(first.mean()), mean_b=float(second.mean()),
                            difference=float(differences.mean()), low=low, high=high,
                            better=int(np.count_nonzero(differences >= SAME_WITHIN)),
                            worse=int(np.count_nonzero(differences <= -SAME_WITHIN)), p_value=p_value)
