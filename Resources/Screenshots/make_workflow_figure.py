"""Make Resources/Screenshots/workflow.png: the module's click workflow, from a real run.

The module's Logic (slicer-core MRML nodes, no Slicer application) talks to a real
`sam3d serve` running the bundled small-phantoms model on a synthetic CT phantom (the first phantom of
the quality tests): a positive click on the tumor, then a negative click in the middle of the
largest leak, each panel showing the segment the server returned and its Dice against the
phantom's truth.

    .venv/bin/python Resources/Screenshots/make_workflow_figure.py [--out PATH] [--seed N] [--model M]

Uses the bundled small-phantoms model (model_server/sam3d/models/small_phantoms.pt) unless ``--model`` names
another checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "Testing"), str(REPO / "SAM3DPrompt"), str(REPO / "model_server" / "tests")]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots" / "workflow.png")
    parser.add_argument("--seed", type=int, default=101, help="phantom seed")
    parser.add_argument("--model", default="small-phantoms",
                        help="a bundled model's name (the figure was made with the phantom model) or a checkpoint path")
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicer
    from matplotlib.colors import ListedColormap
    from scipy import ndimage

    from sam3d.model.checkpoint import model_path
    from server_helpers import running_server
    from slicer_fixtures import load_phantom
    from SAM3DPromptLib.client import SAM3DClient
    from SAM3DPromptLib.geometry import kji_to_ras
    from SAM3DPromptLib.logic import PromptLogic
    from SAM3DPromptLib.mrml_io import ijk_to_ras_matrix, read_segment_mask

    if not model_path(args.model).is_file():
        print(f"{model_path(args.model)} does not exist: pass --model with a bundled model's name "
              "or a checkpoint path.", file=sys.stderr)
        return 2

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)
    work = Path(tempfile.mkdtemp(prefix="sam3d-figure-"))
    image_node, label_node, _, _ = load_phantom(scene, work, seed=args.seed, shape=None)
    image = slicer.util.arrayFromVolume(image_node)
    truth = slicer.util.arrayFromVolume(label_node) == 2
    tumor = np.argwhere(truth)
    centre = tumor[np.argmin(np.linalg.norm(tumor - tumor.mean(axis=0), axis=1))]
    to_ras = ijk_to_ras_matrix(image_node)

    with running_server("--model", args.model, "--device", "cpu") as url:
        client = SAM3DClient(url, timeout=300)
        model = client.capabilities()["model"]
        logic = PromptLogic(client, scene=scene)
        segmentation = logic.create_segmentation(image_node)
        logic.set_target(image_node, segmentation, logic.add_lesion_segment(segmentation))
        logic.click(kji_to_ras([centre], to_ras)[0])
        first = read_segment_mask(segmentation, logic.segment_id, image_node)
        leaks, count = ndimage.label(first & ~truth)
        negative = None
        second = first
        if count:
            largest = np.argwhere(leaks == np.argmax(np.bincount(leaks.ravel())[1:]) + 1)
            negative = largest[np.argmin(np.linalg.norm(largest - largest.mean(axis=0), axis=1))]
            logic.click(kji_to_ras([negative], to_ras)[0], positive=False)
            second = read_segment_mask(segmentation, logic.segment_id, image_node)
        logic.close()

    panels = [("1. Positive click on the tumor", None, None, [(centre, "#43a047")]),
              (f"2. Segment after one click (Dice {_dice(first, truth):.2f})", first, None,
               [(centre, "#43a047")])]
    if negative is not None:
        panels.append((f"3. Negative click on a leak (Dice {_dice(second, truth):.2f})", second, first,
                       [(centre, "#43a047"), (negative, "#e53935")]))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    for axis, (title, mask, before, clicks) in zip(np.atleast_1d(axes), panels):
        k = int(clicks[-1][0][0])
        axis.imshow(image[k], cmap="gray", vmin=-160, vmax=240, origin="lower")
        axis.contour(truth[k], levels=[0.5], colors=["#29b6f6"], linewidths=1.0)
        if mask is not None:
            axis.imshow(np.ma.masked_where(~mask[k], mask[k]), cmap=ListedColormap(["#fdd835"]),
                        alpha=0.5, origin="lower")
        if before is not None:  # the segment before the correction, dashed
            axis.contour(before[k], levels=[0.5], colors=["#fdd835"], linewidths=1.0, linestyles="dashed")
        for point, colour in clicks:
            if int(point[0]) == k:
                axis.plot(point[2], point[1], "o", ms=9, mfc=colour, mec="white", mew=1.5)
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    figure.suptitle("SAM3D Prompt: start `sam3d serve`, connect, click, correct, save\n"
                    f"model {model['name']}, phantom {args.seed}; blue: true tumor border, "
                    "yellow: segment (dashed: before the negative click)", fontsize=10)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
