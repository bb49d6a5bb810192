"""`sam3d segment` and Slicer markups files: RAS clicks on an oblique, flipped, non-zero-origin
image land on the right voxels, in-process and through a real server, and the .seg.nrrd lies
on exactly the input grid."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sam3d.cli import attach_negative_coordinates, main
from sam3d.data.io import Volume, read_image, write_image
from sam3d.data.markups import read_markups, write_markups
from sam3d.data.segio import read_segmentation
from sam3d.engine.predictor import Predictor
from sam3d.engine.session import segment
from server_helpers import running_server

SHAPE = (30, 72, 64)
CLICK_KJI = (9.0, 20.0, 44.0)  # off-centre: a mirrored axis would put it elsewhere


@pytest.fixture(scope="module")
def oblique_image(tmp_path_factory) -> Path:
    """Anisotropic spacing, k flipped, i / j swapped and tilted by 20 degrees, origin far from 0."""
    angle = np.deg2rad(20)
    tilt = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = tilt @ np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]])  # columns: i, j, k in LPS
    rng = np.random.default_rng(3)
    array = rng.normal(40, 15, SHAPE)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    array[((k - CLICK_KJI[0]) * 3) ** 2 + ((j - CLICK_KJI[1]) * 0.9) ** 2 + ((i - CLICK_KJI[2]) * 0.7) ** 2 < 64] += 60
    volume = Volume(array.astype(np.int16), spacing=(3.0, 0.9, 0.7), origin=(-112.5, 87.0, 340.0),
                    direction=direction)
    return write_image(volume, tmp_path_factory.mktemp("image") / "oblique.nii.gz")


def run_cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(["segment", *args])
    return status, out.getvalue() + err.getvalue()


def click_ras(image: Path, kji=CLICK_KJI) -> np.ndarray:
    """The RAS point of a voxel index, computed by SimpleITK (independently of sam3d's geometry)."""
    lps = sitk.ReadImage(str(image)).TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]])
    return np.array([-lps[0], -lps[1], lps[2]])


def expected_mask(model: Path, image: Path, kji, box_kji=None) -> np.ndarray:
    volume = read_image(image)
    points = np.zeros((0, 3)) if kji is None else [kji]
    return segment(Predictor.load(model, device="cpu"), volume.array, volume.spacing, points,
                   [] if kji is None else [1], box_kji=box_kji)


def test_segment_puts_the_mask_at_the_clicked_ras_point_in_process(tiny_model, oblique_image, tmp_path):
    ras = click_ras(oblique_image)
    out = tmp_path / "tumor.seg.nrrd"
    status, text = run_cli(str(oblique_image), "--point=" + ",".join(f"{v:.6f}" for v in ras),
                           "--out", str(out), "--model", str(tiny_model), "--device", "cpu")
    assert status == 0, text
    segments, grid = read_segmentation(out)
    assert grid.same_grid(read_image(oblique_image))
    assert [s.name for s in segments] == ["Tumor"]
    mask = segments[0].mask
    assert mask.any()
    np.testing.assert_array_equal(mask, expected_mask(tiny_model, oblique_image, CLICK_KJI))
    # the test can tell a mirrored axis apart: the mirrored click gives another mask
    mirrored = (SHAPE[0] - 1 - CLICK_KJI[0], CLICK_KJI[1], CLICK_KJI[2])
    assert not np.array_equal(mask, expected_mask(tiny_model, oblique_image, mirrored))
    assert f"{int(mask.sum())} voxels" in text


def test_segment_through_the_server_gives_the_same_mask(tiny_model, oblique_image, tmp_path):
    ras = click_ras(oblique_image)
    markups = tmp_path / "clicks.mrk.json"
    write_markups(markups, ras[None], np.array([1]))
    local, remote = tmp_path / "local.seg.nrrd", tmp_path / "remote.seg.nrrd"
    assert run_cli(str(oblique_image), "--points", str(markups), "--out", str(local),
                   "--model", str(tiny_model), "--device", "cpu")[0] == 0
    with running_server("--model", str(tiny_model), "--api-key", "k") as url:
        status, text = run_cli(str(oblique_image), "--points", str(markups), "--out", str(remote),
                               "--server", url, "--api-key", "k")
        assert status == 0, text
        status, text = run_cli(str(oblique_image), "--points", str(markups), "--out", str(remote),
                               "--server", url, "--api-key", "wrong")
        assert status == 2 and "API key" in text
    (local_segment,), _ = read_segmentation(local)
    (remote_segment,), grid = read_segmentation(remote)
    assert grid.same_grid(read_image(oblique_image))
    np.testing.assert_array_equal(remote_segment.mask, local_segment.mask)


@pytest.mark.parametrize("args, message", [
    (["--point=0,0,0"], "lies outside"),
    ([], "give at least one click"),
    (["--point=1,2"], "is not R,A,S"),
    (["--point=1,2,3:x"], "must be + or -"),
])
def test_segment_explains_bad_clicks(oblique_image, tmp_path, args, message):
    status, text = run_cli(str(oblique_image), *args, "--out", str(tmp_path / "x.seg.nrrd"))
    assert status == 2 and message in text


