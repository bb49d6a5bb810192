"""The evaluation protocol: seeded first click, simulated correction clicks, Dice / NSD per click.

Per case (everything through the engine, on the native grid):

1. The object: with ``scope="object"`` (default) the connected component (26-connected) of the
   target label that holds the first click, as one interactive session segments one object;
   with ``scope="label"`` the whole target label, as the paper's code scores it.
2. Click 1 is the paper's: a target voxel drawn at random, from a generator seeded by
   (seed, case id), so two runs click the same voxels and give the same numbers.
3. The engine's ``Session`` places the crop around the click, predicts, pastes back onto the
   native grid and thresholds at 0.5; Dice and NSD (5 mm) are measured on the native grid.
4. Clicks 2..N: ``sam3d.data.clicks.next_click`` at the centre of the largest error region
   (positive in a miss, negative in a leak), added to the same session (cached encoder, previous
   mask as prompt). When the prediction is perfect, later clicks keep its numbers.
5. The classical row: region growing seeded at click 1 inside the same crop (``classical.py``).

With ``prompt="box"`` the first interaction is the object's 2D box on its largest slice (the
object being the component that holds the seeded first click) instead of the click; with
``prompt="box3d"`` the object's 3D bounding box (as ``sam3d segment --box`` takes two opposite
corners); the correction clicks follow as above. The 2D row (optional, ``engine/slice_pathway.py``): LiteMedSAM
slice by slice from the same first prompt.

Optionally (``perturbed``) each volume first gets seeded Gaussian noise far below what a reader
would see, to show how far a figure moves under such a change.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..data.clicks import first_click, label_objects, next_click
from ..engine.predictor import Predictor
from ..engine.session import Session
from ..engine.slice_pathway import segment_slice_by_slice, volume_bounds
from .classical import region_grow
from .metrics import NSD_TOLERANCE_MM, dice_and_nsd
from .statistics import CI_METHOD, intervals_by_click

SCOPES = ("object", "label")
PERTURBATION_STREAM = 1  # a third seed word: the noise's generator never repeats a case's clicks
PROMPTS = ("click", "box", "box3d")


@dataclass
class CaseResult:
    """One case's numbers: index i of each list is after click i + 1."""

    case_id: str
    dice_by_click: list[float]
    nsd_by_click: list[float]
    clicks: list[dict]  # {"point_kji": [k, j, i], "label": 1 | 0}
    target_voxels: int
    classical_dice: float | None = None
    classical_nsd: float | None = None
    baseline_2d_dice: float | None = None
    baseline_2d_nsd: float | None = None
    prompt: str = "click"
    seconds: float = 0.0
    timing_ms: list[float] = field(default_factory=list)  # engine time per click

    def to_dict(self) -> dict:
        values = asdict(self)
        values["dice"], values["nsd"] = self.dice_by_click[0], self.nsd_by_click[0]
        return values


def case_rng(seed: int, case_id: str, stream: int | None = None) -> np.random.Generator:
    """The click generator of one case: depends on the seed and the case id only (not on which
    other cases are evaluated, or in which order); ``stream``: another generator of the case,
    independent of its clicks (``PERTURBATION_STREAM``)."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode()), *([] if stream is None else [stream])])


def perturbed(volume: np.ndarray, noise: float, seed: int, case_id: str) -> np.ndarray:
    """``volume`` plus Gaussian noise of standard deviation ``noise`` times its intensity range
    (the 0.5 / 99.5 percentiles the 2D pathway scales by, ``volume_bounds``), float32, drawn from a
    case's generator for ``seed`` apart from its clicks' (``case_rng``); ``volume``
    itself when ``noise`` is 0. At 0.002 the real MRI box figure moved by up to 0.13
    (docs/BENCHMARKS.md, "The 2D pathway in bfloat16")."""
    if noise == 0:
        return volume
    if noise < 0:
        raise ValueError(f"the noise must be a fraction of the intensity range >= 0, got {noise}")
    low, high = volume_bounds(volume)
    rng = case_rng(seed, case_id, PERTURBATION_STREAM)
    noisy = np.array(volume, dtype=np.float32)
    for plane in noisy:  # slice by slice: the same draws as one call, without a float64 copy of the volume
        plane += rng.normal(0.0, noise * (high - low), plane.shape).astype(np.float32)
    return noisy


def largest_slice_box(target: np.ndarray) -> np.ndarray:
    """The object's 2D box on its largest k slice: corners [[k, j0, i0], [k, j1, i1]] (voxel centres)."""
    k = int(np.argmax(target.sum(axis=(1, 2))))
    js, is_ = np.nonzero(target[k])
    return np.array([[k, js.min(), is_.min()], [k, js.max(), is_.max()]], dtype=float)


def bounding_box(target: np.ndarray) -> np.ndarray:
    """The object's 3D bounding box: corners [[k0, j0, i0], [k1, j1, i1]] (voxel centres)."""
    voxels = np.argwhere(target)
    return np.array([voxels.min(axis=0), voxels.max(axis=0)], dtype=float)


