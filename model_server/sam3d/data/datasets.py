"""Dataset readers (MSD / nnU-Net raw, KiTS21 and image / label pair layouts) and seeded
train / val / test splits.

MSD / nnU-Net raw::

    ROOT/dataset.json
    ROOT/imagesTr/<case>_0000.nii.gz   (nnU-Net: channel suffix; only channel 0 is used)
    ROOT/imagesTr/<case>.nii.gz        (MSD: plain names)
    ROOT/labelsTr/<case>.nii.gz

KiTS21 (the ``data`` folder of the kits21 repository)::

    ROOT/case_00000/imaging.nii.gz
    ROOT/case_00000/aggregated_MAJ_seg.nii.gz   (KiTS19: segmentation.nii.gz)

Image / label pairs in one folder (as pyradiomics' test data, and the real MRI development
cases, come)::

    ROOT/<case>_image.nrrd                      (or <case>_img, or plain <case>; any IMAGE_ENDINGS)
    ROOT/<case>_label.nrrd                      (or _labels, -label, _seg, _mask, _labelMap)
    ROOT/dataset.json                           (optional: label names)

Without a dataset.json a pairs folder names no labels: a label name is read as the one value
its label maps hold, where they hold one (``resolve_target_label``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import Volume, read_image
from .resample import resample_to_reference

LAYOUTS = ("auto", "msd", "kits", "pairs")
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
KITS_IMAGE = "imaging.nii.gz"
KITS_LABELS = ("aggregated_MAJ_seg.nii.gz", "segmentation.nii.gz")
PAIR_IMAGE_SUFFIXES = ("_image", "_img")  # a pairs folder's image names; a plain <case> name also counts
# a pairs folder's label names, matched in any case (Slicer saves "-label" and "_labelMap")
PAIR_LABEL_SUFFIXES = ("_label", "_labels", "-label", "_seg", "_mask", "_labelmap", "-labelmap", ".seg")
SLICER_SEGMENTATION = ".seg.nrrd"  # a Slicer segmentation: paired (not read as an image), refused as a label map
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
DATASET_IDENTITY = ("name", "description", "seed", "numTraining")  # dataset.json keys that tell datasets apart
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# Words that name a tumour label: a target label named so finds the one label whose name holds
# one of them (KiTS / LiTS "tumor", MSD "cancer", "Tumour", "colon cancer primaries").
TUMOUR_WORDS = frozenset({"tumor", "tumors", "cancer", "lesion", "lesions", "neoplasm", "malignancy", "nodule",
                          "nodules", "mass", "metastasis", "metastases"})


@dataclass
class Case:
    """One case of a dataset: its id, image file and label file (None when unlabelled)."""

    case_id: str
    image_path: Path
    label_path: Path | None


def find_cases(root: str | os.PathLike, layout: str = "auto") -> list[Case]:
    """The cases under ``root``, sorted by id. ``layout``: "auto", "msd" (MSD / nnU-Net raw),
    "kits" (KiTS21) or "pairs" (image / label pairs in one folder). Raises ValueError when the
    folder holds no cases."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist")
    if layout == "auto":
        layout = _detect_layout(root)
    cases = {"msd": _find_msd, "kits": _find_kits, "pairs": _find_pairs}[layout](root)
    if not cases:
        where = {"msd": "imagesTr/", "kits": f"case_*/{KITS_IMAGE}",
                 "pairs": f"the folder (<case>_image / <case>_label files, {', '.join(IMAGE_ENDINGS)})"}[layout]
        raise ValueError(f"no cases in {root}: found no images in {where}")
    return cases


def _detect_layout(root: Path) -> str:
    """The layout of ``root``'s files (``find_cases``); ValueError naming the three when none fits."""
    if (root / "imagesTr").is_dir():
        return "msd"
    if any((folder / KITS_IMAGE).is_file() for folder in root.glob("case_*")):
        return "kits"
    if any(label is not None for _, label in _pair_files(root).values()):
        return "pairs"
    if (root / "dataset.json").is_file():
        return "msd"  # its reader names what is missing
    raise ValueError(
        f"no cases in {root}: expected the MSD / nnU-Net layout (dataset.json, imagesTr/, labelsTr/), "
        f"the KiTS21 layout (case_XXXXX/{KITS_IMAGE}) or image / label pairs in one folder "
        f"(<case>_image.nrrd beside <case>_label.nrrd; any of {', '.join(IMAGE_ENDINGS)})"
    )


