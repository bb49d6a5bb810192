"""LiteMedSAM's trained 2D box pathway, slice by slice: how the engine answers a box prompt.

On the box's slice LiteMedSAM segments from the box; the mask is then carried to the
neighbouring slices, each prompted with the previous slice's mask box plus ``BOX_MARGIN_PX``
(where that ends it on an object that stands out from its surroundings, once more with a box
``RETRY_MARGIN_FRACTION`` of the mask's side wider, kept while its mask looks like the object:
``_propagation_margins``), until a slice comes back empty or larger than ``GROWTH_LIMIT`` times
the previous one (MedSAM's own 3D inference works the same way). Where LiteMedSAM's single mask
overgrows, one of SAM's multimask outputs that keeps to the growth rule and agrees with the
previous slice goes on instead (``_segment_slice``). The growth rule stands in for "the object
ended": from the object's largest slice its area shrinks, while LiteMedSAM, given a box, finds *something* in
every slice. An intensity rule ends it too: a slice mask whose mean lies well beyond the start
slice's surroundings, seen from the object, or (without a 3D box) as far past the object on its
other side, has left it (``_left_the_object``). A 3D box
(corners on different slices) also bounds the propagation: it starts on the object's widest
slice in the box - the largest mask of the slices whose mask fills the box's rectangle nearly as
well as the best (``_fullest_slice``) - stays within the box's slices and never leaves the box's
rectangle.

Why a 2D pathway beside the 3D model: on boxes it is the better of the two on every data set
measured (docs/BENCHMARKS.md, generalisation table) - it was trained on ~1.5 M real medical
image-mask pairs, the 3D model's adapters on a few hundred synthetic crops. Clicks stay with the
3D model: LiteMedSAM's point prompt is untrained (Dice 0.00 from one click) - or, opt-in
(``Session(click_pathway="search")``), a first click gets the box that fits its slice best by a
box search (``segment_from_click``), at seconds of CPU time (docs/BENCHMARKS.md).

Each slice goes in as a square window around the box, resized to ``WINDOW_PX`` (LiteMedSAM's
weights keep their box accuracy from 64 to 192 px inputs) at native in-plane resolution, with
intensities scaled by the volume's 0.5 / 99.5 percentiles (``volume_bounds``), the same rule as
the modality-free ``percentile`` preset. SAM's own ``PromptEncoder`` / ``MaskDecoder``
(segment_anything) are built for that window and loaded with LiteMedSAM's weights from the
installed package (hash-checked), with our TinyViT, which runs in bfloat16 where the CPU has
bf16 instructions (about 2x faster; ``resolve_slice_precision``), else in fp32. The model runs on
the 3D model's device (``Predictor``): on a GPU the embeddings and the decoder stay there and only
the masks come back to the CPU, where the rules above read them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..data.intensity import PRESETS
from ..model.lite_encoder import (BACKBONE_STRIDE, build_tiny_vit, fold_batch_norms, load_lite_medsam_state,
                                  tiny_vit_features)
from .choices import SLICE_PRECISIONS
from .crops import voxels_within

WINDOW_PX = 128
BOX_MARGIN_PX = 5
RETRY_MARGIN_FRACTION = 0.1  # where the BOX_MARGIN_PX box ends propagation: a box this much of the mask's side wider
RETRY_MIN_LIKENESS = 0.5  # ... whose mask is kept only this far from the surroundings towards the object
CORRECTION_MARGIN_PX = 2  # a positive click's box: the nearest slice mask's box widened to the click, plus this
# A correction's box search answer larger than this times the object's largest slice mask is not a
# correction of it; the 3D model answers the click (docs/BENCHMARKS.md, "Stage 4: ... a cap on a
# correction's box search")
FALLBACK_GROWTH_LIMIT = 30.0
FALLBACK_SCALE = 1.0  # ... and its squares reach at most this times the object's in-plane extent from the click
MIN_AREA_PX = 4  # a slice mask smaller than this ends the propagation
FULLEST_TOLERANCE = 0.1  # a 3D box starts on the largest mask whose box overlaps its rectangle within this of the best
# ... and where that is an end slice of a box of this many slices or more, on the middle half of its
# slices (fewer: a tight box's widest slice can be its end, as on real MRI's brain2, 3 slices)
MIDDLE_MIN_SLICES = 5
START_LIKENESS = 0.5  # ... whose mean lies at least this far from the central slice's surroundings towards its object
GROWTH_LIMIT = 1.1  # a slice mask larger than this times the previous one ends it too
RING_PX = 3  # the surroundings a slice mask's contrast is measured against
END_CONTRAST = -0.25  # a slice mask this far beyond the surroundings (in units of the object's contrast) left it
END_CONTRAST_UNBOXED = 0.0  # ... and this far where no 3D box says where the object ends (2D boxes, clicks)
MIN_CONTRAST_STD = 0.5  # an object standing out from its ring by less than this times its std: no end rule
BOUNDS_STRIDE = 2  # volume_bounds reads every 2nd voxel along each axis (1/8 of the volume)
CLICK_BOX_HALF_MM = (4.0, 8.0, 16.0, 32.0)  # a click's candidate boxes: squares this far around it, in mm
CLICK_BOX_REFINEMENTS = 3  # each candidate is re-boxed around its own mask up to this many times
CLICK_BOX_SETTLED = 0.05  # a re-boxed mask whose area changed by less than this fraction has settled
WINDOW_REUSE_SCALE = 1.25  # a search's box is decoded on an embedded window this close in size to its own ...
WINDOW_REUSE_MARGIN = 1 / 5  # ... that holds it at least this fraction of the window's side from every edge
WINDOWS_KEPT = 64  # a session's embedded slice windows kept across its interactions (1 MiB each at WINDOW_PX)


class LiteMedSAM2D:
    """LiteMedSAM on one square window at a time: box or point prompt -> 2D mask; TinyViT in
    ``precision`` (one of ``choices.SLICE_PRECISIONS``; "bf16": under bfloat16 autocast), the
    whole model on ``device`` (embeddings stay there; masks come back as numpy arrays)."""

    def __init__(self, window: int = WINDOW_PX, precision: str = "auto", device: str | torch.device = "cpu") -> None:
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        self.device = torch.device(device)
        self.precision = resolve_slice_precision(precision, self.device.type)  # "fp32" or "bf16"
        state = load_lite_medsam_state()
        self.window = window
        grid = window // BACKBONE_STRIDE
        self.encoder = build_tiny_vit(window)
        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                            input_image_size=(window, window), mask_in_chans=16)
        self.decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256,
            iou_head_depth=3, iou_head_hidden_dim=256)
        for prefix, module in (("image_encoder.", self.encoder), ("prompt_encoder.", self.prompt_encoder),
                               ("mask_decoder.", self.decoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            module.eval()  # after loading (TinyViT caches its attention biases in eval mode)
        fold_batch_norms(self.encoder)  # on the CPU: the package's fuse builds its convolutions there
        for module in (self.encoder, self.prompt_encoder, self.decoder):
            module.to(self.device)  # the cached attention biases are buffers: they move too

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> torch.Tensor:
        """[window, window] image in [0, 1] -> TinyViT's embedding [1, 256, window/4, window/4]
        (the expensive half: ~20x the decoder's time on a CPU)."""
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return tiny_vit_features(self.encoder, tensor[None, None].expand(1, 3, -1, -1)).float()

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, box: np.ndarray | None = None, point: np.ndarray | None = None,
               all_masks: bool = False, with_score: bool = False) -> np.ndarray | tuple[np.ndarray, float]:
        """A box (x0, y0, x1, y1) or a point (x, y) in window pixels on an ``embed``-ded window ->
        bool mask of the window; ``all_masks``: [4, window, window], SAM's single-object mask
        first, then its three multimask outputs (one decoder pass); ``with_score``: (mask, SAM's
        predicted IoU of the single-object mask)."""
        boxes = None if box is None else torch.as_tensor(box, dtype=torch.float32, device=self.device).view(1, 1, 4)
        points = None if point is None else (
            torch.as_tensor(point, dtype=torch.float32, device=self.device).view(1, 1, 2),
            torch.ones(1, 1, dtype=torch.int64, device=self.device))
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        # predict_masks: all four of SAM's mask tokens at once (forward() keeps one or three of them)
        logits, scores = self.decoder.predict_masks(image_embeddings=embedding,
                                                    image_pe=self.prompt_encoder.get_dense_pe(),
                                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        masks = F.interpolate(logits, size=(self.window, self.window), mode="bilinear", align_corners=False)[0] > 0
        chosen = (masks if all_masks else masks[0]).cpu().numpy()
        return (chosen, float(scores[0, 0])) if with_score else chosen


def resolve_slice_precision(choice: str, device_type: str = "cpu") -> str:
    """``choice`` (one of SLICE_PRECISIONS) -> "fp32" or "bf16" for the 2D pathway on a device of
    ``device_type``: "auto" is bf16 only on a CPU with bf16 instructions, where it halves the time;
    a GPU runs a 128 px window in milliseconds either way, so there it keeps fp32."""
    if choice not in SLICE_PRECISIONS:
        raise ValueError(f"unknown 2D pathway precision {choice!r}; choose one of {', '.join(SLICE_PRECISIONS)}")
    if choice == "auto":
        return "bf16" if device_type == "cpu" and native_bf16_cpu() else "fp32"
    return choice


def native_bf16_cpu() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX-512 BF16 or AMX tiles); elsewhere
    oneDNN emulates bf16. torch exposes the checks only under private names, hence the guard."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def volume_bounds(volume: np.ndarray) -> tuple[float, float]:
    """The intensities the 2D pathway maps to 0 and 1: the ``percentile`` preset's percentiles
    of the volume, read on every ``BOUNDS_STRIDE``-th voxel (a large CT in well under a second)."""
    preset = PRESETS["percentile"]
    sample = np.asarray(volume[::BOUNDS_STRIDE, ::BOUNDS_STRIDE, ::BOUNDS_STRIDE], dtype=np.float32)
    low, high = np.percentile(sample, [preset.clip_low, preset.clip_high])
    return float(low), float(high)


