"""Click prompts as Slicer markups: the sign and lesion convention, the volume's prompt list,
saved prompt files, and the place mode the module switches on.

The conventions are shared with ``sam3d segment`` / ``sam3d batch`` (``sam3d.data.markups`` and
``sam3d.batch.prompts``; the Slicer side cannot import that package, so the rules are repeated
here and the tests run both on the same files):

- a control point is *negative* when its point list's name contains "negative" or ends with
  "-", or when the point's description is "negative" or "lesion N negative"; every other
  defined point is *positive*;
- a description "lesion N" / "lesion N negative" tags the point with lesion N: such a list is
  read as one list per lesion number ("<name> lesion N"), its untagged points staying in a list
  of its own name;
- in a saved file, every point list whose name is not negative is one lesion; a negative list
  belongs to the lesion list with the same name once "positive" / "negative" and a trailing
  "+" / "-" are dropped ("Lesion 2 negative" -> "Lesion 2"), or to the only lesion list.
- a Markups ROI in a saved file is a lesion's box: that of the lesion list with the same name
  once a trailing word "box" / "ROI" is dropped ("Lesion 2 box" -> "Lesion 2"), or of the only
  lesion list when the file has one list and one ROI, unless both names end in different lesion
  numbers ("CT lesion 2 box" is not the box of "CT lesion 1"); any other ROI is a lesion of its
  own (a box alone), after the lists.

The module keeps every click of a volume in one point list per volume, named after the volume
and tied to it by a node reference: positive points are selected (green), negative ones
unselected (red), and each point's description says its lesion and sign; each lesion's box is a
Markups ROI named "<volume> lesion N box" (``box.py``), the box of the list "<volume> lesion N".
``write_prompt_file`` saves the list and the boxes as one file, ``<volume>.mrk.json``, which the
module's batch and ``sam3d batch`` read with every lesion, sign and box (Slicer's own Save dialog
writes each markup to a file of its own; the batch reads those box files too). The module
adopts a list only through the reference (so lists written by ``sam3d`` or loaded from a file
never take over), and points a list already holds are never sent as clicks.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import slicer

# The node reference from a prompt list to its volume, and the list's attribute that numbers
# its lesions ({"<segmentation ID>/<segment ID>": N}).
VOLUME_REFERENCE_ROLE = "SAM3DPrompt.volume"
LESIONS_ATTRIBUTE = "SAM3DPrompt.lesions"
POSITIVE_COLOR = (0.10, 0.80, 0.25)
NEGATIVE_COLOR = (0.95, 0.15, 0.15)
POSITIVE = 1
NEGATIVE = 0
_SIGN_WORDS = re.compile(r"\b(positive|negative)\b")
_BOX_WORD = re.compile(r"\s*\b(box|roi)\s*$", re.IGNORECASE)
_LESION_NUMBER = re.compile(r"\blesion\s+(\d+)$")
ROI_CLASS = "vtkMRMLMarkupsROINode"
_DESCRIPTION = re.compile(r"^\s*(?:lesion\s+(\d+))?\s*(positive|negative)?\s*$", re.IGNORECASE)
PROMPT_FILE_SUFFIX = ".mrk.json"


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


def parse_description(description: str) -> Tuple[Optional[int], bool]:
    """A control point's description -> (lesion number or None, negative)."""
    match = _DESCRIPTION.match(description or "")
    if match is None:
        return None, False
    return (int(match.group(1)) if match.group(1) else None,
            (match.group(2) or "").lower() == "negative")


def point_description(lesion: int, label: int) -> str:
    """The description the module gives a point of lesion ``lesion`` with ``label``."""
    return f"lesion {lesion}" + (" negative" if label == NEGATIVE else "")


def point_label(markups_node, index: int) -> int:
    """1 (positive) or 0 (negative) for control point ``index`` of ``markups_node``."""
    if is_negative_name(markups_node.GetName() or ""):
        return NEGATIVE
    negative = parse_description(markups_node.GetNthControlPointDescription(index) or "")[1]
    return NEGATIVE if negative else POSITIVE


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
    return [click for node in markups_nodes if not node.IsA(ROI_CLASS)
            for _, clicks in _split_by_lesion(node) for click in clicks]


def _split_by_lesion(node) -> List[Tuple[str, List[Click]]]:
    """A point list as (name, clicks) lists: one per lesion tag (the module docstring)."""
    name = node.GetName() or ""
    tagged: Dict[Optional[int], List[Click]] = {}
    for index in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
            continue
        lesion = parse_description(node.GetNthControlPointDescription(index) or "")[0]
        tagged.setdefault(lesion, []).append(Click(ras=click_from_markup(node, index).ras,
                                                   label=point_label(node, index)))
    lists = [(name, tagged.get(None, []))] if None in tagged or len(tagged) == 0 else []
    lists += [(f"{name} lesion {tag}", tagged[tag]) for tag in sorted(t for t in tagged if t is not None)]
    return lists


def _base_name(name: str) -> str:
    """A point list's name without its sign words: 'Lesion 2 negative' / 'Lesion 2-' -> 'lesion 2'."""
    name = _SIGN_WORDS.sub(" ", name.strip().lower()).strip()
    return " ".join(name.rstrip("+-").split())


