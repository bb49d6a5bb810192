"""Click prompts as Slicer markups: the sign convention, the two point lists, saved prompt files.

The conventions are shared with ``sam3d segment`` / ``sam3d batch`` (``sam3d.data.markups`` and
``sam3d.batch.prompts``; the Slicer side cannot import that package, so the rules are repeated
here and the tests run both on the same files):

- a control point is *negative* when its point list's name contains "negative" or ends with
  "-", or when the point's description is "negative"; every other defined point is *positive*;
- in a saved file, every point list whose name is not negative is one lesion; a negative list
  belongs to the lesion list with the same name once "positive" / "negative" and a trailing
  "+" / "-" are dropped ("Lesion 2 negative" -> "Lesion 2", "SAM3D negative" -> "SAM3D positive"),
  or to the only lesion list.

The module places positive clicks in the point list "SAM3D positive" (green) and negative ones
in "SAM3D negative" (red): saved together they are one lesion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import slicer

POSITIVE_NAME = "SAM3D positive"
NEGATIVE_NAME = "SAM3D negative"
POSITIVE_COLOR = (0.10, 0.80, 0.25)
NEGATIVE_COLOR = (0.95, 0.15, 0.15)
POSITIVE = 1
NEGATIVE = 0
_SIGN_WORDS = re.compile(r"\b(positive|negative)\b")


class PromptError(ValueError):
    """A click or saved prompt the module cannot use (no volume, point outside it, unreadable
    file, ...); the message says what to do."""


@dataclass
class Click:
    """One prompt point: world RAS position, label (1 positive, 0 negative) and, when it was
    placed as a markup, the point list and control point ID it came from (removed on undo)."""

    ras: Tuple[float, float, float]
    label: int
    markups_node_id: Optional[str] = None
    control_point_id: Optional[str] = None


def is_negative_name(name: str) -> bool:
    """Whether a markup (point list) with this name holds negative clicks."""
    name = name.strip().lower()
    return "negative" in name or name.endswith("-")


def point_label(markups_node, index: int) -> int:
    """1 (positive) or 0 (negative) for control point ``index`` of ``markups_node``."""
    if is_negative_name(markups_node.GetName() or ""):
        return NEGATIVE
    description = markups_node.GetNthControlPointDescription(index) or ""
    return NEGATIVE if description.strip().lower() == "negative" else POSITIVE


def click_from_markup(markups_node, index: int) -> Click:
    """The click of control point ``index`` (world position: parent transforms applied)."""
    position = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(index, position)
    return Click(ras=(position[0], position[1], position[2]),
                 label=point_label(markups_node, index),
                 markups_node_id=markups_node.GetID(),
                 control_point_id=markups_node.GetNthControlPointID(index))


def clicks_from_markups(markups_nodes) -> List[Click]:
    """Every defined control point of saved point lists, in list order. The clicks do not
    refer back to their markups: undo and failures never remove saved points."""
    clicks: List[Click] = []
    for node in markups_nodes:
        for index in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(index) == node.PositionDefined:
                clicks.append(Click(ras=click_from_markup(node, index).ras,
                                    label=point_label(node, index)))
    return clicks


def _base_name(name: str) -> str:
    """A point list's name without its sign words: 'Lesion 2 negative' / 'Lesion 2-' -> 'lesion 2'."""
    name = _SIGN_WORDS.sub(" ", name.strip().lower()).strip()
    return " ".join(name.rstrip("+-").split())


def lesion_clicks(markups_nodes) -> List[List[Click]]:
    """Saved point lists grouped into lesions (the rule in the module docstring), in list order.

    Raises PromptError when no list holds positive clicks, a negative list matches no lesion,
    or a lesion has no positive click."""
    lists = [(node.GetName() or "", clicks_from_markups([node])) for node in markups_nodes]
    lesion_lists = [n for n, (name, clicks) in enumerate(lists) if clicks and not is_negative_name(name)]
    if not lesion_lists:
        raise PromptError("The saved prompts hold only negative point lists; add a point list of "
                          "positive clicks on the lesion.")
    groups = {n: [] for n in lesion_lists}
    for index, (name, clicks) in enumerate(lists):
        if not clicks:
            continue
        if index in groups:
            owner = index
        else:
            matches = [n for n in lesion_lists if _base_name(lists[n][0]) == _base_name(name)]
            if len(matches) != 1 and len(lesion_lists) != 1:
                raise PromptError(f"The negative point list {name!r} belongs to no lesion; name it "
                                  "after its lesion's list (e.g. 'Lesion 2 negative' for 'Lesion 2').")
            owner = (matches or lesion_lists)[0]
        groups[owner].extend(clicks)
    for n in lesion_lists:
        if not any(click.label == POSITIVE for click in groups[n]):
            raise PromptError(f"Lesion {lists[n][0]!r} has no positive click; place at least one "
                              "positive click on it.")
    return [groups[n] for n in lesion_lists]


def ensure_prompt_nodes(scene) -> Tuple[object, object]:
    """The "SAM3D positive" and "SAM3D negative" point lists, created (coloured) if missing."""
    nodes = []
    for name, color in ((POSITIVE_NAME, POSITIVE_COLOR), (NEGATIVE_NAME, NEGATIVE_COLOR)):
        node = scene.GetFirstNode(name, "vtkMRMLMarkupsFiducialNode")
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*color)
            display.SetColor(*color)
        nodes.append(node)
    return nodes[0], nodes[1]


def remove_click_markup(scene, click: Click) -> None:
    """Remove the control point a click was placed as (if it still exists)."""
    if not click.markups_node_id:
        return
    node = scene.GetNodeByID(click.markups_node_id)
    if node is None:
        return
    index = node.GetNthControlPointIndexByID(click.control_point_id)
    if index >= 0:
        node.RemoveNthControlPoint(index)


def load_prompt_file(scene, path: str) -> List[object]:
    """Load every point list of a saved markups file (``.mrk.json``) into the scene.

    Slicer's own JSON reader does the parsing (LPS files become RAS); a file may hold a
    positive and a negative list, as ``sam3d.data.markups.write_markups`` writes them.
    """
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    types: List[str] = []
    storage.GetMarkupsTypesInFile(path, types)
    if not types:
        raise PromptError(f"{path} holds no markups; save the clicks from Slicer as a "
                         "markups file (.mrk.json).")
    scene.AddNode(storage)
    nodes = []
    for index in range(len(types)):
        node = storage.AddNewMarkupsNodeFromFile(path, "", index)
        if node is None:
            raise PromptError(f"markup {index} of {path} could not be read; is it a Slicer markups file?")
        nodes.append(node)
    return nodes

