"""Saved prompts over several loaded volumes, from within Slicer (no Qt).

Each case is a volume node and the point lists saved for it: the markups file
``<prompts folder>/<volume name>.mrk.json`` (the module's *Save prompts for batch* writes the
volume's point list and every box ROI there), and the box ROIs Slicer's Save dialog writes
beside it, one file each: ``<volume name> lesion N box.mrk.json`` (and the older
``<volume name> box.mrk.json``); a box file whose ROI the list's file already holds (same name) is
skipped. Its lists and ROIs are grouped into lesions as
``sam3d batch`` groups them (``prompts.saved_lesions``; an ROI is its lesion's box). Every case gets its own segmentation
"<volume> SAM3D" with one segment per lesion ("Lesion 1", "Lesion 2", ...); the volume is
uploaded once per case, each lesion is one request holding all its clicks and its box, and the server
session is freed after the last one. A failing case is reported and the batch goes on.
In the Widget a :class:`BatchRun` runs the cases on a queue of its own, with progress and
cancel, so interactive clicks never wait behind a batch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

from .client import SAM3DClient
from .logic import BoxPrompt, Job, PromptLogic, delete_session_quietly, user_message
from .prompts import (PROMPT_FILE_SUFFIX, ROI_CLASS, PromptError, SavedLesion, load_prompt_file,
                      prompt_file_path, saved_lesions)
from .scheduler import InteractionQueue

CANCELLED = "Cancelled before it was segmented."



@dataclass
class BatchCase:
    volume_node: Any
    markups_nodes: Sequence[Any] = field(default_factory=list)
    problem: Optional[str] = None  # why the case has no prompts (reported, not raised)


@dataclass
class BatchResult:
    volume_name: str
    segmentation_node: Any  # None when the case failed before a segmentation was made
    segment_ids: List[str]  # one per lesion segmented
    clicks: int
    voxels: List[int]  # per lesion
    seconds: float  # network time, all lesions
    error: Optional[str] = None  # the user-facing message when the case failed


def box_file_paths(prompts_folder: str, volume_node) -> List[str]:
    """The box ROIs of ``volume_node`` that Slicer's Save dialog wrote beside its point list, one
    file each: ``<volume> lesion N box.mrk.json`` in lesion order, then ``<volume> box.mrk.json``."""
    name = volume_node.GetName()
    numbered = re.compile(re.escape(f"{name} lesion ") + r"(\d+)" + re.escape(f" box{PROMPT_FILE_SUFFIX}") + "$")
    try:
        entries = os.listdir(prompts_folder)
    except OSError:
        return []
    found = sorted((int(match.group(1)), entry) for match, entry in
                   ((numbered.match(entry), entry) for entry in entries) if match)
    paths = [os.path.join(prompts_folder, entry) for _, entry in found]
    unnumbered = os.path.join(prompts_folder, f"{name} box{PROMPT_FILE_SUFFIX}")
    return paths + ([unnumbered] if os.path.isfile(unnumbered) else [])


def has_saved_prompts(prompts_folder: str, volume_node) -> bool:
    """Whether ``prompts_folder`` holds a point list file or a box file of ``volume_node``."""
    return (os.path.isfile(prompt_file_path(prompts_folder, volume_node))
            or bool(box_file_paths(prompts_folder, volume_node)))


def load_cases(scene, volume_nodes: Sequence[Any], prompts_folder: str) -> List[BatchCase]:
    """One case per volume, with the markups of its saved prompt files (the module docstring)."""
    cases = []
    for volume_node in volume_nodes:
        path = prompt_file_path(prompts_folder, volume_node)
        has_list = os.path.isfile(path)
        box_paths = box_file_paths(prompts_folder, volume_node)
        if not has_list and not box_paths:
            cases.append(BatchCase(volume_node, problem=f"No saved prompts: {path} does not exist."))
            continue
        try:
            nodes = load_prompt_file(scene, path) if has_list else []
            nodes += _load_box_files(scene, box_paths, {node.GetName() for node in nodes if node.IsA(ROI_CLASS)})
            cases.append(BatchCase(volume_node, nodes))
        except PromptError as error:
            cases.append(BatchCase(volume_node, problem=str(error)))
    return cases


def _load_box_files(scene, paths: Sequence[str], names: set) -> List[Any]:
    """The ROIs of box files whose names are not in ``names`` yet; every other markup these files
    hold is removed from the scene again."""
    rois = []
    for path in paths:
        for node in load_prompt_file(scene, path):
            if node.IsA(ROI_CLASS) and node.GetName() not in names:
                names.add(node.GetName())
                rois.append(node)
            else:
                scene.RemoveNode(node)
    return rois


class CaseRun:
    """One case as a series of jobs, one per lesion, for the Widget's queue or a loop.

    ``steps`` jobs come from ``prepare_next()`` in turn; each one's ``finish()`` returns
    None, except the last one (or the first that fails), which returns the case's BatchResult.
    """

    def __init__(self, client: SAM3DClient, case: BatchCase, scene=None):
        self.name = case.volume_node.GetName()
        self._case = case
        self._logic = PromptLogic(client, scene=scene)
        self._client = client
        self._lesions: List[SavedLesion] = []
        self._result = BatchResult(self.name, None, [], 0, [], 0.0)
        self._done = False
        try:
            if case.problem:
                raise PromptError(case.problem)
            self._lesions = saved_lesions(case.markups_nodes)
        except PromptError as error:
            self._result.error = user_message(error)
        self._result.clicks = sum(len(lesion.clicks) for lesion in self._lesions)
        self.steps = max(len(self._lesions), 1)

    def prepare_next(self) -> Job:
        """The job of the next lesion (a no-op once the case is over)."""
        if self._done:
            return Job("batch", lambda: None, lambda result, error: None)
        if self._result.error is not None:
            return self._report()
        try:
            job = self._prepare_lesion(len(self._result.segment_ids))
        except Exception as error:  # reported as this case's result; the batch goes on
            self._result.error = user_message(error)
            return self._report()
        last = len(self._result.segment_ids) == len(self._lesions)

        def work() -> None:
            try:
                job.run()
            finally:
                if (last or job.state.update is None) and job.state.session_id is not None:
                    delete_session_quietly(self._client, job.state.session_id)

        def apply(_: Any, error: Optional[BaseException]) -> Optional[BatchResult]:
            self._result.seconds += job.state.seconds
            try:
                self._result.voxels.append(job.finish().voxels)
            except Exception as failure:
                self._result.error = user_message(failure)
                return self._finish()
            return self._finish() if last else None

        return Job("batch", work, apply)

    def cancel(self) -> Job:
        """The job that ends the case now: it frees the case's session and returns its
        result, marked cancelled unless the case was already over."""
        if self._done:
            return Job("batch", lambda: None, lambda result, error: None)
        self._result.error = CANCELLED
        return self._report()

    def _prepare_lesion(self, index: int) -> Job:
        volume = self._case.volume_node
        if self._result.segmentation_node is None:
            self._result.segmentation_node = self._logic.create_segmentation(volume)
            segment_id = self._logic.add_lesion_segment(self._result.segmentation_node)
            self._logic.set_target(volume, self._result.segmentation_node, segment_id)
        else:
            segment_id = self._logic.next_lesion()
        self._result.segment_ids.append(segment_id)
        lesion = self._lesions[index]
        box = None
        if lesion.roi is not None:
            kji = self._logic.box_kji(lesion.roi)
            if kji is None:
                raise PromptError(f"The box {lesion.roi.GetName()!r} is not placed; draw it again and save the prompts.")
            box = BoxPrompt(kji=kji)
        return self._logic.prepare_clicks(lesion.clicks, box=box)

    def _report(self) -> Job:
        """A job that frees the case's session (if any) and returns its result."""
        session_id = self._logic.session_id

        def work() -> None:
            if session_id is not None:
                delete_session_quietly(self._client, session_id)

        return Job("batch", work, lambda result, error: self._finish())

    def _finish(self) -> BatchResult:
        self._done = True
        return self._result


