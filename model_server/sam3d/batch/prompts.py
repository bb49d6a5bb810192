"""A case's clicks grouped into lesions (one output segment per lesion), from each prompt source.

Clicks are RAS millimetres (Slicer's world frame) until the case's image turns them into voxel
indices, so the same clicks can be checked against, or mapped onto, any image.

Lesions in a markups file (``lesions_from_markups``), one per point list:

- every point list whose name is not negative is one lesion, in file order; its points
  described "negative" are negative clicks of that lesion;
- a negative point list (name containing "negative" or ending in "-": the convention of
  ``sam3d.data.markups``) holds negative clicks of the lesion list with the same name once the
  words "positive" / "negative" and a trailing "+" / "-" are dropped ("Lesion 2 negative" and
  "Lesion 2-" belong to "Lesion 2"; "SAM3D negative" to "SAM3D positive"); when no name matches
  and the file has a single lesion list, they belong to that one.

So a file `write_markups` writes ("SAM3D positive" + "SAM3D negative") is one lesion, and a
file with the lists "Lesion 1", "Lesion 2", "Lesion 2 negative" is two.

A Markups ROI in the file is a lesion's box: that of the lesion list with the same name once a
trailing word "box" or "ROI" is dropped ("Lesion 2 box" belongs to "Lesion 2"), or of the single
lesion list when the file has one list and one ROI, unless both names end in different lesion
numbers ("<volume> lesion 2 box" is not the box of "<volume> lesion 1"); any other ROI is a lesion
of its own (a box alone), numbered after the lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..client.wire import outside_volume
from ..data.clicks import centre_click, label_objects
from ..data.io import Volume, read_image
from ..data.markups import MarkupsError, is_negative_name, read_markups_file
from ..data.dicom_seg import is_segmentation_file, read_segments

_SIGN_WORDS = re.compile(r"\b(positive|negative)\b")
_BOX_WORD = re.compile(r"\s*\b(box|roi)\s*$", re.IGNORECASE)
_LESION_NUMBER = re.compile(r"\blesion\s+(\d+)$")


@dataclass(frozen=True)
class Lesion:
    """The prompts of one lesion: RAS points [N, 3] in mm, labels [N] (1 positive, 0 negative)
    and optionally a box (two opposite RAS corners [2, 3])."""

    number: int  # 1-based; names the segment "lesion <number>"
    points_ras: np.ndarray
    labels: np.ndarray
    box_ras: np.ndarray | None = None

    @property
    def name(self) -> str:
        return f"lesion {self.number}"

    def describe(self) -> dict:
        described = {"lesion": self.number, "ras": np.round(self.points_ras, 6).tolist(),
                     "labels": self.labels.tolist()}
        if self.box_ras is not None:
            described["box_ras"] = np.round(self.box_ras, 6).tolist()
        return described


def ras_box(corners) -> np.ndarray | None:
    """Two opposite RAS corners (two sequences of three numbers) as a float [2, 3] array, or None
    where ``corners`` is not that, or a number is not finite (the caller says what is wrong)."""
    try:
        box = np.array([[float(v) for v in corner] for corner in corners], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return box if box.shape == (2, 3) and np.isfinite(box).all() else None


def check_inside(volume: Volume, lesions: Sequence[Lesion], image: str | Path) -> None:
    """ValueError naming the first click or box corner that lies outside ``volume`` (the file
    ``image``), in RAS mm and voxel kji, with what to check."""
    for lesion in lesions:
        named = [("click", lesion.points_ras)]
        if lesion.box_ras is not None:
            named.append(("box corner", lesion.box_ras))
        for what, points_ras in named:
            points_kji = volume.ras_to_kji(points_ras)
            outside = outside_volume(points_kji, volume.shape)
            if outside.any():
                ras, kji = points_ras[outside][0], points_kji[outside][0]
                raise ValueError(f"{lesion.name}: {what} R,A,S = {np.round(ras, 2).tolist()} mm lies outside "
                                 f"the image {image} (voxel kji {np.round(kji, 1).tolist()}, shape "
                                 f"{list(volume.shape)}); check the prompts belong to this image and are "
                                 "RAS (as Slicer shows them)")


def group_lesions(numbers: Sequence[int], points_ras: np.ndarray, labels: np.ndarray,
                  boxes: Sequence[tuple[int, np.ndarray]] = ()) -> list[Lesion]:
    """Clicks tagged with lesion numbers, and boxes (lesion number, two RAS corners [2, 3]) ->
    lesions sorted by number. Raises ValueError for a lesion with neither a box nor a positive
    click, or with two boxes."""
    numbers = np.asarray(numbers, dtype=np.int64)
    points_ras = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels, dtype=np.int64)
    box_of: dict[int, np.ndarray] = {}
    for number, box in boxes:
        if number in box_of:
            raise ValueError(f"lesion {number} has two boxes; a lesion has one box")
        box_of[number] = np.asarray(box, dtype=np.float64)
    lesions = []
    for number in sorted(set(numbers.tolist()) | set(box_of)):
        chosen = numbers == number
        if number not in box_of and not (labels[chosen] == 1).any():
            raise ValueError(f"lesion {number} has no positive click; give at least one '+' click on it, or a box")
        lesions.append(Lesion(number, points_ras[chosen].copy(), labels[chosen].copy(), box_of.get(number)))
    return lesions


def lesions_from_markups(path: str | Path) -> list[Lesion]:
    """The lesions of a Slicer markups file (grouping rule: the module docstring). Raises
    MarkupsError (a ValueError) naming the file and the problem."""
    path = Path(path)
    point_lists, boxes = read_markups_file(path)
    points = np.concatenate([p.points_ras for p in point_lists]).reshape(-1, 3)
    labels = np.concatenate([p.labels for p in point_lists]).astype(np.int64)
    names = [p.name for p in point_lists]
    counts = [len(p.labels) for p in point_lists]
    list_of_point = np.repeat(np.arange(len(point_lists)), counts)
    lesion_lists = [n for n, name in enumerate(names) if not is_negative_name(name) and counts[n]]
    if not lesion_lists and not boxes:
        raise MarkupsError(f"{path} holds only negative point lists; add a point list of positive "
                           "clicks on the lesion")
    numbers = np.zeros(len(points), dtype=np.int64)
    for index, name in enumerate(names):
        if index in lesion_lists:
            owner = index
        elif counts[index] and lesion_lists:
            matches = [n for n in lesion_lists if _base_name(names[n]) == _base_name(name)]
            if len(matches) == 1 or len(lesion_lists) == 1:
                owner = (matches or lesion_lists)[0]
            else:
                raise MarkupsError(f"{path}: the negative point list {name!r} belongs to no lesion; "
                                   "name it after its lesion's list (e.g. 'Lesion 2 negative' for 'Lesion 2')")
        elif counts[index]:
            raise MarkupsError(f"{path}: the negative point list {name!r} belongs to no point list of positive "
                               "clicks; give a box with negative clicks in the manifest instead "
                               '({"lesion": N, "box": ...} and "-" clicks)')
        else:
            continue
        numbers[list_of_point == index] = lesion_lists.index(owner) + 1
    lesion_boxes = _boxes_of_lesions(boxes, [names[n] for n in lesion_lists])
    try:
        return group_lesions(numbers, points, labels, lesion_boxes)
    except ValueError as error:
        raise MarkupsError(f"{path}: {error}") from None


def _boxes_of_lesions(boxes: list, lesion_names: list[str]) -> list[tuple[int, np.ndarray]]:
    """(lesion number, RAS corners) of each ROI (the rule: the module docstring)."""
    found, extra = [], len(lesion_names)
    for box in boxes:
        owner_name = _BOX_WORD.sub("", box.name)
        matches = [n for n, name in enumerate(lesion_names, start=1) if _base_name(name) == _base_name(owner_name)]
        if (not matches and len(lesion_names) == 1 and len(boxes) == 1
                and not _other_lesions(lesion_names[0], owner_name)):
            matches = [1]
        if not matches:
            extra += 1
            matches = [extra]
        found.append((matches[0], box.corners_ras))
    return found


def _other_lesions(name: str, other: str) -> bool:
    """Whether two names end in different lesion numbers ("... lesion 1", "... lesion 2")."""
    numbers = [_LESION_NUMBER.search(_base_name(n)) for n in (name, other)]
    return all(numbers) and numbers[0].group(1) != numbers[1].group(1)


def _base_name(name: str) -> str:
    """A point list's name without its sign words: 'Lesion 2 negative' / 'Lesion 2-' -> 'lesion 2'."""
    name = _SIGN_WORDS.sub(" ", name.strip().lower()).strip()
    return " ".join(name.rstrip("+-").split())


