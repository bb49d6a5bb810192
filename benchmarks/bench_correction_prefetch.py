"""Correction clicks with and without the 2D windows embedded ahead in idle time
(``Session.prefetch_corrections``, what `sam3d serve` does between requests), in process, on a
dataset under the seeded click protocol of `sam3d evaluate`. Each case runs twice: once without
idle work, once with all of it done before each correction (a reader who looks at the mask
first). Prints a Markdown table: correction time (median, 90th percentile) each way, the ratio,
and whether every mask was the same.

    python benchmarks/bench_correction_prefetch.py --data data/chest_dev2 --max-cases 16
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "model_server"))

from sam3d.data.datasets import find_cases, load_case, resolve_target_label  # noqa: E402
from sam3d.engine.predictor import IdleStep, Predictor  # noqa: E402
from sam3d.engine.session import Session  # noqa: E402
from sam3d.evaluate.simulation import evaluate_case  # noqa: E402


def run_case(predictor: Predictor, case_id: str, volume: np.ndarray, spacing, target: np.ndarray, clicks: int,
             seed: int, ahead: bool) -> tuple[list[float], list[np.ndarray]]:
    """`sam3d evaluate`'s protocol on one case (``evaluate_case``) -> (correction times in ms, the
    mask after each interaction); with ``ahead``, all idle work done after each interaction."""
    masks = []

    def look_at_the_mask(session: Session) -> None:
        masks.append(session.mask.copy())
        while ahead and session.prefetch_corrections() is IdleStep.MORE:
            pass

    result = evaluate_case(predictor, case_id, volume, spacing, target, clicks, seed, classical=False,
                           after_each=look_at_the_mask)
    return result.timing_ms[1:], masks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", required=True, help="dataset folder (MSD / nnU-Net layout)")
    parser.add_argument("--target-label", default="tumor")
    parser.add_argument("--max-cases", type=int, default=16)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, device="cpu")
    label = resolve_target_label(args.data, args.target_label)
    times: dict[bool, list[float]] = {False: [], True: []}
    same = cases = 0
    for case in find_cases(args.data)[: args.max_cases]:
        image, mask = load_case(case, label)
        masks = {}
        for ahead in (False, True):
            case_times, masks[ahead] = run_case(predictor, case.case_id, image.array, image.spacing, mask,
                                                args.clicks, args.seed, ahead)
            times[ahead] += case_times
        cases += 1
        same += len(masks[False]) == len(masks[True]) and all((a == b).all() for a, b in zip(masks[False], masks[True]))
        print(f"{case.case_id}: done", file=sys.stderr, flush=True)
    without, with_ahead = (np.median(times[a]) for a in (False, True))
    print(f"{args.data}, {cases} cases, {len(times[False])} corrections, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads\n")
    print("| correction click | without idle work | with the windows embedded ahead |\n|---|---|---|")
    print(f"| median | {without:.0f} ms | {with_ahead:.0f} ms ({without / with_ahead:.1f}x faster) |")
    print(f"| 90th percentile | {np.percentile(times[False], 90):.0f} ms | {np.percentile(times[True], 90):.0f} ms |")
    print(f"| cases whose masks are the same after every click | {same} / {cases} | |")
    return 0 if same == cases else 1


if __name__ == "__main__":
    sys.exit(main())
