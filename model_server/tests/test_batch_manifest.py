"""The batch manifest (JSON and CSV), lesions from markups files and from prior masks, and the
errors a bad manifest gets - no model needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sam3d.batch.manifest import ManifestError, read_manifest
from sam3d.batch.prompts import lesions_from_markups, lesions_from_mask
from sam3d.cli import main
from sam3d.data.io import Volume, write_image
from sam3d.data.markups import MarkupsError, read_markups, write_markups
from sam3d.data.segio import Segment, write_segmentation


def markup(name: str, points: list[list[float]], system: str = "RAS", descriptions=None) -> dict:
    descriptions = descriptions or [""] * len(points)
    return {"type": "Fiducial", "name": name, "coordinateSystem": system,
            "controlPoints": [{"id": str(n), "position": p, "description": d, "positionStatus": "defined"}
                              for n, (p, d) in enumerate(zip(points, descriptions), 1)]}


def write_document(path, markups: list[dict]) -> None:
    path.write_text(json.dumps({"markups": markups}))


def test_json_manifest_with_inline_clicks_and_markups_files(tmp_path):
    (tmp_path / "cases").mkdir()
    write_markups(tmp_path / "cases" / "b.mrk.json", np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), np.array([1, 0]))
    manifest = tmp_path / "cases" / "manifest.json"
    manifest.write_text(json.dumps([
        {"id": "a", "image": "a.nii.gz", "reference": "/data/a_label.nii.gz", "reference_label": 2,
         "prompts": [{"lesion": 2, "ras": [1, 2, 3], "label": "+"}, {"lesion": 1, "ras": [-4.5, 5, 6], "label": "+"},
                     {"lesion": 2, "ras": [7, 8, 9], "label": "-"}]},
        {"id": "b", "image": "sub/b.nrrd", "prompts": "b.mrk.json"},
    ]))
    a, b = read_manifest(manifest)
    assert (a.row, a.case_id, a.image) == (1, "a", tmp_path / "cases" / "a.nii.gz")
    assert str(a.reference) == "/data/a_label.nii.gz" and a.reference_label == 2
    assert [lesion.number for lesion in a.inline] == [1, 2]  # sorted by lesion number
    np.testing.assert_array_equal(a.inline[0].points_ras, [[-4.5, 5, 6]])
    np.testing.assert_array_equal(a.inline[1].points_ras, [[1, 2, 3], [7, 8, 9]])
    np.testing.assert_array_equal(a.inline[1].labels, [1, 0])
    assert b.markups == tmp_path / "cases" / "b.mrk.json" and b.inline is None
    assert b.image == tmp_path / "cases" / "sub" / "b.nrrd"
    assert [lesion.number for lesion in lesions_from_markups(b.markups)] == [1]


def test_csv_manifest_with_inline_strings(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('id,image,prompts,reference,prior_mask,prior_label\n'
                        'p1,p1.nii.gz,"1:10,-20.5,30:+;1:11,-20,30:-;2:0,0,0:+",p1_ref.nii.gz,,\n'
                        'p2,p2.nii.gz,p2.mrk.json,,prior.nii.gz,2\n')
    p1, p2 = read_manifest(manifest)
    assert [lesion.number for lesion in p1.inline] == [1, 2]
    np.testing.assert_array_equal(p1.inline[0].points_ras, [[10, -20.5, 30], [11, -20, 30]])
    np.testing.assert_array_equal(p1.inline[0].labels, [1, 0])
    assert p1.reference == tmp_path / "p1_ref.nii.gz" and p1.prior_mask is None
    assert p2.markups == tmp_path / "p2.mrk.json" and p2.reference is None
    assert p2.prior_mask == tmp_path / "prior.nii.gz" and p2.prior_label == 2


@pytest.mark.parametrize("entries, message", [
    ([{"id": "a", "prompts": []}], r"row 1: field image is missing"),
    ([{"id": "a", "image": "x"}, {"id": "a", "image": "y"}], r"row 2, field id: 'a' is used by row 1"),
    ([{"id": "../a", "image": "x"}], r"row 1, field id: '../a' cannot name a file"),
    ([{"id": "a", "image": "x", "refrence": "y"}], r"row 1: unknown field\(s\) refrence"),
    ([{"id": "a", "image": "x", "prompts": [{"lesion": 1, "ras": [1, 2], "label": "+"}]}],
     r"row 1, field prompts, click 1: the point must be R, A, S"),
    ([{"id": "a", "image": "x", "prompts": [{"lesion": 1, "ras": [1, 2, 3], "label": "neg"}]}],
     r"row 1, field prompts, click 1: the label must be '\+' .* or '-'"),
    ([{"id": "a", "image": "x", "prompts": [{"lesion": 1, "ras": [1, 2, 3], "label": "-"}]}],
     r"row 1, field prompts: lesion 1 has no positive click"),
    ([{"id": "a", "image": "x", "reference_label": "two"}], r"row 1, field reference_label: expected a label value"),
    ({"id": "a"}, r"must hold a JSON list of cases"),
    ([], r"lists no case"),
])
def test_a_bad_json_manifest_names_the_row_and_field(tmp_path, entries, message):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(entries))
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest)


@pytest.mark.parametrize("text, message", [
    ("id,prompts\na,1:1,2,3:+\n", r"must name the columns id, image \(missing: image\)"),
    ("id,image,notes\na,x,y\n", r"unknown column\(s\) notes"),
    ('id,image,prompts\na,x,"1:1,2:+"\n', r"row 1, field prompts, click 1: the point must be R, A, S"),
    ('id,image,prompts\na,x,"1:1,2,3"\n', r"row 1, field prompts, click 1: '1:1,2,3' is not lesion:R,A,S:sign"),
    ("id,image,prompts\na,x,1:1,2,3:+\n", r"row 1: more cells than columns; quote cells"),
])
def test_a_bad_csv_manifest_names_the_row_and_field(tmp_path, text, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest)


def test_the_command_reports_a_bad_manifest_with_exit_status_2(tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"id": "a", "image": "a.nii.gz"}]))
    assert main(["batch", str(manifest), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "row 1 (a), field prompts: the case has no clicks" in error
    assert main(["batch", str(manifest), "--out", str(tmp_path / "out"), "--propagate-from", "zz"]) == 2
    assert "--propagate-from 'zz' is not a case id" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "none.json"), "--out", str(tmp_path / "out")]) == 2
    assert "none.json not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_each_point_list_is_a_lesion_and_negative_lists_join_their_namesake(tmp_path):
    path = tmp_path / "lesions.mrk.json"
    write_document(path, [
        markup("Lesion 1", [[1, 1, 1], [2, 2, 2]], descriptions=["", "negative"]),
        markup("Lesion 2", [[-3, -3, 3]], system="LPS"),
        markup("Lesion 2 negative", [[4, 4, 4]]),
        markup("Lesion 1-", [[5, 5, 5]]),
    ])
    first, second = lesions_from_markups(path)
    assert (first.name, second.name) == ("lesion 1", "lesion 2")
    np.testing.assert_array_equal(first.points_ras, [[1, 1, 1], [2, 2, 2], [5, 5, 5]])
    np.testing.assert_array_equal(first.labels, [1, 0, 0])
    np.testing.assert_array_equal(second.points_ras, [[3, 3, 3], [4, 4, 4]])  # LPS -> RAS
    np.testing.assert_array_equal(second.labels, [1, 0])


def test_the_slicer_modules_two_lists_are_one_lesion(tmp_path):
    path = tmp_path / "saved.mrk.json"
    write_markups(path, np.array([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]), np.array([1, 0, 1]))
    (lesion,) = lesions_from_markups(path)
    np.testing.assert_array_equal(lesion.points_ras, [[1, 2, 3], [7, 8, 9], [4, 5, 6]])
    np.testing.assert_array_equal(lesion.labels, [1, 1, 0])


def test_markups_without_a_lesion_or_with_an_orphan_negative_list_are_refused(tmp_path):
    path = tmp_path / "bad.mrk.json"
    write_document(path, [markup("Lesion 1", [[1, 1, 1]]), markup("Lesion 2", [[2, 2, 2]]),
                          markup("Other negative", [[3, 3, 3]])])
    with pytest.raises(MarkupsError, match="'Other negative' belongs to no lesion"):
        lesions_from_markups(path)
    write_document(path, [markup("only negative", [[1, 1, 1]])])
    with pytest.raises(MarkupsError, match="holds only negative point lists"):
        lesions_from_markups(path)
    write_document(path, [markup("Lesion 1", [[1, 1, 1]], descriptions=["negative"])])
    with pytest.raises(MarkupsError, match="lesion 1 has no positive click"):
        lesions_from_markups(path)


def roi(name: str, center, size, system: str = "RAS") -> dict:
    """A Slicer Markups ROI as Slicer 5 saves it (an LPS file stores its axes in LPS)."""
    axes = [1, 0, 0, 0, 1, 0, 0, 0, 1] if system == "RAS" else [-1, 0, 0, 0, -1, 0, 0, 0, 1]
    return {"type": "ROI", "name": name, "coordinateSystem": system, "roiType": "Box", "center": center,
            "orientation": axes, "size": size,
            "controlPoints": [{"id": "1", "position": center, "positionStatus": "defined"}]}


def test_a_lesion_may_be_given_a_box_in_json_and_csv_manifests(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"id": "a", "image": "a.nii.gz", "prompts": [
        {"lesion": 1, "ras": [1, 2, 3], "label": "+"},
        {"lesion": 2, "box": [[-10, 5, 0], [10, 25, 0]]},  # a 2D box alone
        {"lesion": 3, "box": [[0, 0, 0], [8, 8, 8]]}, {"lesion": 3, "ras": [4, 4, 4], "label": "-"}]}]))
    (case,) = read_manifest(manifest)
    first, second, third = case.inline
    assert first.box_ras is None
    np.testing.assert_array_equal(second.box_ras, [[-10, 5, 0], [10, 25, 0]])
    assert len(second.labels) == 0
    np.testing.assert_array_equal(third.box_ras, [[0, 0, 0], [8, 8, 8]])
    np.testing.assert_array_equal(third.labels, [0])
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text('id,image,prompts\na,a.nii.gz,"1:box:-10,5,0:10,25,0;1:2,15,0:-"\n')
    (lesion,) = read_manifest(csv_manifest)[0].inline
    np.testing.assert_array_equal(lesion.box_ras, [[-10, 5, 0], [10, 25, 0]])
    np.testing.assert_array_equal(lesion.labels, [0])


@pytest.mark.parametrize("prompts, message", [
    ([{"lesion": 1, "box": [[0, 0, 0]]}], r"click 1|item 1: a box is two opposite corners"),
    ([{"lesion": 1, "box": [[0, 0, 0], [1, 1, "x"]]}], r"item 1: a box is two opposite corners"),
    ([{"lesion": 1, "box": [[0, 0, 0], [1, 1, 1]]}, {"lesion": 1, "box": [[0, 0, 0], [2, 2, 2]]}],
     r"lesion 1 has two boxes"),
])
def test_a_bad_box_in_a_manifest_names_the_row_and_item(tmp_path, prompts, message):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"id": "a", "image": "x", "prompts": prompts}]))
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest)


def test_a_markups_roi_is_its_lesions_box_not_a_click(tmp_path):
    """An ROI named after a lesion's point list is that lesion's box; another ROI is a lesion of
    its own; LPS files are read as RAS; `sam3d segment --points` refuses a file with a box."""
    path = tmp_path / "lesions.mrk.json"
    write_document(path, [markup("Lesion 1", [[1, 1, 1]]), markup("Lesion 1 negative", [[2, 2, 2]]),
                          roi("Lesion 1 box", [-5.0, -6.0, 7.0], [10.0, 4.0, 2.0], system="LPS"),
                          roi("R", [0.0, 0.0, 0.0], [6.0, 6.0, 0.0001])])
    first, second = lesions_from_markups(path)
    np.testing.assert_allclose(first.box_ras, [[0, 4, 6], [10, 8, 8]])  # LPS centre (-5, -6, 7) = RAS (5, 6, 7)
    np.testing.assert_array_equal(first.labels, [1, 0])
    np.testing.assert_allclose(second.box_ras, [[-3, -3, -0.00005], [3, 3, 0.00005]])
    assert second.number == 2 and len(second.labels) == 0
    write_document(path, [markup("SAM3D positive", [[1, 1, 1]]), roi("anything", [0.0, 0.0, 0.0], [4.0, 4.0, 0.0])])
    (only,) = lesions_from_markups(path)  # one list, one ROI: the list's box
    np.testing.assert_allclose(only.box_ras, [[-2, -2, 0], [2, 2, 0]])  # size 0 along S: a 2D box
    with pytest.raises(MarkupsError, match="holds a box \\(ROI 'anything'\\).*--box"):
        read_markups(path)
    write_document(path, [markup("CT", [[1, 1, 1]], descriptions=["lesion 1"]),
                          roi("CT lesion 2 box", [0.0, 0.0, 0.0], [4.0, 4.0, 4.0])])
    clicked, boxed = lesions_from_markups(path)  # one list, one ROI, but the ROI names another lesion
    assert clicked.box_ras is None and len(clicked.labels) == 1
    assert boxed.number == 2 and len(boxed.labels) == 0 and boxed.box_ras is not None
    write_document(path, [roi("flat", [0.0, 0.0, 0.0], [4.0, 0.0, 0.0])])
    with pytest.raises(MarkupsError, match="ROI 'flat' .* is not a box"):
        lesions_from_markups(path)


@pytest.fixture
def oblique_grid() -> Volume:
    direction = Rotation.from_euler("xyz", [8, -12, 20], degrees=True).as_matrix() @ np.diag([1, -1, 1])
    return Volume(np.zeros((12, 30, 34), np.uint8), (2.5, 0.8, 0.9), (-30.0, 12.0, 80.0), direction)


def test_prior_mask_components_become_one_click_lesions_inside_them(tmp_path, oblique_grid):
    label = np.zeros(oblique_grid.shape, np.uint8)
    label[2:10, 3:25, 3:30] = 1  # an organ (not a lesion)
    label[3:8, 5:12, 5:12] = 2
    label[4:9, 15:23, 18:28] = 2
    label[9, 23, 28] = 2  # touches the second only at a corner: the same lesion
    path = write_image(oblique_grid.with_array(label), tmp_path / "prior.nii.gz")
    lesions = lesions_from_mask(path, label=2)
    assert [lesion.number for lesion in lesions] == [1, 2]
    kji = np.rint(np.concatenate([oblique_grid.ras_to_kji(lesion.points_ras) for lesion in lesions])).astype(int)
    assert [label[tuple(p)] for p in kji] == [2, 2]
    assert kji[0][1:].tolist() == [8, 8] and 4 <= kji[0][0] <= 6  # the most interior voxels (in mm)
    assert all(lesion.labels.tolist() == [1] for lesion in lesions)
    assert len(lesions_from_mask(path)) == 1  # every non-zero voxel: one component
    with pytest.raises(ValueError, match="holds no label 3 voxel"):
        lesions_from_mask(path, label=3)


def test_prior_masks_can_be_segmentations(tmp_path, oblique_grid):
    first = np.zeros(oblique_grid.shape, bool)
    first[2:6, 2:8, 2:8] = True
    first[2:6, 20:28, 20:28] = True
    second = np.zeros(oblique_grid.shape, bool)
    second[7:11, 10:16, 10:16] = True
    path = write_segmentation(tmp_path / "prior.seg.nrrd", [Segment("a", first), Segment("b", second)], oblique_grid)
    lesions = lesions_from_mask(path)
    assert len(lesions) == 3
    kji = np.rint(np.concatenate([oblique_grid.ras_to_kji(lesion.points_ras) for lesion in lesions])).astype(int)
    assert all((first | second)[tuple(p)] for p in kji)