class BatchRun:
    """Cases on a queue of their own (the interactive queue never waits behind them), pumped
    from the main thread like the interactive one; ``results`` grows as cases finish and
    ``cancel()`` ends the batch after the request in flight (every case still gets a result).

    ``on_progress(run)`` is called on the main thread after each finished case.
    """

    def __init__(self, client: SAM3DClient, cases: Sequence[BatchCase], scene=None,
                 on_progress: Optional[Callable[["BatchRun"], None]] = None,
                 on_work: Optional[Callable[[], None]] = None):
        self.total = len(cases)
        self.results: List[BatchResult] = []
        self.cancelled = False
        self._on_progress = on_progress
        self._queue = InteractionQueue(None, self._done, on_work=on_work)
        # Each case's own client: a client serves one thread at a time.
        self._runs = [CaseRun(SAM3DClient(client.base_url, api_key=client.api_key, timeout=client.timeout),
                              case, scene) for case in cases]
        for run in self._runs:
            for _ in range(run.steps):
                self._queue.add("batch", run.prepare_next)

    @property
    def finished(self) -> bool:
        return self._queue.idle

    def pump(self) -> None:
        self._queue.pump()

    def cancel(self) -> None:
        """Drop the queued lesions; each unfinished case is then ended (its session freed)."""
        if self.cancelled or self.finished:
            return
        self.cancelled = True
        self._queue.drop_pending()
        for run in self._runs:
            self._queue.add("batch", run.cancel)

    def wait(self, timeout: float = 120.0) -> None:
        """Pump until the batch is over (scripts and tests; the Widget pumps from its timer)."""
        self._queue.wait_until_idle(timeout)

    def _done(self, name: str, result: Any, error: Optional[BaseException]) -> None:
        if isinstance(result, BatchResult):
            self.results.append(result)
            if self._on_progress is not None:
                self._on_progress(self)