def test_segment_refuses_negative_only_clicks_and_a_wrong_output_name(oblique_image, tmp_path):
    ras = click_ras(oblique_image)
    point = ",".join(f"{v:.4f}" for v in ras)
    status, text = run_cli(str(oblique_image), f"--point={point}:-", "--out", str(tmp_path / "x.seg.nrrd"))
    assert status == 2 and "at least one positive" in text
    status, text = run_cli(str(oblique_image), f"--point={point}", "--out", str(tmp_path / "x.nii.gz"))
    assert status == 2 and ".seg.nrrd" in text


def test_segment_tells_when_the_server_is_not_running(oblique_image, tmp_path):
    from server_helpers import free_port

    ras = click_ras(oblique_image)
    status, text = run_cli(str(oblique_image), "--point=" + ",".join(map(str, ras)), "--out",
                           str(tmp_path / "x.seg.nrrd"), "--server", f"http://127.0.0.1:{free_port()}")
    assert status == 2 and "is `sam3d serve` running" in text


@pytest.mark.parametrize("option", [("--click-pathway", "search"), ("--slice-precision", "fp32")])
def test_segment_refuses_an_engine_option_with_a_server(oblique_image, tmp_path, option):
    """--click-pathway and --slice-precision choose for the in-process engine; a server answers
    as it was started."""
    point = "--point=" + ",".join(f"{v:.6f}" for v in click_ras(oblique_image))
    status, text = run_cli(str(oblique_image), point, *option, "--server", "http://127.0.0.1:9",
                           "--out", str(tmp_path / "x.seg.nrrd"))
    assert status == 2 and f"{option[0]} {option[1]} goes with the in-process model" in text


# -- box prompts --------------------------------------------------------------------------------
BOX_KJI = ((6.0, 14.0, 50.0), (12.0, 27.0, 38.0))  # two opposite corners around the bright blob


def box_arg(image: Path, box_kji=BOX_KJI) -> str:
    return "--box=" + ":".join(",".join(f"{v:.6f}" for v in click_ras(image, kji)) for kji in box_kji)


def test_segment_puts_a_ras_box_on_the_intended_voxels_in_process_and_through_the_server(
        tiny_box_model, oblique_image, tmp_path):
    local, remote = tmp_path / "local.seg.nrrd", tmp_path / "remote.seg.nrrd"
    status, text = run_cli(str(oblique_image), box_arg(oblique_image), "--out", str(local),
                           "--model", str(tiny_box_model), "--device", "cpu")
    assert status == 0 and "0 click(s) and a box" in text, text
    (segment_local,), grid = read_segmentation(local)
    assert grid.same_grid(read_image(oblique_image)) and segment_local.mask.any()
    np.testing.assert_array_equal(segment_local.mask, expected_mask(tiny_box_model, oblique_image, None, BOX_KJI))
    # the box in the mirrored k position gives another mask: a flipped axis would be seen
    mirrored = tuple((SHAPE[0] - 1 - k, j, i) for k, j, i in BOX_KJI)
    assert not np.array_equal(segment_local.mask, expected_mask(tiny_box_model, oblique_image, None, mirrored))
    with running_server("--model", str(tiny_box_model)) as url:
        click = "--point=" + ",".join(map(str, click_ras(oblique_image)))
        status, text = run_cli(str(oblique_image), box_arg(oblique_image), click, "--out", str(remote),
                               "--server", url)
        assert status == 0, text
    (segment_remote,), _ = read_segmentation(remote)
    np.testing.assert_array_equal(segment_remote.mask,
                                  expected_mask(tiny_box_model, oblique_image, CLICK_KJI, BOX_KJI))


@pytest.mark.parametrize("box, message", [
    ("1,2,3", "is not R1,A1,S1:R2,A2,S2"),
    ("1,2,3:4,5,nan", "is not R1,A1,S1:R2,A2,S2"),
    ("0,0,0:1,1,1", "box corner R,A,S = [0.0, 0.0, 0.0] mm lies outside"),
])
def test_segment_explains_bad_boxes(oblique_image, tmp_path, box, message):
    status, text = run_cli(str(oblique_image), f"--box={box}", "--out", str(tmp_path / "x.seg.nrrd"))
    assert status == 2 and message in text, text


def test_segment_refuses_a_second_box(oblique_image, tmp_path):
    status, text = run_cli(str(oblique_image), box_arg(oblique_image), box_arg(oblique_image),
                           "--out", str(tmp_path / "x.seg.nrrd"))
    assert status == 2 and "--box was given 2 times" in text, text


def test_segment_says_when_the_model_has_no_box_prompt(tiny_model, oblique_image, tmp_path):
    status, text = run_cli(str(oblique_image), box_arg(oblique_image), "--out", str(tmp_path / "x.seg.nrrd"),
                           "--model", str(tiny_model), "--device", "cpu")
    assert status == 2 and "'tiny-random' (tiny) has no box prompt" in text, text


