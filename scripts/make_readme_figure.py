"""The README's first segmentation: a phantom, one click on its tumor, `sam3d segment`, a picture.

    .venv/bin/python scripts/make_readme_figure.py [--out Resources/Screenshots/segment_phantom.png]

Runs the real command line (`sam3d segment --model small-phantoms` in a subprocess) on a generated
phantom, reads the `.seg.nrrd` back and draws the clicked axial slice with the segment and the
phantom's label.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from sam3d.data.clicks import centre_click  # noqa: E402
from sam3d.data.io import read_image  # noqa: E402
from sam3d.data.phantoms import write_dataset  # noqa: E402
from sam3d.data.segio import read_segmentation  # noqa: E402

TUMOR = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="Resources/Screenshots/segment_phantom.png")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_dataset(folder / "phantoms", cases=1, seed=args.seed)
        image_path = next((folder / "phantoms" / "imagesTr").glob("*.nii.gz"))
        label_path = next((folder / "phantoms" / "labelsTr").glob("*.nii.gz"))
        image, label = read_image(image_path), read_image(label_path)
        components, count = ndimage.label(label.array == TUMOR)
        largest = 1 + int(np.argmax(ndimage.sum(np.ones_like(components), components, range(1, count + 1))))
        tumor = components == largest
        click_kji = centre_click(tumor, spacing=image.spacing)
        ras = image.kji_to_ras(np.asarray(click_kji, dtype=float)[None])[0]
        point = ",".join(f"{v:.1f}" for v in ras)
        out_seg = folder / "phantom.seg.nrrd"
        command = [sys.executable, "-m", "sam3d", "segment", str(image_path), f"--point={point}:+",
                   "--model", "small-phantoms", "--out", str(out_seg)]
        print("$ sam3d segment", image_path.name, f"--point={point}:+", "--model small-phantoms --out phantom.seg.nrrd")
        subprocess.run(command, check=True)
        segments, _ = read_segmentation(out_seg)
        mask = segments[0].mask
    dice = 2 * (mask & tumor).sum() / (mask.sum() + tumor.sum())
    print(f"Dice against the clicked tumor: {dice:.3f}")
    k = int(round(click_kji[0]))
    view = np.clip(image.array[k].astype(float), -160, 240)
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for axis, title in zip(axes, ("input and click", f"segment (red) vs. label (yellow), Dice {dice:.2f}")):
        axis.imshow(view, cmap="gray")
        axis.plot(click_kji[2], click_kji[1], "+", color="lime", markersize=14, markeredgewidth=2)
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    axes[1].contour(tumor[k], levels=[0.5], colors="yellow", linewidths=1.2)
    axes[1].contour(mask[k], levels=[0.5], colors="red", linewidths=1.2)
    figure.suptitle(f"sam3d segment {image_path.name} --point={point}:+ (slice k={k})", fontsize=9)
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
