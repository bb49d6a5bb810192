"""Clicks -> mask on a native volume: crop placement, encoder cache, multi-crop fusion, undo.

A ``Session`` holds one volume and the object being segmented in it. Each ``interact`` call
adds labelled points (continuous kji indices of the native array) and optionally a box (two
opposite corners; it replaces the object's previous box and stays for later clicks) and updates
the object's mask:

0. A new box, where the predictor answers boxes with the 2D pathway (``slice_pathway.py``,
   the default for LiteMedSAM-based models), is segmented slice by slice by LiteMedSAM's box
   pathway at native resolution (a box, 3D or 2D, drawn loosely around the object the 3D model
   finds at its centre is fitted to that object first: ``box_fit.py``), trimmed at the half-way
   intensity where the lesion is homogeneous, and grown in-plane by a few pixels to a clear
   intensity step within the box (``intensity_trim.py``); that mask is the first patch of the
   interaction and the mask prompt of the crops that follow. Otherwise the box goes to the 3D model as in 1 and 3.
1. Crop placement: a new box gets a crop centred on the box's centre; every new point that
   does not lie inside a crop already chosen for this interaction gets one: a cached (already
   encoded) crop that contains it at least ``size / 8`` crop voxels from the faces, else a new
   crop centred on it.
2. Each crop is encoded once and its features cached (LRU, per session), so a click inside an
   encoded crop runs only the prompt encoder and decoder.
3. The prediction of a crop gets every point of the object that lies in the crop, the box's
   corners clamped into the crop (when the box overlaps it; labels 2 / 3) and, as the mask prompt, the object's current mask (including what earlier crops of this interaction
   predicted) resampled into the crop as a logit.
4. When a crop's foreground reaches one of its faces that is not at the volume's edge, a crop
   shifted half a crop across that face is predicted as well (at most ``max_crops`` crops per
   interaction) and the crops are fused by the maximum foreground probability.
5. The fused probability is pasted back on the native voxels the crops cover and thresholded
   at 0.5; voxels outside every crop keep their previous value. A new object's first click (with
   a model whose boxes go to the 2D pathway) is thresholded where the first crop's mask boundary
   meets the image's edge (``edge_threshold.py``; 0.025-0.9, where not 0.5 only the clicked part
   is kept); a mask whose boundary lies on an image edge (every threshold other than 0.5 and a
   0.5 mask on an edge) is corrected as the 2D pathway's, one inside an organ of like intensity by
   the 3D model. Where the image shows the clicked lesion standing apart from what surrounds that
   first mask and the lesion's centre lies away from the click (a click on its rim: the model
   reads its crop's centre as inside the object), the click is answered again on a crop centred
   there, encoded first near the lesion's slices (``recentre.py``). Where that first mask is
   small, the click is answered again on crops of a finer
   spacing, kept where the two answers agree, and the object's later clicks use its scale
   (``crop_scale.py``). That finer crop's first answer encodes only its slices near the first
   mask, as a box's centre click does near the box's object; the rest are encoded in idle time
   or by the next answer that reads it (``partial_crop.py``). The first mask is then trimmed at
   the lesion's intensity step where that step is clear (``intensity_trim.py``: a rim of lung
   around a nodule goes), and carried to the lesion's extent on the smoothed image where the
   lesion is too subtle for the model's input yet clear in the image (``subtle_extent.py``: a
   soft-tissue lesion in its organ), or else grown to a clear step by a few pixels in-plane
   where the lesion stands above a darker background (``intensity_trim.py``: a nodule's mask
   that stops short of its edge); that
   object's later clicks are answered from the lesion's two levels (a positive click adds the
   voxels near the lesion's level around it, a negative one cuts the part nearer it than every
   positive click), not by the 3D model, which is blind to the step, nor by the 2D pathway.
6. Where the 3D model answered and its mask still holds one of the object's negative clicks, the
   part of the mask it is no surer of than of that click, connected to it and nearer it than
   every positive click, is removed (``negative_clicks.py``); where the click lies in the mask's
   outer half and that part is a thin layer along the rest of the mask (a correction of its rim),
   only what lies within 4 mm of the click. Where the 2D pathway answered
   negative clicks, which cut their own slice only, the 3D model's answer on the cached crop
   removes by the same rule what it doubts across slices (on a box's object without a positive
   click, only where the model sees the object: ``negative_clicks.doubt_reads_box_object``); of
   what the 2D pathway added for a
   positive click, only what that answer believes at least half as much as the click stays
   (``positive_clicks.py``; both in ``Session._judged_by_3d``). On an object the 3D model
   corrects, a positive click its answer leaves outside the mask is answered by the 2D pathway
   as on a mask that pathway made (``Session._unheard_clicks_in_2d``; corrections "auto" and
   "2d").
7. Clicks of one kind on an object with a mask are kept to the error they mark, whichever
   pathway answered (``click_reach.py``): negative clicks alone add nothing and remove nothing
   deeper inside the mask than the deepest clicked voxel; positive clicks alone remove nothing
   and add nothing farther from the mask than twice the farthest click; before that, what positive
   clicks alone add on each clicked slice is trimmed at the lesion's intensity step, as a first
   click's mask is, the lesion's level read in the object's mask
   (``Session._additions_at_lesion_intensity``).
8. In an interaction of positive clicks alone on an object with a mask, a positive click that
   every pathway leaves outside the mask (the 2D pathway refused it and the 3D model added
   nothing there: a layer along the mask's rim, a lesion the model does not see) adds the
   voxels within 4 mm of it, connected to it, whose level on the smoothed image lies between
   the clicked voxel's and the lesion's near it (``unanswered_clicks.py``): such a click always
   changes the mask.

A request either completes or leaves the session as it was (state is changed only at the end).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..client.wire import outside_volume
from ..data.clicks import centre_click, label_objects
from ..model.config import BOX_FIRST_CORNER, BOX_SECOND_CORNER
from ..model.sam3d import ImageFeatures
from . import crop_scale as scale
from .box_fit import box_centre, fitted_box, object_slices, same_object, within_found_slices
from .choices import CLICK_PATHWAYS, CORRECTIONS
from .click_reach import added_no_farther_than_clicks, removed_no_deeper_than_clicks
from .crops import (Box, CropGeometry, box_slices, clamp_box, extract_crop, mask_prompt, paste_back, tight_box,
                    touched_faces)
from .edge_threshold import DEFAULT_THRESHOLD, EdgeChoice, clicked_parts, edge_threshold
from .intensity_trim import (RING_PX, core_level, grow_to_lesion_intensity, trim_homogeneous_lesion,
                             trim_to_lesion_intensity)
from .negative_clicks import doubt_reads_box_object, honour_negative_clicks, spare_believed_voxels
from .partial_crop import PartialCrop, slabs_near
from .positive_clicks import MIN_AGREEMENT, agreement, clicks_inside, judgeable_additions, keep_believed_additions
from .predictor import IdleStep, Predictor
from .recentre import image_object, reach_box, reaches_click, shifted_centre
from .slice_pathway import SliceEmbeddings, box_slice, correction_box, is_3d_box, on_its_slice, volume_bounds
from .subtle_extent import (REACH_MM, SHELL_MM, SMOOTH_MM, SubtleLevels, add_at_positive_click,
                            cut_at_negative_click, grow_to_subtle_lesion, smoothed_image)
from .unanswered_clicks import region_at_click

if TYPE_CHECKING:
    import torch

EMPTY_BOX: Box = ((0, 0, 0), (0, 0, 0))
# "gated": the box search's mask is kept where it found the 3D model's object whole (it holds at
# least GATE_COVERAGE of the 3D mask and at most GATE_RATIO times its voxels) or trimmed it (at
# least GATE_INSIDE of the search's mask lies in the 3D mask); chosen on development data
# (docs/BENCHMARKS.md, "A gated box search")
GATE_RATIO, GATE_COVERAGE, GATE_INSIDE = 6, 0.8, 0.9
UNDO_DEPTH = 64  # interactions an object remembers for undo (and at most max_undo_bytes of them)


class NothingToUndo(Exception):
    """Undo with an empty history."""


class SessionLimit(ValueError):
    """The object reached one of the session's limits (points, interactions)."""


class InvalidBox(ValueError):
    """A box prompt the session cannot use: malformed, outside the volume, degenerate, or given
    to a model without a box prompt."""


@dataclass
class MaskChange:
    """What one request changed: the object's mask inside the half-open box ``lo..hi``."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    mask: np.ndarray  # bool, shape hi - lo
    voxels: int  # foreground voxels of the whole object
    interaction: int
    encoder_ran: bool = False
    crops: int = 0
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return any(h <= l for l, h in zip(self.lo, self.hi))


@dataclass
class _CropAnswer:
    """The 3D model's answer to one interaction, inside ``box``."""

    box: Box
    proposal: np.ndarray  # bool, the object's mask inside box
    crops: int  # crops predicted
    on_edge: bool  # a first click's mask lies on an image edge (``edge_threshold``)
    encode_s: float
    spacing_mm: float | None  # the crops' spacing; None where no crop was predicted


@dataclass
class _HistoryEntry:
    box: Box
    previous: np.ndarray  # the object's mask inside box before the change, np.packbits
    points: int  # number of points before the change
    interactions: int
    extent: Box
    prompt_box: np.ndarray | None  # the object's box prompt before the change

    def previous_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """The mask inside ``box`` before the change, unpacked to ``shape`` (the box's size)."""
        return np.unpackbits(self.previous, count=int(np.prod(shape))).astype(bool).reshape(shape)