# -- markups ----------------------------------------------------------------------------------
def test_markups_round_trip_with_positive_and_negative_lists(tmp_path):
    points = np.array([[1.5, -2.0, 30.0], [4.0, 5.0, -6.25], [7.0, 8.0, 9.0]])
    labels = np.array([1, 0, 1])
    path = tmp_path / "prompts.mrk.json"
    write_markups(path, points, labels)
    names = [m["name"] for m in json.loads(path.read_text())["markups"]]
    assert names == ["SAM3D positive", "SAM3D negative"]
    read_points, read_labels = read_markups(path)
    order = [0, 2, 1]  # positives first, then negatives
    np.testing.assert_allclose(read_points, points[order])
    np.testing.assert_array_equal(read_labels, labels[order])


def test_markups_written_by_slicer_are_read_as_ras_with_their_signs(tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    scene = slicer.vtkMRMLScene()
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    paths = []
    for name, positions, descriptions in (("lesion", [(10.0, -20.0, 30.0), (1.0, 2.0, 3.0)], ["", "negative"]),
                                          ("lesion negative", [(-5.0, 6.0, -7.0)], [""])):
        node = slicer.vtkMRMLMarkupsFiducialNode()
        scene.AddNode(node)
        node.SetName(name)
        for position, description in zip(positions, descriptions):
            index = node.AddControlPoint(*position)
            node.SetNthControlPointDescription(index, description)
        path = tmp_path / f"{name.replace(' ', '_')}.mrk.json"
        storage.SetFileName(str(path))
        assert storage.WriteData(node)  # Slicer's own writer: LPS coordinates in the file
        paths.append(path)
    assert json.loads(paths[0].read_text())["markups"][0]["coordinateSystem"] == "LPS"
    points, labels = read_markups(paths[0])
    np.testing.assert_allclose(points, [(10.0, -20.0, 30.0), (1.0, 2.0, 3.0)])
    np.testing.assert_array_equal(labels, [1, 0])
    points, labels = read_markups(paths[1])  # the file name says "negative" (Slicer stores no name)
    np.testing.assert_allclose(points, [(-5.0, 6.0, -7.0)])
    np.testing.assert_array_equal(labels, [0])


def test_slicer_reads_the_markups_we_write(tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    path = tmp_path / "prompts.mrk.json"
    write_markups(path, np.array([[11.0, -12.0, 13.5]]), np.array([1]))
    scene = slicer.vtkMRMLScene()
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    node = storage.AddNewMarkupsNodeFromFile(str(path), "")
    assert node.GetName() == "SAM3D positive" and node.GetNumberOfControlPoints() == 1
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(0, position)
    np.testing.assert_allclose(position, [11.0, -12.0, 13.5])


def test_markups_errors_name_the_problem(tmp_path):
    from sam3d.data.markups import MarkupsError

    with pytest.raises(MarkupsError, match="not found"):
        read_markups(tmp_path / "missing.mrk.json")
    broken = tmp_path / "broken.mrk.json"
    broken.write_text("{not json")
    with pytest.raises(MarkupsError, match="not a readable JSON"):
        read_markups(broken)
    empty = tmp_path / "empty.mrk.json"
    empty.write_text(json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"position": [1, 2, 3], "positionStatus": "undefined"}]}]}))
    with pytest.raises(MarkupsError, match="no defined control point"):
        read_markups(empty)


# -- coordinates that start with a minus sign ---------------------------------------------------
def test_a_coordinate_value_that_starts_with_a_minus_sign_is_attached_to_its_option():
    argv = ["segment", "ct.nii.gz", "--box", "-26.9,-34,0:-62.9,-8.2,32.5", "--point", "-.5,2,3:-",
            "--point", "1,2,3", "--name", "-x", "--", "--box", "-1,2,3"]
    assert attach_negative_coordinates(argv) == [
        "segment", "ct.nii.gz", "--box=-26.9,-34,0:-62.9,-8.2,32.5", "--point=-.5,2,3:-",
        "--point", "1,2,3", "--name", "-x", "--", "--box", "-1,2,3"]


@pytest.mark.parametrize("option, value, message", [
    ("--box", "-900,2,3:4,5,6", "box corner R,A,S = [-900.0, 2.0, 3.0] mm lies outside"),
    ("--point", "-900,2,3", "click R,A,S = [-900.0, 2.0, 3.0] mm lies outside"),
])
def test_segment_reads_a_negative_r_written_as_its_own_argument(oblique_image, tmp_path, option, value, message):
    """`sam3d segment IMAGE --box R1,A1,S1:R2,A2,S2` as the issue writes it, with R1 negative: the
    value reaches the box check (here: outside the image) instead of argparse's 'expected one
    argument'."""
    status, text = run_cli(str(oblique_image), option, value, "--out", str(tmp_path / "x.seg.nrrd"))
    assert status == 2 and message in text and "expected one argument" not in text, text
