"""`sam3d web` in a real headless Chromium against a real `sam3d serve`: click on the phantom's
tumor in the axial view, wait for the overlay, check the saved segmentation against the phantom
label, then a negative click and an undo. Screenshots: Testing/artefacts/web/."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slicer_fixtures import needs_trained_model
from web_fixtures import (axial_image, chrome, click_at, missing_web_parts, ras_of_voxels, read_segment_on,
                          running_web_app, screenshot, show_axial_slice, state, view_xyz, wait_for, wait_for_views)

pytestmark = pytest.mark.skipif(missing_web_parts() is not None, reason=str(missing_web_parts()))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture
def phantom_files(tmp_path):
    """The phantom the small-phantoms model's quality test uses first (the generator's drawn size)."""
    from sam3d.data.io import write_image
    from sam3d.data.phantoms import generate_case
    image, label = generate_case(101, shape=None)
    return write_image(image, tmp_path / "phantom.nrrd"), write_image(label, tmp_path / "phantom-label.nrrd")


def _on_slice(driver, ras: np.ndarray) -> np.ndarray:
    """The points of ``ras`` that lie on the axial slice shown (within half a slice)."""
    return ras[np.abs(view_xyz(driver, ras)[:, 2]) < 0.5]


def _save_segmentation(driver, output_dir, label_path) -> np.ndarray:
    before = state(driver, "sam3d_status")
    driver.find_element("id", "sam3d-save-seg").click()
    wait_for(driver, lambda: state(driver, "sam3d_status") != before, 30, "the segmentation to be saved")
    assert "Saved" in state(driver, "sam3d_status"), state(driver, "sam3d_status")
    return read_segment_on(label_path, output_dir / "phantom.seg.nrrd")


@needs_trained_model
def test_click_negative_click_and_undo_in_browser(server_url, phantom_files, tmp_path, record_property):
    import SimpleITK as sitk
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    image_path, label_path = phantom_files
    label_image = sitk.ReadImage(str(label_path))
    truth = sitk.GetArrayFromImage(label_image) == 2
    output_dir = tmp_path / "out"
    with running_web_app(server_url, str(image_path), output_dir=output_dir) as url:
        driver = chrome()
        try:
            driver.get(url)
            wait_for_views(driver)
            screenshot(driver, "01_loaded")

            # Scroll the axial view to the tumor's centre; click the tumor voxel there nearest it.
            tumor = ras_of_voxels(label_image, np.argwhere(truth))
            show_axial_slice(driver, tumor[:, 2].mean())
            tumor = _on_slice(driver, tumor)
            assert len(tumor), "the axial view does not show the tumor"
            target = tumor[np.argmin(np.linalg.norm(tumor - tumor.mean(axis=0), axis=1))]

            driver.find_element("id", "sam3d-positive").click()
            wait_for(driver, lambda: state(driver, "sam3d_mode") == "positive", 10, "place mode")
            click_at(driver, target)
            wait_for(driver, lambda: state(driver, "sam3d_done") >= 1, 120, "the first click's result")
            assert not state(driver, "sam3d_error"), state(driver, "sam3d_status")
            assert state(driver, "sam3d_voxels") > 0
            screenshot(driver, "02_positive_click")
            first = _save_segmentation(driver, output_dir, label_path)
            dice = _dice(first, truth)
            record_property("web_dice_one_click", round(float(dice), 3))
            assert dice > 0.5, f"Dice {dice:.3f} after one click in the browser"

            # A negative click on a segmented voxel outside the tumor (else on the segment's rim: a
            # negative click outside the segment removes nothing, engine/click_reach.py).
            leak = _on_slice(driver, ras_of_voxels(label_image, np.argwhere(first & ~truth)))
            if not len(leak):
                from scipy import ndimage
                rim = first & ~ndimage.binary_erosion(first)
                leak = _on_slice(driver, ras_of_voxels(label_image, np.argwhere(rim)))
            negative = leak[np.argmin(np.linalg.norm(leak - target, axis=1))]
            driver.find_element("id", "sam3d-negative").click()
            wait_for(driver, lambda: state(driver, "sam3d_mode") == "negative", 10, "negative place mode")
            click_at(driver, negative)
            wait_for(driver, lambda: state(driver, "sam3d_done") >= 2, 120, "the negative click's result")
            assert not state(driver, "sam3d_error"), state(driver, "sam3d_status")
            screenshot(driver, "03_negative_click")
            second = _save_segmentation(driver, output_dir, label_path)
            assert not np.array_equal(second, first), "the negative click changed nothing"
            assert second.sum() <= first.sum()

            # Undo from the keyboard (the module's Ctrl+Z): the first click's voxels, bit for bit.
            ActionChains(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
            wait_for(driver, lambda: state(driver, "sam3d_done") >= 3, 60, "the undo")
            screenshot(driver, "04_undo")
            assert np.array_equal(_save_segmentation(driver, output_dir, label_path), first)
            driver.find_element("id", "sam3d-save-points").click()
            wait_for(driver, lambda: (output_dir / "phantom.mrk.json").is_file(), 30, "the saved points")
            points = json.loads((output_dir / "phantom.mrk.json").read_text())["markups"][0]["controlPoints"]
            assert [point["description"] for point in points] == ["lesion 1"]
            assert axial_image(driver).rect["width"] > 0
        finally:
            driver.quit()