def _window(slice_box: np.ndarray) -> tuple[int, int, int]:
    """Square window (j0, i0, side) around a (j0, i0, j1, i1) box: twice its size, at least 32 px."""
    centre = (slice_box[:2] + slice_box[2:]) / 2
    side = int(max(32, 2 * max(slice_box[2] - slice_box[0], slice_box[3] - slice_box[1]) + 2 * BOX_MARGIN_PX))
    j0, i0 = (int(round(c - side / 2)) for c in centre)
    return j0, i0, side


def _cut(plane: np.ndarray, j0: int, i0: int, side: int, size: int, bounds: tuple[float, float]) -> np.ndarray:
    """The window of a slice (edge-replicated outside it), resized to size x size, scaled to [0, 1]."""
    padded = np.pad(plane, side, mode="edge")
    window = padded[j0 + side:j0 + 2 * side, i0 + side:i0 + 2 * side]
    tensor = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    low, high = bounds
    return np.clip((resized - low) / max(high - low, 1e-6), 0.0, 1.0)


def _paste(mask: np.ndarray, j0: int, i0: int, side: int, shape: Sequence[int]) -> np.ndarray:
    """A window mask back onto the slice grid (nearest)."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    full = F.interpolate(tensor, size=(side, side), mode="nearest")[0, 0].numpy() > 0.5
    out = np.zeros(shape, dtype=bool)
    jl, il = max(j0, 0), max(i0, 0)
    jh, ih = min(j0 + side, shape[0]), min(i0 + side, shape[1])
    if jh > jl and ih > il:
        out[jl:jh, il:ih] = full[jl - j0:jh - j0, il - i0:ih - i0]
    return out


def _segment_slice(model: LiteMedSAM2D, plane: np.ndarray, bounds: tuple[float, float],
                   box: np.ndarray | None = None, point: Sequence[float] | None = None,
                   previous: np.ndarray | None = None, windows: "_SliceWindows | None" = None) -> np.ndarray:
    """One slice from a (j0, i0, j1, i1) box or a (j, i) point -> bool mask of the slice.

    With ``previous`` (the neighbouring slice's mask, during propagation): LiteMedSAM's single mask
    while it keeps to the growth rule (at least ``MIN_AREA_PX``, at most ``GROWTH_LIMIT`` times
    ``previous``); where it overgrows - given the previous slice's widened box it tends to fill the
    box - the one of SAM's three multimask outputs that keeps to the rule and agrees best with
    ``previous`` (Dice); the overgrown single mask when none does, which ends the propagation.
    With ``windows`` (the slice's embedded windows), a box is decoded on one of them that serves it."""
    if windows is not None and box is not None:
        j0, i0, side, embedding = windows.window_for(box)
        prompt = dict(box=_box_in_window(box, j0, i0, side, model.window))
    else:
        j0, i0, side, prompt = _window_prompt(model, box, point)
        embedding = model.embed(_cut(plane, j0, i0, side, model.window, bounds))
    if previous is None:
        return _paste(model.decode(embedding, **prompt), j0, i0, side, plane.shape)
    candidates = [_paste(window_mask, j0, i0, side, plane.shape)
                  for window_mask in model.decode(embedding, all_masks=True, **prompt)]
    fitting = [c for c in candidates if _keeps_growth_rule(c, previous)]
    if not fitting or fitting[0] is candidates[0]:
        return candidates[0]  # the single mask when it fits; else the growth rule ends the propagation
    return max(fitting, key=lambda c: 2 * (c & previous).sum() / (c.sum() + previous.sum()))


def _window_prompt(model: LiteMedSAM2D, box: np.ndarray | None,
                   point: Sequence[float] | None) -> tuple[int, int, int, dict[str, np.ndarray]]:
    """The window (j0, i0, side) for a (j0, i0, j1, i1) box or a (j, i) point on a slice and the
    prompt in that window's resized pixels (x, y order), as ``LiteMedSAM2D.decode`` takes it."""
    j0, i0, side = _window(box if box is not None else np.array([point[0] - 8, point[1] - 8, point[0] + 8, point[1] + 8]))
    if box is not None:
        return j0, i0, side, dict(box=_box_in_window(box, j0, i0, side, model.window))
    return j0, i0, side, dict(point=np.array([point[1] - i0, point[0] - j0]) * model.window / side)


def _box_in_window(box: np.ndarray, j0: int, i0: int, side: int, size: int) -> np.ndarray:
    """A slice's (j0, i0, j1, i1) box in the pixels of window (j0, i0, side) resized to ``size``,
    (x0, y0, x1, y1) as SAM's prompt encoder takes it."""
    return np.array([box[1] - i0, box[0] - j0, box[3] - i0, box[2] - j0]) * size / side


Window = tuple[int, int, int, torch.Tensor]  # (j0, i0, side, LiteMedSAM's embedding of that window)


class _SliceWindows:
    """LiteMedSAM's embeddings of one slice's windows.

    A box is decoded on an embedded window when that window is about the size of the box's own
    (``_window``; sides within ``WINDOW_REUSE_SCALE``) and holds the box at least
    ``WINDOW_REUSE_MARGIN`` of its side from every edge (``_serves``); otherwise on the
    ``preferred`` window where that one serves it (a correction's: ``correction_window``), else on
    its own, embedded now. A search re-boxes each start around its mask several times, and the
    boxes of one chain mostly differ by a few pixels; a correction's box on a slice the pathway
    has answered before mostly differs little from that answer's (``SliceEmbeddings``). Decoding
    one on an embedding costs about a twentieth of embedding its window (docs/BENCHMARKS.md, "A
    cheaper box search"). ``embedded``: the slice's windows so far (shared with a
    ``SliceEmbeddings``); ``on_embed``: called with each new one; ``claim``: the embedding of a
    (j0, i0, side) window made ahead of time, taken out of its store, or None."""

    def __init__(self, model: LiteMedSAM2D, plane: np.ndarray, bounds: tuple[float, float],
                 embedded: list[Window] | None = None, on_embed: Callable[[Window], None] | None = None,
                 preferred: tuple[int, int, int] | None = None,
                 claim: Callable[[tuple[int, int, int]], torch.Tensor | None] | None = None) -> None:
        self.model, self.plane, self.bounds = model, plane, bounds
        self.embedded = [] if embedded is None else embedded
        self.on_embed = on_embed
        self.preferred = preferred
        self.claim = claim

    def scored_mask(self, box: np.ndarray) -> tuple[np.ndarray, float]:
        """A (j0, i0, j1, i1) box -> (bool mask of the slice, SAM's predicted IoU)."""
        j0, i0, side, embedding = self.window_for(box)
        mask, score = self.model.decode(embedding, box=_box_in_window(box, j0, i0, side, self.model.window),
                                        with_score=True)
        return _paste(mask, j0, i0, side, self.plane.shape), score

    def window_for(self, box: np.ndarray) -> Window:
        """An embedded window that serves ``box``, else the preferred one where it serves it, else
        the box's own (see the class); one not embedded yet is embedded now."""
        own = _window(box)
        for window in self.embedded:
            if _serves(window[:3], box, own[2]):
                return window
        j0, i0, side = self.preferred if self.preferred is not None and _serves(self.preferred, box, own[2]) else own
        embedding = self.claim((j0, i0, side)) if self.claim is not None else None
        if embedding is None:
            embedding = self.model.embed(_cut(self.plane, j0, i0, side, self.model.window, self.bounds))
        window = (j0, i0, side, embedding)
        self.embedded.append(window)
        if self.on_embed is not None:
            self.on_embed(window)
        return window


def _serves(window: tuple[int, int, int], box: np.ndarray, own_side: int) -> bool:
    """Whether a box whose own window has side ``own_side`` is decoded on the (j0, i0, side)
    ``window``: sides within ``WINDOW_REUSE_SCALE``, the box ``WINDOW_REUSE_MARGIN`` inside it."""
    j0, i0, side = window
    margin = WINDOW_REUSE_MARGIN * side
    return (1 / WINDOW_REUSE_SCALE <= side / own_side <= WINDOW_REUSE_SCALE
            and box[0] >= j0 + margin and box[1] >= i0 + margin
            and box[2] <= j0 + side - margin and box[3] <= i0 + side - margin)


def correction_window(mask: np.ndarray, k: int, covered: np.ndarray | None = None) -> tuple[int, int, int]:
    """The window (j0, i0, side) a correction on slice ``k`` of a non-empty ``mask`` decodes on
    where it serves the correction's box and no kept window does: that of the slice's mask box
    plus ``BOX_MARGIN_PX`` (of the nearest covered slice's, on a slice the mask does not cover;
    ``covered``: the mask's non-empty slices, found when not given). A function of the mask
    alone, so that a window embedded ahead of the click (``SliceEmbeddings.prefetch``) is the one
    the click would embed: the answer is the same."""
    if mask[k].any():
        source = k
    else:
        covered = np.flatnonzero(mask.any(axis=(1, 2))) if covered is None else covered
        source = int(covered[np.argmin(np.abs(covered - k))])
    return _window(_mask_box(mask[source], BOX_MARGIN_PX))


def _correction_windows(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The (k, j0, i0, side) correction windows embedded ahead, in order: the slices the mask
    covers, the largest slice mask first, then the slice past each end (one pass over the mask)."""
    areas = mask.sum(axis=(1, 2))
    covered = np.flatnonzero(areas)
    if not len(covered):
        return []
    ends = [k for k in (int(covered[0]) - 1, int(covered[-1]) + 1) if 0 <= k < mask.shape[0]]
    slices = [int(k) for k in covered[np.argsort(-areas[covered], kind="stable")]] + ends
    return [(k, *correction_window(mask, k, covered)) for k in slices]


class SliceEmbeddings:
    """The embedded windows of one volume's slices (``_SliceWindows``), kept across a session's
    interactions: the volume and its intensity bounds never change there, so a correction on a
    slice the pathway has answered before (the box's propagation, an earlier correction)
    decodes on a window embedded then when one serves its box. Besides them, windows embedded
    ahead of a correction (``prefetch``), which a box takes only as the window it would embed
    (never as a kept window that serves it). At
    most ``capacity`` windows in all; windows made ahead go first, then those of the least
    recently used slices. Measured in docs/BENCHMARKS.md ("Slice embeddings kept across
    interactions", "Correction windows embedded ahead")."""

    def __init__(self, capacity: int = WINDOWS_KEPT) -> None:
        if capacity < 1:
            raise ValueError(f"a session keeps at least one 2D window, got capacity {capacity}")
        self.capacity = capacity
        self._slices: OrderedDict[int, list[Window]] = OrderedDict()
        self._ahead: OrderedDict[tuple[int, int, int, int], torch.Tensor] = OrderedDict()  # (k, j0, i0, side)
        # running totals: the session's memory is read without its lock (metrics, session info)
        # while an interaction changes the slices
        self._count = 0
        self._nbytes = 0

    def windows(self, model: LiteMedSAM2D, volume: np.ndarray, k: int, bounds: tuple[float, float],
                preferred: tuple[int, int, int] | None = None) -> _SliceWindows:
        """Slice ``k``'s windows, the most recently used from now (``preferred``: see
        ``_SliceWindows``)."""
        embedded = self._slices.setdefault(k, [])
        self._slices.move_to_end(k)
        return _SliceWindows(model, volume[k], bounds, embedded, self._added, preferred,
                             lambda window: self._claim(k, window))

    def prefetch(self, model: LiteMedSAM2D, volume: np.ndarray, mask: np.ndarray, bounds: tuple[float, float]) -> bool:
        """Embed the next correction window of ``mask`` (``_correction_windows``) that is neither
        kept nor made ahead yet; False when there is none, or no room: room is made only by
        dropping a window made ahead for an earlier mask, never a kept one or one of this mask's
        (so that a series of calls ends)."""
        wanted = _correction_windows(mask)
        for k, j0, i0, side in wanted:
            if (k, j0, i0, side) in self._ahead or any(w[:3] == (j0, i0, side) for w in self._slices.get(k, [])):
                continue
            if self._count >= self.capacity and not self._drop_ahead(keep=set(wanted)):
                return False
            embedding = model.embed(_cut(volume[k], j0, i0, side, model.window, bounds))
            self._ahead[(k, j0, i0, side)] = embedding
            self._count += 1
            self._nbytes += embedding.nbytes
            return True
        return False

    @property
    def ahead(self) -> int:
        """Windows made ahead of a correction that none has taken yet."""
        return len(self._ahead)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def _claim(self, k: int, window: tuple[int, int, int]) -> torch.Tensor | None:
        """The embedding of slice ``k``'s ``window`` made ahead, out of that store (``_added``
        then counts it as kept), or None."""
        return self._take_ahead((k, *window))

    def _drop_ahead(self, keep: set[tuple[int, int, int, int]] = frozenset()) -> bool:
        """Drop the oldest window made ahead that is not in ``keep``; False when there is none."""
        key = next((key for key in self._ahead if key not in keep), None)
        return key is not None and self._take_ahead(key) is not None

    def _take_ahead(self, key: tuple[int, int, int, int]) -> torch.Tensor | None:
        """The (k, j0, i0, side) window made ahead, out of that store and its counts, or None."""
        embedding = self._ahead.pop(key, None)
        if embedding is not None:
            self._count -= 1
            self._nbytes -= embedding.nbytes
        return embedding

    def _added(self, window: Window) -> None:
        """Count a window just embedded; beyond ``capacity`` drop the windows made ahead, then the
        least recently used slices' windows (and slices left with none, such as a slice no
        window was embedded on)."""
        self._count += 1
        self._nbytes += window[3].nbytes
        while self._count > self.capacity and self._drop_ahead():
            pass
        while self._count > self.capacity and self._slices:
            k, oldest = next(iter(self._slices.items()))
            if oldest:
                dropped = oldest.pop(0)
                self._count -= 1
                self._nbytes -= dropped[3].nbytes
            if not oldest:
                del self._slices[k]


def _windows(embeddings: SliceEmbeddings | None, model: LiteMedSAM2D, volume: np.ndarray, k: int,
             bounds: tuple[float, float], preferred: tuple[int, int, int] | None = None) -> _SliceWindows | None:
    """Slice ``k``'s kept windows where ``embeddings`` keeps them, else None (each box embeds its own)."""
    return None if embeddings is None else embeddings.windows(model, volume, k, bounds, preferred)


def _box_from_click(model: LiteMedSAM2D, plane: np.ndarray, bounds: tuple[float, float], j: int, i: int,
                    pixel_mm: Sequence[float], proposal: np.ndarray | None = None,
                    max_half_mm: float = np.inf) -> np.ndarray:
    """A click's slice mask from LiteMedSAM's trained box prompt, whose point prompt is untrained:
    squares ``CLICK_BOX_HALF_MM`` around the click (those of at most ``max_half_mm``, the smallest
    always; and the box of ``proposal``, the 3D model's mask on this slice, when given) each
    re-boxed around its own mask (plus ``BOX_MARGIN_PX``) up to ``CLICK_BOX_REFINEMENTS`` times
    or until it settles; of all masks that hold the click, the one SAM's IoU head scores highest
    (empty when none does). On development data it chose better than the object's contrast with
    its ring did (docs/BENCHMARKS.md, "A first click answered by a box search"). The search
    embeds its own windows: decoded on windows kept from other answers on the slice, its chains
    found other masks (docs/BENCHMARKS.md, "Slice embeddings kept across interactions")."""
    halves = [half for half in CLICK_BOX_HALF_MM if half <= max_half_mm] or [CLICK_BOX_HALF_MM[0]]
    starts = [np.array([j - half / pixel_mm[0], i - half / pixel_mm[1], j + half / pixel_mm[0], i + half / pixel_mm[1]])
              for half in halves]
    if proposal is not None and proposal.any():
        starts.append(_mask_box(proposal, BOX_MARGIN_PX))
    windows = _SliceWindows(model, plane, bounds)
    best, best_score = np.zeros(plane.shape, dtype=bool), -np.inf
    for box in starts:
        area = 0
        for _ in range(1 + CLICK_BOX_REFINEMENTS):
            mask, score = windows.scored_mask(box)
            if mask[j, i] and score > best_score:
                best, best_score = mask, score
            if mask.sum() < MIN_AREA_PX or abs(int(mask.sum()) - area) < CLICK_BOX_SETTLED * area:
                break
            area, box = int(mask.sum()), _mask_box(mask, BOX_MARGIN_PX)
    return best


def segment_from_click(model: LiteMedSAM2D, volume: np.ndarray, click_kji: Sequence[float], spacing: Sequence[float],
                       bounds: tuple[float, float] | None = None, proposal: np.ndarray | None = None,
                       max_voxels: int | None = None, embeddings: SliceEmbeddings | None = None) -> np.ndarray:
    """3D bool mask from a first click: its slice answered by a box search (``_box_from_click``;
    ``proposal``: the 3D model's mask on that slice, one more start), then propagated along k as
    a box's mask is. Empty when no box's mask holds the click, or when the mask grows past
    ``max_voxels`` (the propagation stops there: no time is spent on an answer that is refused).
    ``embeddings``: the session's kept slice windows (``SliceEmbeddings``), if any."""
    bounds = volume_bounds(volume) if bounds is None else bounds
    k, j, i = (int(round(float(v))) for v in click_kji)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[k] = _box_from_click(model, volume[k], bounds, j, i, spacing[1:], proposal)
    if mask[k].any():
        for direction in (-1, 1):
            _propagate(model, volume, bounds, mask, k, direction, max_voxels=max_voxels, embeddings=embeddings)
    if max_voxels is not None and mask.sum() > max_voxels:
        mask[:] = False
    return mask


def _keeps_growth_rule(current: np.ndarray, previous: np.ndarray) -> bool:
    """Whether a propagated slice mask carries the object on: at least ``MIN_AREA_PX``, at most
    ``GROWTH_LIMIT`` times the previous slice's mask."""
    return MIN_AREA_PX <= current.sum() <= GROWTH_LIMIT * previous.sum()


def _mask_box(plane_mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The (j0, i0, j1, i1) box of a non-empty slice mask, grown by ``margin`` pixels."""
    js, is_ = np.nonzero(plane_mask)
    return np.array([js.min() - margin, is_.min() - margin, js.max() + margin, is_.max() + margin], dtype=float)


def _fullest_slice(model: LiteMedSAM2D, volume: np.ndarray, bounds: tuple[float, float], slices: range,
                   rectangle: np.ndarray, embeddings: SliceEmbeddings | None = None) -> tuple[int, np.ndarray]:
    """The slice of a 3D box where propagation starts, and its mask from the box's rectangle
    (``_start_of`` chooses it from every slice's mask)."""
    masks = {k: _segment_slice(model, volume[k], bounds, box=rectangle,
                               windows=_windows(embeddings, model, volume, k, bounds)) for k in slices}
    return _start_of(volume, masks, rectangle)


def _start_of(volume: np.ndarray, masks: dict[int, np.ndarray], rectangle: np.ndarray) -> tuple[int, np.ndarray]:
    """Of a 3D box's slice masks from its rectangle ({slice: mask}, in slice order), the start of
    propagation: the object's widest slice, the largest mask of the slices whose mask's box
    overlaps the rectangle (intersection over union) within ``FULLEST_TOLERANCE`` of the best,
    among the masks that look like the object on the box's central slice (their mean at least
    ``START_LIKENESS`` of the way from its surroundings to it: ``_left_the_object``). Where that
    is the box's first or last slice, in a box of ``MIDDLE_MIN_SLICES`` or more, the same choice
    is made again among the slices of its middle half (``_middle_half``), where one of those
    masks lies there.

    The best overlap alone can fall on a narrower slice whose mask leaked to the rectangle's
    edge, and the growth rule then ends propagation before the wider slices (docs/BENCHMARKS.md,
    "Where a 3D box starts"). In a box drawn loosely, past the object's ends, LiteMedSAM
    segments whatever the rectangle holds - lung, fat - which overlaps it best of all
    (docs/BENCHMARKS.md, "Boxes drawn loosely"); a bright structure there (the chest wall, a
    vessel) can look like the object too, and a box drawn around an object lies on it in its
    middle (docs/BENCHMARKS.md, "A loose 3D box starts in its middle half")."""
    slices = list(masks)
    found = [(_box_overlap(_mask_box(plane_mask), rectangle), k, plane_mask)
             for k, plane_mask in masks.items() if plane_mask.any()]
    if not found:
        return slices[0], np.zeros(volume.shape[1:], dtype=bool)
    centre = max(_central(slices), key=lambda c: int(np.count_nonzero(masks[c])))
    contrast = _contrast(volume[centre], masks[centre]) if masks[centre].sum() >= MIN_AREA_PX else None
    alike = [c for c in found if not _left_the_object(volume[c[1]], c[2], contrast, START_LIKENESS)]
    candidates = alike or found
    _, k, plane_mask = _widest_of(candidates)
    if k in (slices[0], slices[-1]) and len(slices) >= MIDDLE_MIN_SLICES:  # an end slice: a box drawn loosely?
        _, k, plane_mask = _widest_of(candidates, _middle_half(slices))
    return k, plane_mask


def _middle_half(slices: Sequence[int]) -> list[int]:
    """The slices of the middle half of a 3D box's consecutive slices' extent: where a box drawn
    around an object lies on the object."""
    quarter = (slices[-1] - slices[0]) / 4
    return [k for k in slices if slices[0] + quarter <= k <= slices[-1] - quarter]


def _central(slices: Sequence[int]) -> list[int]:
    """The middle slice of consecutive slices, or their two middle slices."""
    centre = (slices[0] + slices[-1]) / 2
    return sorted({int(np.floor(centre)), int(np.ceil(centre))})


def _box_overlap(box: np.ndarray, other: np.ndarray) -> float:
    """Intersection over union of two (j0, i0, j1, i1) pixel boxes (inclusive corners)."""
    overlap = np.prod(np.clip(np.minimum(box[2:], other[2:]) - np.maximum(box[:2], other[:2]) + 1, 0, None))
    union = np.prod(box[2:] - box[:2] + 1) + np.prod(other[2:] - other[:2] + 1) - overlap
    return float(overlap / union)


def _widest_of(found: list[tuple[float, int, np.ndarray]],
               preferred: Sequence[int] = ()) -> tuple[float, int, np.ndarray]:
    """Of (overlap with the rectangle, slice, mask) for a 3D box's slices, the one with the
    largest mask among those whose overlap is within ``FULLEST_TOLERANCE`` of the best: among
    those on the ``preferred`` slices where any is."""
    best = max(overlap for overlap, _, _ in found)
    near = [c for c in found if c[0] >= best - FULLEST_TOLERANCE]
    return max([c for c in near if c[1] in preferred] or near, key=lambda c: int(np.count_nonzero(c[2])))


def segment_slice_by_slice(model: LiteMedSAM2D, volume: np.ndarray, box_kji: np.ndarray | None = None,
                           click_kji: Sequence[float] | None = None,
                           bounds: tuple[float, float] | None = None,
                           embeddings: SliceEmbeddings | None = None) -> np.ndarray:
    """3D bool mask from a box [[k0, j0, i0], [k1, j1, i1]] (a 2D box when k0 == k1) or one click,
    propagated along k. ``bounds``: ``volume_bounds(volume)``, computed when not given;
    ``embeddings``: the session's kept slice windows (``SliceEmbeddings``), if any."""
    bounds = volume_bounds(volume) if bounds is None else bounds
    mask = np.zeros(volume.shape, dtype=bool)
    slices = range(volume.shape[0])
    limit = None  # the 3D box's (j0, i0, j1, i1), which propagated boxes never leave
    if box_kji is not None:
        corners = np.asarray(box_kji, dtype=float)
        box_slices, rectangle = _box_limits(corners)
        start = box_slice(corners)
        if is_3d_box(corners):  # its slices and its rectangle bound the propagation
            slices, limit = box_slices, rectangle
            start, mask[start] = _fullest_slice(model, volume, bounds, slices, rectangle, embeddings)
        else:
            mask[start] = _segment_slice(model, volume[start], bounds, box=rectangle,
                                         windows=_windows(embeddings, model, volume, start, bounds))
    else:
        start = int(round(click_kji[0]))
        mask[start] = _segment_slice(model, volume[start], bounds, point=click_kji[1:])
    for direction in (-1, 1):
        _propagate(model, volume, bounds, mask, start, direction, slices, limit, embeddings=embeddings)
    return mask


def correct_slice_by_slice(model: LiteMedSAM2D, volume: np.ndarray, mask: np.ndarray, click_kji: Sequence[float],
                           label: int, bounds: tuple[float, float], box_kji: np.ndarray | None = None,
                           spacing: Sequence[float] | None = None, positives_kji: np.ndarray | None = None,
                           embeddings: SliceEmbeddings | None = None) -> np.ndarray | None:
    """A correction click on a mask the 2D pathway made, answered by the 2D pathway: the new
    mask, or None when this click is not one it can answer (the caller then asks the 3D model).

    - Positive click on a slice the mask covers: that slice again, from the box of its mask
      widened to the click (plus ``CORRECTION_MARGIN_PX``); the part of the answer that holds the
      click is added.
    - Positive click on a slice past the mask's end: the slices up to it from the box of the
      nearest covered slice widened to the click (plus ``CORRECTION_MARGIN_PX``; SAM's multimask
      choice of the growth rule as in propagation), on the clicked slice only the part that holds
      the click; on past the click only where the object has a 3D box prompt ``box_kji``,
      propagated within it widened to the click (without one nothing says where the object
      ends, and carrying on ran into the organ around a lesion or past a small lesion's end:
      docs/BENCHMARKS.md, "Corrections after a box, third round"). On an object without a box
      (a first click's box search) whose nearest slice's box does not reach the click, the
      clicked slice is answered by a box search around the click (``_box_from_click``; needs
      ``spacing``) instead, unless its answer is more than ``FALLBACK_GROWTH_LIMIT`` times the
      object's largest slice mask (None: the click goes to the 3D model).
    - Negative click inside the mask: the slice's region under the click is cut back to what
      LiteMedSAM finds in that region's box with its side nearest the click moved past the
      click (``_remove_at``): a leak goes, the object stays. Of what that would remove, only
      the part nearer the click than any of the object's positive clicks on the slice
      (``positives_kji``, in-plane distance in ``spacing``) goes: a negative click never takes
      a positive one out of the mask (``_nearer_than_positives``).
    ``embeddings``: the session's kept slice windows (``SliceEmbeddings``), if any; a box no kept
    window serves is decoded on the slice's ``correction_window`` where that serves it, which may
    have been embedded ahead (``SliceEmbeddings.prefetch``).
    Measured in docs/BENCHMARKS.md ("Corrections after a box, second round").
    """
    k, j, i = (int(round(float(v))) for v in click_kji)
    result = mask.copy()
    if label != 1:
        if not mask[k, j, i]:
            return None
        kept = _remove_at(model, volume[k], bounds, mask[k], j, i,
                          _windows(embeddings, model, volume, k, bounds, correction_window(mask, k)))
        result[k] = kept | (mask[k] & ~_nearer_than_positives(mask.shape[1:], (j, i), k, positives_kji, spacing))
        return result
    covered = np.flatnonzero(mask.any(axis=(1, 2)))
    if mask[k, j, i] or not len(covered):
        return None
    source, box = correction_box(mask, (k, j, i))
    direction = int(np.sign(k - source))
    previous = mask[source]
    for slice_index in range(source + direction, k + direction, direction) if direction else [k]:
        if direction == 0 or not mask[slice_index].any():
            plane_mask = _segment_slice(model, volume[slice_index], bounds, box=box,
                                        previous=previous if direction else None,  # the growth rule's choice
                                        windows=_windows(embeddings, model, volume, slice_index, bounds,
                                                         correction_window(mask, slice_index, covered)))
            result[slice_index] |= plane_mask
            previous = plane_mask if plane_mask.any() else previous
    if not result[k, j, i] and box_kji is None and spacing is not None:
        searched = _box_from_click(model, volume[k], bounds, j, i, spacing[1:],
                                   max_half_mm=FALLBACK_SCALE * _in_plane_extent_mm(mask, spacing[1:]))
        if searched.sum() <= FALLBACK_GROWTH_LIMIT * mask.sum(axis=(1, 2)).max():
            result[k] |= searched
    if not result[k, j, i]:
        return None
    regions, _ = ndimage.label(result[k] & ~mask[k])  # on the clicked slice, only the part that holds the click
    result[k] = mask[k] | (regions == regions[j, i])
    if direction and box_kji is not None and is_3d_box(box_kji):  # on past the click only inside a 3D box
        slices, limit = _box_limits(np.concatenate([box_kji, [[k, j, i]]]))
        _propagate(model, volume, bounds, result, k, direction, slices, limit, reference=source, embeddings=embeddings)
    return result


def _in_plane_extent_mm(mask: np.ndarray, pixel_mm: Sequence[float]) -> float:
    """The longer side (mm) of the in-plane bounding box of ``mask`` (all slices together)."""
    rows, columns = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if not len(rows):
        return 0.0
    return float(max((np.ptp(rows) + 1) * pixel_mm[0], (np.ptp(columns) + 1) * pixel_mm[1]))


def correction_box(mask: np.ndarray, click_kji: Sequence[int]) -> tuple[int, np.ndarray]:
    """(source slice, (j0, i0, j1, i1) box) of a positive click on a mask with at least one
    covered slice: the clicked slice when the mask covers it, else the nearest covered slice;
    its mask's box widened to hold the click, plus ``CORRECTION_MARGIN_PX``."""
    k, j, i = (int(v) for v in click_kji)
    covered = np.flatnonzero(mask.any(axis=(1, 2)))
    source = k if mask[k].any() else int(covered[np.argmin(np.abs(covered - k))])
    found = _mask_box(mask[source])
    box = np.array([min(found[0], j), min(found[1], i), max(found[2], j), max(found[3], i)], dtype=float)
    return source, box + np.array([-CORRECTION_MARGIN_PX, -CORRECTION_MARGIN_PX, CORRECTION_MARGIN_PX,
                                   CORRECTION_MARGIN_PX])


def _nearer_than_positives(shape: Sequence[int], negative_ji: tuple[int, int], k: int,
                           positives_kji: np.ndarray | None, spacing: Sequence[float] | None) -> np.ndarray:
    """The pixels of slice ``k`` nearer the negative click than every positive click on that
    slice (all of them when there is none): what a negative click may remove."""
    nearer = np.ones(shape, dtype=bool)
    if positives_kji is None or not len(positives_kji):
        return nearer
    scale = np.ones(2) if spacing is None else np.asarray(spacing, dtype=float)[1:]
    jj, ii = np.ogrid[:shape[0], :shape[1]]
    to_negative = ((jj - negative_ji[0]) * scale[0]) ** 2 + ((ii - negative_ji[1]) * scale[1]) ** 2
    for pk, pj, pi in np.asarray(positives_kji, dtype=float).reshape(-1, 3):
        if int(round(pk)) == k:
            nearer &= to_negative < ((jj - pj) * scale[0]) ** 2 + ((ii - pi) * scale[1]) ** 2
    return nearer


def is_3d_box(corners) -> bool:
    """Whether a box's kji corners lie on different slices (a 3D box), not on one (a 2D box)."""
    return bool(np.ptp(np.asarray(corners, dtype=float)[:, 0]) >= 1.0)


def box_slice(corners) -> int:
    """The slice a box's kji corners are centred on (their mean k, rounded): a 2D box's slice."""
    return int(round(float(np.asarray(corners, dtype=float)[:, 0].mean())))


def on_its_slice(corners) -> np.ndarray:
    """A 2D box's kji corners with k set to the slice it is answered on (``box_slice``); a 3D
    box's as they are."""
    corners = np.array(corners, dtype=float)
    if not is_3d_box(corners):
        corners[:, 0] = box_slice(corners)
    return corners


def _box_limits(corners: np.ndarray) -> tuple[range, np.ndarray]:
    """The slices and the (j0, i0, j1, i1) rectangle of the box around kji ``corners``: what a
    3D box lets the propagation reach."""
    corners = np.asarray(corners, dtype=float)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    inside = voxels_within(corners)
    return range(inside[0][0], inside[1][0]), np.array([lo[1], lo[2], hi[1], hi[2]])


def _remove_at(model: LiteMedSAM2D, plane: np.ndarray, bounds: tuple[float, float], plane_mask: np.ndarray,
               j: int, i: int, windows: _SliceWindows | None = None) -> np.ndarray:
    """A negative click at (j, i) inside a slice mask -> the slice mask without what the click
    marks: the connected region under the click is segmented again from its box with the side
    nearest the click moved just past the click; the region keeps what that answer keeps
    inside the moved box (the whole region goes when nothing is kept)."""
    regions, _ = ndimage.label(plane_mask)
    region = regions == regions[j, i]
    box = _mask_box(region)
    side = int(np.argmin([j - box[0], i - box[1], box[2] - j, box[3] - i]))
    box[side] = (j + 1, i + 1, j - 1, i - 1)[side]
    if box[2] < box[0] or box[3] < box[1]:
        return plane_mask & ~region
    inside = np.zeros_like(region)
    inside[int(box[0]):int(box[2]) + 1, int(box[1]):int(box[3]) + 1] = True
    prompt = box + np.array([-BOX_MARGIN_PX, -BOX_MARGIN_PX, BOX_MARGIN_PX, BOX_MARGIN_PX])
    prompt[side] = box[side]  # no margin on the side the click moved
    kept = region & inside & _segment_slice(model, plane, bounds, box=prompt, windows=windows)
    return (plane_mask & ~region) | kept


def _propagate(model: LiteMedSAM2D, volume: np.ndarray, bounds: tuple[float, float], mask: np.ndarray,
               start: int, direction: int, slices: range | None = None, limit: np.ndarray | None = None,
               reference: int | None = None, max_voxels: int | None = None,
               embeddings: SliceEmbeddings | None = None) -> None:
    """Carry ``mask[start]`` into the empty slices beyond it along ``direction``, each prompted
    with the previous slice's mask box plus a margin (``_propagation_margins``: the first that keeps
    to the rules below; kept inside ``limit``, a 3D box's rectangle), until a slice comes back
    empty, grows past ``GROWTH_LIMIT`` or leaves the object (``_left_the_object``, against the
    contrast of ``mask[start]`` and, where given, also of ``mask[reference]``: after a correction's
    fill, the slice it came from; without a 3D box on the far side of the object too, since no
    box says where it ends: a 3D box's first slice can be a faint partial-volume end, against
    whose contrast the lesion's core lies far past it). Stops once the mask holds more than
    ``max_voxels``. ``embeddings``: the session's kept slice windows, if any."""
    slices = range(volume.shape[0]) if slices is None else slices
    filled = int(mask.sum()) if max_voxels is not None else 0
    previous, k = mask[start], start + direction
    contrasts = [_contrast(volume[index], mask[index]) if mask[index].sum() >= MIN_AREA_PX else None
                 for index in ([start] if reference is None else [start, reference])]
    retried = False  # once the tighter box was needed the object tapers off: later masks must look like it
    while (k in slices and previous.sum() >= MIN_AREA_PX and not mask[k].any()
           and (max_voxels is None or filled <= max_voxels)):
        for attempt, margin in enumerate(_propagation_margins(previous, contrasts[0])):
            box = _mask_box(previous, margin)
            if limit is not None:
                box = np.concatenate([np.maximum(box[:2], limit[:2]), np.minimum(box[2:], limit[2:])])
            current = _segment_slice(model, volume[k], bounds, box=box, previous=previous,
                                     windows=_windows(embeddings, model, volume, k, bounds))
            likeness = (RETRY_MIN_LIKENESS if retried or attempt > 0
                        else END_CONTRAST if limit is not None else END_CONTRAST_UNBOXED)
            if _keeps_growth_rule(current, previous) and not any(
                    _left_the_object(volume[k], current, c, likeness, beyond=limit is None)
                    for c in contrasts):
                retried = retried or attempt > 0
                break
        else:
            break
        mask[k] = current
        filled += int(current.sum())
        previous, k = current, k + direction


def _propagation_margins(previous: np.ndarray, contrast: tuple[float, float] | None) -> tuple[int, ...]:
    """The margins (px) a propagated box is tried with, in order: ``BOX_MARGIN_PX``; then, on an
    object that stands out from its ring (``contrast`` not None), ``RETRY_MARGIN_FRACTION`` of the
    previous mask's longer side (at least 1 px). A low-contrast lesion inside an organ of like
    intensity, given the wide box, fills it with the organ and ends at once; the tighter box carries
    it on, and ``_propagate`` keeps its mask, and every later one in that direction, only while it
    looks like the object (``_left_the_object`` at ``RETRY_MIN_LIKENESS``), so that it stops at the
    lesion's end. An object that barely stands out keeps the wide box alone: there its overgrowing
    is what ends the propagation (brain2; docs/BENCHMARKS.md, "The phantom figures re-measured on
    the tumour")."""
    rows, columns = np.nonzero(previous)
    side = max(np.ptp(rows), np.ptp(columns)) + 1
    retry = max(1, int(round(RETRY_MARGIN_FRACTION * side)))
    return (BOX_MARGIN_PX, retry) if contrast is not None and retry < BOX_MARGIN_PX else (BOX_MARGIN_PX,)


def _contrast(plane: np.ndarray, plane_mask: np.ndarray) -> tuple[float, float] | None:
    """(mean inside, mean of a ``RING_PX`` ring around) a slice mask: how the object stands out
    from its surroundings on the slice propagation starts from; None where it does not (the two
    means no further apart than ``MIN_CONTRAST_STD`` times the inside's standard deviation, a
    uniform plane included), and the end rule is then off."""
    ring = ndimage.binary_dilation(plane_mask, iterations=RING_PX) & ~plane_mask
    inside, around = plane[plane_mask].astype(float), plane[ring].astype(float)
    if not around.size or abs(inside.mean() - around.mean()) <= MIN_CONTRAST_STD * inside.std():  # <=: uniform too
        return None
    return float(inside.mean()), float(around.mean())


def _left_the_object(plane: np.ndarray, plane_mask: np.ndarray, contrast: tuple[float, float] | None,
                     likeness: float = END_CONTRAST, beyond: bool = False) -> bool:
    """Whether a propagated slice mask has left the object: with ``t`` its mean intensity's place
    between the start slice's surroundings (0) and the object (1), ``t`` below ``likeness``, or,
    with ``beyond``, above ``2 - likeness`` (as far past the object, away from its surroundings:
    a brighter structure beyond a bright lesion's end, such as bone or another organ). The
    default, ``END_CONTRAST``, is beyond the surroundings by a quarter of the object's contrast
    (LiteMedSAM, given a box, segments whatever the box holds once the object has ended): inside
    a 3D box, not at 0, since a real tumour's slice can be as dark as its start slice's ring
    (docs/BENCHMARKS.md, "Where the 2D pathway's propagation ends"). Without a 3D box
    ``_propagate`` asks for ``END_CONTRAST_UNBOXED`` (no darker than the surroundings), which
    stopped masses against the chest wall (docs/BENCHMARKS.md, "The end rule re-made")."""
    if contrast is None:
        return False
    inside, around = contrast
    t = (float(plane[plane_mask].mean()) - around) / (inside - around)
    return t < likeness or (beyond and t > 2 - likeness)