class FeatureCache:
    """Encoder features per crop, least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict[tuple, tuple[CropGeometry, ImageFeatures]] = OrderedDict()

    def get(self, geometry: CropGeometry) -> ImageFeatures | None:
        item = self._items.get(geometry.key)
        if item is None:
            return None
        self._items.move_to_end(geometry.key)
        return item[1]

    def put(self, geometry: CropGeometry, features: ImageFeatures) -> None:
        self._items[geometry.key] = (geometry, features)
        self._items.move_to_end(geometry.key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def geometries(self) -> list[CropGeometry]:
        """Cached crops, most recently used first."""
        return [geometry for geometry, _ in reversed(self._items.values())]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes the cached features hold."""
        return sum(f.nbytes for _, f in self._items.values())


class Session:
    """One volume and the object being segmented in it (thread-safe: one request at a time)."""

    def __init__(self, predictor: Predictor, volume: np.ndarray, spacing, cache_size: int = 8,
                 max_crops: int = 6, max_undo_bytes: int | None = None, max_points: int | None = None,
                 max_interactions: int | None = None, corrections: str = "auto",
                 click_pathway: str = "3d") -> None:
        """``max_undo_bytes``: undo history kept per object (oldest dropped first);
        ``max_points`` / ``max_interactions``: per object, SessionLimit beyond them;
        ``corrections``: "local" (a click on an existing mask changes only the connected region
        around it, see ``_local_update``), "global" (the crops' prediction replaces the mask),
        "2d" (on an object whose box the 2D pathway answered, the 2D pathway answers the clicks it
        can - ``slice_pathway.correct_slice_by_slice`` - and the 3D model the others, locally, on
        the clicked slices only - ``_on_clicked_slices`` - and, after a 3D box, inside that box
        widened to the clicks - ``_within_box``) or
        "auto" ("2d" while the object's mask is one the 2D pathway corrects - its box or its first
        click's search went there, or its first click's mask lies on an image edge
        (``_made_in_2d``); global otherwise - measured in docs/BENCHMARKS.md; with "auto" and "2d"
        a positive click the 3D model's answer leaves outside the mask goes to the 2D pathway,
        ``_unheard_clicks_in_2d``); whatever the choice,
        an object whose first click's mask was carried to a subtle lesion's extent is corrected
        from that lesion's levels (``subtle_extent``), and a positive click every answer leaves
        outside the mask adds the region the image gives it, on the slices within 4 mm too
        (``_unanswered_clicks_added``);
        ``click_pathway``: "3d" (the 3D model answers clicks) or "search" (an object's lone first
        click: the 3D model's mask, then LiteMedSAM's 2D pathway from the box that fits the click's
        slice best, found by a box search that starts from squares around the click and the 3D
        mask's box there - ``_search_2d``; the object is then corrected as after a box; needs a
        predictor whose boxes go to the 2D pathway) or "gated" (the same search, its mask kept
        only where it agrees with the 3D model's - ``_search_agrees``: the same object found whole
        or trimmed, not the organ around it; else the 3D mask stands). The default stays "3d": on
        a CPU the 2D pathway's slices cost the first click seconds, and neither search gained on
        every held-out set (docs/BENCHMARKS.md)."""
        if corrections not in CORRECTIONS:
            raise ValueError(f"corrections must be one of {', '.join(CORRECTIONS)}, got {corrections!r}")
        if click_pathway not in CLICK_PATHWAYS:
            raise ValueError(f"click_pathway must be one of {', '.join(CLICK_PATHWAYS)}, got {click_pathway!r}")
        volume = np.asarray(volume)
        if volume.ndim != 3 or min(volume.shape) < 1:
            raise ValueError(f"the volume must be a non-empty 3D array, got shape {volume.shape}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive numbers in kji order, got {spacing}")
        self.predictor = predictor
        self.volume = volume
        self.spacing = spacing
        self.shape: tuple[int, int, int] = tuple(int(n) for n in volume.shape)
        self.max_crops = max(1, int(max_crops))
        self.max_undo_bytes = max_undo_bytes
        self.max_points = max_points
        self.max_interactions = max_interactions
        self.corrections = corrections
        self.click_pathway = click_pathway if predictor.box_pathway == "2d" else "3d"
        self.cache = FeatureCache(cache_size)
        self._partial: PartialCrop | None = None  # a crop encoded in part (``partial_crop``), not yet cached
        self.encoder_runs = 0
        self.decoder_runs = 0
        self.mask = np.zeros(self.shape, dtype=bool)
        self.voxels = 0
        self.points = np.zeros((0, 3))
        self.labels = np.zeros(0, dtype=np.int64)
        self.box: np.ndarray | None = None  # the object's box prompt: [lo, hi] continuous kji
        self.interactions = 0
        self._history: list[_HistoryEntry] = []
        self._extent: Box = EMPTY_BOX  # box that holds every foreground voxel of the mask
        self._intensity_bounds: tuple[float, float] | None = None  # the 2D box pathway's, once per volume
        self._slice_embeddings = SliceEmbeddings()  # the 2D pathway's embedded slice windows, kept
        # the object's first click was answered by the 2D pathway's box search, or by the 3D model
        # with a mask whose boundary lies on an image edge (at a threshold other than 0.5, which the
        # 3D model's later answers at 0.5 would undo, or at 0.5; or a subtle lesion's extent, which
        # they would undo as well): its corrections go to the 2D pathway, as after a box
        self._click_mask_corrected_in_2d = False
        # a subtle lesion's levels, where its first click's mask was carried to its extent: its
        # later clicks are answered from them (``subtle_extent``)
        self._subtle_levels: SubtleLevels | None = None
        # the object's crop spacing: the model's, or the finer one its first click kept (``crop_scale``)
        self._crop_spacing_mm = predictor.config.crop_spacing_mm
        self._lock = threading.Lock()

    # -- public API -----------------------------------------------------------------------
    def interact(self, points_kji, labels, box_kji=None) -> MaskChange:
        """Add points (continuous kji, label 1 positive / 0 negative) and optionally a box (two
        opposite corners [[k, j, i], [k, j, i]], any order; equal k = a 2D box on that slice),
        which replaces the object's box; re-predict the object."""
        new_box = None if box_kji is None else self._check_box(box_kji)
        points, labels = self._check_points(points_kji, labels, allow_none=new_box is not None)
        with self._lock:
            if new_box is not None and len(points) and self.predictor.box_pathway == "2d":
                return self._box_then_clicks(new_box, points, labels)
            return self._interact(points, labels, new_box)

    def _interact(self, points: np.ndarray, labels: np.ndarray, new_box: np.ndarray | None,
                  trim_history: bool = True) -> MaskChange:
        """``interact`` on checked prompts, the lock held (``trim_history``: see ``_commit``)."""
        self._check_limits(len(points))
        prompt_box = self.box if new_box is None else new_box
        start = time.perf_counter()
        all_points = np.concatenate([self.points, points])
        all_labels = np.concatenate([self.labels, labels])
        encoder_before, encode_s = self.encoder_runs, 0.0
        patches: list[tuple[Box, np.ndarray]] = []
        box_2d = new_box is not None and self.predictor.box_pathway == "2d"
        if box_2d:
            patch, seconds = self._box_patch_2d(new_box)
            patches.append(patch)
            encode_s += seconds
        corrected = self._correct_subtle(points, labels) if new_box is None else None
        if corrected is not None:
            patches.append(corrected)
        elif new_box is None and self._corrects_in_2d:
            corrected = self._correct_2d(points, labels)
            if corrected is not None:
                patch, seconds = corrected
                patch = self._judged_by_3d(patch, all_points, all_labels, points)
                patches.append(patch)
                encode_s += seconds
        new_object = self._is_new_object(new_box)
        spacing_mm = self.predictor.config.crop_spacing_mm if new_object else self._crop_spacing_mm
        queue = [] if corrected is not None else self._place_crops(points, labels, None if box_2d else new_box,
                                                                     spacing_mm)
        first_click = points[labels == 1][0] if self._chooses_threshold(new_box, labels) else None
        honour_negatives = corrected is None and not box_2d and bool((all_labels == 0).any())
        answer = self._answer_with_crops(queue, patches, all_points, all_labels, prompt_box, first_click,
                                         honour_negatives)
        if first_click is not None:
            answer = self._recentred_on_object(answer, all_points, all_labels, first_click, spacing_mm)
            answer = self._small_object_at_finer_scale(answer, points, labels, all_points, all_labels, first_click)
        encode_s += answer.encode_s
        box, proposal = answer.box, answer.proposal
        levels = None
        if first_click is not None:
            proposal, levels = self._first_mask_at_lesion_intensity(box, proposal, first_click)
        # for a new object's first click: whether the 2D pathway will correct its mask (a mask on
        # an image edge: the edge rule's, or a subtle lesion's extent the 3D model would undo)
        corrected_in_2d = (answer.on_edge or levels is not None) if first_click is not None else None
        if (self.click_pathway != "3d" and new_object
                and len(points) == 1 and labels[0] == 1):  # a new object's lone first click
            searched = self._first_click_search(box, proposal, points[0])
            corrected_in_2d = bool(corrected_in_2d) or searched is not None  # else the 3D mask stands
            if searched is not None:
                (box, proposal), seconds = searched
                encode_s += seconds
                levels = None  # the search's mask, not a subtle lesion's extent
        local = self.corrections == "local" or (self.corrections in ("auto", "2d") and self._made_in_2d)
        if local and corrected is None and new_box is None and self.voxels > 0:
            proposal = _local_update(self.mask[box_slices(box)], proposal, points - np.asarray(box[0]), labels)
            if self._made_in_2d:
                proposal = _on_clicked_slices(self.mask, proposal, box, points, labels)
            if self.box is not None and is_3d_box(self.box):
                proposal = _within_box(self.mask[box_slices(box)], proposal, box, self.box, points)
        if new_box is None and self.voxels > 0 and len(set(labels.tolist())) == 1:  # clicks of one kind
            if labels[0] == 1:
                if corrected is None and self._hears_unheard_clicks_in_2d:
                    (box, proposal), seconds = self._unheard_clicks_in_2d(box, proposal, points, all_points,
                                                                         all_labels)
                    encode_s += seconds
                proposal = added_no_farther_than_clicks(
                    self.mask, box, self._additions_at_lesion_intensity(box, proposal, points, labels),
                    points, labels, self.spacing)
                box, proposal = self._unanswered_clicks_added(box, proposal, points, all_points, all_labels)
            else:
                proposal = removed_no_deeper_than_clicks(self.mask, box, proposal, points, labels, self.spacing)
        change = self._commit(box, proposal, points=all_points,
                              labels=all_labels, prompt_box=prompt_box,
                              interactions=self.interactions + 1, trim_history=trim_history)
        self._crop_spacing_mm = spacing_mm if answer.spacing_mm is None else answer.spacing_mm
        if corrected_in_2d is not None:
            self._click_mask_corrected_in_2d = corrected_in_2d
            self._subtle_levels = levels
        elif new_box is not None:  # a box makes the object the box's: its levels no longer answer
            self._subtle_levels = None
        total_ms = (time.perf_counter() - start) * 1000
        change.encoder_ran = self.encoder_runs > encoder_before
        change.crops = answer.crops
        change.timing_ms = {"encode": round(encode_s * 1000, 2),
                            "decode": round(total_ms - encode_s * 1000, 2),
                            "total": round(total_ms, 2)}
        return change

    def _box_then_clicks(self, box: np.ndarray, points: np.ndarray, labels: np.ndarray) -> MaskChange:
        """A box and clicks in one request where boxes go to the 2D pathway, which answers a box
        alone: the box first, then the clicks correct its mask, as when they come one after the
        other (else a negative click is lost under the box's mask); one interaction, one undo step
        (the undo memory's byte limit applied to it as one), and nothing changed if it fails."""
        self._check_limits(len(points))
        before = (self._click_mask_corrected_in_2d, self._subtle_levels, self._crop_spacing_mm)
        first = self._interact(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), box, trim_history=False)
        self.interactions -= 1  # the box and its clicks are one interaction (and the limit counts one)
        try:
            second = self._interact(points, labels, None, trim_history=False)
        except BaseException:
            self._undo_last()
            self._click_mask_corrected_in_2d, self._subtle_levels, self._crop_spacing_mm = before
            raise
        self._history[-2:] = [self._merged(*self._history[-2:])]
        self._trim_history()
        lo, hi = _union([(first.lo, first.hi), (second.lo, second.hi)])
        return MaskChange(lo, hi, self.mask[box_slices((lo, hi))].copy(), self.voxels, self.interactions,
                          encoder_ran=first.encoder_ran or second.encoder_ran, crops=first.crops + second.crops,
                          timing_ms={key: round(first.timing_ms.get(key, 0.0) + second.timing_ms.get(key, 0.0), 2)
                                     for key in first.timing_ms})

    def _merged(self, earlier: _HistoryEntry, later: _HistoryEntry) -> _HistoryEntry:
        """Two consecutive undo steps as one: the mask before ``earlier`` over both boxes."""
        box = _union([earlier.box, later.box])
        if _is_empty(box):
            return earlier
        previous = self.mask[box_slices(box)].copy()
        for entry in (later, earlier):  # undone the other way round
            if not _is_empty(entry.box):
                inside = tuple(slice(lo - origin, hi - origin)
                               for lo, hi, origin in zip(entry.box[0], entry.box[1], box[0]))
                region = previous[inside]
                region[...] = entry.previous_mask(region.shape)
        return _HistoryEntry(box, np.packbits(previous, axis=None), earlier.points, earlier.interactions,
                             earlier.extent, earlier.prompt_box)

    def prefetch_corrections(self) -> IdleStep:
        """Idle work: embed one more 2D window that a correction of the object's mask would
        decode on (``Predictor.prefetch_correction_window``), so that the next correction click
        on that slice only decodes. MORE when one was embedded; DONE when there is nothing to do
        (the object is not corrected in 2D, or its windows are all there); BUSY when the session
        or the encoder is in use: it never waits. The masks do not depend on it: a correction
        decodes on the same window whether that was embedded ahead or is embedded then
        (``slice_pathway.correction_window``). Measured in docs/BENCHMARKS.md ("Correction
        windows embedded ahead")."""
        if not self._lock.acquire(blocking=False):
            return IdleStep.BUSY
        try:
            if not self._corrects_in_2d:
                return IdleStep.DONE
            return self.predictor.prefetch_correction_window(self.volume, self.mask, self._bounds_2d(),
                                                             self._slice_embeddings)
        finally:
            self._lock.release()

    def complete_partial_crop(self) -> IdleStep:
        """Idle work: one more run of the slices of the crop encoded in part (``partial_crop``:
        a small object's finer crop, or a box's), cached once whole, so that the object's next
        click reads it without waiting. MORE when a run was encoded; DONE when there is nothing
        to encode; BUSY when the session or the encoder is in use: it never waits. The masks do not depend on it:
        every answer after a first one reads the whole crop, encoded then if not before."""
        if not self._lock.acquire(blocking=False):
            return IdleStep.BUSY
        try:
            partial = self._partial
            if partial is None:
                return IdleStep.DONE
            if partial.complete:
                done = self._cache_whole(partial, wait=False) is not None
            else:
                done = self._encode_missing(partial, self.predictor.slabs_per_run, wait=False)
            return IdleStep.MORE if done else IdleStep.BUSY
        finally:
            self._lock.release()

    def set_mask(self, lo, hi, mask: np.ndarray) -> MaskChange:
        """Replace the object's mask by ``mask`` inside box lo..hi and nothing outside it (the
        user's own edit, the prior of the next click)."""
        lo, hi = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
        mask = np.asarray(mask, dtype=bool)
        empty = any(h <= l for l, h in zip(lo, hi))
        if not empty:
            if any(l < 0 or h > n for l, h, n in zip(lo, hi, self.shape)):
                raise ValueError(f"mask box {list(lo)}..{list(hi)} is outside the volume {list(self.shape)}")
            if mask.shape != tuple(h - l for l, h in zip(lo, hi)):
                raise ValueError(f"mask shape {mask.shape} does not match its box {list(lo)}..{list(hi)}")
        with self._lock:
            self._check_limits(0)
            start = time.perf_counter()
            box = self._extent if empty else _union([self._extent, (lo, hi)])
            new = np.zeros(_size(box), dtype=bool)
            if not empty:
                new[box_slices((lo, hi), origin=box[0])] = mask
            change = self._commit(box, new, points=self.points, labels=self.labels,
                                  prompt_box=self.box, interactions=self.interactions + 1)
            change.timing_ms = {"encode": 0.0, "decode": 0.0,
                                "total": round((time.perf_counter() - start) * 1000, 2)}
            return change

    def undo(self) -> MaskChange:
        """Restore the state before the last interaction or mask edit."""
        with self._lock:
            if not self._history:
                raise NothingToUndo("there is nothing to undo in this object")
            return self._undo_last()

    def _undo_last(self) -> MaskChange:
        """``undo`` of the last history entry, the lock held."""
        entry = self._history.pop()
        region = self.mask[box_slices(entry.box)]
        previous = entry.previous_mask(region.shape)
        self.voxels += int(previous.sum()) - int(region.sum())
        region[...] = previous
        self.points, self.labels = self.points[:entry.points], self.labels[:entry.points]
        self.box = entry.prompt_box
        self.interactions = entry.interactions
        if self.interactions == 0:  # back to a new object: its next first click decides again
            self._click_mask_corrected_in_2d = False
            self._subtle_levels = None
            self._crop_spacing_mm = self.predictor.config.crop_spacing_mm
        self._extent = entry.extent
        return MaskChange(entry.box[0], entry.box[1], previous, self.voxels,
                          self.interactions, timing_ms={"encode": 0.0, "decode": 0.0, "total": 0.0})

    def reset(self) -> None:
        """Start the next object: clear points, mask and history; keep the volume and the 3D
        encoder's features (a click reuses a cached crop that holds it, for speed, so a click's
        answer may still depend on earlier objects). The 2D pathway's slice windows go: a box
        decodes on a kept window that serves it, not only its own, so an earlier object's
        windows would change the next box's mask."""
        with self._lock:
            self._drop_slice_windows()
            self.mask[box_slices(self._extent)] = False
            self.voxels = 0
            self.points, self.labels = np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
            self.box = None
            self._click_mask_corrected_in_2d = False
            self._subtle_levels = None
            self._crop_spacing_mm = self.predictor.config.crop_spacing_mm
            self.interactions = 0
            self._history.clear()
            self._extent = EMPTY_BOX

    @property
    def crop_spacing_mm(self) -> float:
        """The object's crop spacing: the model's own, or the finer one its first click kept."""
        return self._crop_spacing_mm

    @property
    def history_bytes(self) -> int:
        """Bytes the undo history holds."""
        return sum(entry.previous.nbytes for entry in self._history)

    @property
    def slice_windows(self) -> int:
        """2D pathway windows the session keeps embedded (``SliceEmbeddings``)."""
        return len(self._slice_embeddings)

    @property
    def slice_windows_ahead(self) -> int:
        """Of those, windows embedded ahead of a correction (``prefetch_corrections``) not used yet."""
        return self._slice_embeddings.ahead

    def memory_bytes(self) -> int:
        """Bytes the session holds: volume, mask, undo history, cached encoder features and 2D
        pathway embeddings."""
        return (self.volume.nbytes + self.mask.nbytes + self.history_bytes + self.cache.nbytes
                + self._slice_embeddings.nbytes + (self._partial.nbytes if self._partial is not None else 0))

    # -- steps ----------------------------------------------------------------------------
    def _check_limits(self, new_points: int) -> None:
        if self.max_points is not None and len(self.points) + new_points > self.max_points:
            raise SessionLimit(f"the object would have {len(self.points) + new_points} points; this "
                               f"server allows {self.max_points} per object")
        if self.max_interactions is not None and self.interactions >= self.max_interactions:
            raise SessionLimit(f"the object has {self.interactions} interactions; this server allows "
                               f"{self.max_interactions} per object")

    def _check_box(self, box_kji) -> np.ndarray:
        """Two opposite corners -> [lo, hi] (continuous kji), or InvalidBox saying why not."""
        if not self.predictor.answers_boxes:
            raise InvalidBox(f"the model {self.predictor.name!r} ({self.predictor.config.name}) has no box "
                             "prompt; segment with clicks, or load a model trained with boxes")
        try:
            corners = np.asarray(box_kji, dtype=np.float64)
        except (TypeError, ValueError):
            corners = np.zeros(0)
        if corners.shape != (2, 3):
            raise InvalidBox("a box is two opposite corners [[k, j, i], [k, j, i]] (voxel indices)")
        if not np.isfinite(corners).all():
            raise InvalidBox("box corners must be finite numbers")
        for corner in corners[outside_volume(corners, self.shape)][:1]:
            raise InvalidBox(f"box corner [k, j, i] = {[round(float(v), 2) for v in corner]} is outside "
                             f"the volume of shape {list(self.shape)}")
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        named = f"the box {np.round(lo, 2).tolist()}..{np.round(hi, 2).tolist()} (voxel indices k, j, i)"
        if np.count_nonzero(hi - lo >= 1.0) < 2:
            raise InvalidBox(f"{named} spans less than one voxel along two of its axes; draw a box around the "
                             "object (equal k for a 2D box on one slice)")
        if np.any(hi[1:] - lo[1:] < 1.0):  # a 2D box lies on a k slice, where the 2D pathway works
            raise InvalidBox(f"{named} is flat along {'j' if hi[1] - lo[1] < 1.0 else 'i'}: a 2D box lies on one "
                             "k slice (equal k); a box drawn across the slices needs depth along j and i")
        return np.stack([lo, hi])

    def _check_points(self, points_kji, labels, allow_none: bool = False) -> tuple[np.ndarray, np.ndarray]:
        try:
            points = np.asarray(points_kji, dtype=np.float64).reshape(-1, 3)
            labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError("points must be [k, j, i] triples of numbers and labels integers") from None
        if len(points) == 0 and not allow_none:
            raise ValueError("give at least one point (or a box)")
        if len(labels) != len(points):
            raise ValueError(f"{len(points)} points but {len(labels)} labels; give one label per point")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 1 (positive) or 0 (negative)")
        if not np.isfinite(points).all():
            raise ValueError("points must be finite numbers")
        for bad in points[outside_volume(points, self.shape)][:1]:
            raise ValueError(f"point [k, j, i] = {[round(float(v), 2) for v in bad]} is outside the "
                             f"volume of shape {list(self.shape)}; points are voxel indices in kji order")
        return points, labels

    def _place_crops(self, points: np.ndarray, labels: np.ndarray,
                     box: np.ndarray | None, spacing_mm: float) -> list[CropGeometry]:
        """Crops of ``spacing_mm``: one centred on a new box, then one for each new point not
        inside a crop already placed (positive points first)."""
        size = self.predictor.config.crop_size
        margin = size / 8
        placed: list[CropGeometry] = []
        if box is not None:
            placed.append(CropGeometry.around(box.mean(axis=0), self.spacing, self.shape, size, spacing_mm))
        for index in np.argsort(-labels, kind="stable"):
            point = points[index:index + 1]
            if any(g.contains(point, margin) for g in placed):
                continue
            cached = self._nearest_cached(point[0], spacing_mm, margin)
            placed.append(cached if cached is not None
                          else CropGeometry.around(point[0], self.spacing, self.shape, size, spacing_mm))
        return placed

    def _nearest_cached(self, point: np.ndarray, spacing_mm: float, margin: float = 0.0) -> CropGeometry | None:
        """The encoded crop of ``spacing_mm`` (in the cache, or encoded in part) nearest ``point``
        (kji) that holds it at least ``margin`` crop voxels from its faces, or None."""
        encoded = self.cache.geometries() + ([self._partial.geometry] if self._partial is not None else [])
        holding = [g for g in encoded if g.crop_spacing_mm == spacing_mm and g.contains(point[None], margin)[0]]
        return min(holding, key=lambda g: np.linalg.norm(np.asarray(g.center) - point), default=None)

    def _answer_with_crops(self, queue: list[CropGeometry], patches: list[tuple[Box, np.ndarray]],
                           all_points: np.ndarray, all_labels: np.ndarray, prompt_box: np.ndarray | None,
                           first_click: np.ndarray | None, honour_negatives: bool,
                           partial_ok: bool = False) -> "_CropAnswer":
        """The 3D model's answer: the queued crops predicted (with the crops next to each face
        their mask reaches, at most ``max_crops``), fused with ``patches`` (which it extends) and
        thresholded. ``first_click``: a new object's first positive click, whose answer is
        thresholded at the image's edges (``_first_click_threshold``); ``partial_ok``: a crop
        encoded in part is read as it is (``_features``)."""
        done: list[CropGeometry] = []
        threshold, on_edge, encode_s = DEFAULT_THRESHOLD, False, 0.0
        while queue and len(done) < self.max_crops:
            geometry = queue.pop(0)
            if any(g.key == geometry.key for g in done):
                continue
            probability, seconds = self._predict_crop(geometry, all_points, all_labels, prompt_box,
                                                      self._proposal(geometry.source_box(), patches, threshold),
                                                      partial_ok)
            encode_s += seconds
            if first_click is not None and not done:
                threshold, on_edge = self._first_click_threshold(geometry, probability, first_click)
            patches.append(paste_back(geometry, probability))
            done.append(geometry)
            for axis, direction in touched_faces(probability > threshold):
                if not geometry.at_volume_edge(axis, direction):
                    neighbour = geometry.shifted(axis, direction)
                    if not any(g.contains([neighbour.center], margin=geometry.size / 8)
                               for g in done + queue):
                        queue.append(neighbour)
        box = _union([patch_box for patch_box, _ in patches])
        fused = self._fused(box, patches)
        proposal = self._thresholded(box, fused, threshold)
        if done and honour_negatives:  # the 3D model answered
            proposal = honour_negative_clicks(fused, proposal, all_points - np.asarray(box[0]), all_labels,
                                              self.spacing)
        if threshold != DEFAULT_THRESHOLD:  # a new object's first click: keep only the clicked object
            proposal = clicked_parts(proposal, all_points[all_labels == 1] - np.asarray(box[0]))
        return _CropAnswer(box, proposal, len(done), on_edge, encode_s, done[0].crop_spacing_mm if done else None)

    def _predict_crop(self, geometry: CropGeometry, all_points: np.ndarray, all_labels: np.ndarray,
                      prompt_box: np.ndarray | None, mask_region: np.ndarray,
                      partial_ok: bool = False) -> tuple["torch.Tensor", float]:
        """The 3D model's foreground probability on one crop [S, S, S] for the object's clicks (and
        its box, for a model that takes box corners), the object's mask on the crop's source box
        (``mask_region``) as the mask prompt where it holds any voxel -> (probability, seconds the
        encoder took: 0 for a cached crop; ``partial_ok``: see ``_features``)."""
        features, seconds = self._features(geometry, partial_ok)
        crop_points, crop_labels = _crop_prompts(geometry, all_points, all_labels,
                                                 prompt_box if self.predictor.config.box_prompt else None)
        probability = self.predictor.predict(features, crop_points, crop_labels,
                                             mask_prompt(geometry, mask_region) if mask_region.any() else None)
        self.decoder_runs += 1
        return probability, seconds

    def _recentred_on_object(self, answer: "_CropAnswer", all_points: np.ndarray, all_labels: np.ndarray,
                             first_click: np.ndarray, spacing_mm: float) -> "_CropAnswer":
        """A new object's first-click ``answer`` answered again on a crop centred on the object
        the image shows around it (``recentre``), kept where it reaches the click; else ``answer``.
        Either way with the encoder time and crops of both."""
        reach = reach_box(first_click, self.spacing, self.shape)
        lo = np.asarray(reach[0])
        found = image_object(self.volume[box_slices(reach)], self.spacing, _placed(reach, answer.box, answer.proposal),
                             first_click - lo)
        centre = None if found is None else shifted_centre(first_click, found.centre + lo, self.spacing,
                                                           self.predictor.config.crop_size, spacing_mm)
        if centre is None:
            return answer
        geometry = CropGeometry.around(centre, self.spacing, self.shape, self.predictor.config.crop_size, spacing_mm)
        seconds, started = self._encode_near(geometry, (found.slices[0] + reach[0][0], found.slices[1] + reach[0][0]))
        again = self._answer_with_crops([geometry], [], all_points, all_labels, None, first_click, False,
                                        partial_ok=started)
        near_click = reaches_click(again.proposal, first_click - np.asarray(again.box[0]), self.spacing)
        if started and not near_click:
            self._partial = None  # no idle time spent on a crop the object does not use
        kept = again if near_click else answer
        return dataclasses.replace(kept, crops=answer.crops + again.crops,
                                   encode_s=answer.encode_s + seconds + again.encode_s)

    def _small_object_at_finer_scale(self, answer: "_CropAnswer", points: np.ndarray, labels: np.ndarray,
                                     all_points: np.ndarray, all_labels: np.ndarray,
                                     first_click: np.ndarray) -> "_CropAnswer":
        """A new object's first-click ``answer`` (the model's own crops'), answered again at the
        finer scale where its object is small (``_at_finer_scale``); else ``answer``."""
        if not scale.is_small(int(answer.proposal.sum()), self.spacing):
            return answer
        return self._at_finer_scale(answer, points, labels, all_points, all_labels, first_click)

    def _at_finer_scale(self, answer: "_CropAnswer", points: np.ndarray, labels: np.ndarray,
                        all_points: np.ndarray, all_labels: np.ndarray, first_click: np.ndarray) -> "_CropAnswer":
        """A small object's first click answered again on crops of the finer spacing: that
        answer where the two agree, else ``answer`` (``crop_scale``); either way with the
        encoder time of both."""
        spacing_mm = scale.fine_spacing_mm(self.predictor.config.crop_spacing_mm)
        queue = self._place_crops(points, labels, None, spacing_mm)
        on_slices = np.flatnonzero(answer.proposal.any(axis=(1, 2))) + answer.box[0][0]
        seconds, started = self._encode_near(queue[0], (int(on_slices[0]), int(on_slices[-1])))
        encode_s = answer.encode_s + seconds
        finer = self._answer_with_crops(queue, [], all_points, all_labels, None, first_click, False,
                                        partial_ok=started)
        encode_s += finer.encode_s
        box = _union([answer.box, finer.box])
        same = scale.agree(_placed(box, answer.box, answer.proposal), _placed(box, finer.box, finer.proposal))
        if started and not same:
            self._partial = None  # the object stays on the model's own crop: no idle time spent on this one
        kept = finer if same else answer
        return dataclasses.replace(kept, encode_s=encode_s)

    def _encode_near(self, geometry: CropGeometry, k_range: tuple[int, int]) -> tuple[float, bool]:
        """The crop ``geometry`` of an object's first answer (a small object's finer crop, or a
        box's crop: ``k_range`` the native slices its object spans), where the model encodes in
        part and the crop was not encoded before (in part or whole): its slices near ``k_range``
        encoded, the crop kept as ``_partial`` (``partial_crop``) -> (seconds taken, whether it
        was). Only a crop started so by this answer is read in part: one an earlier answer
        started is read whole, as idle time may since have made it."""
        if (not self.predictor.encodes_in_part or self.cache.get(geometry) is not None
                or (self._partial is not None and self._partial.geometry.key == geometry.key)):
            return 0.0, False
        start = time.perf_counter()
        image = self._crop_image(geometry)
        depth = geometry.size // self.predictor.slab_voxels
        slabs = slabs_near(geometry, k_range, self.predictor.slab_voxels, self.predictor.slabs_per_run)
        self._partial = PartialCrop.start(geometry, image, slabs, self.predictor.encode_slabs(image, slabs), depth)
        self.encoder_runs += 1
        return time.perf_counter() - start, True

    def _features(self, geometry: CropGeometry, partial_ok: bool = False) -> tuple[ImageFeatures, float]:
        """The crop's encoder features -> (features, seconds the encoder took): cached, or
        encoded now and cached. A crop encoded in part (``_partial``) is read as it is where
        ``partial_ok`` (the first answer that started it: ``_encode_near``), else completed first."""
        features = self.cache.get(geometry)
        if features is not None:
            return features, 0.0
        start = time.perf_counter()
        partial = self._partial if self._partial is not None and self._partial.geometry.key == geometry.key else None
        if partial is not None and partial.complete:  # every slice encoded at once (a box as deep as the crop)
            return self._cache_whole(partial), time.perf_counter() - start
        if partial is not None and partial_ok:
            return self.predictor.encode_from_slabs(partial.backbone, partial.image), time.perf_counter() - start
        if partial is not None:
            self._encode_missing(partial)
            return self._cache_whole(partial), time.perf_counter() - start
        features = self.predictor.encode(self._crop_image(geometry))
        self.encoder_runs += 1
        self.cache.put(geometry, features)
        return features, time.perf_counter() - start

    def _encode_missing(self, partial: PartialCrop, most: int | None = None, wait: bool = True) -> bool:
        """``partial``'s missing slices (the first ``most`` of them) encoded; False where not
        ``wait`` and the encoder is in use."""
        slabs = partial.missing(most)
        if len(slabs) == 0:
            return True
        features = self.predictor.encode_slabs(partial.image, slabs, wait)
        if features is None:
            return False
        partial.add(slabs, features)
        self.encoder_runs += 1
        return True

    def _cache_whole(self, partial: PartialCrop, wait: bool = True) -> ImageFeatures | None:
        """The features of ``partial``, every slice now encoded, cached: it is no longer
        ``_partial``. None where not ``wait`` and the encoder is in use."""
        features = self.predictor.encode_from_slabs(partial.backbone, partial.image, wait)
        if features is not None:
            self.cache.put(partial.geometry, features)
            self._partial = None
        return features

    def _crop_image(self, geometry: CropGeometry):
        """The crop's model input, its intensity window that of the model's own crop spacing."""
        return extract_crop(self.volume, geometry, self.predictor.preset,
                            window_spacing_mm=self.predictor.config.crop_spacing_mm)

    def _bounds_2d(self) -> tuple[float, float]:
        """The 2D pathway's intensity bounds of the volume, computed on first use."""
        if self._intensity_bounds is None:
            self._intensity_bounds = volume_bounds(self.volume)
        return self._intensity_bounds

    def _drop_slice_windows(self) -> None:
        """The 2D pathway's embedded slice windows dropped (``reset``): a box decodes on a kept
        window that serves it, so windows embedded for another box would change its mask."""
        self._slice_embeddings = SliceEmbeddings(self._slice_embeddings.capacity)

    def _box_patch_2d(self, box: np.ndarray) -> tuple[tuple[Box, np.ndarray], float]:
        """A box answered by the 2D pathway (``_box_answer_2d``) - for an object without a mask
        yet, a box drawn loosely around the object the 3D model finds at its centre is asked
        fitted to that object, where the answer is that object (``box_fit``), and a 2D box's
        answer is kept to the slices that object spans, where it is that object, at the ends the
        model saw (``within_found_slices``' ``read_between``). Only for the object's first mask:
        a box that replaces the box of an object with a mask is answered as drawn -> (patch over
        the box and the mask, seconds: the 3D model's click included)."""
        start = time.perf_counter()
        patch = found = None
        same = False  # whether the answer is the object the 3D model found
        if self.voxels == 0:  # an object's first mask: the 3D model's click starts from none
            corners = on_its_slice(box)  # a 2D box between slices: on the slice it is answered on
            region, found, read_between = self._object_at_centre(corners)
            fitted = fitted_box(corners, region, found, self.volume)
            if fitted is not None:
                patch = self._box_answer_2d(fitted)
                same = same_object(*patch, corners, region, found)
                if not same:
                    patch = None  # the user's box answered as it is alone, not on the fitted box's windows
                    self._drop_slice_windows()
        if patch is None:
            patch = self._box_answer_2d(box)
            same = found is not None and same_object(*patch, corners, region, found)
        if same and not is_3d_box(box):
            patch = (patch[0], within_found_slices(*patch, region, found, read_between))  # as deep as the 3D model's object
        return patch, time.perf_counter() - start

    def _box_answer_2d(self, box: np.ndarray) -> tuple[Box, np.ndarray]:
        """A box answered by the 2D pathway, trimmed at a homogeneous lesion's intensity step, then
        grown to a clear step within the box and the mask's own box (``intensity_trim``), a loose
        answer's lesion read on the box's central slice -> patch over the box and the mask."""
        mask = self.predictor.segment_box_2d(self.volume, box, self._bounds_2d(), self._slice_embeddings)
        self.encoder_runs += 1
        lo = np.clip(np.floor(box[0]).astype(int), 0, None)
        hi = np.minimum(np.ceil(box[1]).astype(int) + 1, self.shape)
        region = _union([(tuple(int(v) for v in lo), tuple(int(v) for v in hi)), tight_box(mask) or EMPTY_BOX])
        patch = mask[box_slices(region)]
        if patch.any():
            deepest = centre_click(patch, self.spacing) + np.asarray(region[0])
            central = box_slice(box)
            trim = functools.partial(trim_homogeneous_lesion, plane_offset=central - int(round(deepest[0])))
            trimmed = self._at_lesion_intensity(region, patch, deepest, trim)
            if np.count_nonzero(trimmed) < np.count_nonzero(patch):  # the growth reads from what the trim kept
                deepest = centre_click(trimmed, self.spacing) + np.asarray(region[0])
            patch = self._at_lesion_intensity(region, trimmed, deepest, grow_to_lesion_intensity)
        return region, patch.astype(np.float32)

    def _first_click_search(self, box: Box, proposal: np.ndarray,
                            click: np.ndarray) -> tuple[tuple[Box, np.ndarray], float] | None:
        """The box search's answer to a new object's first click (``_search_2d``), or None where
        the 3D mask (``proposal`` inside ``box``) stands: "search" takes any answer; "gated" asks
        no more than ``GATE_RATIO`` times the 3D mask's voxels of it (none of an empty 3D mask)
        and keeps it only where the two agree (``_search_agrees``)."""
        if self.click_pathway == "search":
            return self._search_2d(box, proposal, click)
        limit = GATE_RATIO * int(np.count_nonzero(proposal))
        searched = self._search_2d(box, proposal, click, limit) if limit > 0 else None
        return searched if searched is not None and _search_agrees(box, proposal, *searched[0]) else None

    def _search_2d(self, box: Box, proposal: np.ndarray, click: np.ndarray,
                   max_voxels: int | None = None) -> tuple[tuple[Box, np.ndarray], float] | None:
        """A first click answered by the 2D pathway's box search (``Predictor.segment_click_2d``),
        the 3D model's mask (``proposal`` inside ``box``) on the click's slice one of its starts ->
        ((box, mask inside it), seconds), or None when the search found nothing that holds the
        click, or found more than ``max_voxels`` (the 3D mask stands). Measured in
        docs/BENCHMARKS.md ("box search", "A gated box search")."""
        start = time.perf_counter()
        k = int(round(float(click[0])))
        on_slice = np.zeros(self.shape[1:], dtype=bool)
        if box[0][0] <= k < box[1][0]:
            on_slice[box_slices(box)[1:]] = proposal[k - box[0][0]]
        mask = self.predictor.segment_click_2d(self.volume, click, self.spacing, self._bounds_2d(), on_slice, max_voxels,
                                               self._slice_embeddings)
        self.encoder_runs += 1
        region = tight_box(mask)
        if region is None:
            return None
        merged = _union([box, region])
        return (merged, mask[box_slices(merged)]), time.perf_counter() - start

    @property
    def _corrects_in_2d(self) -> bool:
        """Whether clicks go to the 2D pathway first: corrections "2d" or "auto" on an object whose
        mask the 2D pathway made (``_made_in_2d``)."""
        return self.corrections in ("2d", "auto") and self._made_in_2d and self.voxels > 0

    @property
    def _made_in_2d(self) -> bool:
        """Whether the object's mask is corrected as the 2D pathway's: its box, or its first click's
        box search, went there, or its first click's answer lay on an image edge (``edge_threshold``,
        or a subtle lesion's extent: ``subtle_extent``)."""
        return self.predictor.box_pathway == "2d" and (self.box is not None or self._click_mask_corrected_in_2d)

    def _correct_2d(self, points: np.ndarray, labels: np.ndarray) -> tuple[tuple[Box, np.ndarray], float] | None:
        """The clicks answered one after the other by the 2D pathway -> (patch over what changed,
        seconds), or None as soon as one is not a click it answers (the 3D model then takes them).
        A negative click never removes the object's positive clicks (``correct_slice_by_slice``)."""
        start = time.perf_counter()
        mask = self.mask
        positives = list(self.points[self.labels == 1])
        for point, label in zip(points, labels):
            mask = self.predictor.correct_box_2d(self.volume, mask, point, int(label), self._bounds_2d(),
                                                self.box, self.spacing, np.array(positives).reshape(-1, 3),
                                                self._slice_embeddings)
            if mask is None:
                return None
            if label == 1:
                positives.append(point)
        self.encoder_runs += 1  # LiteMedSAM's encoder ran on the slices it changed
        region = tight_box(mask != self.mask) or ((0, 0, 0), (1, 1, 1))
        return (region, mask[box_slices(region)].astype(np.float32)), time.perf_counter() - start

    @property
    def _hears_unheard_clicks_in_2d(self) -> bool:
        """Whether a positive click the 3D model's answer leaves out goes to the 2D pathway
        (``_unheard_clicks_in_2d``): corrections "auto" or "2d" on an object the 3D model corrects
        (on one the 2D pathway corrects, that pathway was asked first and its refusal stands)."""
        return self.corrections in ("auto", "2d") and self.predictor.box_pathway == "2d" and not self._made_in_2d

    def _unheard_clicks_in_2d(self, box: Box, proposal: np.ndarray, points: np.ndarray, all_points: np.ndarray,
                              all_labels: np.ndarray) -> tuple[tuple[Box, np.ndarray], float]:
        """A correction's positive ``points`` the 3D model's answer (``proposal``, bool, inside
        ``box``) leaves outside the mask, answered one after the other by the 2D pathway
        (``Predictor.correct_box_2d``, as on a mask the 2D pathway made: the clicked slice, and the
        slices between it and the mask where it lies past the mask's end): a click inside a lesion
        the model does not follow is not ignored (docs/BENCHMARKS.md, "Positive clicks the 3D
        model does not hear"). -> ((box, proposal) with what the 2D pathway added, seconds);
        ``(box, proposal)`` as they are where every click is in the mask or the 2D pathway
        answers none of them."""
        start = time.perf_counter()
        after, heard = None, False
        positives = all_points[all_labels == 1]
        for point, index in clicks_inside(points, np.ones(len(points)), 1, self.shape):
            if _answer_holds(self.mask, box, proposal, index):
                continue
            if after is None:
                after = self.mask.copy()
                after[box_slices(box)] = proposal
            corrected = self.predictor.correct_box_2d(self.volume, after, point, 1, self._bounds_2d(), self.box,
                                                      self.spacing, positives, self._slice_embeddings)
            if corrected is not None and corrected[index]:
                after, heard = corrected, True
        if not heard:
            return (box, proposal), time.perf_counter() - start
        self.encoder_runs += 1  # LiteMedSAM's encoder ran on the clicked slices
        region = _union([box, tight_box(after != self.mask) or EMPTY_BOX])
        return (region, after[box_slices(region)]), time.perf_counter() - start

    def _unanswered_clicks_added(self, box: Box, proposal: np.ndarray, points: np.ndarray, all_points: np.ndarray,
                                 all_labels: np.ndarray) -> tuple[Box, np.ndarray]:
        """A correction's answer (``proposal``, bool, inside ``box``) with, for each of its positive
        ``points`` it leaves outside the mask, the region the image gives the click
        (``unanswered_clicks.region_at_click``; what it adds only inside the object's 3D box
        widened to the clicks, as a correction's answer there): such a click always changes the
        mask. -> (box, proposal), the box grown to what was added."""
        missed = [index for _, index in clicks_inside(points, np.ones(len(points)), 1, self.shape)
                  if not _answer_holds(self.mask, box, proposal, index)]
        if not missed:
            return box, proposal
        answered = self.mask.copy()
        answered[box_slices(box)] = proposal
        negatives = all_points[all_labels == 0]
        windows = [region_at_click(self.volume, self.spacing, answered, index, negatives) for index in missed]
        grown = _union([box] + [window for window, _ in windows])
        added = np.zeros(_size(grown), dtype=bool)
        for window, region in windows:
            added[box_slices(window, origin=grown[0])] |= region
        if self.box is not None and is_3d_box(self.box):
            added = _within_box(np.zeros_like(added), added, grown, self.box, points)
        return grown, answered[box_slices(grown)] | added

    def _judged_by_3d(self, patch: tuple[Box, np.ndarray], all_points: np.ndarray, all_labels: np.ndarray,
                      clicks: np.ndarray) -> tuple[Box, np.ndarray]:
        """The 2D pathway's answer to ``clicks`` (``patch``: its box and mask) judged by the 3D
        model: it predicts the cached crop nearest each click that holds it (every click of the
        object, the 2D answer as its mask prompt), and
        - what the 2D answer cut for a negative click is given back where the model believes it
          clearly more than the click (``negative_clicks.spare_believed_voxels``), and of the
          object's mask before the clicks, the part it doubts as much as a negative click,
          connected to it, nearer it than every positive click, is removed
          (``negative_clicks.honour_negative_clicks``): the 2D pathway cuts the clicked slice
          only, and a leak that runs on past it over several slices goes with one click
          (docs/BENCHMARKS.md, "A negative click's cut carried across slices by the 3D model's
          doubt"); a thin layer along the rest of the mask, clicked in its outer half, only
          within 4 mm of the click; on a box's object without a positive click, only where the
          model sees the object and the cut leaves most of it
          (``negative_clicks.doubt_reads_box_object``: where the model does not see a faint
          lesion its doubt covers the lesion too; docs/BENCHMARKS.md, "A negative click after a
          box read from the 3D model's doubt only where it sees the object");
        - of what the answer added for a positive click on a slice the mask covers, only the
          part it believes at least half as much as the click, connected to it, stays, where its
          own mask agrees with the object's (``positive_clicks.keep_believed_additions``): a
          widened box that made LiteMedSAM follow the tissue beside a lesion adds only the
          lesion (docs/BENCHMARKS.md, "Positive clicks kept where the 3D model believes them").
        The giving back and the keeping judge only where the model's mask agrees with the
        object's (``positive_clicks.agreement``). No new crop is encoded for this (a crop encoded in
        part is completed): a click no encoded crop holds keeps the 2D answer, and so does an
        answer no rule can change (positive clicks only, none of them judgeable), without a
        decoder run."""
        geometries: list[CropGeometry] = []
        for click in clicks:
            nearest = self._nearest_cached(click, self._crop_spacing_mm)
            if nearest is not None and all(g.key != nearest.key for g in geometries):
                geometries.append(nearest)
        if not geometries:
            return patch
        region, answer = patch
        box = _union([region] + [g.source_box() for g in geometries])
        before = self.mask[box_slices(box)]
        mask = before.copy()
        mask[box_slices(region, origin=box[0])] = answer > DEFAULT_THRESHOLD
        points = all_points - np.asarray(box[0])
        negatives = bool((all_labels == 0).any())
        if not negatives and not judgeable_additions(before, mask, points, all_labels):
            return patch  # no rule can change the answer: no decoder run
        predicted = [paste_back(geometry, self._predict_crop(geometry, all_points, all_labels, None,
                                                             mask[box_slices(geometry.source_box(), origin=box[0])])[0])
                     for geometry in geometries]
        probability = self._fused(box, predicted)
        if agreement(probability, before) >= MIN_AGREEMENT:
            mask = spare_believed_voxels(probability, before, mask, points, all_labels)
            mask = keep_believed_additions(probability, before, mask, points, all_labels)
        if negatives:
            kept = honour_negative_clicks(probability, before, points, all_labels, self.spacing)
            if (all_labels == 1).any() or doubt_reads_box_object(probability, before, kept):
                mask &= ~(before & ~kept)  # only what the rule removes: a positive click's gain in the same interaction stays
        return box, mask.astype(np.float32)

    def _at_lesion_intensity(self, box: Box, proposal: np.ndarray, click: np.ndarray,
                             snap: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
        """A mask (``proposal``, inside ``box``: a first click's, a box's, or a positive correction's
        on its clicked slice) trimmed at, or grown to, the lesion's intensity step (``snap``:
        ``intensity_trim``'s trim or growth) read from ``click``, on the image around the mask's own
        box grown by the trim's ring in-plane; nothing changes outside ``box``."""
        found = tight_box(proposal)
        if found is None:
            return proposal
        found_in_volume: Box = (tuple(b + f for b, f in zip(box[0], found[0])),
                                tuple(b + f for b, f in zip(box[0], found[1])))
        grown = _padded(found_in_volume, (0, RING_PX, RING_PX), self.volume.shape)
        region = _intersection(grown, box)  # holds every voxel of the mask
        mask = np.zeros(_size(grown), dtype=bool)
        mask[box_slices(region, origin=grown[0])] = proposal[box_slices(region, origin=box[0])]
        snapped = snap(self.volume[box_slices(grown)], mask, click - np.asarray(grown[0]))
        proposal = proposal.copy()
        proposal[box_slices(region, origin=box[0])] = snapped[box_slices(region, origin=grown[0])]
        return proposal

    def _first_mask_at_lesion_intensity(self, box: Box, proposal: np.ndarray,
                                        click: np.ndarray) -> tuple[np.ndarray, SubtleLevels | None]:
        """A new object's first-click mask (``proposal``, inside ``box``) trimmed at a clear
        intensity step, or grown to a subtle lesion's extent, or else to a clear step's ->
        (mask, the subtle lesion's levels or None)."""
        proposal = self._at_lesion_intensity(box, proposal, click, trim_to_lesion_intensity)
        proposal, levels = self._grown_to_subtle_lesion(box, proposal, click)
        if levels is None:
            proposal = self._at_lesion_intensity(box, proposal, click, grow_to_lesion_intensity)
        return proposal, levels

    def _object_at_centre(self, corners: np.ndarray) -> tuple[Box, np.ndarray, tuple[float, float] | None]:
        """The 3D model's answer to a first click at the centre of a box (kji ``corners``) on an
        object without a mask, made as a new object's first click is (for a model whose crops are
        scaled by their own percentiles, as in ``_chooses_threshold``: the edge threshold, a finer
        crop for a small object, the mask snapped to the lesion's intensity) -> (box of the
        volume, mask inside it, the native slices (first, last) on which the model's own crop had
        its exact TinyViT features, None where it was read whole; a finer crop's answer, kept
        where it agrees, is not narrowed further). The model's crop is encoded first on the
        slices near the box's object (``_encode_near``, ``box_fit.object_slices``) and completed
        in idle time or by the object's next answer; a finer crop it starts encoding is not
        kept: the box's object stays on the model's own crops."""
        point = box_centre(corners)[None]
        positive = np.ones(1, dtype=np.int64)
        queue = self._place_crops(point, positive, None, self.predictor.config.crop_spacing_mm)
        first_click = point[0] if self.predictor.preset.kind == "percentile" else None
        started = self._encode_near(queue[0], object_slices(corners, self.spacing))[1]
        read_between = (self._partial.exact_native_range(self.predictor.slab_voxels)
                        if started and not self._partial.complete else None)
        answer = self._answer_with_crops(queue, [], point, positive, None, first_click, False,
                                         partial_ok=started)
        if first_click is None:
            return answer.box, answer.proposal, read_between
        partial = self._partial
        try:
            answer = self._small_object_at_finer_scale(answer, point, positive, point, positive, first_click)
        finally:  # the box's crop stays the one encoded in part, unless it was cached whole meanwhile
            cached = partial is not None and self.cache.get(partial.geometry) is not None
            self._partial = None if cached else partial
        mask = self._first_mask_at_lesion_intensity(answer.box, answer.proposal, first_click)[0]
        return answer.box, mask, read_between

    def _additions_at_lesion_intensity(self, box: Box, proposal: np.ndarray, points: np.ndarray,
                                       labels: np.ndarray) -> np.ndarray:
        """A positive correction's answer (``proposal``, bool, inside ``box``) with what it added on
        each clicked slice trimmed at the lesion's intensity step, as a first click's mask is: on a
        thick slice at a nodule's tip the 2D pathway fills the whole disc of the slice beside it
        where the lesion holds a few voxels. The lesion's level is read first in the object's mask
        (away from its edge: a tip slice's own pixels are partial volume), then on the slice; the
        surroundings' on the slice. The object's mask stays."""
        before = self.mask[box_slices(box)]
        proposal = proposal.copy()
        trim = None
        for point, index in clicks_inside(points, labels, 1, self.shape):
            k = index[0] - box[0][0]
            if not 0 <= k < proposal.shape[0] or not (proposal[k] & ~before[k]).any():
                continue
            if trim is None:  # read once, where a clicked slice has additions
                trim = functools.partial(trim_to_lesion_intensity, lesion_level=core_level(
                    self.volume[box_slices(self._extent)], self.mask[box_slices(self._extent)]))
            on_slice: Box = ((index[0], box[0][1], box[0][2]), (index[0] + 1, box[1][1], box[1][2]))
            trimmed = self._at_lesion_intensity(on_slice, proposal[k:k + 1], np.asarray(point, dtype=float), trim)[0]
            proposal[k] = trimmed | (proposal[k] & before[k])
        return proposal

    def _grown_to_subtle_lesion(self, box: Box, proposal: np.ndarray,
                                click: np.ndarray) -> tuple[np.ndarray, SubtleLevels | None]:
        """A first click's mask (``proposal``, inside ``box``) carried to a subtle lesion's extent
        (``subtle_extent``), read inside ``box`` around the mask's own box grown by the rule's
        reach and shell; the lesion's contrast is weighed against the percentile range of the
        image in ``box``, the model's crop. -> (mask, the lesion's levels or None where the rule
        did not apply)."""
        found = tight_box(proposal)
        if found is None:
            return proposal, None
        region = _padded(found, [int(np.ceil((REACH_MM + SHELL_MM[1]) / s)) for s in self.spacing], proposal.shape)
        crop = self.volume[box_slices(box)]
        low, high = self.predictor.preset.percentile_window(crop)
        grown, levels = grow_to_subtle_lesion(crop[box_slices(region)], self.spacing, proposal[box_slices(region)],
                                              click - np.asarray(box[0]) - np.asarray(region[0]), float(high - low))
        if levels is None:
            return proposal, None
        proposal = proposal.copy()
        proposal[box_slices(region)] = grown
        return proposal, levels

    def _correct_subtle(self, points: np.ndarray, labels: np.ndarray) -> tuple[Box, np.ndarray] | None:
        """The clicks on a subtle lesion's mask answered from its levels (``subtle_extent``), one
        after the other -> a patch over the mask's and the clicks' box grown by the rule's reach,
        or None where the object is not such a lesion (the other pathways then take the clicks)."""
        if self._subtle_levels is None or self.voxels == 0:
            return None
        clicked: Box = (tuple(int(c) for c in np.floor(points.min(axis=0))),
                        tuple(int(c) + 1 for c in np.ceil(points.max(axis=0))))
        region = _padded(_union([self._extent, clicked]),
                         [int(np.ceil((REACH_MM + 3 * SMOOTH_MM) / s)) for s in self.spacing], self.volume.shape)
        origin = np.asarray(region[0])
        smoothed = smoothed_image(self.volume[box_slices(region)], self.spacing)
        mask = self.mask[box_slices(region)].copy()
        positives = [p - origin for p in self.points[self.labels == 1]]
        for point, label in zip(points - origin, labels):
            if label == 1:
                mask = add_at_positive_click(smoothed, self.spacing, mask, point, self._subtle_levels)
                positives.append(point)
            else:
                mask = cut_at_negative_click(smoothed, self.spacing, mask, point, np.array(positives).reshape(-1, 3),
                                             self._subtle_levels)
        return region, mask.astype(np.float32)

    def _chooses_threshold(self, new_box: np.ndarray | None, labels: np.ndarray) -> bool:
        """Whether this interaction is a new object's first clicks, answered by the 3D model alone
        (no box, no mask yet, a positive click): its threshold is then chosen by the image's edges.
        Only for a model whose crops are scaled by their own percentiles (``edge_threshold``'s
        floor is in those units) and whose boxes go to the 2D pathway (which then corrects the
        mask: at 0.5 the 3D model's next answer would undo the chosen threshold's extent)."""
        return (self.predictor.box_pathway == "2d" and self.predictor.preset.kind == "percentile"
                and self._is_new_object(new_box) and bool((labels == 1).any()))

    def _is_new_object(self, new_box: np.ndarray | None) -> bool:
        """Whether this interaction starts the object: no box given now or before, no mask yet."""
        return new_box is None and self.box is None and self.voxels == 0

    def _first_click_threshold(self, geometry: CropGeometry, probability, click: np.ndarray) -> EdgeChoice:
        """The threshold of a first click's answer in its crop, and whether its mask lies on an
        image edge (``edge_threshold``). The crop's image is extracted again (a few ms of a
        first click's seconds) rather than kept beside every cached crop's features."""
        image = self._crop_image(geometry)[0, 0].numpy()
        return edge_threshold(image, probability.numpy(), geometry.to_crop(click)[0])

    def _proposal(self, box: Box, patches: list[tuple[Box, np.ndarray]],
                  threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """The object's mask inside ``box`` with the patches predicted so far fused in: where
        any patch covers a voxel, the maximum probability > ``threshold`` decides, elsewhere the mask."""
        return self._thresholded(box, self._fused(box, patches), threshold)

    def _thresholded(self, box: Box, fused: np.ndarray, threshold: float) -> np.ndarray:
        """``_fused`` probabilities inside ``box`` > ``threshold`` where a patch covers a voxel,
        the object's mask elsewhere."""
        return np.where(fused >= 0, fused > threshold, self.mask[box_slices(box)])

    @staticmethod
    def _fused(box: Box, patches: list[tuple[Box, np.ndarray]]) -> np.ndarray:
        """The patches' maximum probability inside ``box``; -1 where no patch covers a voxel."""
        fused = np.full(_size(box), -1.0, dtype=np.float32)
        for patch_box, probability in patches:
            overlap = _intersection(box, patch_box)
            if overlap is None:
                continue
            target = fused[box_slices(overlap, origin=box[0])]
            np.maximum(target, probability[box_slices(overlap, origin=patch_box[0])], out=target)
        return fused

    def _trim_history(self) -> None:
        """Keep the last ``UNDO_DEPTH`` undo steps, and of those no more than ``max_undo_bytes``."""
        del self._history[:-UNDO_DEPTH]
        while self.max_undo_bytes is not None and self.history_bytes > self.max_undo_bytes:
            del self._history[0]

    def _commit(self, box: Box, new: np.ndarray, points: np.ndarray, labels: np.ndarray,
                prompt_box: np.ndarray | None, interactions: int, trim_history: bool = True) -> MaskChange:
        """Write ``new`` (the mask inside ``box``), record undo, return the tight changed box.
        ``trim_history``: apply the undo memory's limits now (else the caller does, once the
        steps of one interaction are merged)."""
        old = self.mask[box_slices(box)]
        changed = tight_box(new != old)
        if changed is None:
            change_box, previous = EMPTY_BOX, np.zeros((0, 0, 0), dtype=bool)
        else:
            change_box = (tuple(b + c for b, c in zip(box[0], changed[0])),
                          tuple(b + c for b, c in zip(box[0], changed[1])))
            previous = old[box_slices(changed)].copy()
        self._history.append(_HistoryEntry(change_box, np.packbits(previous, axis=None), len(self.points),
                                           self.interactions, self._extent, self.box))
        if trim_history:
            self._trim_history()
        if changed is not None:
            after = new[box_slices(changed)]
            self.voxels += int(after.sum()) - int(previous.sum())
            self.mask[box_slices(change_box)] = after
            self._extent = _union([self._extent, change_box])
        self.points, self.labels, self.box, self.interactions = points, labels, prompt_box, interactions
        mask = new[box_slices(changed)].copy() if changed is not None else previous
        return MaskChange(change_box[0], change_box[1], mask, self.voxels, self.interactions)


def segment(predictor: Predictor, volume: np.ndarray, spacing, points_kji, labels,
            max_crops: int = 6, box_kji=None) -> np.ndarray:
    """One-shot segmentation (batch, evaluation, CLI): bool mask of ``volume``'s shape from
    labelled kji points (and a box), as one interaction of a fresh session."""
    session = Session(predictor, volume, spacing, cache_size=max_crops, max_crops=max_crops)
    session.interact(points_kji, labels, box_kji)
    return session.mask


def _crop_prompts(geometry: CropGeometry, points: np.ndarray, labels: np.ndarray,
                  box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The prompts one crop gets, in crop kji: the points inside it, and the box's corners
    clamped into it (labels 2 / 3) when the box overlaps the crop."""
    inside = geometry.contains(points)
    crop_points, crop_labels = geometry.to_crop(points[inside]).reshape(-1, 3), labels[inside]
    if box is not None:
        corners = geometry.to_crop(box)
        last = geometry.size - 1
        if np.all(corners[1] >= 0) and np.all(corners[0] <= last):
            crop_points = np.concatenate([crop_points, np.clip(corners, 0, last)])
            crop_labels = np.concatenate([crop_labels, [BOX_FIRST_CORNER, BOX_SECOND_CORNER]])
    return crop_points, crop_labels


def _local_update(old: np.ndarray, new: np.ndarray, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A correction that stays where the user clicked: of the model's new mask, only the
    connected region it added around a positive click (removed around a negative one) is taken;
    the rest of the object keeps its previous mask. ``points``: kji relative to the arrays."""
    result = old.copy()
    added, _ = label_objects(new & ~old)
    removed, _ = label_objects(old & ~new)
    for point, label in zip(points, labels):
        index = tuple(int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(point, old.shape))
        components = added if label == 1 else removed
        if components[index]:
            result[components == components[index]] = label == 1
    return result


def _on_clicked_slices(mask: np.ndarray, new: np.ndarray, region: Box, points: np.ndarray,
                       labels: np.ndarray) -> np.ndarray:
    """``new`` (the object's next mask inside ``region``) on the slices that hold one of
    ``points``, the object's ``mask`` (whole volume) elsewhere; around a positive click only inside
    the box the 2D pathway answered it from (``slice_pathway.correction_box``): a mask the 2D
    pathway made is corrected slice by slice, also where the 3D model answers the click (on a
    lesion inside an organ of like intensity its answer spreads into the organ across many
    slices; docs/BENCHMARKS.md, "Corrections after a box, third round")."""
    old = mask[box_slices(region)]
    allowed = np.zeros(old.shape, dtype=bool)
    origin = np.asarray(region[0])
    for point, label in zip(points, labels):
        click = tuple(int(round(float(v))) for v in point)
        k = click[0] - origin[0]
        if not 0 <= k < old.shape[0]:
            continue
        if label != 1:
            allowed[k] = True
            continue
        _, box = correction_box(mask, click)
        lo = np.maximum(np.floor(box[:2]).astype(int) - origin[1:], 0)
        hi = np.maximum(np.ceil(box[2:]).astype(int) + 1 - origin[1:], 0)
        allowed[k, lo[0]:hi[0], lo[1]:hi[1]] = True
    return np.where(allowed, new, old)


def _answer_holds(mask: np.ndarray, box: Box, proposal: np.ndarray, index: tuple[int, ...]) -> bool:
    """Whether the mask after an answer (``proposal``, inside ``box`` of the volume-sized
    ``mask``; ``mask`` as it is elsewhere) holds the voxel at ``index``."""
    if all(lo <= v < hi for v, lo, hi in zip(index, *box)):
        return bool(proposal[tuple(np.subtract(index, box[0]))])
    return bool(mask[index])


def _within_box(old: np.ndarray, new: np.ndarray, region: Box, prompt_box: np.ndarray,
                points: np.ndarray) -> np.ndarray:
    """``new`` (the mask inside ``region``) where it lies in the object's 3D box prompt widened
    to hold ``points``, ``old`` elsewhere: the user's 3D box says where the object is."""
    lo = np.floor(np.minimum(prompt_box[0], points.min(axis=0))).astype(int) - np.asarray(region[0])
    hi = np.ceil(np.maximum(prompt_box[1], points.max(axis=0))).astype(int) + 1 - np.asarray(region[0])
    inside = np.zeros(old.shape, dtype=bool)
    inside[tuple(slice(max(l, 0), max(h, 0)) for l, h in zip(lo, hi))] = True
    return np.where(inside, new, old)


# -- boxes ------------------------------------------------------------------------------------
def _search_agrees(box: Box, three_d: np.ndarray, search_box: Box, searched: np.ndarray) -> bool:
    """Whether a box search's mask (``searched`` over ``search_box``, which holds ``box``) found
    the 3D model's object (``three_d`` over ``box``): whole (it holds ``GATE_COVERAGE`` of the 3D
    mask and at most ``GATE_RATIO`` times its voxels) or trimmed (``GATE_INSIDE`` of it lies in
    the 3D mask)."""
    found = int(np.count_nonzero(searched))
    model = int(np.count_nonzero(three_d))
    shared = int(np.count_nonzero(searched[box_slices(box, origin=search_box[0])] & three_d))
    whole = found <= GATE_RATIO * model and shared >= GATE_COVERAGE * model
    return whole or shared >= GATE_INSIDE * found


def _placed(box: Box, inner_box: Box, mask: np.ndarray) -> np.ndarray:
    """``mask`` (of ``inner_box``) placed in a zero array of ``box``: the part of it inside ``box``."""
    placed = np.zeros(_size(box), dtype=bool)
    overlap = _intersection(box, inner_box)
    if overlap is not None:
        placed[box_slices(overlap, origin=box[0])] = mask[box_slices(overlap, origin=inner_box[0])]
    return placed


def _size(box: Box) -> tuple[int, int, int]:
    return tuple(max(h - l, 0) for l, h in zip(*box))


def _is_empty(box: Box) -> bool:
    return any(h <= l for l, h in zip(*box))


def _union(boxes: list[Box]) -> Box:
    boxes = [b for b in boxes if not _is_empty(b)]
    if not boxes:
        return EMPTY_BOX
    return (tuple(min(b[0][a] for b in boxes) for a in range(3)),
            tuple(max(b[1][a] for b in boxes) for a in range(3)))


def _padded(box: Box, pad: Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` grown by ``pad`` voxels on each side along each axis, clipped to an array of ``shape``."""
    return clamp_box(np.subtract(box[0], pad), np.add(box[1], pad), shape)


def _intersection(a: Box, b: Box) -> Box | None:
    lo = tuple(max(x, y) for x, y in zip(a[0], b[0]))
    hi = tuple(min(x, y) for x, y in zip(a[1], b[1]))
    return None if any(h <= l for l, h in zip(lo, hi)) else (lo, hi)