def lesions_from_mask(path: str | Path, label: int | None = None) -> list[Lesion]:
    """One lesion per connected component (26-connected) of a prior mask: a label image (voxels
    equal to ``label``, or non-zero when it is None) or a ``.seg.nrrd`` / DICOM SEG (every segment's
    components, segment by segment). Each lesion gets one positive click at the component's most
    interior voxel. A DICOM SEG counts as a ``.seg.nrrd``. Raises ValueError naming the file."""
    path = Path(path)
    if is_segmentation_file(path):
        segments, grid = read_segments(path)
        masks = [np.asarray(segment.mask, dtype=bool) for segment in segments]
    else:
        grid = read_image(path)
        masks = [grid.array == label if label is not None else grid.array != 0]
    points = []
    for mask in masks:
        components, count = label_objects(mask)
        for number in range(1, count + 1):
            points.append(centre_click(components == number, grid.spacing))
    if not points:
        which = f"label {label}" if label is not None else "foreground"
        raise ValueError(f"prior mask {path} holds no {which} voxel; nothing to click on")
    return _one_click_lesions(grid, np.stack(points))


def _one_click_lesions(grid: Volume, points_kji: np.ndarray) -> list[Lesion]:
    points_ras = grid.kji_to_ras(points_kji)
    return [Lesion(n, points_ras[n - 1:n], np.ones(1, dtype=np.int64)) for n in range(1, len(points_ras) + 1)]