def _find_msd(root: Path) -> list[Case]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise ValueError(f"no cases in {root}: the MSD / nnU-Net layout needs an imagesTr/ folder")
    endings = IMAGE_ENDINGS
    dataset_json = root / "dataset.json"
    if dataset_json.is_file():
        ending = _read_json(dataset_json).get("file_ending")
        endings = (ending,) if ending else endings
    cases = []
    for image_path in sorted(images_dir.iterdir()):
        name = image_path.name
        ending = next((e for e in endings if name.endswith(e)), None)
        if name.startswith(".") or ending is None:  # MSD archives carry macOS "._x.nii.gz" files
            continue
        stem = name[: -len(ending)]
        match = _CHANNEL.match(stem)
        if match and match["channel"] != "0000":
            continue
        case_id = match["case"] if match else stem
        label_path = labels_dir / f"{case_id}{ending}"
        cases.append(Case(case_id, image_path, label_path if label_path.is_file() else None))
    return cases


def _find_kits(root: Path) -> list[Case]:
    cases = []
    for folder in sorted(root.glob("case_*")):
        image_path = folder / KITS_IMAGE
        if not image_path.is_file():
            continue
        label_path = next((folder / name for name in KITS_LABELS if (folder / name).is_file()), None)
        cases.append(Case(folder.name, image_path, label_path))
    return cases


def _find_pairs(root: Path) -> list[Case]:
    return [Case(case_id, image_path, label_path) for case_id, (image_path, label_path) in
            sorted(_pair_files(root).items())]


def _pair_files(root: Path) -> dict[str, tuple[Path, Path | None]]:
    """A pairs folder's case id -> (image, label or None). Each label file (its name ends, in
    any case, in one of ``PAIR_LABEL_SUFFIXES`` before the file ending) is paired with the image
    of its case, ``<case>``, ``<case>_image`` or ``<case>_img``, of any ending; a file that is
    another pair's image is not a label (``liver_seg.nrrd`` beside ``liver_seg_label.nrrd``).
    Images named ``<case>_image`` / ``<case>_img`` without a label are unlabelled cases; other
    files are not cases. ValueError where a case has two labels or two images."""
    files = {}  # stem (file name less its ending) -> file
    for path in sorted(root.iterdir()):
        ending = next((e for e in IMAGE_ENDINGS if path.name.lower().endswith(e)), None)
        if not path.name.startswith(".") and ending is not None and path.is_file():
            files.setdefault(path.name[: -len(ending)], []).append(path)
    pairs: dict[str, tuple[Path, Path | None]] = {}
    for stem, paths in files.items():
        suffix = next((x for x in PAIR_LABEL_SUFFIXES if stem.lower().endswith(x)), None)
        if suffix is None:
            continue
        case_id = stem[: -len(suffix)]
        images = [image for name in (case_id, *(case_id + x for x in PAIR_IMAGE_SUFFIXES))
                  for image in files.get(name, [])]
        if not images:
            continue
        if len(images) > 1 or len(paths) > 1 or case_id in pairs:
            named = sorted({p.name for p in images + paths + list(filter(None, pairs.get(case_id, ())))})
            raise ValueError(f"{root}: case {case_id!r} is ambiguous ({', '.join(named)}); keep one image and one "
                             f"label per case, or give each case its own folder in the MSD / nnU-Net layout")
        pairs[case_id] = (images[0], paths[0])
    paired_images = {image for image, _ in pairs.values()}
    pairs = {case_id: (image, label) for case_id, (image, label) in pairs.items() if label not in paired_images}
    for stem, paths in files.items():
        suffix = next((x for x in PAIR_IMAGE_SUFFIXES if stem.lower().endswith(x)), None)
        case_id = stem[: -len(suffix)] if suffix else None
        if case_id is not None and case_id not in pairs and paths[0] not in paired_images:
            pairs[case_id] = (paths[0], None)
    return pairs


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


