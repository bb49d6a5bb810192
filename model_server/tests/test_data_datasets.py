"""Dataset readers (MSD / nnU-Net raw, KiTS21, image / label pairs) and seeded splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam3d.data.datasets import (
    Case,
    dataset_identity,
    find_cases,
    find_target_label,
    label_names,
    load_case,
    make_splits,
    read_splits,
    resolve_target_label,
    write_splits,
)
from sam3d.data.io import Volume, write_image
from sam3d.data.segio import Segment, write_segmentation

SHAPE = (6, 10, 12)


def case_volumes(seed: int) -> tuple[Volume, Volume]:
    """A tiny image / label pair on an off-origin grid: label 1 organ, 2 tumor (seed-dependent)."""
    rng = np.random.default_rng(seed)
    direction = np.diag([-1.0, 1.0, 1.0])
    image = Volume(rng.integers(-100, 100, SHAPE).astype(np.int16), (3.0, 0.8, 0.8), (5.0, -7.0, 11.0), direction)
    label = np.zeros(SHAPE, np.uint8)
    label[1:5, 2:8, 2:10] = 1
    label[2:4, 3:3 + 1 + seed % 4, 4:7] = 2
    return image, image.with_array(label)


def write_msd(root, ids, *, channel_suffix: bool, labels: dict, file_ending: str | None = ".nii.gz"):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for n, case_id in enumerate(ids):
        image, label = case_volumes(n)
        write_image(image, root / "imagesTr" / (f"{case_id}_0000.nii.gz" if channel_suffix else f"{case_id}.nii.gz"))
        write_image(label, root / "labelsTr" / f"{case_id}.nii.gz")
    description = {"labels": labels, "numTraining": len(ids)}
    if file_ending:
        description["file_ending"] = file_ending
    (root / "dataset.json").write_text(json.dumps(description))


def test_nnunet_layout_with_channel_suffix(tmp_path):
    write_msd(tmp_path, ["b_002", "a_001"], channel_suffix=True, labels={"background": 0, "organ": 1, "tumor": 2})
    image, _ = case_volumes(9)
    write_image(image, tmp_path / "imagesTr" / "a_001_0001.nii.gz")  # a second channel: not a case
    write_image(image, tmp_path / "imagesTr" / "c_003_0000.nii.gz")  # no label
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a_001", "b_002", "c_003"]
    assert cases[0].image_path.name == "a_001_0000.nii.gz"
    assert cases[0].label_path == tmp_path / "labelsTr" / "a_001.nii.gz"
    assert cases[2].label_path is None
    assert find_cases(tmp_path, layout="msd") == cases
    assert resolve_target_label(tmp_path, "tumor") == 2
    image, mask = load_case(cases[1], target_label=2)
    expected_image, expected_label = case_volumes(0)  # b_002 was written first
    np.testing.assert_array_equal(image.array, expected_image.array)
    assert image.same_grid(expected_image)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected_label.array == 2)
    np.testing.assert_array_equal(load_case(cases[1], target_label=1)[1], expected_label.array == 1)
    assert load_case(cases[2], 2)[1] is None


def test_msd_layout_with_plain_names_and_macos_junk(tmp_path):
    write_msd(tmp_path, ["pancreas_001", "pancreas_004"], channel_suffix=False,
              labels={"0": "background", "1": "pancreas", "2": "cancer"}, file_ending=None)
    (tmp_path / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # from MSD's tar files
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["pancreas_001", "pancreas_004"]
    assert all(c.label_path is not None for c in cases)
    assert label_names(tmp_path) == {"background": 0, "pancreas": 1, "cancer": 2}
    assert resolve_target_label(tmp_path, "cancer") == 2
    assert resolve_target_label(tmp_path, "1") == 1
    assert resolve_target_label(tmp_path, "tumor") == 2  # MSD names its tumours "cancer"
    with pytest.raises(ValueError, match="label 'liver' is not in .*: background=0, pancreas=1, cancer=2"):
        resolve_target_label(tmp_path, "liver")


@pytest.mark.parametrize("labels, target, expected", [
    ({"background": 0, "Tumour": 1}, "tumor", (1, "Tumour")),  # any case, British spelling
    ({"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}, "Tumour", (2, "tumor")),
    ({"0": "background", "1": "Vessel", "2": "Tumour"}, "tumor", (2, "Tumour")),  # MSD hepatic vessel
    ({"0": "background", "1": "colon cancer primaries"}, "tumor", (1, "colon cancer primaries")),  # MSD colon
    ({"background": 0, "lung": 1, "nodule": 2}, "lesion", (2, "nodule")),
    ({"background": 0, "liver": 1, "liver_tumor": 2}, "tumor", (2, "liver_tumor")),
    ({"background": 0, "organ": 1, "tumor": 2}, 1, (1, None)),  # a value is a value
])
def test_a_label_name_matches_in_any_case_and_spelling_and_a_tumour_word_finds_the_tumour(
        tmp_path, labels, target, expected):
    write_msd(tmp_path, ["a"], channel_suffix=False, labels=labels)
    assert find_target_label(tmp_path, target) == expected


def test_a_tumour_word_that_fits_several_labels_or_none_is_refused_naming_them(tmp_path):
    write_msd(tmp_path / "two", ["a"], channel_suffix=False,
              labels={"background": 0, "primary tumor": 1, "metastasis": 2})
    with pytest.raises(ValueError, match="'lesion' could mean any of primary tumor, metastasis .*give one of"):
        find_target_label(tmp_path / "two", "lesion")
    assert find_target_label(tmp_path / "two", "metastasis") == (2, "metastasis")  # the exact name first
    write_msd(tmp_path / "none", ["a"], channel_suffix=False, labels={"background": 0, "liver": 1, "kidney": 2})
    with pytest.raises(ValueError, match="label 'tumor' is not in .*: background=0, liver=1, kidney=2"):
        find_target_label(tmp_path / "none", "tumor")


def test_phantom_dataset_is_read_back(tmp_path):
    from sam3d.data.phantoms import write_dataset

    root = write_dataset(tmp_path / "ph", cases=2, seed=4)
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["phantom_000", "phantom_001"]
    image, tumor = load_case(cases[0], resolve_target_label(root, "tumor"))
    assert tumor.shape == image.shape and tumor.sum() >= 30


def test_kits21_layout(tmp_path):
    for n in range(3):
        folder = tmp_path / f"case_{n:05d}"
        folder.mkdir()
        image, label = case_volumes(n)
        write_image(image, folder / "imaging.nii.gz")
        label_name = "segmentation.nii.gz" if n == 2 else "aggregated_MAJ_seg.nii.gz"  # KiTS19 naming too
        write_image(label, folder / label_name)
    (tmp_path / "case_00009").mkdir()  # no imaging: skipped
    (tmp_path / "kits.json").write_text("[]")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case_00000", "case_00001", "case_00002"]
    assert cases[0].label_path.name == "aggregated_MAJ_seg.nii.gz"
    assert cases[2].label_path.name == "segmentation.nii.gz"
    assert find_cases(tmp_path, layout="kits") == cases
    assert resolve_target_label(tmp_path, "tumor") == 2
    _, mask = load_case(cases[1], 2)
    np.testing.assert_array_equal(mask, case_volumes(1)[1].array == 2)


def test_image_label_pairs_in_one_folder(tmp_path):
    """pyradiomics' layout (<case>_image.nrrd beside <case>_label.nrrd), with other namings beside
    it; without a dataset.json a label name is the one value the label maps hold."""
    for n, (image_name, label_name) in enumerate([("brain1_image.nrrd", "brain1_label.nrrd"),
                                                  ("lung_7.nii.gz", "lung_7_seg.nii.gz"),
                                                  ("ct2_img.mha", "ct2_mask.mha")]):
        image, label = case_volumes(n)
        write_image(image, tmp_path / image_name)
        write_image(label.with_array((label.array == 2).astype(np.uint8)), tmp_path / label_name)
    write_image(case_volumes(9)[0], tmp_path / "unlabelled_image.nrrd")
    (tmp_path / "README.md").write_text("not a case")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["brain1", "ct2", "lung_7", "unlabelled"]
    assert [c.label_path.name if c.label_path else None for c in cases] == [
        "brain1_label.nrrd", "ct2_mask.mha", "lung_7_seg.nii.gz", None]
    assert find_cases(tmp_path, layout="pairs") == cases
    assert resolve_target_label(tmp_path, "tumor") == 1
    _, mask = load_case(cases[2], 1)
    np.testing.assert_array_equal(mask, case_volumes(1)[1].array == 2)
    write_image(case_volumes(0)[1], tmp_path / "brain1_label.nrrd")  # now 1 organ, 2 tumour: a name is ambiguous
    with pytest.raises(ValueError, match=r"no dataset.json .* to name label 'tumor'.*several values besides 0 \(1, 2\)"):
        resolve_target_label(tmp_path, "tumor")
    assert resolve_target_label(tmp_path, "2") == 2
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "tumor": 2}}))
    assert find_cases(tmp_path) == cases  # a dataset.json beside pairs names their labels
    assert resolve_target_label(tmp_path, "tumor") == 2


def test_pairs_are_found_from_their_labels_whatever_the_case_ids_and_endings(tmp_path):
    """Case ids that end in a suffix, Slicer's "-label" and "_labelMap", mixed endings; images
    without a label are not cases unless named <case>_image; two labels for one case are an error."""
    names = [("liver_seg.nrrd", "liver_seg_label.nrrd"), ("pt_img.nrrd", "pt_img_label.nrrd"),
             ("p.nrrd", "p-label.nrrd"), ("q.nrrd", "q_labelMap.nrrd"), ("a_image.nii.gz", "a_label.nrrd")]
    for n, (image_name, label_name) in enumerate(names):
        image, label = case_volumes(n)
        write_image(image, tmp_path / image_name)
        write_image(label, tmp_path / label_name)
    write_image(case_volumes(7)[0], tmp_path / "stray.nrrd")  # no label, not named as an image: not a case
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.image_path.name, c.label_path.name) for c in cases] == [
        ("a", "a_image.nii.gz", "a_label.nrrd"), ("liver_seg", "liver_seg.nrrd", "liver_seg_label.nrrd"),
        ("p", "p.nrrd", "p-label.nrrd"), ("pt_img", "pt_img.nrrd", "pt_img_label.nrrd"),
        ("q", "q.nrrd", "q_labelMap.nrrd")]
    write_image(case_volumes(0)[1], tmp_path / "p_seg.nrrd")
    with pytest.raises(ValueError, match=r"case 'p' is ambiguous \(p-label.nrrd, p.nrrd, p_seg.nrrd\)"):
        find_cases(tmp_path)


def test_a_folder_of_images_alone_is_no_dataset(tmp_path):
    for n in range(2):
        write_image(case_volumes(n)[0], tmp_path / f"liver_{n}.nii.gz")
    with pytest.raises(ValueError, match=r"no cases in .*: expected the MSD / nnU-Net layout .* or image / label pairs"):
        find_cases(tmp_path)


def test_the_layout_given_reads_the_label_names(tmp_path):
    """A KiTS21 case folder beside pairs: --layout pairs names the pairs' own value, not KiTS's."""
    image, label = case_volumes(0)
    write_image(image, tmp_path / "x_image.nrrd")
    write_image(label.with_array((label.array == 2).astype(np.uint8)), tmp_path / "x_label.nrrd")
    (tmp_path / "case_00000").mkdir()
    write_image(image, tmp_path / "case_00000" / "imaging.nii.gz")
    assert resolve_target_label(tmp_path, "tumor") == 2  # auto: the KiTS21 layout and its names
    assert resolve_target_label(tmp_path, "tumor", layout="pairs") == 1


def test_a_dataset_without_a_dataset_json_is_told_apart_by_its_cases(tmp_path):
    for folder, ids in (("one", ["a", "b"]), ("two", ["a", "c"])):
        (tmp_path / folder).mkdir()
        for n, case_id in enumerate(ids):
            image, label = case_volumes(n)
            write_image(image, tmp_path / folder / f"{case_id}_image.nrrd")
            write_image(label, tmp_path / folder / f"{case_id}_label.nrrd")
    one, two = dataset_identity(tmp_path / "one"), dataset_identity(tmp_path / "two")
    assert one and two and one != two
    assert dataset_identity(tmp_path / "one", layout="pairs") == one


def test_a_slicer_segmentation_beside_its_image_is_refused_as_a_label_map(tmp_path):
    image, label = case_volumes(0)
    write_image(image, tmp_path / "scan.nrrd")
    write_segmentation(tmp_path / "scan.seg.nrrd", [Segment("tumor", label.array == 2)], image)
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.label_path.name) for c in cases] == [("scan", "scan.seg.nrrd")]  # not an image
    with pytest.raises(ValueError, match=r"scan.seg.nrrd is a Slicer segmentation .* Export to labelmap"):
        load_case(cases[0], 1)


def test_a_label_on_a_slightly_different_grid_is_put_on_the_image_grid(tmp_path):
    image, label = case_volumes(0)
    shifted = Volume(label.array, label.spacing, tuple(np.array(label.origin) + [0.0, 0.0, 3.0]), label.direction)
    write_image(image, tmp_path / "img.nii.gz")
    write_image(shifted, tmp_path / "lab.nii.gz")  # one slice (3 mm) further along z
    _, mask = load_case(Case("x", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"), 1)
    np.testing.assert_array_equal(mask[1:], label.array[:-1] == 1)
    write_image(Volume(np.zeros((2, 2, 2), np.uint8), (1, 1, 1)), tmp_path / "small.nii.gz")
    with pytest.raises(ValueError, match="has shape"):
        load_case(Case("x", tmp_path / "img.nii.gz", tmp_path / "small.nii.gz"), 1)


def test_folders_without_cases_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_cases(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"no cases in .*: expected the MSD / nnU-Net layout .* or image / label pairs"):
        find_cases(tmp_path)
    with pytest.raises(ValueError, match=r"found no images in the folder \(<case>_image / <case>_label"):
        find_cases(tmp_path, layout="pairs")
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(ValueError, match=r"no cases in .*: found no images in imagesTr/"):
        find_cases(tmp_path)
    with pytest.raises(ValueError, match=r"found no images in case_\*/imaging.nii.gz"):
        find_cases(tmp_path, layout="kits")
    with pytest.raises(ValueError, match="unknown dataset layout 'nnunet'"):
        find_cases(tmp_path, layout="nnunet")


def test_splits_are_seeded_disjoint_and_complete(tmp_path):
    ids = [f"case_{n:03d}" for n in range(10)]
    splits = make_splits([Case(i, tmp_path, None) for i in ids], seed=3)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (7, 1, 2)
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ids
    assert splits["seed"] == 3
    assert make_splits(ids, seed=3) == splits
    assert make_splits(ids, seed=4) != splits
    small = make_splits(ids[:3], seed=0)
    assert all(len(small[name]) == 1 for name in ("train", "val", "test"))
    path = write_splits(tmp_path / "splits.json", splits)
    assert read_splits(path) == splits
    assert json.loads(path.read_text())["seed"] == 3
    with pytest.raises(ValueError, match="summing to 1"):
        make_splits(ids, seed=0, fractions=(0.5, 0.1, 0.1))


def test_malformed_splits_are_refused(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": []}))
    with pytest.raises(ValueError, match="b are in more than one split"):
        read_splits(path)
    path.write_text(json.dumps({"train": ["a"], "test": []}))
    with pytest.raises(ValueError, match="missing val"):
        read_splits(path)
    with pytest.raises(ValueError, match="no such file"):
        read_splits(tmp_path / "none.json")