def _other_lesions(name: str, other: str) -> bool:
    """Whether two names end in different lesion numbers ("... lesion 1", "... lesion 2")."""
    numbers = [_LESION_NUMBER.search(_base_name(n)) for n in (name, other)]
    return all(numbers) and numbers[0].group(1) != numbers[1].group(1)


@dataclass
class SavedLesion:
    """One lesion of saved prompts: its clicks and the ROI node of its box (None: no box)."""

    clicks: List[Click]
    roi: Any = None


def saved_lesions(markups_nodes) -> List[SavedLesion]:
    """Saved point lists and ROIs grouped into lesions (the rule in the module docstring), in
    list order, box-only lesions last.

    Raises PromptError when there is neither a list holding positive clicks nor an ROI, a
    negative list matches no lesion, or a lesion has neither a box nor a positive click."""
    rois = [node for node in markups_nodes if node.IsA(ROI_CLASS)]
    lists = [entry for node in markups_nodes if not node.IsA(ROI_CLASS) for entry in _split_by_lesion(node)]
    lesion_lists = [n for n, (name, clicks) in enumerate(lists) if clicks and not is_negative_name(name)]
    if not lesion_lists and not rois:
        raise PromptError("The saved prompts hold only negative point lists; add a point list of "
                          "positive clicks on the lesion.")
    groups = {n: SavedLesion([]) for n in lesion_lists}
    for index, (name, clicks) in enumerate(lists):
        if not clicks:
            continue
        if index in groups:
            owner = index
        else:
            matches = [n for n in lesion_lists if _base_name(lists[n][0]) == _base_name(name)]
            if not lesion_lists or (len(matches) != 1 and len(lesion_lists) != 1):
                raise PromptError(f"The negative point list {name!r} belongs to no lesion; name it "
                                  "after its lesion's list (e.g. 'Lesion 2 negative' for 'Lesion 2').")
            owner = (matches or lesion_lists)[0]
        groups[owner].clicks.extend(clicks)
    box_only = []
    for roi in rois:
        owner_name = _BOX_WORD.sub("", roi.GetName() or "")
        matches = [n for n in lesion_lists if _base_name(lists[n][0]) == _base_name(owner_name)]
        if (not matches and len(lesion_lists) == 1 and len(rois) == 1
                and not _other_lesions(lists[lesion_lists[0]][0], owner_name)):
            matches = lesion_lists
        if matches and groups[matches[0]].roi is None:
            groups[matches[0]].roi = roi
        elif matches:
            raise PromptError(f"Lesion {lists[matches[0]][0]!r} has two boxes; keep one ROI per lesion.")
        else:
            box_only.append(SavedLesion([], roi))
    for n in lesion_lists:
        if groups[n].roi is None and not any(click.label == POSITIVE for click in groups[n].clicks):
            raise PromptError(f"Lesion {lists[n][0]!r} has no positive click; place at least one "
                              "positive click on it, or a box.")
    return [groups[n] for n in lesion_lists] + box_only


def find_prompt_list(scene, volume_node):
    """The prompt list tied to ``volume_node`` (by the node reference), or None."""
    if volume_node is None:
        return None
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLMarkupsFiducialNode")
        if node.GetNodeReferenceID(VOLUME_REFERENCE_ROLE) == volume_node.GetID():
            return node
    return None


def create_prompt_list(scene, volume_node):
    """A new prompt list for ``volume_node``: named after it (so Slicer proposes the file name
    ``<volume>.mrk.json``), tied to it, green for positive (selected) and red for negative points."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", volume_node.GetName())
    node.CreateDefaultDisplayNodes()
    node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    node.SetAttribute(LESIONS_ATTRIBUTE, "{}")
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*POSITIVE_COLOR)
        display.SetColor(*NEGATIVE_COLOR)
    return node


def lesion_number(prompt_list, segmentation_node, segment_id: str) -> int:
    """The number of the lesion written into ``segment_id`` among the list's lesions (a new
    segment gets the next free number; the numbering is kept in the list's attribute)."""
    try:
        numbers = json.loads(prompt_list.GetAttribute(LESIONS_ATTRIBUTE) or "{}")
    except ValueError:
        numbers = {}
    key = f"{segmentation_node.GetID()}/{segment_id}"
    if key not in numbers:
        used = set(numbers.values())
        for index in range(prompt_list.GetNumberOfControlPoints()):
            tag = parse_description(prompt_list.GetNthControlPointDescription(index) or "")[0]
            if tag is not None:
                used.add(tag)
        numbers[key] = next(n for n in range(1, len(used) + 2) if n not in used)
        prompt_list.SetAttribute(LESIONS_ATTRIBUTE, json.dumps(numbers))
    return int(numbers[key])


def mark_point(prompt_list, index: int, lesion: int, label: int) -> None:
    """Give point ``index`` its lesion and sign: the description (saved with the file) and the
    selection state that colours it (selected: green positive, unselected: red negative)."""
    prompt_list.SetNthControlPointDescription(index, point_description(lesion, label))
    prompt_list.SetNthControlPointSelected(index, label == POSITIVE)


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


