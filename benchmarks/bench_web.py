"""Time from a click in the browser to the segment overlay on screen, with `sam3d web` in a real
headless Chromium against `sam3d serve` on this machine. Prints a Markdown table.

    python benchmarks/bench_web.py                                  # default model, 5 next clicks
    python benchmarks/bench_web.py --repeats 10 --screenshot Resources/Screenshots/web_app.png

Each measurement starts just before the mouse click is sent to the page and ends when the axial
view's image in the page has changed after the app applied the server's reply (the new frame
carries the overlay). "result in scene" ends when the page's state says the reply was written
into the segmentation node. The first click uploads the volume and runs the image encoder; the
next clicks add positive points on other tumor voxels of the same slice (each one more click of
the same lesion, at least 12 pixels from the others so that it places a point, not picks one).
With --screenshot the page after the first click is saved there (the README's picture).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "Testing"), str(REPO / "model_server" / "tests")]  # web_fixtures, server_helpers

from web_fixtures import (chrome, click_at, missing_web_parts, ras_of_voxels, running_web_app,  # noqa: E402
                          show_axial_slice, state, view_xyz, wait_for, wait_for_views)
from server_helpers import running_server  # noqa: E402

from sam3d.data.io import write_image  # noqa: E402
from sam3d.data.phantoms import TUMOR_LABEL, generate_case  # noqa: E402


def _axial_src(driver) -> str:
    return driver.execute_script(
        "const images = [...document.querySelectorAll('img.image-display-area')];"
        "images.sort((a, b) => b.width * b.height - a.width * a.height); return images[0].src;")


def timed_click(driver, ras) -> tuple:
    """(click -> result in scene, click -> overlay on screen) in ms."""
    done = state(driver, "sam3d_done")
    start = time.perf_counter()
    click_at(driver, ras)
    wait_for(driver, lambda: state(driver, "sam3d_done") > done, 120, "the click's result")
    in_scene = time.perf_counter()
    frame = _axial_src(driver)
    wait_for(driver, lambda: _axial_src(driver) != frame, 30, "the overlay frame")
    shown = time.perf_counter()
    if state(driver, "sam3d_error"):
        raise RuntimeError(state(driver, "sam3d_status"))
    return 1000 * (in_scene - start), 1000 * (shown - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--repeats", type=int, default=5, help="next clicks timed")
    parser.add_argument("--screenshot", type=Path, help="save the page after the first click here")
    args = parser.parse_args()
    if missing_web_parts():
        sys.exit(f"bench_web: {missing_web_parts()}")
    image, label = generate_case(args.seed, shape=None)
    with tempfile.TemporaryDirectory() as folder, running_server("--model", args.model) as server_url:
        folder = Path(folder)
        image_path = write_image(image, folder / "phantom.nrrd")
        with running_web_app(server_url, str(image_path), output_dir=folder / "out") as url:
            driver = chrome()
            try:
                driver.get(url)
                wait_for_views(driver)
                import SimpleITK as sitk
                label_path = write_image(label, folder / "label.nrrd")
                tumor = ras_of_voxels(sitk.ReadImage(str(label_path)),
                                      np.argwhere(sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) == TUMOR_LABEL))
                show_axial_slice(driver, tumor[:, 2].mean())
                tumor = tumor[np.abs(view_xyz(driver, tumor)[:, 2]) < 0.5]
                order = np.argsort(np.linalg.norm(tumor - tumor.mean(axis=0), axis=1))
                driver.find_element("id", "sam3d-positive").click()
                wait_for(driver, lambda: state(driver, "sam3d_mode") == "positive", 10, "place mode")
                first = timed_click(driver, tumor[order[0]])
                time.sleep(1.0)
                if args.screenshot:
                    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                    driver.save_screenshot(str(args.screenshot))
                # Next clicks away from the first point (a click on a point picks it up instead).
                pixels = view_xyz(driver, tumor)[:, :2]
                placed = [order[0]]
                nexts = []
                for _ in range(args.repeats):
                    pick = next(i for i in order if min(np.linalg.norm(pixels[i] - pixels[p]) for p in placed) > 12)
                    placed.append(pick)
                    nexts.append(timed_click(driver, tumor[pick]))
            finally:
                driver.quit()
    print(f"`sam3d web` in headless Chromium, {platform.processor() or platform.machine()}, "
          f"model {args.model}, phantom seed {args.seed} {image.array.shape}\n")
    print("| click | result in scene (ms) | overlay on screen (ms) |")
    print("|---|---:|---:|")
    print(f"| first (upload + encoder) | {first[0]:.0f} | {first[1]:.0f} |")
    print(f"| next, median of {len(nexts)} | {statistics.median(t[0] for t in nexts):.0f} | "
          f"{statistics.median(t[1] for t in nexts):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
