"""Saved prompts over several loaded volumes, from within Slicer (no Qt).

Each case is a volume node and the point lists saved for it: by default the markups file
``<prompts folder>/<volume name>.mrk.json`` (positive and negative lists as ``prompts``
describes, the layout ``sam3d batch`` reads). Every case gets its own segmentation
"<volume> SAM3D" with one segment "Lesion 1", built by one request holding all its clicks.
A failing case is reported and the batch goes on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

from .client import SAM3DClient
from .logic import PromptLogic, user_message
from .prompts import PromptError, clicks_from_markups, load_prompt_file

# progress(done, total, message): called before each case and once at the end.
ProgressCallback = Callable[[int, int, str], None]


PROMPT_FILE_SUFFIX = ".mrk.json"


@dataclass
class BatchCase:
    volume_node: Any
    markups_nodes: Sequence[Any] = field(default_factory=list)
    problem: Optional[str] = None  # why the case has no prompts (reported, not raised)


def load_cases(scene, volume_nodes: Sequence[Any], prompts_folder: str) -> List[BatchCase]:
    """One case per volume, with the point lists of ``<prompts_folder>/<volume name>.mrk.json``."""
    cases = []
    for volume_node in volume_nodes:
        path = os.path.join(prompts_folder, volume_node.GetName() + PROMPT_FILE_SUFFIX)
        if not os.path.isfile(path):
            cases.append(BatchCase(volume_node, problem=f"No saved prompts: {path} does not exist."))
            continue
        try:
            cases.append(BatchCase(volume_node, load_prompt_file(scene, path)))
        except PromptError as error:
            cases.append(BatchCase(volume_node, problem=str(error)))
    return cases


@dataclass
class BatchResult:
    volume_name: str
    segmentation_node: Any  # None when the case failed before a segmentation was made
    segment_id: Optional[str]
    clicks: int
    voxels: int
    seconds: float
    error: Optional[str] = None  # the user-facing message when the case failed


def run_saved_prompts(client: SAM3DClient, cases: Sequence[BatchCase], scene=None,
                      progress: Optional[ProgressCallback] = None) -> List[BatchResult]:
    """Segment every case from its saved clicks; one result per case, in order."""
    results: List[BatchResult] = []
    total = len(cases)
    for number, case in enumerate(cases):
        name = case.volume_node.GetName()
        if progress is not None:
            progress(number, total, f"Segmenting {name} ({number + 1}/{total})")
        logic = PromptLogic(client, scene=scene)
        started = time.perf_counter()
        segmentation = None
        segment_id = None
        clicks = clicks_from_markups(case.markups_nodes)
        try:
            if case.problem:
                raise PromptError(case.problem)
            if not clicks:
                raise PromptError(f"The saved prompts of '{name}' hold no defined point.")
            segmentation = logic.create_segmentation(case.volume_node)
            segment_id = logic.add_lesion_segment(segmentation)
            logic.set_target(case.volume_node, segmentation, segment_id)
            result = logic.click_points(clicks)
            results.append(BatchResult(name, segmentation, segment_id, len(clicks), result.voxels,
                                       time.perf_counter() - started))
        except Exception as error:
            results.append(BatchResult(name, segmentation, segment_id, len(clicks), 0,
                                       time.perf_counter() - started, user_message(error)))
        finally:
            logic.close()
    if progress is not None:
        progress(total, total, f"Done: {sum(r.error is None for r in results)} of {total} segmented")
    return results
