"""How far each lesion stands from its surroundings in the units the default model sees: a box
of FIELD_MM around the lesion's centre scaled by a percentile preset (`percentile`: its own
0.5 / 99.5 percentiles to [0, 1]; or --preset central_percentile), then |median in the lesion -
median in a RING_VOXELS ring around it|. Beside it, the same difference in noise units: on the
field's 3^3 mean, over that mean's noise (`in_noise_units`). Prints one row per dataset (median
and range) and, with --per-case, one per case.

    python benchmarks/lesion_contrast.py --data phantoms-dev=data/phantoms_dev:tumor:8 \
        --data synth-val=data/synth:tumor:16 [--per-case] [--preset central_percentile]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from sam3d.data.datasets import find_cases, load_case, resolve_target_label
from sam3d.data.intensity import PRESETS

FIELD_MM = 96.0  # the lite model's crop: 64 voxels at 1.5 mm
RING_VOXELS = 3


def in_noise_units(field: np.ndarray) -> np.ndarray:
    """The field's 3^3 mean over that mean's noise, read from its differences between neighbours
    along the last axis: their median absolute value x 1.4826 / sqrt 2 is a robust spread, and
    x sqrt 3 makes it the mean's own for white noise (neighbouring means share 2/3 of their voxels)."""
    smoothed = ndimage.uniform_filter(field.astype(np.float64), size=3, mode="nearest")
    noise = np.median(np.abs(np.diff(smoothed, axis=-1))) * 1.4826 * np.sqrt(1.5)
    return smoothed / max(noise, 1e-12)


def lesion_contrast(image: np.ndarray, lesion: np.ndarray, spacing,
                    preset: str = "percentile") -> tuple[float, float, float]:
    """(|lesion median - ring median|, ring std) after ``preset`` on the lesion's field, and that
    difference in noise units (``in_noise_units``)."""
    centre = np.argwhere(lesion).mean(axis=0).astype(int)
    half = (FIELD_MM / 2 / np.asarray(spacing, dtype=float)).astype(int)
    field = tuple(slice(max(c - h, 0), c + h) for c, h in zip(centre, half))
    scaled = PRESETS[preset].apply(image[field].astype(np.float32))
    inside = lesion[field]
    ring = ndimage.binary_dilation(inside, iterations=RING_VOXELS) & ~inside
    in_noise = in_noise_units(scaled)
    return (abs(float(np.median(scaled[inside])) - float(np.median(scaled[ring]))), float(np.std(scaled[ring])),
            abs(float(np.median(in_noise[inside])) - float(np.median(in_noise[ring]))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, metavar="NAME=DIR:LABEL:CASES",
                        help="a dataset, its target label (name or value) and how many of its first cases")
    parser.add_argument("--per-case", action="store_true")
    parser.add_argument("--preset", default="percentile", choices=[n for n, p in PRESETS.items() if p.kind == "percentile"])
    args = parser.parse_args()
    print("| set | cases | contrast, median (range) | ring std (range) | in noise units, median (range) |")
    print("|---|---|---|---|---|")
    for spec in args.data:
        name, rest = spec.split("=", 1)
        folder, label, count = rest.rsplit(":", 2)
        target_label = resolve_target_label(folder, label)
        rows = []
        for case in find_cases(folder)[: int(count)]:
            image, target = load_case(case, target_label)
            contrast, ring_std, in_noise = lesion_contrast(image.array, target.astype(bool), image.spacing, args.preset)
            rows.append((case.case_id, contrast, ring_std, in_noise))
            if args.per_case:
                print(f"| {name} {case.case_id} | 1 | {contrast:.3f} | {ring_std:.3f} | {in_noise:.1f} |")
        contrasts, stds, noise_units = (np.array([r[k] for r in rows]) for k in (1, 2, 3))
        print(f"| {name} | {len(rows)} | {np.median(contrasts):.3f} ({contrasts.min():.3f}-{contrasts.max():.3f}) "
              f"| {stds.min():.3f}-{stds.max():.3f} | {np.median(noise_units):.1f} "
              f"({noise_units.min():.1f}-{noise_units.max():.1f}) |")


if __name__ == "__main__":
    main()
