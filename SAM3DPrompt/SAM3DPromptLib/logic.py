"""Click-prompted segmentation of one volume through a SAM3D server (no Qt).

``PromptLogic`` owns one server session (the volume is uploaded once per node ID + image
MTime), one *object* on the server (the lesion being segmented into the target segment), the
clicks of that object and an undo stack of the segment's voxels. It works the same from
Slicer's Python console, from the module's Widget and from pytest with slicer-core.

Each operation that talks to the server is split in three so the Widget can keep Slicer
responsive: ``prepare_*`` (main thread: reads MRML, converts points) returns a
:class:`Job`; ``Job.run()`` does only network work (any thread); ``Job.finish()``
(main thread) writes the result into the scene or raises the error. The plain methods
(``click``, ``undo``, ...) do all three in a row.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .box import (RoiState, box_roi_name, create_box_roi, find_box_roi, flatten_roi, kji_per_mm, make_roi_deep,
                  nearest_axis, release_box_roi, restore_roi, roi_box_kji, roi_defined, roi_state, volume_axes_world,
                  volume_box_rois)
from .client import (InvalidServerURL, MaskUpdate, NothingToUndo, SAM3DClient, SAM3DError,
                     SessionExpired, SessionLimitReached, SessionNotFound)
from .geometry import ras_to_kji
from .mrml_io import (GeometryError, SegmentFingerprint, VolumeFingerprint, ras_to_ijk_matrix,
                      read_segment_mask, segment_fingerprint, set_tumor_terminology, use_binary_labelmap,
                      volume_array, volume_fingerprint, volume_shape, volume_spacing_kji,
                      world_to_local_matrix, write_segment_box)
from .prompts import (NEGATIVE, POSITIVE, Click, PromptError, create_prompt_list, find_prompt_list,
                      lesion_number, mark_point, prompt_file_path, remove_click_markup, write_prompt_file)
from .wire import outside_volume

SEGMENT_NAME = "Lesion"
# Colours given to new lesion segments in turn.
SEGMENT_COLORS = ((0.95, 0.75, 0.10), (0.20, 0.60, 1.00), (0.85, 0.30, 0.85),
                  (0.10, 0.85, 0.80), (1.00, 0.50, 0.20), (0.55, 0.90, 0.30))


@dataclass
class ClickResult:
    """What one click (or several merged clicks) did to the segment."""

    clicks: int  # clicks sent in this request
    voxels: int  # foreground voxels of the segment's object after the click
    lo: Tuple[int, int, int]  # half-open kji box that changed
    hi: Tuple[int, int, int]
    encoder_ran: bool
    uploaded: bool  # the volume was (re-)uploaded by this request
    prior_sent: bool  # the segment's own (hand-edited) voxels were sent first
    replayed: bool  # the session had expired: re-uploaded and the object's clicks replayed
    seconds: float  # wall time of the network part
    timing_ms: Dict[str, float] = field(default_factory=dict)


@dataclass
class BoxPrompt:
    """A box for the current object: ``[lo, hi]`` kji corners and the ROI that drew it (None:
    the object's box sent again to a server object that lost it)."""

    kji: np.ndarray
    roi: Optional[RoiState] = None


@dataclass
class _Step:
    """One applied click request: what was sent and the segment's voxels it replaced."""

    clicks: List[Click]
    points_kji: np.ndarray
    labels: List[int]
    lo: Tuple[int, int, int]
    before: np.ndarray  # segment voxels in [lo, lo + before.shape) before the step
    box: Optional[BoxPrompt] = None  # the box sent with the step


@dataclass
class _Reset:
    """A reset that can be undone: the steps it dropped, the segment's voxels it replaced
    (in [lo, lo + after.shape)) and the descriptions of the points it removed (click order)."""

    steps: List[_Step]
    lo: Tuple[int, int, int]
    after: np.ndarray
    descriptions: List[str]


@dataclass
class _Upload:
    array: np.ndarray
    spacing_kji: Tuple[float, float, float]
    fingerprint: VolumeFingerprint


@dataclass
class _Wire:
    """What the network part learnt, kept even when it fails half way (e.g. a new session)."""

    session_id: Optional[str] = None
    uploaded: bool = False
    replayed: bool = False
    update: Optional[MaskUpdate] = None
    seconds: float = 0.0


@dataclass
class _ClickPlan:
    """A click request as read from the scene on the main thread: what is sent, and what the
    answer is applied against."""

    clicks: List[Click]
    points: np.ndarray  # kji of the clicks
    labels: List[int]
    shape: Tuple[int, int, int]
    upload: Optional[_Upload]  # the volume to upload first (None: the session holds it)
    old_session: Optional[str]  # the session of the volume's earlier voxels, deleted first
    session_id: Optional[str]  # the session to use when nothing is uploaded
    reset: bool  # the server object is reset first (the target changed)
    box: Optional[BoxPrompt]  # the box sent with the clicks
    current: np.ndarray  # the segment's voxels now
    prior: Optional[np.ndarray]  # sent first when the server's object differs from the segment
    segment_fp: SegmentFingerprint  # of the segment now (to see edits made meanwhile)
    history: List[Tuple[np.ndarray, List[int], Optional[np.ndarray]]]  # the object's steps, to replay
    replay_upload: _Upload  # the volume, for a session the server forgot

    @property
    def box_kji(self) -> Optional[np.ndarray]:
        return None if self.box is None else self.box.kji


class Job:
    """One two-phase server round trip: ``run()`` on any thread (network only), ``finish()`` on the main
    thread (applies the result to the scene, or raises the error; the scene is untouched then).
    ``state`` holds what the network part learnt so far (e.g. the session it created)."""

    def __init__(self, name: str, work: Callable[[], Any],
                 apply: Callable[[Any, Optional[BaseException]], Any], state: Any = None):
        self.name = name
        self.state = state
        self._work = work
        self._apply = apply
        self._result: Any = None
        self._error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self._result = self._work()
        except BaseException as error:  # handed to finish() on the main thread
            self._error = error

    def finish(self) -> Any:
        return self._apply(self._result, self._error)


def user_message(error: BaseException) -> str:
    """The text the Widget shows for an error (client errors carry what to do)."""
    if isinstance(error, SessionLimitReached):
        return (f"{error.message.rstrip('.')}. Press 'Next lesion' to go on in a new segment, or "
                "'Reset lesion' to start this one over.")
    if isinstance(error, (SAM3DError, PromptError, GeometryError)):
        return str(error)
    return f"Unexpected error: {error!r}. See the Python console for details."


def describe_server(capabilities: Dict[str, Any], base_url: str) -> str:
    """One status line: server, model (its variant and the first digits of its weights' SHA-256,
    which say which trained model answers) and device."""
    model = capabilities.get("model", {})
    name = model.get("name", "?")
    about = [model["variant"]] if model.get("variant") else []
    if model.get("sha256"):  # a server older than this field does not say
        about.append("weights " + model["sha256"][:8])
    device = capabilities.get("device", "?")
    auth = ", key required" if capabilities.get("auth_required") else ""
    return (f"Connected to {base_url}: model {name}{' (' + ', '.join(about) + ')' if about else ''} "
            f"on {device}, API v{capabilities.get('api_version', '?')}{auth}")


class PromptLogic:
    """Interactive segmentation of ``volume_node`` into one segment of ``segmentation_node``."""

    def __init__(self, client: Optional[SAM3DClient] = None, scene=None):
        if scene is None:
            import slicer
            scene = slicer.mrmlScene
        self.scene = scene
        self.client = client
        self.volume_node = None
        self.segmentation_node = None
        self.segment_id: Optional[str] = None
        self.session_id: Optional[str] = None
        self.uploads = 0  # volumes uploaded by this logic (for status and tests)
        self.capabilities: Optional[Dict[str, Any]] = None  # of the server, once asked
        self._session_fingerprint: Optional[VolumeFingerprint] = None
        self._steps: List[_Step] = []
        self._object_needs_reset = False
        # The mask the server holds for the current object (None: unknown), and the segment's
        # fingerprint at the moment its voxels were known to equal it (None: not known).
        self._server_mask: Optional[np.ndarray] = None
        self._segment_fp: Optional[SegmentFingerprint] = None
        self._reset: Optional[_Reset] = None  # the last reset, while it can be undone
        self._adopted: set = set()  # IDs of prompt lists whose earlier points are not clicks
        self._seen: set = set()  # (list ID, point ID) of every point already taken
        self._restoring = False
        self._removing_box_roi = False  # the Logic removes a box ROI itself (``user_removed_box``)

    # -- connection --------------------------------------------------------------------------
    def connect(self, base_url: str, api_key: Optional[str] = None, timeout: float = 30.0,
                ca_bundle: Optional[str] = None) -> SAM3DClient:
        """Use the server at ``base_url`` (raises InvalidServerURL for an address without http://,
        TLSError for a missing ``ca_bundle``: the certificate file an https server is checked with)."""
        client = SAM3DClient(base_url, api_key=api_key, timeout=timeout, ca_bundle=ca_bundle)
        if self.client is not None and self.client.base_url != client.base_url:
            self._forget_session()  # the old server expires it; no network here
            self.capabilities = None
        self.client = client
        return client

    def _own_client(self) -> Optional[SAM3DClient]:
        """A client of its own (same server, key and timeout) for a thread that may run beside
        the worker: a client (its HTTP session) serves one thread at a time."""
        client = self.client
        return None if client is None else SAM3DClient(client.base_url, api_key=client.api_key,
                                                       timeout=client.timeout, ca_bundle=client.ca_bundle)

    def renew_client(self) -> None:
        """Leave the current client to a request that was abandoned while still running."""
        self.client = self._own_client()

    def _require_client(self) -> SAM3DClient:
        if self.client is None:
            raise InvalidServerURL("No server is set.", "Enter the server address and press "
                                   "'Test connection'.")
        return self.client

    def prepare_server_status(self) -> Job:
        """Capabilities handshake; ``finish()`` returns the status line of :func:`describe_server`."""
        client = self._require_client()

        def apply(caps: Any, error: Optional[BaseException]) -> str:
            if error is None and client is self.client:
                self.capabilities = caps
            return self._raise_or(error, describe_server(caps, client.base_url))

        return Job("connect", client.capabilities, apply)

    # -- target ------------------------------------------------------------------------------
    def set_target(self, volume_node, segmentation_node, segment_id: Optional[str]) -> None:
        """Choose what is segmented into where. A new segment starts a new object on the server."""
        if segment_id is not None and segmentation_node is not None:
            if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
                raise PromptError(f"Segment {segment_id!r} is not in '{segmentation_node.GetName()}'.")
        same_object = (segmentation_node is self.segmentation_node and segment_id == self.segment_id
                       and volume_node is self.volume_node)
        if not same_object:
            self._leave_box(remove=False)
        self.volume_node = volume_node
        if segmentation_node is not None:
            use_binary_labelmap(segmentation_node)
            if volume_node is not None and not segmentation_node.GetNodeReference(
                    segmentation_node.GetReferenceImageGeometryReferenceRole()):
                segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        self.segmentation_node = segmentation_node
        self.segment_id = segment_id
        if not same_object:  # the points of the lesion left stay in the prompt list
            self._start_new_object(remove_markups=False)

    def ensure_target(self, volume_node, segmentation_node, segment_id: Optional[str]) -> Tuple[Any, str]:
        """The segmentation and segment a click on ``volume_node`` goes to: a missing
        segmentation is created, and a missing segment ID, or one the segmentation no longer
        holds (deleted, or left from another segmentation), becomes a new "Lesion N"."""
        if volume_node is None:
            raise PromptError("Select an input volume first.")
        if segmentation_node is None:
            segmentation_node = self.create_segmentation(volume_node)
        if not segment_id or segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            segment_id = self.add_lesion_segment(segmentation_node)
        return segmentation_node, segment_id

    def create_segmentation(self, volume_node) -> Any:
        """A new segmentation for ``volume_node`` (same grid and parent transform)."""
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                            f"{volume_node.GetName()} SAM3D")
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        return node

    def add_lesion_segment(self, segmentation_node) -> str:
        """Add an empty segment "Lesion N" (first unused N), coded as a tumor (SNOMED CT
        Neoplasm, for DICOM SEG export), and return its ID."""
        segmentation = segmentation_node.GetSegmentation()
        names = {segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())}
        number = 1
        while f"{SEGMENT_NAME} {number}" in names:
            number += 1
        color = SEGMENT_COLORS[(number - 1) % len(SEGMENT_COLORS)]
        segment_id = segmentation.AddEmptySegment("", f"{SEGMENT_NAME} {number}", color)
        set_tumor_terminology(segmentation_node, segment_id)
        return segment_id

    def next_lesion(self) -> str:
        """Keep the current segment, add a new empty one and make it the target (no network:
        the server object is reset with the next click). A target that is still empty (no
        click, no voxel) is kept as the next lesion, so no empty segment is left behind."""
        if self.volume_node is None:
            raise PromptError("Select an input volume first.")
        if (self.segmentation_node is not None and self.segment_id is not None and not self._steps
                and self.segmentation_node.GetSegmentation().GetSegment(self.segment_id) is not None
                and not self._segment_voxels().any()):
            return self.segment_id
        if self.segmentation_node is None:
            self.segmentation_node = self.create_segmentation(self.volume_node)
        self._leave_box(remove=False)
        self.segment_id = self.add_lesion_segment(self.segmentation_node)
        self._start_new_object(remove_markups=False)
        return self.segment_id

    def reset(self) -> None:
        """Start the current lesion over: the segment gets back the voxels it had before its
        first click (bit for bit), its clicks are removed (no network: applied with the next
        click). ``undo()`` right after gives back the lesion, its clicks and its undo steps."""
        steps = [step for step in self._steps if step.before.size]
        record = None
        if self._steps:
            lo = tuple(min(step.lo[a] for step in steps) for a in range(3)) if steps else (0, 0, 0)
            hi = tuple(max(step.lo[a] + step.before.shape[a] for step in steps) for a in range(3)) if steps else (0, 0, 0)
            current = self._segment_voxels()
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            descriptions = [self._point_description(click) for step in self._steps for click in step.clicks]
            record = _Reset(steps=list(self._steps), lo=lo, after=current[box].copy(),
                            descriptions=descriptions)
        for step in reversed(self._steps):
            self._write_box(step.lo, step.before)
        self._leave_box(remove=True)
        self._start_new_object(remove_markups=True)
        self._reset = record

    def _point_description(self, click: Click) -> str:
        node = self.scene.GetNodeByID(click.markups_node_id) if click.markups_node_id else None
        index = node.GetNthControlPointIndexByID(click.control_point_id) if node is not None else -1
        return node.GetNthControlPointDescription(index) if index >= 0 else ""

    def _undo_reset(self) -> None:
        record, self._reset = self._reset, None
        self._write_box(record.lo, record.after)
        prompt_list = self.prompt_list() if any(click.markups_node_id for step in record.steps
                                                for click in step.clicks) else None
        descriptions = iter(record.descriptions)
        self._restoring = True
        try:
            for step in record.steps:
                for click in step.clicks:
                    description = next(descriptions)
                    if prompt_list is None or not click.markups_node_id:
                        continue
                    index = prompt_list.AddControlPointWorld(*click.ras)
                    click.markups_node_id = prompt_list.GetID()
                    click.control_point_id = prompt_list.GetNthControlPointID(index)
                    self._seen.add((click.markups_node_id, click.control_point_id))
                    prompt_list.SetNthControlPointDescription(index, description)
                    prompt_list.SetNthControlPointSelected(index, click.label == POSITIVE)
        finally:
            self._restoring = False
        self._steps = record.steps
        self._object_needs_reset = self.session_id is not None
        self._server_mask = None
        self._segment_fp = None
        if self._object_box() is not None:
            self._show_object_box()

    def _start_new_object(self, remove_markups: bool) -> None:
        if remove_markups:
            for step in self._steps:
                for click in step.clicks:
                    self.remove_click(click)
        self._reset = None
        self._steps = []
        self._object_needs_reset = self.session_id is not None
        self._server_mask = None
        self._segment_fp = None

    def _leave_box(self, remove: bool) -> None:
        """The object ends: the ROI of its box is removed (a reset), or kept, locked, as the
        earlier lesion's box; the next Box press makes a new one."""
        roi = self.box_roi() if self.volume_node is not None and self._object_box() is not None else None
        if roi is not None and remove:
            self._remove_box_roi(roi)
        elif roi is not None:
            release_box_roi(roi)

    def prompt_list(self, volume_node=None) -> Any:
        """The prompt list of ``volume_node`` (default: the input volume; see ``prompts``): the
        one tied to the volume, else a new one. Points the list holds when first taken (a
        loaded scene) are never sent."""
        volume_node = volume_node or self.volume_node
        if volume_node is None:
            raise PromptError("Select an input volume first.")
        node = find_prompt_list(self.scene, volume_node) or create_prompt_list(self.scene, volume_node)
        if node.GetID() not in self._adopted:
            self._adopted.add(node.GetID())
            for index in range(node.GetNumberOfControlPoints()):
                self._seen.add((node.GetID(), node.GetNthControlPointID(index)))
        return node

    def new_clicks(self, markups_node, positive: bool, volume_node=None) -> List[Click]:
        """The points placed in the prompt list of ``volume_node`` (default: the input volume)
        since last asked, as clicks (each marked with its sign). Points of any other list, and
        those a list held when it was taken, are never clicks."""
        volume_node = volume_node or self.volume_node
        if (markups_node is None or volume_node is None or markups_node.GetID() not in self._adopted
                or markups_node is not find_prompt_list(self.scene, volume_node)):
            return []
        clicks = []
        for index in range(markups_node.GetNumberOfControlPoints()):
            key = (markups_node.GetID(), markups_node.GetNthControlPointID(index))
            if key in self._seen or markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined:
                continue
            self._seen.add(key)
            if self._restoring:
                continue
            label = POSITIVE if positive else NEGATIVE
            markups_node.SetNthControlPointDescription(index, "" if positive else "negative")
            markups_node.SetNthControlPointSelected(index, positive)
            position = [0.0, 0.0, 0.0]
            markups_node.GetNthControlPointPositionWorld(index, position)
            clicks.append(Click(ras=(position[0], position[1], position[2]), label=label,
                                markups_node_id=key[0], control_point_id=key[1]))
        return clicks

    def remove_click(self, click: Click) -> None:
        """Remove a click's point from its list (undo, reset, a failed request). Its ID is
        forgotten too: Slicer gives the next point of the list the highest ID again."""
        remove_click_markup(self.scene, click)
        self._seen.discard((click.markups_node_id, click.control_point_id))

    @property
    def can_undo(self) -> bool:
        return bool(self._steps) or self._reset is not None

    # -- clicks ------------------------------------------------------------------------------
    def click(self, ras: Sequence[float], positive: bool = True) -> ClickResult:
        """Send one click at world RAS ``ras`` and write the result into the target segment."""
        return self.click_points([Click(ras=tuple(float(v) for v in ras), label=1 if positive else 0)])

    def click_points(self, clicks: Sequence[Click]) -> ClickResult:
        job = self.prepare_clicks(clicks)
        job.run()
        return job.finish()

    def points_kji(self, clicks: Sequence[Click]) -> np.ndarray:
        """Continuous kji indices of world clicks on the input volume (parent transform honoured)."""
        if self.volume_node is None:
            raise PromptError("Select an input volume first.")
        ras = np.asarray([click.ras for click in clicks], dtype=np.float64).reshape(-1, 3)
        return ras_to_kji(ras, ras_to_ijk_matrix(self.volume_node),
                          world_to_local_matrix(self.volume_node))

    def prepare_clicks(self, clicks: Sequence[Click], box: Optional[BoxPrompt] = None) -> Job:
        """Main-thread half of a click request (see the module docstring); ``box``: a new box
        for the object, sent with the clicks (see ``prepare_box``)."""
        client = self._require_client()
        plan = self._plan_clicks(list(clicks), box)
        wire = _Wire()
        return Job("clicks", lambda: _send_clicks(client, plan, wire),
                   lambda _, error: self._apply_clicks(plan, wire, error), state=wire)

    def _checked_points(self, clicks: List[Click], box: Optional[BoxPrompt]) -> np.ndarray:
        """The clicks' kji points, once the request is known to make sense (else PromptError)."""
        if not clicks and box is None:
            raise PromptError("No click to send.")
        if self.segmentation_node is None or self.segment_id is None:
            raise PromptError("Select a target segment (or press 'Next lesion') first.")
        points = self.points_kji(clicks)
        outside = outside_volume(points, volume_shape(self.volume_node))
        if outside.any():
            raise PromptError(f"{int(outside.sum())} click(s) lie outside the input volume "
                              f"'{self.volume_node.GetName()}'; place points on the volume.")
        return points

    def _plan_clicks(self, clicks: List[Click], box: Optional[BoxPrompt]) -> _ClickPlan:
        """Read from the scene all that the network part of a click request needs."""
        points = self._checked_points(clicks, box)
        shape = volume_shape(self.volume_node)
        self._tag_points(clicks)
        upload = self._upload_if_changed()
        reset = self._object_needs_reset and upload is None
        sent_box = box if box is not None or (upload is None and not reset) else self._resent_box()
        # What the server's object holds before this request, and what the segment holds: when
        # they differ (a hand edit, a new segment with voxels) the segment is sent as the prior.
        server_mask = np.zeros(shape, dtype=bool) if (upload is not None or reset) else self._server_mask
        current = self._segment_voxels()
        segment_fp = segment_fingerprint(self.segmentation_node, self.segment_id)
        in_sync = server_mask is not None and (current is server_mask or np.array_equal(current, server_mask))
        history = [(step.points_kji, step.labels, None if step.box is None else step.box.kji)
                   for step in self._steps]
        replay_upload = upload or _Upload(volume_array(self.volume_node),
                                          volume_spacing_kji(self.volume_node),
                                          volume_fingerprint(self.volume_node))
        return _ClickPlan(clicks=clicks, points=points, labels=[int(click.label) for click in clicks],
                          shape=shape, upload=upload,
                          old_session=self.session_id if upload is not None else None,
                          session_id=None if upload is not None else self.session_id, reset=reset,
                          box=sent_box, current=current, prior=None if in_sync else current,
                          segment_fp=segment_fp, history=history, replay_upload=replay_upload)

    def _apply_clicks(self, plan: _ClickPlan, wire: _Wire, error: Optional[BaseException]) -> ClickResult:
        """Main-thread end of a click request: the server's answer written into the segment."""
        self._adopt_session(plan, wire)
        if error is not None:
            self._forget_failed_clicks(plan, wire)
            raise error
        if plan.reset or wire.uploaded:
            self._object_needs_reset = False
        self._reset = None
        update = wire.update
        current = plan.current
        lo = tuple(int(v) for v in update.lo)
        box = tuple(slice(a, b) for a, b in zip(update.lo, update.hi))
        before = current[box].copy() if not update.is_empty else np.zeros((0, 0, 0), bool)
        edited_meanwhile = segment_fingerprint(self.segmentation_node, self.segment_id) != plan.segment_fp
        self._write_box(lo, update.mask if not update.is_empty else None)
        # `current` is no longer needed as it was: it becomes the server's new mask.
        self._server_mask = update.apply_to(current)
        self._segment_fp = (None if edited_meanwhile
                            else segment_fingerprint(self.segmentation_node, self.segment_id))
        self._steps.append(_Step(clicks=plan.clicks, points_kji=plan.points, labels=plan.labels, lo=lo,
                                 before=before, box=plan.box))
        return ClickResult(clicks=len(plan.clicks), voxels=int(update.voxels), lo=lo,
                           hi=tuple(int(v) for v in update.hi), encoder_ran=update.encoder_ran,
                           uploaded=wire.uploaded, prior_sent=plan.prior is not None,
                           replayed=wire.replayed, seconds=wire.seconds, timing_ms=dict(update.timing_ms))

    def _adopt_session(self, plan: _ClickPlan, wire: _Wire) -> None:
        """Take the session the request created (upload or replay), even when it failed later."""
        fingerprint = plan.upload.fingerprint if plan.upload is not None else (
            plan.replay_upload.fingerprint if wire.replayed else self._session_fingerprint)
        if wire.session_id is not None and wire.session_id != self.session_id:
            self.session_id = wire.session_id
            self._session_fingerprint = fingerprint
            self.uploads += 1

    def _forget_failed_clicks(self, plan: _ClickPlan, wire: _Wire) -> None:
        """A failed request: its points are removed, and a server object it may have changed
        half way is no longer taken to be known."""
        if wire.uploaded or plan.reset:
            self._server_mask = None
            self._segment_fp = None
            self._object_needs_reset = self.session_id is not None and not wire.uploaded
        for click in plan.clicks:
            self.remove_click(click)

    def _tag_points(self, clicks: Sequence[Click]) -> None:
        """Write each placed click's lesion and sign into its point (saved with the list)."""
        prompt_list = find_prompt_list(self.scene, self.volume_node)
        if prompt_list is None:
            return
        number = None
        for click in clicks:
            index = (prompt_list.GetNthControlPointIndexByID(click.control_point_id)
                     if click.markups_node_id == prompt_list.GetID() else -1)
            if index >= 0:
                if number is None:
                    number = lesion_number(prompt_list, self.segmentation_node, self.segment_id)
                mark_point(prompt_list, index, number, click.label)

    # -- box ---------------------------------------------------------------------------------
    @property
    def supports_box(self) -> Optional[bool]:
        """Whether the server's model takes a box prompt (None: not asked yet)."""
        return None if self.capabilities is None else "box" in self.capabilities.get("prompts", [])

    def box_roi(self, volume_node=None) -> Any:
        """The box ROI of ``volume_node`` (default: the input volume), or None (see ``box``)."""
        return find_box_roi(self.scene, volume_node or self.volume_node)

    def new_box_roi(self, volume_node=None) -> Any:
        """A new, empty box ROI for the Box button to place; it replaces the volume's box ROI
        (undo puts the object's earlier box back)."""
        volume_node = volume_node or self.volume_node
        if volume_node is None:
            raise PromptError("Select an input volume first.")
        old = find_box_roi(self.scene, volume_node)
        if old is not None:
            self._remove_box_roi(old)
        return create_box_roi(self.scene, volume_node, self._box_lesion(volume_node))

    def cancel_box(self, roi) -> None:
        """A box ROI whose placing was given up: removed, and the lesion's box shown again."""
        if roi.GetScene() is self.scene:
            self._remove_box_roi(roi)
        if self._object_box() is not None:
            self._show_object_box()

    def make_box_2d(self, roi, slice_normal: Sequence[float]) -> Optional[str]:
        """Make a box drawn in a slice view (normal ``slice_normal``, world) a 2D box on that
        slice: thinner than a voxel along the normal, where the view shows the volume's k slices.
        In a view across them (a coronal or sagittal view of an axial scan), where boxes cannot
        be 2D (the server's 2D pathway works on k slices), the box gets a depth along the normal
        equal to its width along the volume's other in-slice axis: a 3D box as deep as it is wide.
        Returns a note for the user in that case, else None."""
        if self.volume_node is None:
            raise PromptError("Select an input volume first.")
        axes = volume_axes_world(kji_per_mm(ras_to_ijk_matrix(self.volume_node),
                                            world_to_local_matrix(self.volume_node)))
        across = nearest_axis(axes, slice_normal)
        if across == 0:
            flatten_roi(roi, slice_normal, 0.5 * min(self.volume_node.GetSpacing()))
            return None
        make_roi_deep(roi, slice_normal, axes[3 - across])  # j's partner in the slice is i, i's is j
        return ("This view cuts across the scan's slices, where a box cannot be 2D: it was made a 3D box as "
                "deep as it is wide. Check its depth in the view that shows the slices.")

    def box_kji(self, roi=None) -> Optional[np.ndarray]:
        """The box ROI (default: the input volume's) as ``[lo, hi]`` continuous kji of the
        uploaded array (see ``box``), or None while it is not placed."""
        if self.volume_node is None:
            raise PromptError("Select an input volume first.")
        roi = roi or self.box_roi()
        if roi is None or not roi_defined(roi):
            return None
        return roi_box_kji(roi, ras_to_ijk_matrix(self.volume_node), world_to_local_matrix(self.volume_node),
                           volume_shape(self.volume_node))

    def prepare_box(self, roi=None) -> Optional[Job]:
        """Main-thread half of a box request: the ROI's box replaces the object's box and goes
        out with no new click (the object's clicks stay). None when the ROI is not placed or
        still holds the object's box. If the request fails, the ROI goes back to the object's box."""
        roi = roi or self.box_roi()
        try:
            kji = self.box_kji(roi)
        except PromptError:
            self._show_object_box()
            raise
        current = self._object_box()
        if kji is None or (current is not None and np.allclose(kji, current.kji, rtol=0.0, atol=1e-6)):
            return None
        if roi is self.box_roi():  # drawn before the lesion was known: named after it now
            roi.SetName(box_roi_name(self.volume_node, self._box_lesion(self.volume_node)))
        inner = self.prepare_clicks([], box=BoxPrompt(kji=kji, roi=roi_state(roi)))

        def apply(_: Any, error: Optional[BaseException]) -> ClickResult:
            try:
                return inner.finish()
            except BaseException:
                self._show_object_box()
                raise

        return Job("box", inner.run, apply, state=inner.state)

    def user_removed_box(self) -> bool:
        """Whether the input volume's box ROI, leaving the scene now, was deleted by the user
        while the lesion holds a box - not removed by the Logic itself. The box still bounds the
        lesion's corrections on the server, and only Undo or Reset lesion take it back, so it is
        then shown again (``show_lesion_box``). Call from the scene's node-removed event."""
        return not self._removing_box_roi and self.volume_node is not None and self._object_box() is not None

    def show_lesion_box(self) -> str:
        """The lesion's box shown again in a new ROI (see ``user_removed_box``) -> a note for the user."""
        self._show_object_box()
        return ("The lesion keeps its box (it bounds its corrections), so it is shown again: Undo takes it "
                "back, Reset lesion clears the lesion, Box draws a new one.")

    def _remove_box_roi(self, roi) -> None:
        """Remove a box ROI from the scene as the Logic's own doing (see ``user_removed_box``)."""
        self._removing_box_roi = True
        try:
            self.scene.RemoveNode(roi)
        finally:
            self._removing_box_roi = False

    def _object_box(self) -> Optional[BoxPrompt]:
        """The box the current object holds (the last one sent), or None."""
        return next((step.box for step in reversed(self._steps) if step.box is not None), None)

    def _resent_box(self) -> Optional[BoxPrompt]:
        """The object's box, for a server object that starts empty (new upload or reset)."""
        box = self._object_box()
        return None if box is None else BoxPrompt(kji=box.kji)

    def _show_object_box(self) -> None:
        """Make the volume's box ROI show the object's box (drawn by the last step that drew
        one), or remove it when the object has no box."""
        drawn = next((step.box.roi for step in reversed(self._steps)
                      if step.box is not None and step.box.roi is not None), None)
        roi = self.box_roi()
        if drawn is None:
            if roi is not None:
                self._remove_box_roi(roi)
            return
        if roi is None:
            roi = create_box_roi(self.scene, self.volume_node, self._box_lesion(self.volume_node))
        restore_roi(roi, drawn)

    def _box_lesion(self, volume_node) -> Optional[int]:
        """The lesion number of the target's box on ``volume_node`` (that of its points: see
        ``prompts.lesion_number``), or None while there is no target segment on it."""
        if volume_node is not self.volume_node or self.segmentation_node is None or self.segment_id is None:
            return None
        return lesion_number(self.prompt_list(volume_node), self.segmentation_node, self.segment_id)

    # -- saving ------------------------------------------------------------------------------
    def save_prompts(self, folder: str, volume_node=None) -> str:
        """Save the prompts of ``volume_node`` (default: the input volume) for a batch as one file,
        ``<folder>/<volume name>.mrk.json``: its point list and every placed box ROI of it (the
        current one and earlier lesions'; of two boxes of one lesion, the newest). Returns the path.

        Raises PromptError when the volume has neither a point nor a box, OSError when the file
        cannot be written."""
        volume_node = volume_node or self.volume_node
        if volume_node is None:
            raise PromptError("Select an input volume first.")
        if not folder or not os.path.isdir(folder):
            raise PromptError(f"The prompts folder {folder!r} does not exist; choose a folder first.")
        prompt_list = find_prompt_list(self.scene, volume_node)
        nodes = [prompt_list] if prompt_list is not None and prompt_list.GetNumberOfControlPoints() else []
        newest = {roi.GetName(): roi for roi in volume_box_rois(self.scene, volume_node) if roi_defined(roi)}
        nodes += list(newest.values())
        if not nodes:
            raise PromptError(f"'{volume_node.GetName()}' has no click and no box to save; place them first.")
        path = prompt_file_path(folder, volume_node)
        write_prompt_file(self.scene, path, nodes)
        return path

    def _upload_if_changed(self) -> Optional[_Upload]:
        """The volume to upload when the session does not hold this volume's current voxels."""
        fingerprint = volume_fingerprint(self.volume_node)
        if self.session_id is not None and fingerprint == self._session_fingerprint:
            return None
        return _Upload(volume_array(self.volume_node), volume_spacing_kji(self.volume_node), fingerprint)

    def _segment_voxels(self) -> np.ndarray:
        """The target segment's voxels; read from the scene only when someone changed them."""
        if (self._server_mask is not None and self._segment_fp is not None
                and segment_fingerprint(self.segmentation_node, self.segment_id) == self._segment_fp):
            return self._server_mask
        return read_segment_mask(self.segmentation_node, self.segment_id, self.volume_node)

    def _write_box(self, lo: Sequence[int], box: Optional[np.ndarray]) -> None:
        if box is not None and box.size:
            write_segment_box(self.segmentation_node, self.segment_id, self.volume_node, lo, box)

    # -- undo --------------------------------------------------------------------------------
    def undo(self) -> None:
        """Give the segment back its voxels before the last click, bit for bit."""
        job = self.prepare_undo()
        job.run()
        job.finish()

    def prepare_undo(self) -> Job:
        if not self._steps and self._reset is not None:
            return Job("undo", lambda: None, lambda result, error: self._undo_reset())
        if not self._steps:
            raise NothingToUndo("Nothing to undo for this lesion.")
        client = self.client
        session_id = None if self._object_needs_reset else self.session_id
        step = self._steps[-1]

        def work() -> bool:
            if client is None or session_id is None:
                return False
            try:
                client.undo(session_id)
            except (NothingToUndo, SessionExpired, SessionNotFound):
                return False  # out of step with the server: the next click sends the segment
            return True

        def apply(server_undone: Any, error: Optional[BaseException]) -> None:
            if error is not None:
                raise error
            was_in_sync = (self._segment_fp is not None and segment_fingerprint(
                self.segmentation_node, self.segment_id) == self._segment_fp)
            self._steps.pop()
            self._write_box(step.lo, step.before)
            if step.box is not None and step.box.roi is not None:
                self._show_object_box()
            for click in step.clicks:
                self.remove_click(click)
            if server_undone and self._server_mask is not None:
                box = tuple(slice(a, a + n) for a, n in zip(step.lo, step.before.shape))
                self._server_mask[box] = step.before
            else:
                self._server_mask = None
            self._segment_fp = (segment_fingerprint(self.segmentation_node, self.segment_id)
                                if was_in_sync and self._server_mask is not None else None)

        return Job("undo", work, apply)

    # -- session -----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the server session (best effort)."""
        self.prepare_release().run()

    def prepare_release(self) -> Job:
        """Forget the session now; the job deletes it on the server (best effort)."""
        client, session_id = self._own_client(), self.session_id
        self._forget_session()

        def work() -> None:
            if client is not None and session_id is not None:
                delete_session_quietly(client, session_id)

        return Job("release", work, lambda result, error: None)

    def _forget_session(self) -> None:
        """Drop the session locally (no network). The lesion's clicks and undo stack stay; the
        next click uploads the volume again and sends the segment as the prior."""
        self.session_id = None
        self._session_fingerprint = None
        self._object_needs_reset = False
        self._server_mask = None
        self._segment_fp = None

    @staticmethod
    def _raise_or(error: Optional[BaseException], value: Any) -> Any:
        if error is not None:
            raise error
        return value


