"""How sure a mean over cases is: bootstrap confidence intervals of a run's mean Dice / NSD, and
a paired comparison of two runs on the same cases (``sam3d compare``).

On 8-16 cases the 95 % interval of a mean first-click Dice is 0.1-0.45 wide; two variants of the
engine differ by a few hundredths. The interval says which differences the data can tell apart.
scipy.stats does the resampling (BCa bootstrap) and the signed-rank test; this module only
handles what they refuse: a single case (no interval: None), and data that cannot vary.
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
             f"seed {BOOTSTRAP_SEED}); none for a single case")
SAME_WITHIN = 0.01  # a case whose figure moves less than this counts as unchanged in a comparison
# the fewest changed cases whose signed-rank test can reach p < 0.05 (exact test: 2 / 2^6 = 0.031)
FEWEST_FOR_A_TEST = 6


def mean_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The ``CI_LEVEL`` bootstrap interval (BCa) of the mean of per-case ``values``; None for a
    single case; the mean at both ends where every value is the same."""
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0 or not np.isfinite(data).all():
        raise ValueError(f"a confidence interval needs finite per-case values, got {data.tolist()[:5]}")
    if data.size < 2:
        return None
    if np.ptp(data) == 0:  # scipy refuses data that cannot vary (its BCa divides by zero)
        mean = float(data.mean())
        return mean, mean
    interval = stats.bootstrap((data,), np.mean, confidence_level=CI_LEVEL, n_resamples=BOOTSTRAP_RESAMPLES,
                               method="BCa", random_state=BOOTSTRAP_SEED).confidence_interval
    return float(interval.low), float(interval.high)


def intervals_by_click(per_case: np.ndarray) -> list[list[float] | None]:
    """``mean_interval`` of each column of a cases x clicks array, as [[low, high] or None, ...]."""
    intervals = (mean_interval(per_case[:, click]) for click in range(per_case.shape[1]))
    return [None if interval is None else list(interval) for interval in intervals]


@dataclass
class PairedDifference:
    """Run "after" against run "before" on the same cases, at one click."""

    mean_before: float
    mean_after: float
    difference: float  # mean of after - before over cases
    low: float | None  # CI_LEVEL bootstrap interval of that mean difference (None for a single case)
    high: float | None
    better: int  # cases where after exceeds before by SAME_WITHIN or more
    worse: int
    changed: int  # cases whose figure differs at all (the signed-rank test's sample)
    p_value: float | None  # Wilcoxon signed-rank test of after - before; None where no case differs

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(before: Sequence[float], after: Sequence[float]) -> PairedDifference:
    """after - before, case by case (the two in the same case order): the mean difference with its
    bootstrap interval, the cases that gain or lose ``SAME_WITHIN`` or more, and the signed-rank
    test's p value (cases with no difference left out of the test, Wilcoxon's own rule)."""
    first = np.asarray(before, dtype=np.float64).ravel()
    second = np.asarray(after, dtype=np.float64).ravel()
    if first.shape != second.shape:
        raise ValueError(f"paired runs need one value per case in each: {first.size} against {second.size}")
    differences = second - first
    interval = mean_interval(differences)
    p_value = None
    if np.any(differences != 0):
        with warnings.catch_warnings():  # older scipy warns of ties and small samples on every call
            warnings.simplefilter("ignore", UserWarning)
            p_value = float(stats.wilcoxon(differences).pvalue)
    low, high = interval if interval is not None else (None, None)
    return PairedDifference(mean_before=float(first.mean()), mean_after=float(second.mean()),
                            difference=float(differences.mean()), low=low, high=high,
                            better=int(np.count_nonzero(differences >= SAME_WITHIN)),
                            worse=int(np.count_nonzero(differences <= -SAME_WITHIN)),
                            changed=int(np.count_nonzero(differences)), p_value=p_value)