def first_box(target: np.ndarray, prompt: str, margin_mm: float = 0.0,
              spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray | None:
    """The box a ``prompt`` starts with (None for a click), grown by ``margin_mm`` on every side
    it has (a 2D box only in its slice's plane) and kept inside the volume: a box drawn loosely,
    as a user draws it around a lesion."""
    box = {"box": largest_slice_box, "box3d": bounding_box}.get(prompt, lambda _: None)(target)
    if box is None or margin_mm == 0:
        return box
    if margin_mm < 0:
        raise ValueError(f"the box margin must be >= 0 mm, got {margin_mm}")
    grow = margin_mm / np.asarray(spacing, dtype=float)
    if prompt == "box":
        grow[0] = 0.0
    return np.clip(box + np.array([-grow, grow]), 0, np.array(target.shape) - 1)


def clicked_object(target: np.ndarray, seed: int, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(the protocol's seeded first click on ``target`` (bool), the connected object of
    ``target`` it lies in): what the "object" scope evaluates."""
    point = first_click(target, case_rng(seed, case_id))
    components, _ = label_objects(target)
    return point, components == components[tuple(int(c) for c in point)]


def evaluate_case(predictor: Predictor, case_id: str, volume: np.ndarray, spacing: Sequence[float],
                  target: np.ndarray, clicks: int, seed: int, scope: str = "object",
                  classical: bool = True, prompt: str = "click", baseline_2d=None,
                  corrections: str = "auto", click_pathway: str = "3d",
                  after_each: Callable[[Session], None] | None = None, box_margin_mm: float = 0.0) -> CaseResult:
    """Run the protocol on one case (``volume`` in HU, ``target`` bool, both native kji).
    ``baseline_2d``: a ``slice_pathway.LiteMedSAM2D`` to score the 2D row, or None.
    ``after_each``: called with the session after each interaction, before the next click is
    chosen (what happens while a user looks at the mask: the benchmarks' idle work).
    ``box_margin_mm``: a box prompt's margin around the object (``first_box``)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}; choose one of {', '.join(PROMPTS)}")
    if clicks < 1:
        raise ValueError(f"clicks must be at least 1, got {clicks}")
    target = np.asarray(target, dtype=bool)
    if not target.any():
        raise ValueError(f"case {case_id}: the target label is empty; nothing to click on")
    start = time.perf_counter()
    spacing = tuple(float(s) for s in spacing)
    point, clicked = clicked_object(target, seed, case_id)
    if scope == "object":
        target = clicked
    session = Session(predictor, volume, spacing, corrections=corrections, click_pathway=click_pathway)
    result = CaseResult(case_id, [], [], [], int(target.sum()), prompt=prompt)
    box = prompt_box = first_box(target, prompt, box_margin_mm, spacing)
    first_point = point
    label = 1
    for _ in range(clicks):
        if box is not None or point is not None:  # else the object is done: its last figures stand
            if box is not None:  # the first interaction is the box alone
                change = session.interact(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), box_kji=box)
                result.clicks.append({"box_kji": box.tolist()})
                box = None
            else:
                change = session.interact([point], [label])
                result.clicks.append({"point_kji": [float(c) for c in point], "label": int(label)})
            result.timing_ms.append(change.timing_ms.get("total", 0.0))
            dice, nsd = dice_and_nsd(session.mask, target, spacing)
            if after_each is not None:
                after_each(session)
            correction = next_click(session.mask, target, spacing)
            point, label = correction if correction is not None else (None, None)
        result.dice_by_click.append(dice)
        result.nsd_by_click.append(nsd)
    if classical and prompt == "click":
        grown = region_grow(volume, spacing, first_point, predictor.config)
        result.classical_dice, result.classical_nsd = dice_and_nsd(grown, target, spacing)
    if baseline_2d is not None:
        flat = segment_slice_by_slice(baseline_2d, np.asarray(volume, dtype=np.float32),
                                      box_kji=prompt_box,
                                      click_kji=first_point if prompt == "click" else None)
        result.baseline_2d_dice, result.baseline_2d_nsd = dice_and_nsd(flat, target, spacing)
    result.seconds = time.perf_counter() - start
    return result


def summarise(results: list[CaseResult], clicks: int) -> dict:
    """Means over cases: the report's headline numbers."""
    if not results:
        raise ValueError("no cases were evaluated")
    dice = np.array([r.dice_by_click for r in results])
    nsd = np.array([r.nsd_by_click for r in results])
    summary = {
        "cases": len(results),
        "clicks": clicks,
        "mean_dice": float(dice[:, 0].mean()),
        "mean_nsd": float(nsd[:, 0].mean()),
        "dice_by_click": [float(v) for v in dice.mean(axis=0)],
        "nsd_by_click": [float(v) for v in nsd.mean(axis=0)],
        "std_dice": float(dice[:, 0].std()),
        "dice_ci95_by_click": intervals_by_click(dice),
        "nsd_ci95_by_click": intervals_by_click(nsd),
        "ci_method": CI_METHOD,
        "nsd_tolerance_mm": NSD_TOLERANCE_MM,
    }
    if all(r.classical_dice is not None for r in results):
        summary["classical"] = {
            "clicks": 1,
            "mean_dice": float(np.mean([r.classical_dice for r in results])),
            "mean_nsd": float(np.mean([r.classical_nsd for r in results])),
        }
    if all(r.baseline_2d_dice is not None for r in results):
        summary["baseline_2d"] = {
            "method": "LiteMedSAM slice by slice from the same first prompt",
            "mean_dice": float(np.mean([r.baseline_2d_dice for r in results])),
            "mean_nsd": float(np.mean([r.baseline_2d_nsd for r in results])),
        }
    summary["prompt"] = results[0].prompt
    return summary


def evaluate_volumes(predictor: Predictor, cases: Sequence[tuple[str, np.ndarray, Sequence[float], np.ndarray]],
                     clicks: int, seed: int, scope: str = "object", classical: bool = True,
                     progress: Callable[[CaseResult], None] | None = None, prompt: str = "click",
                     baseline_2d=None) -> tuple[list[CaseResult], dict]:
    """Evaluate (case id, volume, spacing, target) tuples; return per-case results and the summary."""
    results = []
    for case_id, volume, spacing, target in cases:
        result = evaluate_case(predictor, case_id, volume, spacing, target, clicks, seed, scope, classical,
                               prompt, baseline_2d)
        results.append(result)
        if progress:
            progress(result)
    return results, summarise(results, clicks)
