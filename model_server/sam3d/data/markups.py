"""Slicer markups files (``.mrk.json``) as labelled click points in RAS millimetres.

The sign convention, shared by the Slicer module, ``sam3d segment`` and ``sam3d batch``: a
control point is *negative* when its markup's name contains "negative" or ends with "-", or
when the point's description is "negative" or "lesion N negative"; every other defined point is
*positive*. A description "lesion N" / "lesion N negative" also tags the point with its lesion:
a markup whose points carry such tags is read as one point list per lesion number (in number
order, named "<markup name> lesion N"; its untagged points, if any, stay in a list of the
markup's own name, first). That is how the Slicer module keeps every lesion of a volume, with
each click's sign, in the single point list that Slicer saves as one file (Slicer's JSON writer
stores neither the list name nor node attributes, only each point's description).
``write_markups`` writes one file holding two point lists, "SAM3D positive" and
"SAM3D negative", which ``read_markups`` (and Slicer) read back.

A markup of type "ROI" (a box drawn with Slicer's Markups ROI) is a box, not a click:
``read_markups_file`` reads it as two opposite RAS corners (those of the smallest RAS-aligned
box holding it), apart from the point lists.

Slicer files store positions in LPS or RAS, as the markup's ``coordinateSystem`` says; points
returned here are always RAS. A markup without a ``name`` field takes the file's name, as
Slicer does when it loads the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POSITIVE_NAME = "SAM3D positive"
NEGATIVE_NAME = "SAM3D negative"
SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
          "Resources/Schema/markups-schema-v1.0.3.json#")
# A point's description: optional "lesion N", optional sign word ("" and free text: no tag).
_DESCRIPTION = re.compile(r"^\s*(?:lesion\s+(\d+))?\s*(positive|negative)?\s*$", re.IGNORECASE)
# LPS <-> RAS: negate the first two axes.
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
# An ROI's eight corners in its own frame, times half its size.
_CORNER_SIGNS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)


class MarkupsError(ValueError):
    """A markups file that cannot be read as click points; the message says why."""


def is_negative_name(name: str) -> bool:
    """Whether a markup (point list) with this name holds negative clicks."""
    name = name.strip().lower()
    return "negative" in name or name.endswith("-")


def parse_description(description: str) -> tuple[int | None, bool]:
    """A control point's description -> (lesion number or None, negative)."""
    match = _DESCRIPTION.match(description or "")
    if match is None:
        return None, False
    return (int(match.group(1)) if match.group(1) else None,
            (match.group(2) or "").lower() == "negative")


