"""The engine's first and next click in process (no server, no HTTP): what the server's engine
time is made of, on a machine that lacks the server's file-format packages (SimpleITK). A
synthetic CT-like volume holds a small lesion (its first click is answered on a second, finer
crop: ``engine/crop_scale.py``) and a large one. Prints a Markdown table.

    python benchmarks/bench_engine.py --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model_server"))

from sam3d.engine.predictor import Predictor  # noqa: E402
from sam3d.engine.session import Session  # noqa: E402

SPACING = (2.5, 0.75, 0.75)  # kji mm, a chest CT's


def volume_with_lesions(shape: tuple[int, int, int], rng) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Soft tissue (40 HU) with noise, a 12 mm and a 45 mm lesion (90 HU); their centres (kji)."""
    volume = rng.normal(40.0, 12.0, shape).astype(np.float32)
    grid = np.indices(shape, dtype=np.float32)
    centres = {"small (12 mm)": np.array([shape[0] / 2, shape[1] / 3, shape[2] / 3]),
               "large (45 mm)": np.array([shape[0] / 2, 2 * shape[1] / 3, 2 * shape[2] / 3])}
    for (name, centre), diameter in zip(centres.items(), (12.0, 45.0)):
        distance = np.sqrt(sum(((grid[a] - centre[a]) * SPACING[a]) ** 2 for a in range(3)))
        volume[distance <= diameter / 2] += 50.0
    return volume.astype(np.int16), centres


def timed_ms(call) -> float:
    start = time.perf_counter()
    call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="61,512,512")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    predictor = Predictor.load(args.model, device=args.device)
    shape = tuple(int(v) for v in args.shape.split(","))
    volume, centres = volume_with_lesions(shape, np.random.default_rng(0))
    rows = []
    for name, centre in centres.items():
        Session(predictor, volume, SPACING).interact([centre], [1])  # warm-up (kernels, allocator)
        first, after, spacing = [], [], None
        for _ in range(args.repeats):
            session = Session(predictor, volume, SPACING)  # nothing cached: the encoder runs
            first.append(timed_ms(lambda: session.interact([centre], [1])))
            after.append(timed_ms(lambda: session.interact([centre + np.array([0.0, 3.0, 3.0])], [1])))
            spacing = session.crop_spacing_mm
        rows.append((name, statistics.median(first), statistics.median(after), spacing))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"engine in process, {args.model} on {device}, torch {torch.__version__}, volume {shape}, "
          f"median of {args.repeats}\n")
    print("| lesion | first click | next click | crop spacing kept |\n|---|---|---|---|")
    for name, first_ms, next_ms, spacing in rows:
        print(f"| {name} | {first_ms:.0f} ms | {next_ms:.0f} ms | {spacing} mm |")


if __name__ == "__main__":
    main()
