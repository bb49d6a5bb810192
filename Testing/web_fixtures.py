"""The web app (``sam3d web``) in a real headless Chromium: helpers for its tests and benchmark.

The app runs in its own environment (``.venv-web``, trame-slicer's slicer-core; see
docs/WEB.md) as a subprocess; the browser is Debian's ``chromium`` driven by selenium from this
environment. Screenshots go to ``Testing/artefacts/web/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WEB_PYTHON = Path(os.environ.get("SAM3D_WEB_PYTHON", REPO / ".venv-web" / "bin" / "python"))
ARTEFACTS = REPO / "Testing" / "artefacts" / "web"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1280, 800)


def missing_web_parts() -> Optional[str]:
    """Why the browser tests cannot run here (None: they can)."""
    if not WEB_PYTHON.is_file():
        return f"the web environment {WEB_PYTHON} is missing (bash scripts/setup.sh builds it)"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium / chromedriver are not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e './model_server[test]')"
    return None


@contextlib.contextmanager
def running_web_app(server_url: str, *images: str, output_dir: Path, startup_timeout: float = 120.0,
                    extra: Tuple[str, ...] = ()) -> Iterator[str]:
    """``sam3d web --server URL --port <free> IMAGE...`` (in the web environment) until the block
    ends; yields its URL once the page is served."""
    from server_helpers import free_port, running_process
    port = free_port()
    command = [str(WEB_PYTHON), "-m", "sam3d_web", "--server", server_url, "--port", str(port),
               "--output-dir", str(output_dir), *extra, *images]
    env = {**os.environ, "PYTHONPATH": str(REPO / "web")}
    env.pop("DISPLAY", None)
    url = f"http://127.0.0.1:{port}/"
    with running_process(command, url, env=env, startup_timeout=startup_timeout, poll_seconds=0.2):
        yield url


def chrome():
    """Headless Chromium at a fixed window size and device scale 1 (screen pixels = CSS pixels)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def state(driver, name: str):
    """A value of the page's trame state (what the app shows)."""
    return driver.execute_script(f"const t = window.trame; return t && t.state ? t.state.get({name!r}) : null")


def wait_for(driver, condition, timeout: float = 60.0, what: str = "the page") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            status = state(driver, "sam3d_status")
            raise TimeoutError(f"waited {timeout:g} s for {what}; app status: {status!r}")
        time.sleep(0.05)


def axial_image(driver):
    """The <img> the axial (Red) view streams into (the largest one in the default layout)."""
    from selenium.webdriver.common.by import By
    images = driver.find_elements(By.CSS_SELECTOR, "img.image-display-area")
    return max(images, key=lambda image: image.rect["width"] * image.rect["height"])


def wait_for_views(driver, timeout: float = 60.0) -> None:
    """Until the axial view has its on-screen size (the server renders at the element's size)."""
    def ready() -> bool:
        views = state(driver, "sam3d_views") or {}
        if "Red" not in views or not driver.find_elements("css selector", "img.image-display-area"):
            return False
        rect = axial_image(driver).rect
        return abs(views["Red"]["size"][0] - rect["width"]) <= 2 and abs(views["Red"]["size"][1] - rect["height"]) <= 2
    wait_for(driver, ready, timeout, "the slice views")


def ras_of_voxels(image, kji: np.ndarray) -> np.ndarray:
    """World RAS of (k, j, i) voxel indices of a SimpleITK image (LPS physical space)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = (np.asarray(image.GetOrigin())
           + (direction @ (np.asarray(kji, float)[:, ::-1] * np.asarray(image.GetSpacing())).T).T)
    return lps * np.array([-1.0, -1.0, 1.0])


def view_xyz(driver, ras: np.ndarray) -> np.ndarray:
    """Axial view XY pixels (origin bottom left) and slice distance of world points ``ras``
    (n x 3), from the view's XY -> RAS matrix the app publishes."""
    xy_to_ras = np.array(state(driver, "sam3d_views")["Red"]["xy_to_ras"]).reshape(4, 4)
    points = np.c_[np.atleast_2d(ras), np.ones(len(np.atleast_2d(ras)))]
    return np.linalg.solve(xy_to_ras, points.T).T[:, :3]


def show_axial_slice(driver, s: float) -> None:
    """Move the axial view to world height ``s`` with trame-slicer's slice slider (its state)."""
    key = driver.execute_script(
        "return Object.keys(window.trame.state.state).find(k => k.startsWith('Red') && k.endsWith('value')"
        " && !k.includes('min') && !k.includes('max'))")
    assert key, "the axial view's slice slider is not in the page"
    driver.execute_script(f"window.trame.state.set({key!r}, {float(s)!r})")
    wait_for(driver, lambda: abs(view_xyz(driver, np.array([[0.0, 0.0, s]]))[0, 2]) < 0.5, 30, "the slice")


def screen_offset(driver, ras) -> Tuple[float, float]:
    """(dx, dy) from the axial image's centre to world point ``ras``."""
    x, y, _ = view_xyz(driver, np.asarray(ras, float))[0]
    width, height = state(driver, "sam3d_views")["Red"]["size"]
    rect = axial_image(driver).rect
    return (x * rect["width"] / width - rect["width"] / 2,
            (height - y) * rect["height"] / height - rect["height"] / 2)


def click_at(driver, ras) -> None:
    """A left click on the axial view at world point ``ras`` (real mouse events)."""
    from selenium.webdriver.common.action_chains import ActionChains
    dx, dy = screen_offset(driver, ras)
    ActionChains(driver).move_to_element_with_offset(axial_image(driver), int(round(dx)), int(round(dy))) \
        .pause(0.2).click().perform()


def screenshot(driver, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def read_segment_on(label_path: Path, segmentation_path: Path) -> np.ndarray:
    """The (single-layer) voxels of a saved .seg.nrrd resampled onto a label image's grid."""
    import SimpleITK as sitk
    reference = sitk.ReadImage(str(label_path))
    segmentation = sitk.ReadImage(str(segmentation_path))
    if segmentation.GetNumberOfComponentsPerPixel() > 1:
        segmentation = sitk.VectorIndexSelectionCast(segmentation, 0)
    resampled = sitk.Resample(segmentation, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled) > 0