def _file_stem(path: Path) -> str:
    name = path.name
    for suffix in (".mrk.json", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclass(eq=False)
class PointList:
    """One markup (point list) of a file: its name and its defined points, RAS, labelled."""

    name: str
    points_ras: np.ndarray  # [N, 3] float64
    labels: np.ndarray  # [N] int64: 1 positive, 0 negative


@dataclass(eq=False)
class BoxMarkup:
    """One ROI markup of a file: its name and its box as two opposite RAS corners [2, 3]."""

    name: str
    corners_ras: np.ndarray


def _markups(path: Path) -> list[dict]:
    """The ``markups`` list of a Slicer markups file; MarkupsError where there is none."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MarkupsError(f"markups file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MarkupsError(f"{path} is not a readable JSON markups file: {error}") from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list) or not all(isinstance(markup, dict) for markup in markups):
        raise MarkupsError(f"{path} has no 'markups' list; save the points from Slicer as a "
                           "markups file (.mrk.json)")
    return markups


def _is_roi(markup: dict) -> bool:
    return str(markup.get("type", "")).lower() == "roi"


def _to_ras(path: Path, index: int, markup: dict) -> np.ndarray:
    """The factors that turn the markup's positions into RAS."""
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise MarkupsError(f"{path}: markup {index} has coordinateSystem {system!r}; expected 'LPS' or 'RAS'")
    return _LPS_TO_RAS if system == "LPS" else np.ones(3)


def read_markups_file(path: str | Path) -> tuple[list[PointList], list[BoxMarkup]]:
    """Every point list (with its defined control points) and every ROI (as a box) of a Slicer
    markups file, each in file order.

    Raises MarkupsError for a file that is not a markups file, a broken markup, or a file that
    holds neither a defined point nor a box.
    """
    path = Path(path)
    point_lists: list[PointList] = []
    boxes: list[BoxMarkup] = []
    for index, markup in enumerate(_markups(path)):
        if _is_roi(markup):
            boxes.append(_box(path, index, markup))
        else:
            point_lists.extend(_point_lists(path, index, markup))
    if not boxes and not any(len(point_list.labels) for point_list in point_lists):
        raise MarkupsError(f"{path} holds no defined control point; place at least one point")
    return point_lists, boxes


def _box(path: Path, index: int, markup: dict) -> BoxMarkup:
    """An ROI markup as a box: the two opposite RAS corners of the smallest RAS-aligned box
    holding it (its ``center``, ``size`` and ``orientation``, whose columns are its axes)."""
    name = str(markup.get("name") or _file_stem(path))
    try:
        centre = np.asarray(markup["center"], dtype=np.float64).reshape(3)
        size = np.asarray(markup["size"], dtype=np.float64).reshape(3)
        axes = np.asarray(markup.get("orientation", np.eye(3).ravel()), dtype=np.float64).reshape(3, 3)
    except (KeyError, TypeError, ValueError):
        raise MarkupsError(f"{path}: ROI {name!r} needs a 'center' and a 'size' of three numbers each") from None
    finite = np.isfinite(centre).all() and np.isfinite(size).all() and np.isfinite(axes).all()
    if not finite or (size < 0).any() or np.count_nonzero(size > 0) < 2:  # one size 0: a 2D box
        raise MarkupsError(f"{path}: ROI {name!r} has a centre, size or orientation that is not finite, "
                           "or is not a box (two of its sizes must be above 0); draw it again in Slicer")
    corners = (centre + (_CORNER_SIGNS * size / 2.0) @ axes.T) * _to_ras(path, index, markup)
    return BoxMarkup(name, np.stack([corners.min(axis=0), corners.max(axis=0)]))


def _point_lists(path: Path, index: int, markup: dict) -> list[PointList]:
    """A point-list markup's defined control points, RAS and labelled: one list, or one per
    lesion tag (see the module docstring)."""
    name = str(markup.get("name") or _file_stem(path))
    to_ras = _to_ras(path, index, markup)
    negative_list = is_negative_name(name)
    points: list[np.ndarray] = []
    labels: list[int] = []
    lesions: list[int | None] = []
    for point in markup.get("controlPoints") or []:
        if point.get("positionStatus", "defined") != "defined":
            continue
        try:
            position = np.asarray(point["position"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise MarkupsError(f"{path}: a control point of markup {index} has no valid "
                               "'position'") from None
        if position.shape != (3,) or not np.all(np.isfinite(position)):
            raise MarkupsError(f"{path}: control point position {point.get('position')!r} "
                               "is not three finite numbers")
        points.append(position * to_ras)
        lesion, negative = parse_description(str(point.get("description", "")))
        labels.append(0 if negative_list or negative else 1)
        lesions.append(lesion)
    all_points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    all_labels = np.asarray(labels, dtype=np.int64)
    tags = [None] + sorted({lesion for lesion in lesions if lesion is not None})
    point_lists = []
    for tag in tags:
        chosen = np.asarray([lesion == tag for lesion in lesions], dtype=bool)
        if tag is not None or chosen.any() or len(tags) == 1:
            point_lists.append(PointList(name if tag is None else f"{name} lesion {tag}",
                                         all_points[chosen], all_labels[chosen]))
    return point_lists


def read_markups(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Every defined control point of a Slicer markups file, in file order.

    Returns ``(points_ras [N, 3] float64, labels [N] int64)`` with 1 for positive and 0 for
    negative clicks. Raises MarkupsError as :func:`read_markups_file` does, and for a file that
    holds a box (an ROI), which is not a click.
    """
    point_lists, boxes = read_markups_file(path)
    if boxes:
        raise MarkupsError(f"{path} holds a box (ROI {boxes[0].name!r}), not only clicks; give the box with "
                           "--box R1,A1,S1:R2,A2,S2 (sam3d batch reads an ROI as its lesion's box)")
    return (np.concatenate([p.points_ras for p in point_lists]),
            np.concatenate([p.labels for p in point_lists]))


def _markup(name: str, points_ras: np.ndarray) -> dict:
    return {
        "type": "Fiducial",
        "name": name,
        "coordinateSystem": "RAS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points_ras),
        "controlPoints": [
            {"id": str(n + 1), "label": f"{name}-{n + 1}", "description": "",
             "associatedNodeID": "", "position": [float(v) for v in point],
             "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
             "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"}
            for n, point in enumerate(points_ras)
        ],
        "measurements": [],
    }


def write_lesion_markups(path: str | Path, lesions_ras: list[np.ndarray]) -> None:
    """Write each lesion's positive RAS points [N, 3] as its own point list "Lesion <n>" (the
    layout `sam3d batch` reads as one lesion per list)."""
    document = {"@schema": SCHEMA,
                "markups": [_markup(f"Lesion {n}", np.asarray(points, dtype=np.float64).reshape(-1, 3))
                            for n, points in enumerate(lesions_ras, start=1)]}
    Path(path).write_text(json.dumps(document, indent=2), encoding="utf-8")


def write_markups(path: str | Path, points_ras: np.ndarray, labels: np.ndarray) -> None:
    """Write labelled RAS points as one markups file with a positive and a negative list."""
    points_ras = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(points_ras):
        raise ValueError(f"{len(points_ras)} points but {len(labels)} labels")
    document = {
        "@schema": SCHEMA,
        "markups": [_markup(POSITIVE_NAME, points_ras[labels != 0]),
                    _markup(NEGATIVE_NAME, points_ras[labels == 0])],
    }
    Path(path).write_text(json.dumps(document, indent=2), encoding="utf-8")