def label_names(root: str | os.PathLike) -> dict[str, int]:
    """Label name -> value from ``root/dataset.json`` (nnU-Net v2 ``{"tumor": 2}`` or MSD
    ``{"2": "tumour"}`` style); the KiTS21 labels for a KiTS folder."""
    root = Path(root)
    dataset_json = root / "dataset.json"
    if not dataset_json.is_file():
        if any(root.glob(f"case_*/{KITS_IMAGE}")):
            return {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
        raise ValueError(f"no dataset.json in {root} to name the labels; give the label value as a number")
    labels = _read_json(dataset_json).get("labels", {})
    names = {}
    for key, value in labels.items():
        if key.isdigit() and isinstance(value, str):
            names[value] = int(key)
        elif isinstance(value, int):
            names[key] = value
    return names


def resolve_target_label(root: str | os.PathLike, target: str | int, layout: str = "auto") -> int:
    """The label value meant by ``target`` (``find_target_label``)."""
    return find_target_label(root, target, layout)[0]


def find_target_label(root: str | os.PathLike, target: str | int, layout: str = "auto") -> tuple[int, str | None]:
    """The label value meant by ``target`` and the dataset's own name for it (None where the
    dataset names none). ``target``: a number, or a name listed by `label_names` - matched
    exactly, else in any case and spelling (tumour / tumor), else, for a tumour word
    (``TUMOUR_WORDS``), the one label whose name holds such a word (MSD calls its tumours
    "cancer"). In a pairs folder (``layout``, as ``find_cases`` reads it) without a dataset.json,
    any name is the one value its label maps hold. A ValueError names the labels where none, or
    more than one, fits."""
    if isinstance(target, int) or str(target).isdigit():
        return int(target), None
    target = str(target)
    root = Path(root)
    if layout == "auto" and root.is_dir():
        layout = _detect_layout(root)
    if layout == "pairs" and not (root / "dataset.json").is_file():
        return _single_label_value(root, target), None
    names = label_names(root)
    listed = ", ".join(f"{name}={value}" for name, value in names.items())
    if target in names:
        return names[target], target
    for fits in (lambda name: _label_words(name) == _label_words(target),
                 lambda name: bool(_label_words(name) & TUMOUR_WORDS) and bool(_label_words(target) & TUMOUR_WORDS)):
        matches = [name for name in names if fits(name)]
        if len(matches) > 1:
            raise ValueError(f"label {target!r} could mean any of {', '.join(matches)} in {root}; give one of "
                             f"those names or its value (its labels are: {listed})")
        if matches:
            return names[matches[0]], matches[0]
    raise ValueError(f"label {target!r} is not in {root}; its labels are: {listed}")


def _label_words(name: str) -> frozenset[str]:
    """A label name's words, lower case, British spellings made American (tumour -> tumor)."""
    words = re.split(r"[\s_\-/]+", name.lower().replace("tumour", "tumor"))
    return frozenset(word for word in words if word)


def _single_label_value(root: Path, target: str) -> int:
    """The one non-zero value the label maps of pairs folder ``root`` hold, for label name
    ``target`` (ValueError where they hold none or several)."""
    values: set[int] = set()
    for case in _find_pairs(root):
        if case.label_path is not None and not case.label_path.name.endswith(SLICER_SEGMENTATION):
            values.update(int(v) for v in np.unique(_read_label(case).array) if v != 0)
    if len(values) != 1:
        held = ", ".join(str(v) for v in sorted(values)) or "none"
        raise ValueError(f"no dataset.json in {root} to name label {target!r}, and its label maps hold "
                         f"{'several values' if values else 'no value'} besides 0 ({held}): give the label value as "
                         f"a number, or add a dataset.json with \"labels\": {{\"{target}\": VALUE}}")
    return values.pop()


def load_case(case: Case, target_label: int) -> tuple[Volume, np.ndarray | None]:
    """The case's image and its binary ``target_label`` mask on the image's grid (None when
    unlabelled). A label stored on a slightly different grid is resampled onto the image's
    (nearest neighbour); one of a different size is an error."""
    image = read_image(case.image_path)
    if case.label_path is None:
        return image, None
    label = _read_label(case)
    if label.shape != image.shape:
        raise ValueError(
            f"case {case.case_id}: label {case.label_path} has shape {label.shape}, the image {image.shape}"
        )
    if not label.same_grid(image, tolerance=1e-3):
        label = resample_to_reference(label, image, interpolator="nearest", default_value=0)
    return image, label.array == target_label


def _read_label(case: Case) -> Volume:
    """The case's label map (ValueError for a Slicer segmentation, whose segments are not values)."""
    if case.label_path.name.endswith(SLICER_SEGMENTATION):
        raise ValueError(f"case {case.case_id}: {case.label_path.name} is a Slicer segmentation (.seg.nrrd), not a "
                         f"label map; export it as one (Slicer: Segmentations module, Export to labelmap) and save "
                         f"it as {case.case_id}_label.nrrd")
    return read_image(case.label_path)


def dataset_identity(root: str | os.PathLike, layout: str = "auto") -> dict:
    """What tells this dataset apart from others: the ``DATASET_IDENTITY`` keys of its
    dataset.json; without one (a KiTS21 or pairs folder), a SHA-256 of its sorted case ids.
    Training records it in a model's metadata."""
    path = Path(root) / "dataset.json"
    values = _read_json(path) if path.is_file() else {}
    identity = {key: values[key] for key in DATASET_IDENTITY if key in values}
    if not identity:
        ids = "\n".join(case.case_id for case in find_cases(root, layout))
        identity = {"case_ids_sha256": hashlib.sha256(ids.encode()).hexdigest()}
    return identity


def make_splits(
    cases: Sequence[Case | str], seed: int, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS
) -> dict:
    """Seeded random train / val / test split of case ids.

    Returns ``{"train": [...], "val": [...], "test": [...], "seed": seed}``; each list is sorted.
    With three or more cases, every split whose fraction is above zero gets at least one.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, got {fractions}")
    ids = sorted(c.case_id if isinstance(c, Case) else str(c) for c in cases)
    if len(set(ids)) != len(ids):
        raise ValueError("make_splits: case ids are not unique")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n = len(ids)
    n_val, n_test = (int(round(n * f)) for f in fractions[1:])
    if n >= 3:
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    n_test = min(n_test, n)
    n_val = min(n_val, n - n_test)
    return {
        "train": sorted(order[n_test + n_val:]),
        "val": sorted(order[n_test:n_test + n_val]),
        "test": sorted(order[:n_test]),
        "seed": int(seed),
    }


def write_splits(path: str | os.PathLike, splits: dict) -> Path:
    """Write splits as JSON ``{"train": [...], "val": [...], "test": [...], "seed": S}``, atomically."""
    path = Path(path)
    _check_splits(splits, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps({name: splits[name] for name in (*SPLIT_NAMES, "seed") if name in splits}, indent=2) + "\n")
    os.replace(temp, path)
    return path


def read_splits(path: str | os.PathLike) -> dict:
    """Read a splits file written by `write_splits`; ValueError when it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read splits {path}: no such file")
    splits = _read_json(path)
    _check_splits(splits, path)
    return splits


def _check_splits(splits: dict, path: Path) -> None:
    if not isinstance(splits, dict):
        raise ValueError(f"splits {path}: expected a JSON object with {', '.join(SPLIT_NAMES)}")
    missing = [name for name in SPLIT_NAMES if name not in splits]
    if missing:
        raise ValueError(f"splits {path}: missing {', '.join(missing)}")
    seen: set[str] = set()
    for name in SPLIT_NAMES:
        ids = splits[name]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"splits {path}: {name!r} must be a list of case ids")
        overlap = seen.intersection(ids)
        if overlap:
            raise ValueError(f"splits {path}: case(s) {', '.join(sorted(overlap))} are in more than one split")
        seen.update(ids)