def _file_stem(path: str) -> str:
    """The file's name without ``.mrk.json`` / ``.json``."""
    name = os.path.basename(path)
    for suffix in (PROMPT_FILE_SUFFIX, ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def load_prompt_file(scene, path: str) -> List[object]:
    """Load every markup of a saved markups file (``.mrk.json``) into the scene: its point lists
    and its ROIs (boxes).

    Slicer's own JSON readers do the parsing (LPS files become RAS), an ROI's by the ROI storage
    node, which alone reads its centre, size and orientation; a file may hold a positive and a
    negative list, as ``sam3d.data.markups.write_markups`` writes them. A markup without a name
    in the file (Slicer's writer leaves it out) is named after the file, as ``sam3d batch`` names
    it, not made unique beside the volume of that name (the lesions are grouped by name).
    """
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    types: List[str] = []
    storage.GetMarkupsTypesInFile(path, types)
    if not types:
        raise PromptError(f"{path} holds no markups; save the clicks from Slicer as a "
                         "markups file (.mrk.json).")
    roi_storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    for reader in (storage, roi_storage):
        scene.AddNode(reader)
    nodes = []
    for index, markup_type in enumerate(types):
        reader = roi_storage if markup_type == "ROI" else storage
        node = reader.AddNewMarkupsNodeFromFile(path, _file_stem(path), index)
        if node is None:
            raise PromptError(f"markup {index} of {path} could not be read; is it a Slicer markups file?")
        nodes.append(node)
    return nodes


def prompt_file_path(prompts_folder: str, volume_node) -> str:
    """Where the saved prompts of ``volume_node`` are written and read: ``<folder>/<volume>.mrk.json``."""
    return os.path.join(prompts_folder, volume_node.GetName() + PROMPT_FILE_SUFFIX)


def write_prompt_file(scene, path: str, markups_nodes) -> None:
    """Write point lists and ROIs as one markups file, read back by ``load_prompt_file`` and
    ``sam3d batch``: each node by Slicer's own JSON writer (to a temporary file), their markups
    merged in order, each with its node's name (Slicer's writer leaves it out; the lesions are
    grouped by name). ``path`` is replaced at once, so no reader sees half a file.

    Raises PromptError when Slicer cannot write a node, OSError when the folder cannot be written."""
    merged: List[dict] = []
    schema = None
    with tempfile.TemporaryDirectory() as folder:
        for index, node in enumerate(markups_nodes):
            part = os.path.join(folder, f"{index}{PROMPT_FILE_SUFFIX}")
            writer = (slicer.vtkMRMLMarkupsROIJsonStorageNode() if node.IsA(ROI_CLASS)
                      else slicer.vtkMRMLMarkupsJsonStorageNode())
            scene.AddNode(writer)
            try:
                writer.SetFileName(part)
                written = writer.WriteData(node)
            finally:
                scene.RemoveNode(writer)
            if not written:
                raise PromptError(f"Slicer could not write the markup {node.GetName()!r}.")
            with open(part, encoding="utf-8") as stream:
                document = json.load(stream)
            schema = schema or document.get("@schema")
            for markup in document.get("markups", []):
                markup["name"] = node.GetName()
                merged.append(markup)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump({"@schema": schema, "markups": merged}, stream, indent=2)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


class PlaceMode:
    """Slicer's place mode for the module's prompt list (or box ROI), and its undoing: ``start``
    remembers the interaction node's "place multiple points" setting and the selection node's
    active place list the first time, ``stop`` gives both back and leaves Place mode (so the
    application is as the user had it once the module stops placing, exits or is cleaned up)."""

    def __init__(self, interaction_node, selection_node):
        self.interaction_node = interaction_node
        self.selection_node = selection_node
        self._saved: Optional[Tuple[int, str, str]] = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def start(self, markups_node, persistent: bool = True) -> None:
        """Place into ``markups_node``: point after point, or one markup (a box) when not ``persistent``."""
        if self._saved is None:
            self._saved = (self.interaction_node.GetPlaceModePersistence(),
                           self.selection_node.GetActivePlaceNodeClassName() or "",
                           self.selection_node.GetActivePlaceNodeID() or "")
        self.selection_node.SetReferenceActivePlaceNodeClassName(markups_node.GetClassName())
        self.selection_node.SetActivePlaceNodeID(markups_node.GetID())
        self.interaction_node.SetPlaceModePersistence(1 if persistent else 0)
        self.interaction_node.SetCurrentInteractionMode(self.interaction_node.Place)

    def stop(self) -> None:
        if self._saved is None:
            return
        persistence, class_name, node_id = self._saved
        self._saved = None
        if self.interaction_node.GetCurrentInteractionMode() == self.interaction_node.Place:
            self.interaction_node.SwitchToViewTransformMode()
        self.interaction_node.SetPlaceModePersistence(persistence)
        if class_name:
            self.selection_node.SetReferenceActivePlaceNodeClassName(class_name)
        self.selection_node.SetActivePlaceNodeID(node_id or None)