def _send_clicks(client: SAM3DClient, plan: _ClickPlan, wire: _Wire) -> _Wire:
    """Network part of a click request (any thread): new session if the volume changed, the
    object reset or primed with the segment's voxels as needed, then the clicks. ``wire``
    records what happened, also when it fails half way."""
    started = time.perf_counter()
    try:
        if plan.old_session is not None:
            delete_session_quietly(client, plan.old_session)
        if plan.upload is not None:
            wire.session_id = client.create_session(plan.upload.array, plan.upload.spacing_kji)
            wire.uploaded = True
        else:
            wire.session_id = plan.session_id
        try:
            if plan.reset:
                client.reset(wire.session_id)
            if plan.prior is not None:
                client.set_mask(wire.session_id, plan.prior)
            wire.update = client.interact(wire.session_id, plan.points, plan.labels, box_kji=plan.box_kji)
        except (SessionExpired, SessionNotFound):
            if wire.uploaded:
                raise
            _rebuild_object(client, plan, wire)
            wire.update = client.interact(wire.session_id, plan.points, plan.labels, box_kji=plan.box_kji)
    finally:
        wire.seconds = time.perf_counter() - started
    return wire


def _rebuild_object(client: SAM3DClient, plan: _ClickPlan, wire: _Wire) -> None:
    """The server forgot the volume: upload it again and replay the object's earlier steps
    (then send the segment's voxels if the replay does not give them back)."""
    wire.session_id = client.create_session(plan.replay_upload.array, plan.replay_upload.spacing_kji)
    wire.uploaded = wire.replayed = True
    rebuilt = np.zeros(plan.shape, dtype=bool)
    for step_points, step_labels, step_box in plan.history:
        client.interact(wire.session_id, step_points, step_labels, box_kji=step_box).apply_to(rebuilt)
    if not np.array_equal(rebuilt, plan.current):
        client.set_mask(wire.session_id, plan.current)


def delete_session_quietly(client: SAM3DClient, session_id: str) -> None:
    """Free a server session; an already gone session or server is not an error here."""
    try:
        client.delete_session(session_id)
    except SAM3DError:
        pass  # an expired or unknown session is already gone; a dead server frees it anyway
