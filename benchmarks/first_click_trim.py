"""The first click's intensity trim (``engine/intensity_trim.py``) at several gates: for each
case of each data set, the protocol's first click answered without the trim, then trimmed at
each gate (interquartile ranges of the ring); the mean Dice change per case and how many cases
moved by more than 0.01. Prints a Markdown table.

    python benchmarks/first_click_trim.py --data chest=data/chest_dev2 --data synth=data/synth93
    python benchmarks/first_click_trim.py --data chest=data/chest_dev2 --gates 0,1,2 --limit 4

Each data set is an nnU-Net-style folder with a ``tumor`` label (``sam3d phantoms``); the first
click is the evaluation protocol's (``sam3d evaluate --seed 0``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "model_server"))

from sam3d.data.clicks import first_click  # noqa: E402
from sam3d.data.datasets import find_cases, load_case, resolve_target_label  # noqa: E402
from sam3d.engine import session as session_module  # noqa: E402
from sam3d.engine.intensity_trim import RING_PX, trim_to_lesion_intensity  # noqa: E402
from sam3d.engine.predictor import Predictor  # noqa: E402
from sam3d.engine.session import Session  # noqa: E402
from sam3d.evaluate.metrics import dice_and_nsd  # noqa: E402
from sam3d.evaluate.simulation import case_rng  # noqa: E402


def untrimmed_first_masks(predictor: Predictor, folder: Path, limit: int | None):
    """(image, target, click, first mask without the trim) per case with a tumour."""
    session_module.trim_to_lesion_intensity = lambda image, mask, click: mask  # the answer before the trim
    tumour = resolve_target_label(folder, "tumor")
    for case in find_cases(folder)[:limit]:
        image, target = load_case(case, tumour)
        if target is None or not target.any():
            continue
        click = first_click(target, case_rng(0, case.case_id))
        session = Session(predictor, image.array, image.spacing)
        session.interact([click], [1])
        yield image, target, click, session.mask.copy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="NAME=FOLDER (repeat)")
    parser.add_argument("--gates", default="0,1,1.5,2,3", help="comma-separated gates (default 0,1,1.5,2,3)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many cases per set")
    args = parser.parse_args()
    gates = [float(g) for g in args.gates.split(",")]
    predictor = Predictor.load("default", device="cpu")
    columns = []
    for item in args.data:
        name, folder = item.split("=", 1)
        changes: dict[float, list[float]] = {gate: [] for gate in gates}
        for image, target, click, mask in untrimmed_first_masks(predictor, Path(folder), args.limit):
            before = dice_and_nsd(mask, target, image.spacing)[0]
            for gate in gates:  # on the whole image: the ring is the one the session reads on its grown box
                trimmed = trim_to_lesion_intensity(image.array, mask, click, gate)
                changes[gate].append(dice_and_nsd(trimmed, target, image.spacing)[0] - before)
        columns.append((f"{name} ({len(changes[gates[0]])})", changes))
        print(f"{name}: {len(changes[gates[0]])} cases", file=sys.stderr, flush=True)
    print("| gate | " + " | ".join(title for title, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for gate in gates:
        cells = []
        for _, changes in columns:
            moved = np.asarray(changes[gate])
            cells.append(f"{moved.mean():+.3f} ({np.count_nonzero(moved > 0.01)} up, {np.count_nonzero(moved < -0.01)} down)")
        print(f"| {gate:g} | " + " | ".join(cells) + " |")
    print(f"\n(ring {RING_PX} px in-plane; Dice change per case at the first click, mean over the set)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
